"""A new user's first runs: semid validate, errors at the edges (one line each, nothing written), the
counter warning, quiet output and progress inside a stage."""

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from semid_spark.cli import main
from semid_spark.exceptions import EXIT_INPUT, EXIT_OK, EXIT_USAGE
from semid_spark.spark import pipeline
from semid_spark.spark.dry_run import validate
from tests.spark.conftest import catalog, config, frame, write_input

REPO = Path(__file__).resolve().parents[2]


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def job_yaml(tmp, **sections) -> Path:
    raw = {"input": {"path": f"{tmp}/in"}, "model": {"path": f"{tmp}/model", "n_clusters": 8, "sample_size": 1000},
           "output": {"path": f"{tmp}/out"}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = Path(tmp) / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def catalog_dir(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first")
    keys, x = catalog(600)
    write_input(spark, frame(spark, keys, x), f"{tmp}/in")
    return tmp


def test_validate_passes_a_good_job_and_writes_nothing(spark, catalog_dir):
    before = files_under(catalog_dir)
    result = validate(spark, config(catalog_dir))
    assert result.ok, result.summary()
    assert [c.name for c in result.checks] == ["config", "spark", "locations", "model", "input columns", "rows"]
    assert "600 rows, keys unique and not null; embeddings of every row: 16-d, finite" in result.summary()
    assert files_under(catalog_dir) == before


def test_validate_catches_what_the_run_catches(spark, tmp_path, catalog_dir):
    keys, x = catalog(300)
    x[[3, 7]] = np.nan
    write_input(spark, frame(spark, keys + keys[:2], np.vstack([x, x[:2]])), f"{tmp_path}/in")
    result = validate(spark, config(tmp_path))
    rows = next(c for c in result.checks if c.name == "rows")
    # the keys over the whole input first: duplicates, each with example keys
    assert not result.ok and result.exit_code == EXIT_INPUT
    assert "2 rows with duplicate keys in 'item_id'" in rows.detail or "4 rows with duplicate keys" in rows.detail
    assert "e.g. item_id='sku000000', 'sku000001'" in rows.detail
    write_input(spark, frame(spark, keys, x), f"{tmp_path}/in")
    rows = next(c for c in validate(spark, config(tmp_path)).checks if c.name == "rows")
    assert "2 rows with NaN, inf or null values in 'embedding' (e.g. item_id='sku000003', 'sku000007')" in rows.detail
    missing = validate(spark, config(tmp_path, input={"path": f"{tmp_path}/nowhere"}))
    assert [c.name for c in missing.checks if not c.ok] == ["input columns"] and missing.exit_code == EXIT_INPUT
    assert not (tmp_path / "out").exists() and not (tmp_path / "model").exists()


def test_a_model_of_another_dimension_is_named_in_those_words(spark, tmp_path):
    keys, x = catalog(300)
    write_input(spark, frame(spark, keys, x[:, :12]), f"{tmp_path}/in")  # 12-d input, a 16-d model
    from semid_spark.algorithms.rq_kmeans import RQKMeans

    RQKMeans(n_levels=3, n_clusters=8, random_state=0).fit(x).save(f"{tmp_path}/model")
    with pytest.raises(Exception, match=r"every row of the input \(300\) has a 12-d embedding in 'embedding', and "
                                        r"the model expects 16-d: this input and this model do not match .* new "
                                        r"model.path .* `semid refit`"):
        pipeline.run(spark, config(tmp_path))
    assert not (tmp_path / "out").exists()


def test_edges_are_one_line_each_and_write_nothing(spark, tmp_path, catalog_dir, capsys):
    conf = job_yaml(tmp_path, input={"path": f"{catalog_dir}/in"})
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [  # (argv, exit status, the line)
        (["run", "--config", str(conf), "--set", f"output.path={blocker}/ids"], EXIT_USAGE,
         f"semid run: ConfigError: output.path='{blocker}/ids' cannot be written: {blocker} is a file, not a folder"),
        (["run", "--config", str(conf), "--set", f"input.path={tmp_path}/nope"], EXIT_INPUT,
         f"semid run: InvalidInputError: cannot read the input delta path '{tmp_path}/nope' (input.path, input.format)"),
        (["run", "--config", str(conf), "--set", "model.n_clusters=eight"], EXIT_USAGE,
         "semid run: ConfigError: --set model.n_clusters=eight: model.n_clusters='eight': expected int or a list of int"),
        (["fit", "--config", str(tmp_path / "missing.yaml")], EXIT_USAGE,
         f"semid fit: ConfigError: cannot read config '{tmp_path / 'missing.yaml'}'"),
    ]
    for argv, status, line in cases:
        code, out, err = run_cli(capsys, *argv, "--quiet")
        assert code == status and out == "", (argv, err)
        assert line in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "model").exists()


def test_changing_the_saved_models_shape_is_refused(spark, tmp_path, catalog_dir, capsys):
    conf = job_yaml(tmp_path, input={"path": f"{catalog_dir}/in"})
    assert run_cli(capsys, "fit", "--config", str(conf))[0] == EXIT_OK
    saved = (tmp_path / "model" / "metadata.json").read_bytes()
    code, out, err = run_cli(capsys, "run", "--config", str(conf), "--set", "model.n_clusters=[16,8,8]")
    assert code == EXIT_USAGE and out == ""
    assert "holds a RQKMeans model of 8x8x8 codes, and the config asks for rq_kmeans 16x8x8" in err
    assert "`semid refit`" in err and not (tmp_path / "out").exists()
    assert (tmp_path / "model" / "metadata.json").read_bytes() == saved


def test_one_size_per_level_runs_through_the_job(spark, tmp_path, catalog_dir):
    report = pipeline.run(spark, config(tmp_path, input={"path": f"{catalog_dir}/in"},
                                        model={"n_clusters": [16, 8, 4]}))
    table = spark.read.format("delta").load(f"{tmp_path}/out")
    assert report.n_inserted == 600 and table.select("semantic_id").distinct().count() == 600
    maxima = table.selectExpr("max(codes[0])", "max(codes[1])", "max(codes[2])").first()
    assert all(m < k for m, k in zip(maxima, (16, 8, 4)))


def test_a_run_mostly_of_counters_warns(spark, tmp_path, catalog_dir, caplog):
    cfg = config(tmp_path, input={"path": f"{catalog_dir}/in"}, model={"n_clusters": 2, "n_levels": 2})
    with caplog.at_level(logging.WARNING, logger="semid_spark"):
        report = pipeline.run(spark, cfg)
    assert report.counter_share > 0.9
    warning = [r.getMessage() for r in caplog.records if "got a counter" in r.getMessage()]
    assert warning and "levels of 2x2 codes give 4 full codes" in warning[0] and "semid advise" in warning[0]


def test_stage_progress_reports_tasks_and_rows(spark, caplog, monkeypatch):
    from semid_spark.spark import logs
    from semid_spark.spark.session import stage
    from semid_spark.utils.progress import set_progress

    monkeypatch.setattr(logs, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(logs, "POLL_S", 0.05)
    set_progress(False)  # no terminal: periodic log lines
    try:
        slow = spark.range(0, 8, numPartitions=8).rdd.map(lambda i: __import__("time").sleep(0.4) or i)
        with caplog.at_level(logging.INFO, logger="semid_spark"), stage(spark, "semid: slow stage", rows=8):
            assert slow.count() == 8
    finally:
        set_progress(None)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("semid: slow stage: ")]
    assert any("/8 tasks" in line and "rows/s" in line for line in lines), lines


@pytest.mark.heavy  # a JVM of its own: ~55 s
def test_a_quiet_run_prints_our_lines_and_the_json_only(tmp_path, catalog_dir):
    """A fresh process, as a scheduler starts it: the JVM's own output (Ivy, log4j) goes to a file."""
    conf = job_yaml(tmp_path, input={"path": f"{catalog_dir}/in"},
                    spark={"master": "local[2]", "shuffle_partitions": 2, "warehouse_dir": str(tmp_path / "wh")})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    proc = subprocess.Popen([sys.executable, "-m", "semid_spark.cli", "run", "--config", str(conf), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert len(out.splitlines()) == 1 and json.loads(out)["n_inserted"] == 600
    ours = re.compile(r"^(\S+ \S+ (WARNING|ERROR) semid_spark[.\w]*: |semid run: 600 input rows, 600 new, 600 inserted)")
    assert err.strip() and all(ours.match(line) for line in err.splitlines()), err
    (log,) = Path(tempfile.gettempdir(), "semid_spark").glob(f"spark-*-{proc.pid}.log")
    assert "delta-spark" in log.read_text()  # Ivy's resolution went to Spark's own log file
