"""What a cluster user meets first: models on object stores, kills in the write stage, killed Python
workers, concurrent writers, reject mode under retries, and settings that must do what they say.

The fault tests run `semid run` in a real subprocess (``tests/fault_job.py`` injects the fault) and
check the outcome with the suite's session: the table intact, and after a re-run exactly the IDs
an uninterrupted run gives.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from chispa import assert_df_equality
from pyspark.sql import functions as F

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.delta.table import TableRef
from semid_spark.exceptions import ConcurrentRunError, ShapeMismatchError
from semid_spark.spark import assign, pipeline
from tests.s3server import new_bucket, s3_server
from tests.spark.conftest import DIM, ID_COLS, catalog, config, frame, shuffles_carrying, write_input

ROOT = Path(__file__).resolve().parents[2]


def table_ids(spark, path):
    return spark.read.format("delta").load(str(path)).select(*ID_COLS)


def saved_model(tmp_path, x):
    path = tmp_path / "model"
    RQKMeans(3, 8, random_state=0).fit(x).save(str(path))
    return str(path)


def reference(spark, tmp_path, model, parts):
    """The IDs of uninterrupted runs over the input growing by *parts*, (keys, x) each."""
    cfg = config(tmp_path / "reference", model={"path": model})
    for i, (keys, x) in enumerate(parts):
        write_input(spark, frame(spark, keys, x), cfg.input.path, mode="append" if i else "overwrite")
        pipeline.run(spark, cfg)
    return table_ids(spark, cfg.output.path)


def job_file(tmp_path, cfg, **spark_conf):
    """The YAML a subprocess runs: *cfg*'s sections plus its own small local session."""
    raw = {"input": {"path": cfg.input.path}, "model": {"path": cfg.model.path, "n_clusters": 8, "sample_size": 1000},
           "output": {"path": cfg.output.path},
           "spark": {"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "1g",
                     "warehouse_dir": str(tmp_path / "warehouse"), **spark_conf}}
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_job(tmp_path, job, fault, signal_dir, *extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE")}
    env["PYTHONPATH"] = str(ROOT)
    log = open(tmp_path / f"{job.stem}-{fault}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "tests.fault_job", "--config", str(job), "--signal", str(signal_dir),
                             "--fault", fault, *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(path, proc, timeout=240):
    deadline = time.time() + timeout
    while not Path(path).exists():
        if proc.poll() is not None:
            raise AssertionError(f"the job ended (rc={proc.returncode}) before {path} appeared")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.2)


def kill_in_write_stage(tmp_path, cfg):
    """Run *cfg* in a subprocess and kill -9 its whole process group (driver, JVM, Python workers)
    once the MERGE is writing."""
    signals = tmp_path / "signals"
    signals.mkdir(exist_ok=True)
    proc = start_job(tmp_path, job_file(tmp_path, cfg), "stall-merge", signals)
    wait_for(signals / "stalled", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return proc.returncode


# ---------------------------------------------------------------- models wherever the cluster keeps files

def test_semid_run_with_a_model_on_s3_fits_once_and_reuses_it(spark, tmp_path, capsys):
    from semid_spark.cli import main

    keys, x = catalog(600)
    write_input(spark, frame(spark, keys[:500], x[:500]), str(tmp_path / "in"))
    with s3_server():
        model_url = new_bucket() + "/models/catalog"
        conf = tmp_path / "job.yaml"
        conf.write_text(yaml.safe_dump({"input": {"path": str(tmp_path / "in")}, "output": {"path": str(tmp_path / "out")},
                                        "model": {"path": model_url, "n_clusters": 8, "sample_size": 500}}))
        reports = []
        for _ in range(2):
            assert main(["run", "--config", str(conf)]) == 0
            reports.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
            write_input(spark, frame(spark, keys[500:], x[500:]), str(tmp_path / "in"), mode="append")
        assert RQKMeans.load(model_url).sha256 == reports[0]["model_sha256"]
    first, second = reports
    assert "fit" in first["seconds"] and "fit" not in second["seconds"]
    assert second["model_sha256"] == first["model_sha256"] and (first["n_inserted"], second["n_inserted"]) == (500, 100)
    assert table_ids(spark, tmp_path / "out").count() == 600
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()


def test_cli_with_a_file_url_writes_the_model_into_that_directory(spark, tmp_path, capsys):
    from semid_spark.cli import main

    keys, x = catalog(300)
    write_input(spark, frame(spark, keys, x), str(tmp_path / "in"))
    conf = tmp_path / "job.yaml"
    conf.write_text(yaml.safe_dump({"input": {"path": str(tmp_path / "in")}, "output": {"path": str(tmp_path / "out")},
                                    "model": {"path": f"file://{tmp_path}/abs/model", "n_clusters": 8,
                                              "sample_size": 300}}))
    assert main(["run", "--config", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_inserted"] == 300
    assert sorted(p.name for p in (tmp_path / "abs" / "model").iterdir()) == ["codebooks.npz", "metadata.json"]


def test_a_missing_model_for_assign_names_model_path(spark, tmp_path):
    from semid_spark.exceptions import ModelFormatError

    cfg = config(tmp_path, model={"path": f"file://{tmp_path}/nowhere"})
    with pytest.raises(ModelFormatError, match=r"no model at model.path='file://.*/nowhere': run `semid fit"):
        pipeline.assign_only(spark, cfg)


# ---------------------------------------------------------------- kills in the write stage

def test_a_folder_left_by_a_killed_create_does_not_brick_the_output_path(spark, tmp_path):
    """What a kill during the old CREATE TABLE AS SELECT left: data files, an empty _delta_log, no commit."""
    keys, x = catalog(500)
    model = saved_model(tmp_path, x)
    cfg = config(tmp_path, model={"path": model})
    write_input(spark, frame(spark, keys, x), cfg.input.path)
    spark.range(50).selectExpr("cast(id as string) as item_id").write.parquet(cfg.output.path)
    os.unlink(Path(cfg.output.path) / "_SUCCESS")
    (Path(cfg.output.path) / "_delta_log").mkdir()
    report = pipeline.run(spark, cfg)
    assert report.n_inserted == 500
    assert_df_equality(table_ids(spark, cfg.output.path), reference(spark, tmp_path, model, [(keys, x)]),
                       ignore_row_order=True)


@pytest.mark.heavy  # a subprocess with its own JVM: `make test-heavy`, run by .ci/run
def test_kill_in_the_first_runs_write_stage_then_rerun_gives_the_uninterrupted_ids(spark, tmp_path):
    keys, x = catalog(800)
    model = saved_model(tmp_path, x)
    cfg = config(tmp_path, model={"path": model})
    write_input(spark, frame(spark, keys, x), cfg.input.path)
    assert kill_in_write_stage(tmp_path, cfg) == -signal.SIGKILL
    out = TableRef(cfg.output.path)
    assert out.exists(spark) and out.read(spark).count() == 0  # the empty table of its model; no ID committed
    report = pipeline.run(spark, cfg)
    assert report.n_inserted == 800
    assert_df_equality(table_ids(spark, cfg.output.path), reference(spark, tmp_path, model, [(keys, x)]),
                       ignore_row_order=True)


@pytest.mark.heavy  # a subprocess with its own JVM: `make test-heavy`, run by .ci/run
def test_kill_in_an_incremental_write_stage_keeps_the_table_and_rerun_completes_it(spark, tmp_path):
    keys, x = catalog(1000)
    model = saved_model(tmp_path, x)
    cfg = config(tmp_path, model={"path": model})
    write_input(spark, frame(spark, keys[:700], x[:700]), cfg.input.path)
    pipeline.run(spark, cfg)
    out = TableRef(cfg.output.path)
    version, before = out.version(spark), table_ids(spark, cfg.output.path).collect()
    write_input(spark, frame(spark, keys[700:], x[700:]), cfg.input.path, mode="append")
    assert kill_in_write_stage(tmp_path, cfg) == -signal.SIGKILL
    assert out.version(spark) == version and sorted(table_ids(spark, cfg.output.path).collect()) == sorted(before)
    assert pipeline.run(spark, cfg).n_inserted == 300
    want = reference(spark, tmp_path, model, [(keys[:700], x[:700]), (keys[700:], x[700:])])
    assert_df_equality(table_ids(spark, cfg.output.path), want, ignore_row_order=True)


@pytest.mark.heavy  # a subprocess with its own JVM: `make test-heavy`, run by .ci/run
def test_python_workers_killed_under_local_2_4_give_the_fault_free_output(spark, tmp_path):
    keys, x = catalog(900, seed=2)
    model = saved_model(tmp_path, x)
    cfg = config(tmp_path, model={"path": model})
    write_input(spark, frame(spark, keys, x).repartition(3), cfg.input.path)
    signals = tmp_path / "signals"
    signals.mkdir()
    proc = start_job(tmp_path, job_file(tmp_path, cfg, master="local[2,4]"), "kill-python-worker", signals)
    assert proc.wait(timeout=300) == 0, (tmp_path / "job-0-kill-python-worker.log").read_text()[-3000:]
    assert (signals / "killed").exists()  # a worker really died, and its task was retried
    assert_df_equality(table_ids(spark, cfg.output.path), reference(spark, tmp_path, model, [(keys, x)]),
                       ignore_row_order=True)


# ---------------------------------------------------------------- concurrent runs

@pytest.mark.heavy  # a subprocess with its own JVM: `make test-heavy`, run by .ci/run
def test_two_concurrent_writers_both_land_with_unique_ids(spark, tmp_path):
    """Two processes merge against the same snapshot (a barrier before their MERGEs): one commits, the
    other meets the conflict, ranks again against the winner's table and commits too."""
    keys, x = catalog(900, seed=4)
    model = saved_model(tmp_path, x)
    base = config(tmp_path, model={"path": model})
    write_input(spark, frame(spark, keys[:500], x[:500]), base.input.path)
    pipeline.run(spark, base)
    old = {r.item_id: r.semantic_id for r in table_ids(spark, base.output.path).collect()}
    jobs = []
    for name, rows in (("A", slice(500, 750)), ("B", slice(650, 900))):  # 100 items in both
        cfg = config(tmp_path, input={"path": str(tmp_path / f"in-{name}")}, model={"path": model})
        write_input(spark, frame(spark, keys[:500] + keys[rows], np.concatenate([x[:500], x[rows]])), cfg.input.path)
        jobs.append(job_file(tmp_path, cfg))
    signals = tmp_path / "signals"
    signals.mkdir()
    procs = [start_job(tmp_path, jobs[0], "barrier-merge", signals, "--name", "A", "--peer", "B"),
             start_job(tmp_path, jobs[1], "barrier-merge", signals, "--name", "B", "--peer", "A")]
    codes = [p.wait(timeout=400) for p in procs]
    logs = [(tmp_path / f"{job.stem}-barrier-merge.log").read_text() for job in jobs]
    assert codes == [0, 0], logs
    reports = [json.loads(log.strip().splitlines()[-1]) for log in logs]
    assert sum(r["n_retries"] for r in reports) >= 1  # the barrier made them collide
    assert sum(r["n_inserted"] for r in reports) == 400
    table = table_ids(spark, base.output.path).collect()
    assert len(table) == 900 and len({r.semantic_id for r in table}) == 900
    assert all(old[r.item_id] == r.semantic_id for r in table if r.item_id in old)


@pytest.fixture
def stalled_merge(monkeypatch):
    """merge_new_rows of runs on *worker* threads waits (in its source's first task) for a release file."""
    real, state = assign.merge_new_rows, {"workers": set()}

    def merge(spark, ref, rows, key, **kw):
        if threading.current_thread() in state["workers"]:
            started, release = state["started"], state["release"]

            def step(batches):
                from pyspark import TaskContext

                if TaskContext.get().partitionId() == 0:
                    open(started, "w").close()
                    while not os.path.exists(release):
                        time.sleep(0.1)
                yield from batches
            rows = rows.mapInArrow(step, rows.schema)
        return real(spark, ref, rows, key, **kw)

    monkeypatch.setattr(assign, "merge_new_rows", merge)
    return state


@pytest.mark.parametrize("max_retries", [0, pytest.param(2, marks=pytest.mark.heavy)])  # 2: ~36 s
def test_a_commit_during_the_merge_is_retried_or_named(spark, tmp_path, stalled_merge, max_retries):
    keys, x = catalog(700, seed=6)
    model = saved_model(tmp_path, x)
    cfg_a = config(tmp_path, model={"path": model}, output={"max_retries": max_retries})
    write_input(spark, frame(spark, keys[:400], x[:400]), cfg_a.input.path)
    pipeline.run(spark, cfg_a)
    write_input(spark, frame(spark, keys[400:600], x[400:600]), cfg_a.input.path, mode="append")
    cfg_b = config(tmp_path, input={"path": str(tmp_path / "in-b")}, model={"path": model})
    write_input(spark, frame(spark, keys[600:], x[600:]), cfg_b.input.path)
    stalled_merge.update(started=str(tmp_path / "started"), release=str(tmp_path / "release"))
    outcome = {}

    def run_a():
        try:
            outcome["report"] = pipeline.run(spark, cfg_a)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=run_a)
    stalled_merge["workers"].add(worker)
    worker.start()
    deadline = time.time() + 180
    while not os.path.exists(stalled_merge["started"]) and worker.is_alive() and time.time() < deadline:
        time.sleep(0.2)
    assert os.path.exists(stalled_merge["started"]), outcome
    assert pipeline.run(spark, cfg_b).n_inserted == 100  # commits while A's MERGE is under way
    winner = TableRef(cfg_a.output.path).version(spark)
    Path(stalled_merge["release"]).touch()
    worker.join(timeout=300)
    table = table_ids(spark, cfg_a.output.path).collect()
    assert len({r.semantic_id for r in table}) == len(table)
    if max_retries == 0:
        error = outcome.get("error")
        assert isinstance(error, ConcurrentRunError), outcome
        assert f"committed version {winner} of table {cfg_a.output.path}" in str(error)
        assert len(table) == 500  # A wrote nothing
    else:
        assert "error" not in outcome, outcome
        assert outcome["report"].n_retries == 1 and outcome["report"].n_inserted == 200 and len(table) == 700


def test_a_commit_between_counter_computation_and_merge_never_duplicates_an_id(spark, tmp_path, monkeypatch):
    """The counters are read by the MERGE itself: a run that commits after this run built its rows (and
    before its MERGE) is counted. A cached or version-pinned counter table would duplicate IDs here."""
    keys, x = catalog(600, seed=8)
    x[400:] = x[:200]  # the new items of both runs share codes with each other and with the written ones
    model = saved_model(tmp_path, x)
    cfg_a = config(tmp_path, model={"path": model})
    write_input(spark, frame(spark, keys[:300], x[:300]), cfg_a.input.path)
    pipeline.run(spark, cfg_a)
    write_input(spark, frame(spark, keys[300:450], x[300:450]), cfg_a.input.path, mode="append")
    cfg_b = config(tmp_path, input={"path": str(tmp_path / "in-b")}, model={"path": model})
    write_input(spark, frame(spark, keys[450:], x[450:]), cfg_b.input.path)
    real, calls = assign.merge_new_rows, []

    def merge(spark_, ref, rows, key, **kw):
        calls.append(key)
        if len(calls) == 1:  # A's rows are built; B commits before A's MERGE runs
            assert pipeline.run(spark, cfg_b).n_inserted == 150
        return real(spark_, ref, rows, key, **kw)

    monkeypatch.setattr(assign, "merge_new_rows", merge)
    report = pipeline.run(spark, cfg_a)
    table = table_ids(spark, cfg_a.output.path).collect()
    assert report.n_inserted == 150 and len(table) == 600
    assert len({r.semantic_id for r in table}) == 600
    by_base = {}
    for r in table:
        by_base.setdefault(tuple(r.codes), []).append(r.counter)
    assert all(sorted(c) == list(range(len(c))) for c in by_base.values())


# ---------------------------------------------------------------- reject mode, input checks, settings

def test_rejects_are_written_once_when_the_run_commits(spark, tmp_path, monkeypatch):
    from tests.spark.conftest import bad_frame

    rejects = tmp_path / "rejects"
    cfg = config(tmp_path, input={"on_invalid": "reject", "reject_path": str(rejects)})
    write_input(spark, bad_frame(spark, "nan").union(bad_frame(spark, "null key").where(F.col("item_id").isNull())),
                cfg.input.path)
    real = assign.merge_new_rows

    def failing_merge(*args, **kwargs):
        raise RuntimeError("the executors were lost")

    monkeypatch.setattr(assign, "merge_new_rows", failing_merge)
    with pytest.raises(RuntimeError, match="executors were lost"):
        pipeline.run(spark, cfg)
    assert not TableRef(str(rejects)).exists(spark)  # nothing rejected is written by a run that did not commit
    monkeypatch.setattr(assign, "merge_new_rows", real)
    assert pipeline.run(spark, cfg).n_inserted == 49  # Airflow's retry
    assert pipeline.run(spark, cfg).n_inserted == 0  # and another one
    got = spark.read.format("delta").load(str(rejects))
    assert sorted(r.reject_reason for r in got.collect()) == ["NaN or inf", "null key"]
    assert got.select("reject_id").distinct().count() == 2


def test_one_short_first_row_is_the_one_named(spark, tmp_path):
    keys, x = catalog(200)
    rows = [(k, [float(v) for v in row]) for k, row in zip(keys, x)]
    rows[0] = (rows[0][0], rows[0][1][:5])
    cfg = config(tmp_path)
    write_input(spark, spark.createDataFrame(rows, "item_id string, embedding array<double>").coalesce(1),
                cfg.input.path)
    with pytest.raises(ShapeMismatchError, match=rf"1 rows with embedding length != {DIM} in 'embedding'"):
        pipeline.run(spark, cfg)


def test_an_existing_models_length_is_the_expected_one(spark, tmp_path):
    keys, x = catalog(200)
    model = saved_model(tmp_path, x)
    short = [(k, [float(v) for v in row[:12]]) for k, row in zip(keys, x)]  # every row: the catalog changed
    cfg = config(tmp_path, model={"path": model})
    write_input(spark, spark.createDataFrame(short, "item_id string, embedding array<double>"), cfg.input.path)
    with pytest.raises(ShapeMismatchError, match=rf"every row of the input \(200\) has a 12-d embedding in "
                                                 rf"'embedding', and the model expects {DIM}-d"):
        pipeline.run(spark, cfg)


def test_batch_rows_slices_the_encoder_input_and_changes_no_id(spark, tmp_path):
    import pyarrow as pa

    from semid_spark.spark.encode import ARROW_BATCH_CONF, arrow_batch_rows, sliced

    batch = pa.RecordBatch.from_pydict({"a": list(range(20))})  # pyarrow 14 (Databricks 15.4)
    assert [b.num_rows for b in sliced(iter([batch]), 7)] == [7, 7, 6]
    before = spark.conf.get(ARROW_BATCH_CONF)
    with arrow_batch_rows(spark, 7):
        assert spark.conf.get(ARROW_BATCH_CONF) == "7"
    assert spark.conf.get(ARROW_BATCH_CONF) == before
    keys, x = catalog(300)
    model = saved_model(tmp_path, x)
    small = config(tmp_path / "small", model={"path": model}, encode={"batch_rows": 7})
    write_input(spark, frame(spark, keys, x), small.input.path)
    pipeline.run(spark, small)
    assert_df_equality(table_ids(spark, small.output.path), reference(spark, tmp_path, model, [(keys, x)]),
                       ignore_row_order=True)
    with pytest.raises(Exception, match=r"encode.batch_rows=0; expected >= 1"):
        config(tmp_path, encode={"batch_rows": 0})


# ---------------------------------------------------------------- incremental runs cost what is new

@pytest.mark.parametrize("broadcast_keys", [None, 500])  # a day's changes; a whole snapshot of 1000 rows
def test_an_incremental_run_shuffles_no_embedding(spark, tmp_path, monkeypatch, broadcast_keys):
    from semid_spark.spark import incremental

    keys, x = catalog(1000)
    model = saved_model(tmp_path, x)
    cfg = config(tmp_path, model={"path": model})
    write_input(spark, frame(spark, keys[:800], x[:800]), cfg.input.path)
    pipeline.run(spark, cfg)
    write_input(spark, frame(spark, keys[800:], x[800:]), cfg.input.path, mode="append")
    if broadcast_keys is not None:
        monkeypatch.setattr(incremental, "BROADCAST_KEYS", broadcast_keys)
    real, seen = assign.encode_embeddings, []

    def encode(df, *args, **kwargs):
        seen.append(df)
        return real(df, *args, **kwargs)

    monkeypatch.setattr(assign, "encode_embeddings", encode)
    real_merge, merges = assign.merge_new_rows, []

    def merge_rows(*args, unread_rows=None, **kwargs):
        merges.append(unread_rows)
        return real_merge(*args, unread_rows=unread_rows, **kwargs)

    monkeypatch.setattr(assign, "merge_new_rows", merge_rows)
    # as at catalog scale: the written table far too big for Spark to broadcast on its own
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    try:
        report = pipeline.run(spark, cfg)
        assert report.n_inserted == 200
        # the MERGE's source held only the new rows (the written keys dropped by a broadcast join inside it),
        # and its condition let Delta skip every file of the table: no key of the table was shuffled
        merge = spark.sql(f"DESCRIBE HISTORY delta.`{cfg.output.path}`").where("operation = 'MERGE'").orderBy(
            F.desc("version")).first()["operationMetrics"]
        assert (merge["numSourceRows"], merge["numTargetRowsInserted"]) == ("200", "200")
        assert merges == [("run_id", report.run_id)]
        spark.conf.set("spark.sql.adaptive.enabled", "false")
        assert shuffles_carrying(seen[0], "embedding") == []
        # the probe can fail: today's rows joined to the catalog by key shuffle embeddings
        assert shuffles_carrying(seen[0].join(frame(spark, keys, x), "item_id"), "embedding")
    finally:
        spark.conf.unset("spark.sql.adaptive.enabled")
        spark.conf.unset("spark.sql.autoBroadcastJoinThreshold")


def files_read(df) -> list[int]:
    """Files each scan in df's physical plan read after Delta's data skipping (run df first; AQE off)."""
    found = []

    def walk(node):
        if "Scan" in node.nodeName() and node.metrics().contains("numFiles"):
            found.append(int(node.metrics().apply("numFiles").value()))
        children = node.children()
        for i in range(children.size()):
            walk(children.apply(i))

    walk(df._jdf.queryExecution().executedPlan())
    return found


def test_the_written_keys_check_reads_only_files_whose_keys_reach_the_new_ones(spark, tmp_path):
    from semid_spark.spark.incremental import without_written_keys

    path = str(tmp_path / "written")
    (spark.range(1000).select(F.format_string("k%04d", "id").alias("item_id"))
          .repartitionByRange(4, "item_id").write.format("delta").save(path))  # 4 files of 250 keys each
    written = spark.read.format("delta").load(path)
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        outcomes = []
        for new_keys in (["k0500", "k2000", "k2001"], ["k2000", "k2001"], ["k0001", "k0999"]):
            new_items = spark.createDataFrame([(k, 1) for k in new_keys], "item_id string, n int")
            kept = without_written_keys(new_items, written, "item_id", n_new=len(new_keys))
            outcomes.append((sorted(r["item_id"] for r in kept.collect()), files_read(kept)))
    finally:
        spark.conf.unset("spark.sql.adaptive.enabled")
    assert outcomes == [
        (["k2000", "k2001"], [2]),  # k0500..k2001 reaches the last two files
        (["k2000", "k2001"], [0]),  # keys past the written ones (growing IDs): no file is read
        ([], [4]),  # a range over every file reads them all, and drops both written keys
    ]


# ---------------------------------------------------------------- input.since: last_run (Change Data Feed)

def test_since_last_run_reads_only_the_rows_of_new_input_versions(spark, tmp_path):
    keys, x = catalog(1000, seed=11)
    model = saved_model(tmp_path, x)
    cfg = config(tmp_path, input={"since": "last_run"}, model={"path": model})
    frame(spark, keys[:800], x[:800]).write.format("delta").option("delta.enableChangeDataFeed", "true") \
        .save(cfg.input.path)
    out = TableRef(cfg.output.path)
    assert pipeline.run(spark, cfg).n_input == 800  # nothing recorded yet: the whole input, version 0
    assert out.properties(spark)["semid.input_version"] == "0"
    write_input(spark, frame(spark, keys[800:950], x[800:950]), cfg.input.path, mode="append")
    write_input(spark, frame(spark, keys[950:], x[950:]), cfg.input.path, mode="append")
    second = pipeline.run(spark, cfg)
    assert (second.n_input, second.n_new, second.n_inserted) == (200, 200, 200)  # versions 1 and 2 only
    assert out.properties(spark)["semid.input_version"] == "2"
    version = out.version(spark)
    third = pipeline.run(spark, cfg)
    assert (third.n_input, third.n_inserted) == (0, 0) and out.version(spark) == version  # no new input version
    spark.sql(f"UPDATE delta.`{cfg.input.path}` SET embedding = transform(embedding, e -> e + 1) "
              "WHERE item_id = 'sku000003'")
    fourth = pipeline.run(spark, cfg)
    assert (fourth.n_input, fourth.n_new) == (1, 0)  # the update's new image; its ID is written already
    want = reference(spark, tmp_path, model, [(keys[:800], x[:800]), (keys[800:], x[800:])])
    assert_df_equality(table_ids(spark, cfg.output.path), want, ignore_row_order=True)


@pytest.mark.parametrize("broadcast_keys", [None, 0])  # few repeated keys (broadcast back); too many
def test_a_key_changed_in_several_versions_keeps_its_latest_image(spark, tmp_path, broadcast_keys):
    from semid_spark.spark.source import latest_images

    keys, x = catalog(40, seed=5)
    path = str(tmp_path / "in")
    frame(spark, keys[:30], x[:30]).write.format("delta").option("delta.enableChangeDataFeed", "true").save(path)
    write_input(spark, frame(spark, keys[30:], x[30:]), path, mode="append")  # version 1: ten new keys
    for step in (1, 2):  # versions 2 and 3: sku000031 updated twice, sku000005 once
        spark.sql(f"UPDATE delta.`{path}` SET embedding = transform(embedding, e -> e + {step}) "
                  f"WHERE item_id = 'sku000031'" + (" OR item_id = 'sku000005'" if step == 1 else ""))
    changes = TableRef(path).read(spark, readChangeFeed=True, startingVersion=1, endingVersion=3)
    rows = latest_images(changes.where(F.col("_change_type").isin("insert", "update_postimage")), "item_id",
                         broadcast_keys=broadcast_keys)
    got = {r.item_id: np.asarray(r.embedding) for r in rows.collect()}
    assert sorted(got) == sorted(keys[30:] + ["sku000005"])
    np.testing.assert_allclose(got["sku000031"], x[31] + 3, rtol=1e-6)  # the image of version 3
    np.testing.assert_allclose(got["sku000005"], x[5] + 1, rtol=1e-6)
    np.testing.assert_allclose(got["sku000030"], x[30], rtol=1e-6)


def test_since_last_run_without_a_change_data_feed_says_how_to_turn_it_on(spark, tmp_path):
    from semid_spark.exceptions import ConfigError

    keys, x = catalog(300)
    model = saved_model(tmp_path, x)
    cfg = config(tmp_path, input={"since": "last_run"}, model={"path": model})
    write_input(spark, frame(spark, keys[:200], x[:200]), cfg.input.path)
    pipeline.run(spark, cfg)
    write_input(spark, frame(spark, keys[200:], x[200:]), cfg.input.path, mode="append")
    with pytest.raises(ConfigError, match=r"has no Change Data Feed; turn it on with ALTER TABLE .*"
                                          r"delta\.enableChangeDataFeed = true"):
        pipeline.run(spark, cfg)
    with pytest.raises(ConfigError, match="input.since=last_run needs a Delta input"):
        config(tmp_path, input={"since": "last_run", "format": "parquet"})
