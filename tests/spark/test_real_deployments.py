"""The job on real deployments, not only local[*] in this process:

- a Spark Connect server (what Databricks serverless and shared clusters are): `pipeline.run` and the
  Databricks notebook's cells, as a Connect client, with Delta through SQL only;
- a standalone cluster (a master and two workers): executors in their own JVMs and Python workers,
  the model broadcast to them and stored by URL, the output identical to local[2]'s.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from chispa import assert_df_equality
from pyspark.sql.connect.session import SparkSession as RemoteSparkSession

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.config import JobConfig
from semid_spark.spark import pipeline
from semid_spark.spark.session import delta_package, is_connect_safe
from semid_spark.uniqueness.relocate import relocate_codes
from tests.clusters import DELTA_CONF, connect_server, standalone_cluster
from tests.s3server import new_bucket, s3_server
from tests.spark.test_connect_safe import NOTEBOOK, notebook_cells
from tests.spark.conftest import ID_COLS, catalog, config, frame, write_input

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.heavy  # servers and clusters with their own JVMs: `make test-heavy`, run by .ci/run


CONNECT_ENV = ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE")


@pytest.fixture(scope="module")
def connect_session(tmp_path_factory):
    """A Spark Connect client session on a server this fixture starts."""
    with connect_server(tmp_path_factory.mktemp("connect")) as url:
        # Connect's own builder: the classic one refuses a remote session beside the suite's local one
        session = RemoteSparkSession.builder.remote(url).getOrCreate()
        try:
            yield session
        finally:
            session.stop()
            for name in CONNECT_ENV:
                os.environ.pop(name, None)


@pytest.fixture
def remote(connect_session):
    """The Connect session, with pyspark in Connect mode during the test only: pyspark marks the whole
    process as Connect (``SPARK_CONNECT_MODE_ENABLED``), which the suite's classic session must not see."""
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    try:
        yield connect_session
    finally:
        for name in CONNECT_ENV:
            os.environ.pop(name, None)


def test_the_session_is_a_connect_client(remote):
    assert type(remote).__module__.startswith("pyspark.sql.connect") and is_connect_safe(remote)


def test_pipeline_runs_on_a_connect_server(remote, tmp_path):
    keys, x = catalog(800)
    cfg = JobConfig.from_dict({"input": {"path": str(tmp_path / "in")},
                               "model": {"path": str(tmp_path / "model"), "n_clusters": 8, "sample_size": 500},
                               "output": {"path": str(tmp_path / "out")}})
    frame(remote, keys[:700], x[:700]).write.format("delta").save(cfg.input.path)
    first = pipeline.run(remote, cfg)
    frame(remote, keys[700:], x[700:]).write.format("delta").mode("append").save(cfg.input.path)
    second = pipeline.run(remote, cfg)
    assert (first.n_inserted, second.n_inserted) == (700, 100) and "fit" not in second.seconds
    table = remote.read.format("delta").load(cfg.output.path).select("item_id", "semantic_id", "codes").collect()
    assert len(table) == 800 == len({r.semantic_id for r in table})
    model = RQKMeans.load(cfg.model.path)
    got = {r.item_id: list(r.codes) for r in table}
    # the server's executors encoded (and relocated, around the first run's codes) as the driver does
    before = relocate_codes(model, x[:700], keys=keys[:700]).codes
    after = relocate_codes(model, x[700:], keys=keys[700:], held=before).codes
    assert [got[k] for k in keys] == before.tolist() + after.tolist()


def test_databricks_notebook_runs_on_a_connect_server(remote, tmp_path):
    keys, x = catalog(600)
    frame(remote, keys[:500], x[:500]).write.format("delta").saveAsTable("semid_remote_catalog")
    params = {"input_table": "semid_remote_catalog", "output_table": "semid_remote_ids",
              "model_path": str(tmp_path / "model"), "report_dir": str(tmp_path / "report"), "n_clusters": "8",
              "sample_size": "400"}
    cells = notebook_cells(NOTEBOOK)
    try:
        for expected in (500, 100):
            scope = {"spark": remote, "semid_params": params, "__name__": "__main__"}
            for i, cell in enumerate(cells):
                exec(compile(cell, f"{NOTEBOOK.name}[cell {i}]", "exec"), scope)
            assert scope["assign_report"].n_inserted == expected
            if expected == 500:
                frame(remote, keys[500:], x[500:]).write.format("delta").mode("append").saveAsTable("semid_remote_catalog")
        ids = {r.item_id: r.semantic_id for r in remote.table("semid_remote_ids").collect()}
        assert len(ids) == 600 == len(set(ids.values()))
        assert (tmp_path / "report" / "report.md").exists()
    finally:
        remote.sql("DROP TABLE IF EXISTS semid_remote_catalog")
        remote.sql("DROP TABLE IF EXISTS semid_remote_ids")


def test_standalone_cluster_in_client_mode_matches_local(spark, tmp_path):
    keys, x = catalog(1500, seed=9)
    cfg_local = config(tmp_path / "local")
    write_input(spark, frame(spark, keys, x).repartition(6), cfg_local.input.path)
    with s3_server():
        model_url = new_bucket() + "/model"
        RQKMeans(3, 8, random_state=0).fit(x).save(model_url)
        local = config(tmp_path / "local", model={"path": model_url})
        pipeline.run(spark, local)
        with standalone_cluster(tmp_path) as master:
            job = tmp_path / "cluster.yaml"
            job.write_text(yaml.safe_dump({
                "input": {"path": cfg_local.input.path}, "model": {"path": model_url, "n_clusters": 8},
                "output": {"path": str(tmp_path / "cluster-out")},
                "spark": {"master": master, "shuffle_partitions": 4, "driver_memory": "1g",
                          "warehouse_dir": str(tmp_path / "warehouse"),
                          "conf": {"spark.executor.memory": "768m", "spark.executor.cores": 1,
                                   "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}},
            }))
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", *CONNECT_ENV)}
            env.update(PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
            proc = subprocess.run([sys.executable, "-m", "semid_spark.cli", "run", "--config", str(job)], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["n_inserted"] == 1500 and "fit" not in report["seconds"]
    executors = sorted(p.name for p in tmp_path.glob("worker*/app-*/*") if (p / "stderr").exists())
    assert len(executors) == 2, executors  # one executor JVM on each worker ran the job
    got = spark.read.format("delta").load(str(tmp_path / "cluster-out")).select(*ID_COLS)
    want = spark.read.format("delta").load(local.output.path).select(*ID_COLS)
    assert_df_equality(got, want, ignore_row_order=True)


def event_log(folder: Path) -> list[dict]:
    """The events of the one application whose uncompressed event log *folder* holds."""
    (log,) = [p for p in folder.iterdir() if p.is_file()]
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_spark_submit_settings_win_on_a_standalone_cluster(spark, tmp_path):
    """spark-submit --master spark://… --conf spark.sql.shuffle.partitions=3 jobs/run.py, with a config
    that has no spark: section: the job runs on the cluster's executors (both workers) with the
    command line's settings, as Spark's own event log records them, and writes local[2]'s IDs."""
    keys, x = catalog(3000, seed=4)
    local = config(tmp_path / "local", model={"path": str(tmp_path / "model")})
    write_input(spark, frame(spark, keys, x).repartition(12), local.input.path)
    RQKMeans(3, 8, random_state=0).fit(x).save(local.model.path)
    pipeline.run(spark, local)
    job = tmp_path / "job.yaml"  # what a cluster user writes: no spark: section
    job.write_text(yaml.safe_dump({"input": {"path": local.input.path}, "model": {"path": local.model.path, "n_clusters": 8},
                                   "output": {"path": str(tmp_path / "cluster-out")}}))
    events = tmp_path / "events"
    events.mkdir()
    settings = {**DELTA_CONF, "spark.sql.shuffle.partitions": "3", "spark.executor.memory": "768m",
                "spark.executor.cores": "1", "spark.driver.host": "127.0.0.1", "spark.pyspark.python": sys.executable,
                "spark.eventLog.enabled": "true", "spark.eventLog.dir": events.as_uri(),
                "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false"}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON", *CONNECT_ENV)}
    # as a user with the virtualenv activated: its python3 is the driver's (spark.pyspark.python the executors')
    env.update(SPARK_LOCAL_IP="127.0.0.1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    with standalone_cluster(tmp_path) as master:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "spark-submit"), "--master", master, "--driver-memory", "1g",
             "--packages", delta_package(), *[a for k, v in settings.items() for a in ("--conf", f"{k}={v}")],
             str(ROOT / "jobs" / "run.py"), "--config", str(job)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    said = proc.stdout + proc.stderr  # spark-submit's PythonRunner passes the driver's stderr on its stdout
    assert f"master {master} (from spark-submit), spark.sql.shuffle.partitions=3" in said, said[-3000:]

    log = event_log(events)
    (environment,) = [e for e in log if e["Event"] == "SparkListenerEnvironmentUpdate"]
    properties = dict(environment["Spark Properties"])
    assert properties["spark.master"] == master and properties["spark.sql.shuffle.partitions"] == "3"
    for start in (e for e in log if e["Event"].endswith("SQLExecutionStart")):  # no query changed it either
        assert start.get("modifiedConfigs", {}).get("spark.sql.shuffle.partitions", "3") == "3"
    ran = {e["Task Info"]["Executor ID"] for e in log if e["Event"] == "SparkListenerTaskEnd"}
    on_worker = [{p.name for p in tmp_path.glob(f"worker{i}/app-*/*") if (p / "stderr").exists()} for i in (0, 1)]
    assert all(ran & executors for executors in on_worker), (ran, on_worker)  # tasks ran on both workers
    assert "driver" not in ran

    got = spark.read.format("delta").load(str(tmp_path / "cluster-out")).select(*ID_COLS)
    want = spark.read.format("delta").load(local.output.path).select(*ID_COLS)
    assert_df_equality(got, want, ignore_row_order=True)
