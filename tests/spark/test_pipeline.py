"""The Spark job end to end on a local session: IDs, stability, determinism, Delta, bad input."""

import json
import os
from collections import defaultdict

import numpy as np
import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.algorithms.rq_vae import RQVAE
from semid_spark.exceptions import ConfigError, InvalidInputError, ModelMismatchError, ShapeMismatchError
from semid_spark.spark import pipeline
from semid_spark.spark.encode import FrozenModel, encode_embeddings
from semid_spark.uniqueness.relocate import relocate_codes
from semid_spark.uniqueness.resolver import RelocatingResolver
from tests.spark.conftest import DIM, bad_frame, catalog, config, frame, ids, write_input

@pytest.fixture(scope="module")
def first_run(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    keys, x = catalog(1200)
    write_input(spark, frame(spark, keys, x), f"{tmp}/in")
    cfg = config(tmp)
    report = pipeline.run(spark, cfg)
    return tmp, cfg, report, keys, x


def reference_ids(rows):
    """The contract computed in plain Python: per base, keys in order take counters 0, 1, ..."""
    by_base = defaultdict(list)
    for key, codes in rows:
        by_base["-".join(map(str, codes))].append(key)
    out = {}
    for base, members in by_base.items():
        for counter, key in enumerate(sorted(members)):
            out[key] = base if counter == 0 else f"{base}-{counter}"
    return out


def test_first_run_writes_one_unique_id_per_item(spark, first_run):
    tmp, cfg, report, keys, x = first_run
    table = ids(spark, cfg).collect()
    assert report.n_input == report.n_new == report.n_inserted == len(table) == 1200
    assert len({r.semantic_id for r in table}) == 1200
    # the default strategy (relocate), as the single-machine resolver computes it from the same model
    model = RQKMeans.load(cfg.model.path)
    expected = RelocatingResolver().assign(model.semantic_id(model.encode(x)), embeddings=x, model=model, keys=keys)
    assert {r.item_id: r.semantic_id for r in table} == dict(zip(keys, expected))
    props = DeltaTable.forPath(spark, cfg.output.path).detail().first()["properties"]
    assert props["semid.model_sha256"] == report.model_sha256 and props["semid.codebook_sizes"] == "8,8,8"


def test_the_ids_table_keeps_file_statistics_only_for_the_columns_reads_filter_on(spark, first_run):
    tmp, cfg, report, keys, x = first_run
    log_dir = os.path.join(cfg.output.path, "_delta_log")
    stats = [json.loads(json.loads(line)["add"]["stats"]) for name in sorted(os.listdir(log_dir)) if name.endswith(".json")
             for line in open(os.path.join(log_dir, name), encoding="utf-8") if '"add"' in line]
    assert stats and sum(s["numRecords"] for s in stats) == 1200
    # the key (new-key checks skip files by it), the run (the MERGE's condition) and the time (downstream reads)
    assert {tuple(sorted(s["minValues"])) for s in stats} == {("assigned_at", "item_id", "run_id")}
    assert all(set(s["nullCount"]) == {"assigned_at", "item_id", "run_id"} for s in stats)


def test_executor_codes_equal_the_driver_model(spark, first_run):
    tmp, cfg, report, keys, x = first_run
    model = RQKMeans.load(cfg.model.path)
    table = {r.item_id: r.codes for r in ids(spark, cfg).collect()}
    assert np.array_equal(np.array([table[k] for k in keys]), relocate_codes(model, x, keys=keys).codes)


@pytest.mark.torch
def test_executor_codes_equal_the_driver_model_for_rq_vae(spark):
    keys, x = catalog(300)
    model = RQVAE(in_dim=DIM, num_emb_list=[8, 8], e_dim=8, layers=[16], epochs=3, random_state=0).fit(x)
    encoded = encode_embeddings(frame(spark, keys, x).repartition(3), FrozenModel(spark, model), key_col="item_id",
                                embedding_col="embedding", dim=DIM)
    got = {r.item_id: r.codes for r in encoded.collect()}
    assert np.array_equal(np.array([got[k] for k in keys]), model.encode(x))


def test_rerun_on_the_same_input_inserts_nothing(spark, first_run):
    tmp, cfg, report, keys, x = first_run
    before = DeltaTable.forPath(spark, cfg.output.path).history(1).first()["version"]
    again = pipeline.run(spark, cfg)
    assert again.n_new == again.n_inserted == 0
    assert DeltaTable.forPath(spark, cfg.output.path).history(1).first()["version"] == before


def test_incremental_run_keeps_old_ids_and_continues_counters(spark, tmp_path):
    keys, x = catalog(1000)
    cfg = config(tmp_path)
    write_input(spark, frame(spark, keys[:800], x[:800]), cfg.input.path)
    pipeline.run(spark, cfg)
    old = {r.item_id: r for r in spark.read.format("delta").load(cfg.output.path).collect()}
    write_input(spark, frame(spark, keys[800:], x[800:]), cfg.input.path, mode="append")
    report = pipeline.run(spark, cfg)
    assert report.n_new == report.n_inserted == 200
    new = {r.item_id: r for r in spark.read.format("delta").load(cfg.output.path).collect()}
    assert all(new[k] == old[k] for k in old)  # every column of every old row, run id included
    assert len({r.semantic_id for r in new.values()}) == 1000
    by_base = defaultdict(list)
    for r in new.values():
        by_base[tuple(r.codes)].append((r.item_id in old, r.counter, r.item_id))
    for members in by_base.values():
        counters = sorted(c for _, c, _ in members)
        assert counters == list(range(len(members)))  # no gaps, no repeats
        old_max = max((c for was_old, c, _ in members if was_old), default=-1)
        fresh = sorted((c, k) for was_old, c, k in members if not was_old)
        assert all(c > old_max for c, _ in fresh) and [k for _, k in fresh] == sorted(k for _, k in fresh)


def test_output_does_not_depend_on_partitioning(spark, tmp_path):
    keys, x = catalog(900, seed=3)
    df = frame(spark, keys, x)
    model = RQKMeans(3, 8, random_state=0).fit(x)
    model.save(str(tmp_path / "model"))
    outputs = []
    for n_parts in (1, 17):
        cfg = config(tmp_path / f"p{n_parts}", model={"path": str(tmp_path / "model")}, uniqueness={"hot_code_rows": 40})
        write_input(spark, df.repartition(n_parts).orderBy(F.rand(n_parts)), cfg.input.path)
        pipeline.run(spark, cfg)
        outputs.append(ids(spark, cfg))
    assert_df_equality(outputs[0], outputs[1], ignore_row_order=True)


def test_hot_code_is_ranked_in_several_tasks_with_the_same_numbers(spark, tmp_path):
    keys, x = catalog(600, seed=5)
    x[:400] = x[0]  # 400 items share one code
    df = frame(spark, keys, x)
    model = RQKMeans(3, 8, random_state=0).fit(x)
    model.save(str(tmp_path / "model"))
    results = {}
    for hot in (10**9, 50):
        cfg = config(tmp_path / f"h{hot}", model={"path": str(tmp_path / "model")}, uniqueness={"hot_code_rows": hot})
        write_input(spark, df, cfg.input.path)
        pipeline.run(spark, cfg)
        results[hot] = ids(spark, cfg)
    assert_df_equality(results[10**9], results[50], ignore_row_order=True)

    from semid_spark.spark import ranking

    encoded = encode_embeddings(df, FrozenModel(spark, model), key_col="item_id", embedding_col="embedding", dim=DIM)
    ranked = ranking.assign_counters(ranking.with_code_key(encoded, [8] * 3), None, key_col="item_id", hot_code_rows=50)
    hot = F.array(*(F.lit(int(c)) for c in model.encode(x[:1])[0]))
    tasks = ranked.where(F.col("codes") == hot).select(F.spark_partition_id().alias("task")).distinct().count()
    assert tasks > 1


def test_a_model_of_another_sha_is_refused_and_the_table_is_kept(spark, first_run, tmp_path):
    tmp, cfg, report, keys, x = first_run
    version = DeltaTable.forPath(spark, cfg.output.path).history(1).first()["version"]
    other = config(tmp, model={"path": str(tmp_path / "other"), "seed": 1})
    with pytest.raises(ModelMismatchError, match="holds IDs of model sha256="):
        pipeline.run(spark, other)
    assert DeltaTable.forPath(spark, cfg.output.path).history(1).first()["version"] == version
    assert spark.read.format("delta").load(cfg.output.path).count() == 1200


def test_new_table_on_model_change_replaces_it(spark, tmp_path):
    keys, x = catalog(300)
    cfg = config(tmp_path)
    write_input(spark, frame(spark, keys, x), cfg.input.path)
    first = pipeline.run(spark, cfg)
    second = pipeline.run(spark, config(tmp_path, model={"seed": 1, "refit": True},
                                        output={"new_table_on_model_change": True}))
    assert first.model_sha256 != second.model_sha256 and second.n_inserted == 300
    table = spark.read.format("delta").load(cfg.output.path)
    assert table.select("model_sha256").distinct().collect()[0][0] == second.model_sha256


@pytest.mark.parametrize(
    "problem, error, message",
    [
        ("null key", InvalidInputError, r"1 rows with null in key column 'item_id'"),
        ("duplicate key", InvalidInputError, r"2 rows with duplicate keys in 'item_id'"),
        ("nan", InvalidInputError, r"1 rows with NaN, inf or null values in 'embedding'"),
        ("inf", InvalidInputError, r"1 rows with NaN, inf or null values in 'embedding'"),
        ("null element", InvalidInputError, r"1 rows with NaN, inf or null values in 'embedding'"),
        ("length", ShapeMismatchError, r"1 rows with embedding length != 16"),
        ("null embedding", InvalidInputError, r"bad rows among 50: 1 rows with null in 'embedding' \(e.g. item_id='sku000010'\)\. Nothing"),
    ],
)
def test_bad_rows_are_named_and_nothing_is_written(spark, tmp_path, problem, error, message):
    cfg = config(tmp_path)
    write_input(spark, bad_frame(spark, problem), cfg.input.path)
    with pytest.raises(error, match=message):
        pipeline.run(spark, cfg)
    assert not DeltaTable.isDeltaTable(spark, cfg.output.path)


def test_bad_schema_and_empty_input_are_named(spark, tmp_path):
    keys, x = catalog(20)
    cases = [
        (frame(spark, keys, x).withColumnRenamed("embedding", "vec"), r"no column 'embedding'; its columns are \['item_id', 'vec'\]"),
        (frame(spark, keys, x).withColumn("item_id", F.lit(1.5)), r"key column 'item_id' is double"),
        (frame(spark, keys, x).withColumn("embedding", F.lit("x")), r"'embedding' is string; expected array<float>"),
        (frame(spark, keys, x).limit(0), r"input is empty: no rows to assign IDs to"),
        (frame(spark, keys, x).withColumn("embedding", F.lit(None).cast("array<float>")), r"no rows with an embedding"),
    ]
    for i, (df, message) in enumerate(cases):
        cfg = config(tmp_path / str(i))
        write_input(spark, df, cfg.input.path)
        with pytest.raises(InvalidInputError, match=message):
            pipeline.run(spark, cfg)
        assert not DeltaTable.isDeltaTable(spark, cfg.output.path)


def test_reject_mode_skips_bad_rows_into_a_reject_table(spark, tmp_path):
    cfg = config(tmp_path, input={"on_invalid": "reject", "reject_path": str(tmp_path / "rejects")})
    df = bad_frame(spark, "nan").union(bad_frame(spark, "null key").where(F.col("item_id").isNull()))
    write_input(spark, df, cfg.input.path)
    report = pipeline.run(spark, cfg)
    rejects = spark.read.format("delta").load(str(tmp_path / "rejects"))
    assert sorted(r.reject_reason for r in rejects.collect()) == ["NaN or inf", "null key"]
    assert report.n_rejected == 2 and report.n_inserted == 49


def test_vectors_doubles_and_long_keys_are_accepted(spark, tmp_path):
    keys, x = catalog(200)
    rows = [(i, Vectors.dense(row.astype(float))) for i, row in enumerate(x)]
    cfg = config(tmp_path)
    write_input(spark, spark.createDataFrame(rows, ["item_id", "embedding"]), cfg.input.path)
    report = pipeline.run(spark, cfg)
    table = spark.read.format("delta").load(cfg.output.path)
    assert report.n_inserted == 200 and dict(table.dtypes)["item_id"] == "bigint"
    model = RQKMeans.load(cfg.model.path)
    got = {r.item_id: r.codes for r in table.collect()}
    assert np.array_equal(np.array([got[i] for i in range(200)]), relocate_codes(model, x, keys=list(range(200))).codes)


def test_cli_runs_the_job_and_reports_errors(spark, tmp_path, capsys):
    from semid_spark.cli import main

    keys, x = catalog(300)
    write_input(spark, frame(spark, keys, x), str(tmp_path / "in"))
    conf = tmp_path / "job.yaml"
    conf.write_text(f"input: {{path: {tmp_path}/in}}\nmodel: {{path: {tmp_path}/model, n_clusters: 8, sample_size: 300}}\n"
                    f"output: {{path: {tmp_path}/out}}\n")
    assert main(["fit", "--config", str(conf)]) == 0
    assert main(["assign", "--config", str(conf), "--set", "uniqueness.hot_code_rows=20"]) == 0
    assert '"n_inserted": 300' in capsys.readouterr().out
    saved = (tmp_path / "model" / "metadata.json").read_bytes()
    # a fit over the model the table is bound to would leave the table without its model: refused, naming refit
    for verb, extra in (("run", ["--set", "model.seed=5", "--set", "model.refit=true"]), ("fit", [])):
        assert main([verb, "--config", str(conf), *extra]) == 2
        err = capsys.readouterr().err
        assert f"semid {verb}: ConfigError: model.path='{tmp_path}/model' holds model" in err, err
        assert "which table" in err and "`semid refit --config …`" in err
    assert (tmp_path / "model" / "metadata.json").read_bytes() == saved
    other = tmp_path / "job-other-model.yaml"  # a model at a new path is another matter: the table refuses it
    other.write_text(conf.read_text().replace(f"{tmp_path}/model", f"{tmp_path}/model2"))
    assert main(["run", "--config", str(other), "--set", "model.seed=5"]) == 3  # the table does not match
    assert "ModelMismatchError" in capsys.readouterr().err


@pytest.mark.torch
def test_rq_vae_job_from_a_dataframe(spark, tmp_path):
    keys, x = catalog(400)
    cfg = config(tmp_path, model={"kind": "rq_vae", "n_levels": 2, "sample_size": 400,
                                  "params": {"epochs": 3, "layers": [16], "e_dim": 8, "batch_size": 128}})
    report = pipeline.run(spark, cfg, items=frame(spark, keys, x).repartition(3))
    model = RQVAE.load(cfg.model.path)
    got = {r.item_id: r.codes for r in spark.read.format("delta").load(cfg.output.path).collect()}
    expected = relocate_codes(model, x, keys=keys)  # the default strategy, with the RQ-VAE's latent residuals
    assert report.n_inserted == 400 and np.array_equal(np.array([got[k] for k in keys]), expected.codes)
    assert report.moved_share == expected.moved_share > 0


def test_a_run_failing_on_executors_leaves_the_table_as_it_was(spark, tmp_path):
    keys, x = catalog(500)
    cfg = config(tmp_path)
    write_input(spark, frame(spark, keys[:400], x[:400]), cfg.input.path)
    pipeline.run(spark, cfg)
    version = DeltaTable.forPath(spark, cfg.output.path).history(1).first()["version"]
    write_input(spark, frame(spark, keys[400:], x[400:]), cfg.input.path, mode="append")
    broken = config(tmp_path, encode={"device": "cuda"})  # no GPU on the executors: the encode tasks fail
    with pytest.raises(Exception, match="cuda"):
        pipeline.run(spark, broken)
    assert DeltaTable.forPath(spark, cfg.output.path).history(1).first()["version"] == version
    assert spark.read.format("delta").load(cfg.output.path).count() == 400


def test_a_bad_row_outside_the_training_sample_is_caught_while_encoding(spark, tmp_path):
    """The job checks embeddings where it reads them: the sample, then every row as it is encoded."""
    keys, x = catalog(1200)
    hashes = frame(spark, keys, x).select("item_id", F.pmod(F.xxhash64("item_id", F.lit(0)), F.lit(1 << 30)).alias("h"))
    never_sampled = hashes.orderBy(F.desc("h")).first()["item_id"]  # the largest hash: outside a 10% sample
    x = x.copy()
    x[keys.index(never_sampled)][3] = np.nan
    cfg = config(tmp_path, model={"sample_size": 100})
    write_input(spark, frame(spark, keys, x), cfg.input.path)
    with pytest.raises(InvalidInputError, match=r"bad rows among 1200: 1 rows with NaN, inf or null values in 'embedding'"):
        pipeline.run(spark, cfg)
    assert not DeltaTable.isDeltaTable(spark, cfg.output.path)
    assert not (tmp_path / "model").exists()  # the model of a failed run is not saved either


def test_valid_input_is_scanned_once_for_its_embeddings(spark, tmp_path, monkeypatch):
    """No separate full check of the embeddings when nothing is wrong: encoding checks them."""
    def full_check(*args, **kwargs):
        raise AssertionError("check_input ran on valid input")

    from semid_spark.spark import assign, intake

    for module in (intake, assign):
        monkeypatch.setattr(module, "check_input", full_check)
    keys, x = catalog(500)
    cfg = config(tmp_path)
    write_input(spark, frame(spark, keys, x), cfg.input.path)
    assert pipeline.run(spark, cfg).n_inserted == 500


def test_auto_shape_is_the_advisors_choice_logged_and_kept_in_the_model(spark, tmp_path, caplog):
    from semid_spark.algorithms import io as model_io

    keys, x = catalog(1500)
    cfg = config(tmp_path, model={"n_clusters": "auto", "n_levels": 3, "target_rows": 50_000_000, "sample_size": 1500})
    write_input(spark, frame(spark, keys[:1200], x[:1200]), cfg.input.path)
    with caplog.at_level("INFO", logger="semid_spark"):
        report = pipeline.run(spark, cfg)
    # 3x256 has 16.7M full codes for 50M items: not fitted; 3x4096 and up need more sample rows than 1,500
    meta = model_io.read_metadata(cfg.model.path)
    assert meta["n_clusters"] == [1024] * 3 and meta["shape_advice"]["chosen"] == "3x1024"
    assert meta["shape_advice"]["target_rows"] == 50_000_000 and meta["shape_advice"]["tried"]["3x256"] is None
    assert "model.n_clusters=auto: 3x1024" in caplog.text and report.n_inserted == 1200
    props = {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{cfg.output.path}`").collect()}
    assert json.loads(props["semid.shape_advice"]) == meta["shape_advice"]  # the table says how its shape came
    assert "advise" in report.seconds
    caplog.clear()
    write_input(spark, frame(spark, keys[1200:], x[1200:]), cfg.input.path, mode="append")
    with caplog.at_level("INFO", logger="semid_spark"):
        again = pipeline.run(spark, cfg)  # the saved model's shape is the chosen one: no new advice, no refit
    assert again.n_inserted == 300 and "model.n_clusters=auto" not in caplog.text
    assert ids(spark, cfg).select("semantic_id").distinct().count() == 1500
    with pytest.raises(ConfigError, match="holds a RQKMeans model of 1024x1024x1024 codes.*2 levels"):
        pipeline.run(spark, config(tmp_path, model={"n_clusters": "auto", "n_levels": 2, "sample_size": 1500}))


def test_auto_shape_without_a_sample_large_enough_is_named(spark, tmp_path):
    keys, x = catalog(300)
    cfg = config(tmp_path, model={"n_clusters": "auto", "sample_size": 200})
    write_input(spark, frame(spark, keys, x), cfg.input.path)
    with pytest.raises(ConfigError, match="no shape could be fitted for 300 items .*a sample of 200 rows cannot fit"):
        pipeline.run(spark, cfg)
    assert not os.path.exists(cfg.model.path) and not os.path.exists(cfg.output.path)
