"""What a cluster deployment meets first: a config shipped with spark-submit --files, and the demo's
stability check, which must see an altered ID."""

import os

from pyspark.sql import functions as F

from semid_spark.cli import config_location
from semid_spark.demo import changed_ids
from tests.spark.test_pipeline import catalog, config, frame, write_input
from semid_spark.spark import pipeline


def test_a_config_shipped_with_files_is_found_in_spark_files(spark, tmp_path, monkeypatch):
    shipped = tmp_path / "shipped" / "semid-job-test.yaml"
    shipped.parent.mkdir()
    shipped.write_text("input: {table: t}\n")
    spark.sparkContext.addFile(str(shipped))  # what --files does for the driver in cluster deploy mode
    monkeypatch.chdir(tmp_path)
    found = config_location("semid-job-test.yaml")
    assert found != "semid-job-test.yaml" and os.path.samefile(os.path.dirname(found), _spark_files_root())
    assert open(found).read() == "input: {table: t}\n"
    (tmp_path / "semid-job-test.yaml").write_text("input: {table: local}\n")  # a file in the working directory wins
    assert config_location("semid-job-test.yaml") == "semid-job-test.yaml"
    assert config_location("s3://bucket/job.yaml") == "s3://bucket/job.yaml"
    assert config_location("not-shipped.yaml") == "not-shipped.yaml"  # the reader then names it


def _spark_files_root():
    from pyspark import SparkFiles

    return SparkFiles.getRootDirectory()


def test_the_demo_stability_check_sees_an_altered_id(spark, tmp_path):
    keys, x = catalog(400)
    cfg = config(tmp_path)
    write_input(spark, frame(spark, keys[:300], x[:300]), cfg.input.path)
    pipeline.run(spark, cfg)
    version = spark.sql(f"DESCRIBE HISTORY delta.`{cfg.output.path}` LIMIT 1").first()["version"]
    write_input(spark, frame(spark, keys[300:], x[300:]), cfg.input.path, mode="append")
    pipeline.run(spark, cfg)
    assert changed_ids(spark, cfg.output.path, version) == (300, 0)  # run 2 added 100 and changed nothing
    assert changed_ids(spark, cfg.output.path, 0) == (0, 0)  # the empty create: what the demo used to compare with
    spark.sql(f"UPDATE delta.`{cfg.output.path}` SET semantic_id = 'altered' WHERE item_id = '{keys[7]}'")
    assert changed_ids(spark, cfg.output.path, version) == (300, 1)
    spark.sql(f"DELETE FROM delta.`{cfg.output.path}` WHERE item_id = '{keys[8]}'")
    assert changed_ids(spark, cfg.output.path, version) == (300, 2)
    assert spark.read.format("delta").load(cfg.output.path).where(F.col("semantic_id") == "altered").count() == 1
