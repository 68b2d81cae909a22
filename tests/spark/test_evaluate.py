"""`semid evaluate`: exact Spark counts equal the numpy reference, hand-checked figures, the files."""

import importlib.util
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.cli import main as cli_main
from semid_spark.exceptions import InvalidInputError, ModelMismatchError
from semid_spark.spark import pipeline
from semid_spark.spark.evaluate import EvaluateOptions, code_counts, evaluate_job
from semid_spark.utils import metrics
from semid_spark.utils.quality import CodeCounts, build_report, level_figures, prefix_agreement, random_pair_agreement
from semid_spark.spark.compat import from_arrow
from tests.spark.conftest import catalog, config, write_input


def codes_frame(spark, codes):
    return from_arrow(spark, pa.table({"codes": pa.array(codes.tolist(), type=pa.list_(pa.int32()))}))


@settings(max_examples=8, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 60), st.integers(1, 4)), elements=st.integers(0, 3)))
def test_spark_counts_equal_the_numpy_reference(spark, codes):
    exact = code_counts(codes_frame(spark, codes), codes.shape[1])
    reference = CodeCounts.from_codes(codes)
    assert exact.n_items == reference.n_items
    assert exact.depths == reference.depths
    assert exact.bucket_sizes == reference.bucket_sizes
    assert exact.largest_bucket == reference.largest_bucket
    assert [sorted(c) for c in exact.level_counts] == [sorted(c) for c in reference.level_counts]


def test_figures_agree_with_the_metrics_module():
    codes = np.random.default_rng(0).integers(0, 5, size=(300, 3))
    report = build_report(CodeCounts.from_codes(codes), [8, 8, 8])
    assert report.collision_rate_per_level == pytest.approx(metrics.collision_rate_per_level(codes), abs=1e-12)
    assert [lv.utilization for lv in report.levels] == pytest.approx(metrics.code_utilization_per_level(codes, 8))
    assert [lv.entropy for lv in report.levels] == pytest.approx(metrics.code_entropy_per_level(codes), abs=1e-12)


def test_hand_computed_counts_agreement_and_baseline():
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 2]])
    counts = CodeCounts.from_codes(codes)
    assert counts.bucket_sizes == {1: 2, 2: 1} and counts.largest_bucket == "0-0"
    # depth 1: buckets of 3 and 1 -> 3*2 ordered pairs of 4*3; depth 2: one bucket of 2 -> 2 of 12
    assert random_pair_agreement(counts) == pytest.approx([6 / 12, 2 / 12])
    levels = level_figures(counts, [4, 4])
    assert [lv.codes_used for lv in levels] == [2, 3]
    assert levels[0].perplexity == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))
    # two tight pairs far apart; each row's nearest neighbour is its pair
    x = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    pair_codes = np.array([[0, 0], [0, 1], [1, 5], [1, 5]])  # pair 1 shares level 1 only, pair 2 everything
    assert prefix_agreement(x, pair_codes, k=1, n_queries=4) == pytest.approx([1.0, 0.5])


@pytest.fixture(scope="module")
def written(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    keys, x = catalog(1500)
    titles = [f"title of {k}" for k in keys]
    table = pa.table({"item_id": keys, "title": titles,
                      "embedding": pa.array(list(x.astype(np.float32)), type=pa.list_(pa.float32()))})
    write_input(spark, from_arrow(spark, table), f"{tmp}/in")
    cfg = config(tmp)
    pipeline.run(spark, cfg)
    return tmp, cfg, x


def test_report_of_a_written_table(spark, written, tmp_path):
    tmp, cfg, x = written
    report, paths = evaluate_job(spark, cfg, EvaluateOptions(out_dir=str(tmp_path), sample_size=600, n_queries=200))
    codes = np.array([r.codes for r in spark.read.format("delta").load(cfg.output.path).collect()])
    assert report.n_items == 1500
    assert report.collision_rate_per_level == pytest.approx(metrics.collision_rate_per_level(codes), abs=1e-12)
    assert report.sample["n_samples"] == 600 and len(report.prefix_agreement) == 3
    assert report.prefix_agreement[0] > 3 * report.random_pair_agreement[0]  # similar items share level 1
    assert report.prefix_agreement == sorted(report.prefix_agreement, reverse=True)
    saved = json.loads(open(paths["json"]).read())
    assert saved["n_items"] == 1500 and saved["model_sha256"] == report.model_sha256
    drawn = importlib.util.find_spec("matplotlib") is not None  # the report extra (not in make test-matrix's)
    for kind in ("markdown", *(("bucket_sizes", "code_usage", "agreement") if drawn else ())):
        assert open(paths[kind], "rb").read(4)  # written, not empty
    if not drawn:
        assert "Plots not drawn: matplotlib is not installed" in open(paths["markdown"]).read()
    atlas = pq.read_table(paths["atlas"])
    assert {"item_id", "semantic_id", "level_1", "level_3", "prefix_2", "x", "y", "title"} <= set(atlas.column_names)
    assert atlas.num_rows == 600
    assert atlas.column("title").to_pylist()[0] == f"title of {atlas.column('item_id').to_pylist()[0]}"
    # the same sample and figures on a second run: the report is deterministic
    again, _ = evaluate_job(spark, cfg, EvaluateOptions(out_dir=str(tmp_path / "again"), sample_size=600, n_queries=200))
    assert again.to_json() == report.to_json()


def test_catalog_source_encodes_with_the_model(spark, written, tmp_path):
    tmp, cfg, x = written
    report, _ = evaluate_job(spark, cfg, EvaluateOptions(out_dir=str(tmp_path), sample_size=300, source="catalog"))
    codes = RQKMeans.load(cfg.model.path).encode(x)
    assert report.collision_rate == pytest.approx(metrics.evaluate(x, codes, k=5)["collision_rate"], abs=1e-12)


def test_a_table_of_another_model_or_no_table_is_refused(spark, written, tmp_path):
    tmp, cfg, x = written
    other = config(tmp_path, model={"path": str(tmp_path / "other")})
    RQKMeans(3, 8, random_state=7).fit(x[:500]).save(other.model.path)
    other = config(tmp, model={"path": str(tmp_path / "other")})
    with pytest.raises(ModelMismatchError, match="point model.path at the table's model"):
        evaluate_job(spark, other, EvaluateOptions(out_dir=str(tmp_path / "r")))
    missing = config(tmp, output={"path": str(tmp_path / "nothing")})
    with pytest.raises(InvalidInputError, match="semid run"):
        evaluate_job(spark, missing, EvaluateOptions(out_dir=str(tmp_path / "r"), source="table"))


def test_cli_evaluate(spark, written, tmp_path, capsys):
    tmp, cfg, x = written
    conf = tmp_path / "job.yaml"
    conf.write_text(f"input: {{path: {tmp}/in}}\nmodel: {{path: {tmp}/model}}\noutput: {{path: {tmp}/out}}\n")
    assert cli_main(["evaluate", "--config", str(conf), "--out", str(tmp_path / "rep"), "--sample-size", "400"]) == 0
    out, err = capsys.readouterr()
    assert "1,500 items: collision rate" in err and "atlas.parquet" in err  # for a person: stderr
    assert json.loads(out)["n_items"] == 1500 and json.loads(out)["files"]["atlas"].endswith("atlas.parquet")
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# Semantic ID quality")


def test_cli_advise(spark, written, tmp_path, capsys):
    import os

    tmp, cfg, x = written
    conf = tmp_path / "job.yaml"
    conf.write_text(f"input: {{path: {tmp}/in}}\nmodel: {{path: {tmp_path}/unused, sample_size: 1000}}\n")
    args = ["advise", "--config", str(conf), "--out", str(tmp_path / "adv"), "--choices", "1x8,2x8,3x8",
            "--max-counter-share", "0.5"]
    # 3x8 has 512 full codes for 1,500 items: at least 0.66 of them need a counter, so no shape meets 0.5
    assert cli_main(args) == 5
    advice = json.loads((tmp_path / "adv" / "advice.json").read_text())
    by = {p["choice"]: p for p in advice["predictions"]}
    assert set(by) == {"1x8", "2x8", "3x8"} and all(p["target_rows"] == 1500 for p in by.values())
    assert all(p["strategy"] == "relocate" and p["counter_share"] <= p["suffix_counter_share"] for p in by.values())
    assert by["1x8"]["counter_share"] > by["3x8"]["counter_share"] >= 1 - 512 / 1500  # more codes, fewer counters
    assert advice["recommended"] is None and advice["closest"] == "3x8" and not advice["meets_goal"]
    out, err = capsys.readouterr()
    assert json.loads(out) == {"recommended": None, "closest": "3x8", "counter_share": by["3x8"]["counter_share"],
                               "max_counter_share": 0.5, "out": str(tmp_path / "adv")}
    assert "No shape tried meets the goal: 3x8 comes closest" in err and "3x8 **closest**" in err
    assert "Try --shapes 2x256,3x256" in err  # the next shapes with enough full codes
    assert cli_main(args[:-1] + ["0.95"]) == 0  # a goal a shape meets: the cheapest that does
    advice = json.loads((tmp_path / "adv" / "advice.json").read_text())
    meeting = [p for p in advice["predictions"] if p["fitted"] and p["counter_share"] <= 0.95]
    assert advice["recommended"] == min(meeting, key=lambda p: p["core_hours"])["choice"]
    out, err = capsys.readouterr()
    assert f"recommended: {advice['recommended']}" in err and json.loads(out)["recommended"] == advice["recommended"]
    assert not os.path.exists(f"{tmp_path}/unused")  # advice fits nothing it keeps
    assert cli_main(args[:5] + ["--choices", "3-8"]) == 2  # a bad choice is named, not a traceback
