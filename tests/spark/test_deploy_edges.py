"""What a cluster deployment meets first: a config shipped with spark-submit --files or at a URL, the
model and reports at URLs (and no local folder named after one), and the demo's stability check,
which must see an altered ID."""

import json
import os

import pytest
from pyspark.sql import functions as F

from semid_spark import storage
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.cli import config_location, main
from semid_spark.demo import changed_ids
from semid_spark.spark import pipeline
from tests.s3server import new_bucket, s3_server
from tests.spark.conftest import catalog, config, frame, write_input


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


@pytest.mark.heavy  # ~40 s: three runs and a Delta history walk; make demo runs the check itself
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


@pytest.mark.heavy  # four CLI commands against an S3 server (~80 s): `make test-heavy`
def test_a_cluster_mode_run_with_urls_leaves_no_local_folder_named_after_one(spark, tmp_path, monkeypatch, capsys):
    """The config, the model and every report at s3:// URLs (the tables are Spark's to write): run,
    evaluate, advise and refit reach the bucket, and the driver's working directory stays empty."""
    keys, x = catalog(600)
    write_input(spark, frame(spark, keys, x), str(tmp_path / "in"))
    work = tmp_path / "driver-cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    with s3_server():
        bucket = new_bucket()
        conf = f"{bucket}/semid/job.yaml"
        storage.write_bytes(conf, json.dumps({
            "input": {"path": str(tmp_path / "in")}, "output": {"path": str(tmp_path / "out")},
            "model": {"path": f"{bucket}/semid/model", "n_levels": 2, "n_clusters": 8, "sample_size": 600}}).encode())
        assert main(["run", "--config", conf, "--quiet"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_inserted"] == 600
        assert main(["evaluate", "--config", conf, "--out", f"{bucket}/semid/report", "--sample-size", "300",
                     "--queries", "50", "--quiet"]) == 0
        # 600 items in at most 64 codes: no shape meets the goal, so advise exits 5, its reports written all the same
        assert main(["advise", "--config", conf, "--out", f"{bucket}/semid/advise", "--choices", "1x8,2x8",
                     "--quiet"]) == 5
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["recommended"] is None
        assert main(["refit", "--config", conf, "--out", f"{bucket}/semid/refit", "--quiet",
                     "--set", f"model.refit_path={bucket}/semid/model-v2"]) == 0
        fs, root = storage.filesystem(bucket)
        listed = fs.find(root)
        assert RQKMeans.load(f"{bucket}/semid/model-v2").n_levels == 2
    names = {path.split("/semid/", 1)[-1] for path in listed}
    assert {"report/report.md", "report/report.json", "advise/advice.md", "advise/advice.json",
            "refit/churn.md", "refit/churn.json", "model-v2/metadata.json"} <= names
    assert [str(p.relative_to(work)) for p in work.rglob("*")] == []  # no 's3:' folder, nothing at all
