"""semid refit on a grown, drifted catalog: churn report, gate, new_table and keep_ids publishing."""

import json
import os
import shutil
import signal

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T

from semid_spark.algorithms import load_encoder
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.delta.schema import CHURN_SCHEMA
from semid_spark.delta.table import (
    HISTORY_PROPERTY, MODEL_PATH_PROPERTY, PARENT_SHA_PROPERTY, PARENT_TABLE_PROPERTY, PENDING_SHA_PROPERTY,
    SHA_PROPERTY, SUCCESSOR_PATH_PROPERTY, SUCCESSOR_SHA_PROPERTY, SUCCESSOR_TABLE_PROPERTY, TableRef, bound_model,
)
from semid_spark.exceptions import (
    ConfigError, InvalidInputError, ModelFormatError, ModelMismatchError, QualityGateError,
)
from semid_spark.spark import pipeline
from semid_spark.spark.publish import UNPUBLISHED_FILE
from semid_spark.spark.models import load_encoder as load_model
from semid_spark.spark.refit import churn_table, compare_models, refit
from semid_spark.spark.sample import hash_filtered
from semid_spark.synthetic import drifted_items
from tests.spark.conftest import DIM, catalog, config, frame, write_input

N_CURRENT, N_GROWN = 1200, 360  # +30%, drawn with shifted topic weights
WRITTEN = ["item_id", "semantic_id", "codes", "counter", "relocated", "model_sha256", "run_id"]


@pytest.fixture(scope="module")
def grown_catalog(spark, tmp_path_factory):
    """A table written by the current model, then a catalog 30% larger whose new items drifted."""
    tmp = tmp_path_factory.mktemp("refit")
    keys, x = catalog(N_CURRENT)
    write_input(spark, frame(spark, keys, x), f"{tmp}/in")
    pipeline.run(spark, config(tmp))
    new_keys = [f"new{i:06d}" for i in range(N_GROWN)]
    write_input(spark, frame(spark, new_keys, drifted_items(N_GROWN, DIM, 12, seed=0, drift=1.0)), f"{tmp}/in",
                mode="append")
    return tmp


@pytest.fixture
def state(grown_catalog, tmp_path):
    """A private copy of the grown catalog, its table and its model (each test may change them)."""
    for name in ("in", "out", "model"):
        shutil.copytree(grown_catalog / name, tmp_path / name)
    return tmp_path


def table(spark, path):
    return spark.read.format("delta").load(str(path))


def churn_rows(spark, cfg):
    return churn_table(cfg).read(spark).collect()


def test_new_table_leaves_the_old_ids_and_records_lineage_and_churn(spark, state):
    cfg = config(state)
    before = table(spark, state / "out").select(*WRITTEN)
    before_rows = before.collect()
    old_sha = load_encoder(cfg.model.path).sha256

    report = refit(spark, cfg, out_dir=str(state / "report"))

    c = report.comparison
    # model.sample_size=1000 of the 1560 items, those in the table (drawn by key hash) align and report
    assert report.published and report.warm_start and report.n_sampled == 1000 and 600 < c.n_items < 1000
    # against a plain (cold) refit, what a re-run of `semid fit` gives: the goals
    assert c.churn_aligned[-1] <= 0.5 * c.churn_reference[-1] and c.churn_aligned[0] <= c.churn_reference[0] / 3
    assert c.churn_aligned[0] <= c.churn_unaligned[0]  # the assignment keeps the most level-1 codes
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(c.churn_aligned, c.churn_aligned[1:]))
    saved = json.loads((state / "report" / "churn.json").read_text())
    assert not (state / f"model_v{c.new_model_sha256[:12]}" / UNPUBLISHED_FILE).exists()
    assert saved["churn_aligned"] == c.churn_aligned and saved["churn_unaligned"] == c.churn_unaligned
    assert "| aligned |" in (state / "report" / "churn.md").read_text()

    new_sha = c.new_model_sha256
    assert load_encoder(report.new_model_path).sha256 == new_sha
    assert report.new_model_path == f"{cfg.model.path}_v{new_sha[:12]}"
    new_ids = table(spark, f"{state}/out_v{new_sha[:12]}")
    assert new_ids.count() == N_CURRENT + N_GROWN == new_ids.select("semantic_id").distinct().count()
    assert {r[0] for r in new_ids.select("model_sha256").distinct().collect()} == {new_sha}
    assert_df_equality(table(spark, state / "out").select(*WRITTEN), spark.createDataFrame(before_rows, before.schema),
                       ignore_row_order=True)

    new_props = TableRef(f"{state}/out_v{new_sha[:12]}").properties(spark)
    old_props = TableRef(str(state / "out")).properties(spark)
    assert new_props[SHA_PROPERTY] == new_sha and new_props[PARENT_SHA_PROPERTY] == old_sha
    assert new_props[PARENT_TABLE_PROPERTY] == str(state / "out") and new_props[MODEL_PATH_PROPERTY] == report.new_model_path
    assert old_props[SHA_PROPERTY] == old_sha and old_props[SUCCESSOR_SHA_PROPERTY] == new_sha
    assert old_props[SUCCESSOR_TABLE_PROPERTY] == report.ids_table and old_props[SUCCESSOR_PATH_PROPERTY] == report.new_model_path

    # an item whose code did not change keeps its ID string; the string churn is the table's code churn at most
    pairs = table(spark, state / "out").select("item_id", F.col("semantic_id").alias("old_id"),
                                               F.col("codes").alias("old_codes")).join(new_ids, "item_id")
    same_code = pairs.where((F.col("codes") == F.col("old_codes")) & ~F.col("relocated"))
    assert same_code.count() > 0 and same_code.where(F.col("semantic_id") != F.col("old_id")).count() == 0
    n_pairs = pairs.count()
    code_churn = pairs.where(F.col("codes") != F.col("old_codes")).count() / n_pairs
    string_churn = pairs.where(F.col("semantic_id") != F.col("old_id")).count() / n_pairs
    assert (c.id_churn, c.id_churn_items) == (pytest.approx(string_churn), N_CURRENT)
    assert string_churn <= code_churn + 0.05
    assert saved["id_churn"] == pytest.approx(string_churn) and "ID strings changed" in (state / "report" / "churn.md").read_text()

    [row] = churn_rows(spark, cfg)
    assert (row["old_model_sha256"], row["new_model_sha256"], row["published"], row["ids_table"]) == \
        (old_sha, new_sha, True, report.ids_table)
    assert row["id_churn"] == pytest.approx(string_churn)
    assert row["churn_aligned"] == c.churn_aligned and row["churn_unaligned"] == c.churn_unaligned
    assert row["churn_cold_refit"] == c.churn_reference

    again = refit(spark, cfg, out_dir=str(state / "report"))  # same seed and catalog: the same aligned model
    assert again.comparison.new_model_sha256 == new_sha and again.run["n_inserted"] == 0
    assert len(churn_rows(spark, cfg)) == 2

    compared, paths = compare_models(spark, cfg, report.new_model_path, out_dir=str(state / "compare"), sample_size=500)
    assert (compared.old_model_sha256, compared.n_items) == (old_sha, 500)
    assert json.loads(open(paths["json"]).read())["churn_unaligned"] == compared.churn_unaligned


def test_keep_ids_never_changes_or_duplicates_a_written_id(spark, state):
    cfg = config(state, output={"on_refit": "keep_ids"})
    before = table(spark, state / "out").select(*WRITTEN)
    before_rows = before.collect()
    old_sha = load_encoder(cfg.model.path).sha256

    report = refit(spark, cfg, out_dir=str(state / "report"))

    new_sha = report.comparison.new_model_sha256
    after = table(spark, state / "out")
    assert after.count() == N_CURRENT + N_GROWN == after.select("semantic_id").distinct().count()
    old_keys = after.where(F.col("item_id").startswith("sku"))
    assert_df_equality(old_keys.select(*WRITTEN), spark.createDataFrame(before_rows, before.schema),
                       ignore_row_order=True)
    assert {r[0] for r in after.where(F.col("item_id").startswith("new")).select("model_sha256").distinct().collect()} \
        == {new_sha}
    props = TableRef(str(state / "out")).properties(spark)
    assert props[SHA_PROPERTY] == new_sha and props[PARENT_SHA_PROPERTY] == old_sha
    assert props[HISTORY_PROPERTY] == f"{old_sha},{new_sha}" and props[MODEL_PATH_PROPERTY] == report.new_model_path
    assert report.run["n_inserted"] == N_GROWN and report.ids_table == str(state / "out")
    assert report.comparison.id_churn == 0.0 and not props[PENDING_SHA_PROPERTY]
    assert not os.path.exists(os.path.join(report.new_model_path, UNPUBLISHED_FILE))

    with pytest.raises(ModelMismatchError, match=r"refitted from this run's model .* set model.path to that"):
        pipeline.run(spark, cfg)  # a scheduled run still pointing at the old model


def test_the_churn_gate_refuses_to_publish(spark, state):
    cfg = config(state, quality={"max_churn": 0.0})
    # a churn table written before the ID-string churn was recorded: the column is added
    older = T.StructType([f for f in CHURN_SCHEMA.fields if f.name != "id_churn"])
    spark.createDataFrame([], older).write.format("delta").save(str(state / "out_churn"))
    old_props = TableRef(str(state / "out")).properties(spark)
    n_before = table(spark, state / "out").count()
    with pytest.raises(QualityGateError, match=r"would change the full code of 0\.\d+ of the table's \d+ sampled "
                                               r"items \(aligned\), over quality\.max_churn=0\.0; nothing was published"):
        refit(spark, cfg, out_dir=str(state / "report"))
    assert sorted(os.listdir(state)) == ["in", "model", "out", "out_churn", "report"]  # no new model, no new table
    assert TableRef(str(state / "out")).properties(spark) == old_props
    assert table(spark, state / "out").count() == n_before
    [row] = churn_rows(spark, cfg)
    assert row["published"] is False and row["max_churn"] == 0.0 and row["ids_table"] is None and row["id_churn"] is None


def test_refit_refuses_what_it_cannot_do(spark, state, tmp_path_factory):
    with pytest.raises(ConfigError, match=r"keep_ids keeps the table's IDs of \[8, 8, 8\] codes per level; "
                                          r"model.n_levels/n_clusters ask for \[16, 16, 16\]"):
        refit(spark, config(state, output={"on_refit": "keep_ids"}, model={"n_clusters": 16}))
    with pytest.raises(InvalidInputError, match=r"no ID table at .*elsewhere.* to refit"):
        refit(spark, config(state, output={"path": str(state / "elsewhere")}))
    bad = catalog(1, seed=5)[1].copy()
    bad[0, 2] = float("nan")
    write_input(spark, frame(spark, ["bad000001"], bad), f"{state}/in", mode="append")
    with pytest.raises(InvalidInputError, match=r"1 rows with NaN, inf or null values in 'embedding'"):
        refit(spark, config(state, model={"sample_size": 5000}))  # every row sampled, the bad one too
    assert sorted(os.listdir(state)) == ["in", "model", "out"]
    other = tmp_path_factory.mktemp("other") / "model"
    RQKMeans(n_levels=3, n_clusters=8, random_state=1).fit(catalog(300, seed=3)[1]).save(str(other))
    with pytest.raises(ModelMismatchError, match=r"point model.path at the table's model"):
        refit(spark, config(state, model={"path": str(other)}))


def old_state(spark, path):
    """What a failed refit must leave: the table's properties, its rows and the folder's entries."""
    return (TableRef(str(path / "out")).properties(spark), table(spark, path / "out").select(*WRITTEN).collect(),
            sorted(os.listdir(path)))


def assert_old_state(spark, path, before, *, folders=None):
    props, rows, entries = before
    now = TableRef(str(path / "out")).properties(spark)
    assert bound_model(spark, TableRef(str(path / "out")), now) == props[SHA_PROPERTY]
    assert {k: v for k, v in now.items() if not k.startswith("semid.pending")} == \
        {k: v for k, v in props.items() if not k.startswith("semid.pending")}
    assert_df_equality(table(spark, path / "out").select(*WRITTEN), spark.createDataFrame(rows, table(spark, path / "out")
                       .select(*WRITTEN).schema), ignore_row_order=True)
    assert sorted(os.listdir(path)) == (entries if folders is None else folders)


def unsampled_key(spark, cfg, n_rows):
    """A key that the refit's training sample of *n_rows* rows does not draw."""
    for i in range(1000):
        key = f"bad{i:06d}"
        if not hash_filtered(spark.createDataFrame([(key,)], "item_id string"), "item_id", n_rows=n_rows,
                             sample_size=cfg.model.sample_size, seed=cfg.model.seed).count():
            return key
    raise AssertionError("every key sampled")


@pytest.mark.parametrize("on_refit", ["new_table", "keep_ids"])
def test_a_refit_that_fails_before_publishing_leaves_the_old_state(spark, state, on_refit):
    cfg = config(state, output={"on_refit": on_refit})
    before = old_state(spark, state)
    # a counter gate that refuses: checked over every row the version would publish, before anything is saved
    with pytest.raises(QualityGateError, match=r"would get a counter .* nothing was written, and a model fitted"):
        refit(spark, config(state, output={"on_refit": on_refit}, quality={"max_counter_share": 0.0}),
              out_dir=str(state / "report"))
    assert_old_state(spark, state, before)

    # a NaN in a new item outside the training sample: found by the encoding of every row to publish
    bad = catalog(1, seed=5)[1].copy()
    bad[0, 2] = float("nan")
    key = unsampled_key(spark, cfg, N_CURRENT + N_GROWN + 1)
    write_input(spark, frame(spark, [key], bad), f"{state}/in", mode="append")
    with pytest.raises(InvalidInputError, match=rf"1 rows with NaN, inf or null values in 'embedding'.*{key}"):
        refit(spark, cfg, out_dir=str(state / "report"))
    assert_old_state(spark, state, before)


@pytest.mark.heavy
@pytest.mark.parametrize("on_refit, at", [
    ("new_table", None), ("keep_ids", None),  # kill -9 while the publishing MERGE writes
    ("new_table", "semid_spark.spark.refit:mark_published"),  # after the old table named its successor
    ("keep_ids", "semid_spark.spark.refit:rebind_table"),  # after the MERGE switched the table, before it is recorded
])
def test_a_refit_killed_while_publishing_leaves_one_state_and_a_rerun_publishes(spark, state, tmp_path_factory,
                                                                              on_refit, at):
    from tests.spark.test_production import job_file, start_job, wait_for

    import yaml

    cfg = config(state, output={"on_refit": on_refit})
    before = old_state(spark, state)
    jobs = tmp_path_factory.mktemp("refit-kill")
    job = job_file(jobs, cfg)
    raw = yaml.safe_load(job.read_text())
    raw["output"]["on_refit"] = on_refit
    job.write_text(yaml.safe_dump(raw))
    signals = jobs / "signals"
    signals.mkdir()
    proc = start_job(jobs, job, "stall-at" if at else "stall-merge", signals, "--verb", "refit",
                     *(["--at", at] if at else []))
    wait_for(signals / "stalled", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)

    [new_model] = [state / name for name in os.listdir(state) if name.startswith("model_v")]
    note = json.loads((new_model / UNPUBLISHED_FILE).read_text())
    new_sha = note["model_sha256"]
    with pytest.raises(ModelFormatError, match=r"saved and did not publish .* Run that `semid refit` again"):
        load_model(str(new_model))
    out = TableRef(str(state / "out"))
    if at is None:  # before the commit that publishes: the old state, whatever else the kill left
        assert_old_state(spark, state, before, folders=sorted(os.listdir(state)))
        assert not (state / "out_churn").exists() and not (state / "report").exists()
    elif on_refit == "keep_ids":  # the MERGE was the switch: the table holds the new version's rows
        props = out.properties(spark)
        assert props[SHA_PROPERTY] == before[0][SHA_PROPERTY] and bound_model(spark, out, props) == new_sha
        assert table(spark, state / "out").count() == N_CURRENT + N_GROWN
        with pytest.raises(ModelMismatchError, match=r"refitted from this run's model .* set model.path to that"):
            pipeline.run(spark, cfg)
    else:
        assert out.properties(spark)[SUCCESSOR_SHA_PROPERTY] == new_sha

    report = refit(spark, cfg, out_dir=str(state / "report"))  # the same refit again: published, once
    assert report.published and report.comparison.new_model_sha256 == new_sha
    assert not (new_model / UNPUBLISHED_FILE).exists() and load_model(str(new_model)).sha256 == new_sha
    ids = table(spark, report.ids_table)
    assert ids.count() == N_CURRENT + N_GROWN == ids.select("semantic_id").distinct().count()
    props = out.properties(spark)
    if on_refit == "keep_ids":
        assert props[SHA_PROPERTY] == new_sha and not props[PENDING_SHA_PROPERTY]
        assert props[HISTORY_PROPERTY] == f"{before[0][SHA_PROPERTY]},{new_sha}"
    else:
        assert props[SUCCESSOR_SHA_PROPERTY] == new_sha and props[SHA_PROPERTY] == before[0][SHA_PROPERTY]


@pytest.mark.heavy
@pytest.mark.torch
def test_an_rq_vae_table_refits_warm_started_in_both_modes(spark, tmp_path):
    vae = {"kind": "rq_vae", "sample_size": 600, "params": {"epochs": 4, "layers": [16], "e_dim": 8, "batch_size": 128}}
    base = tmp_path / "base"
    keys, x = catalog(600)
    write_input(spark, frame(spark, keys, x), f"{base}/in")
    pipeline.run(spark, config(base, model=vae))
    write_input(spark, frame(spark, [f"new{i:06d}" for i in range(180)], drifted_items(180, DIM, 12, seed=0, drift=1.0)),
                f"{base}/in", mode="append")
    before = table(spark, base / "out").select(*WRITTEN).collect()
    for on_refit in ("new_table", "keep_ids"):
        shutil.copytree(base, tmp_path / on_refit)
        cfg = config(tmp_path / on_refit, model=vae, output={"on_refit": on_refit})
        report = refit(spark, cfg, out_dir=str(tmp_path / on_refit / "report"))
        c = report.comparison
        assert report.published and report.warm_start and c.churn_reference is not None
        assert c.churn_aligned[0] <= c.churn_unaligned[0] and c.churn_aligned[-1] <= c.churn_reference[-1]
        ids = table(spark, report.ids_table)
        assert ids.count() == 780 == ids.select("semantic_id").distinct().count()
        if on_refit == "keep_ids":
            assert c.id_churn == 0.0
            assert_df_equality(ids.where(F.col("item_id").startswith("sku")).select(*WRITTEN),
                               spark.createDataFrame(before, ids.select(*WRITTEN).schema), ignore_row_order=True)
        else:
            assert c.id_churn_items == 600 and c.id_churn <= c.churn_aligned[-1] + 0.1  # a sample's code churn
