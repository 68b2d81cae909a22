"""quality.max_counter_share and quality.min_utilisation: a run that falls short writes nothing."""

import os

import pytest
from pyspark.sql import functions as F

from semid_spark.config import JobConfig
from semid_spark.exceptions import ConfigError, QualityGateError
from semid_spark.spark import pipeline
from tests.spark.conftest import catalog, config, frame, write_input


def counter_share_in(spark, cfg, run_id):
    """The share of a run's rows whose written ID has a counter: the figure the gate predicts."""
    rows = spark.read.format("delta").load(cfg.output.path).where(F.col("run_id") == run_id)
    return rows.where(F.col("counter") > 0).count() / rows.count()


def test_a_run_over_the_counter_threshold_writes_nothing_and_saves_no_model(spark, tmp_path):
    keys, x = catalog(600)
    write_input(spark, frame(spark, keys, x), f"{tmp_path}/in")
    strict = config(tmp_path, quality={"max_counter_share": 0.0})  # 8^3 codes for 600 items: some share one
    with pytest.raises(QualityGateError, match=r"of this run's 600 new items \(0\.\d+\) would get a counter .*"
                                               r"over quality\.max_counter_share=0\.0; nothing was written, and a "
                                               r"model fitted by this run was not saved"):
        pipeline.run(spark, strict)
    assert not os.path.exists(f"{tmp_path}/out/_delta_log") and not os.path.exists(f"{tmp_path}/model/metadata.json")

    report = pipeline.run(spark, config(tmp_path, quality={"max_counter_share": 1.0, "min_utilisation": 0.5}))
    assert 0 < report.counter_share == pytest.approx(counter_share_in(spark, config(tmp_path), report.run_id))
    assert len(report.utilisation) == 3 and min(report.utilisation) >= 0.5


def test_the_counter_share_of_a_later_run_counts_codes_the_table_already_holds(spark, tmp_path):
    keys, x = catalog(900)
    write_input(spark, frame(spark, keys[:600], x[:600]), f"{tmp_path}/in")
    pipeline.run(spark, config(tmp_path))
    write_input(spark, frame(spark, keys[600:], x[600:]), f"{tmp_path}/in", mode="append")
    cfg = config(tmp_path, quality={"max_counter_share": 1.0})
    report = pipeline.run(spark, cfg)
    assert report.n_inserted == 300
    # most of the 300 land on codes the first 600 items hold: their counters continue from those
    assert report.counter_share == pytest.approx(counter_share_in(spark, cfg, report.run_id))
    assert report.counter_share > report.collision_share


def test_a_run_using_too_few_codes_of_a_level_is_refused_naming_the_level(spark, tmp_path):
    keys, x = catalog(600)
    write_input(spark, frame(spark, keys, x), f"{tmp_path}/in")
    pipeline.run(spark, config(tmp_path))
    write_input(spark, frame(spark, keys[:3] + ["extra-1"], x[[0, 1, 2, 2]]).where(F.col("item_id") == "extra-1"),
                f"{tmp_path}/in", mode="append")
    before = spark.read.format("delta").load(f"{tmp_path}/out").count()
    with pytest.raises(QualityGateError, match=r"level \d uses 1 of its 8 codes \(0\.125\) among this run's 1 new "
                                               r"items, under quality\.min_utilisation=0\.5"):
        pipeline.run(spark, config(tmp_path, quality={"min_utilisation": 0.5}))
    assert spark.read.format("delta").load(f"{tmp_path}/out").count() == before


def test_thresholds_are_shares():
    for bad in ({"max_counter_share": 1.5}, {"min_utilisation": -0.1}):
        with pytest.raises(ConfigError, match=r"quality\.\w+=.*expected a share between 0 and 1"):
            JobConfig.from_dict({"input": {"path": "x"}, "quality": bad})
    assert not JobConfig.from_dict({"input": {"path": "x"}}).quality.active
