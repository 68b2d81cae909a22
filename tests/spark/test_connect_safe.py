"""The Connect-safe path (Databricks serverless, Spark Connect): no sparkContext, no RDDs, end to end.

A classic local session stands in for a Connect one: `semid.connectSafe=true` selects the path a
Connect session takes, and the session's `sparkContext` and every DataFrame's `rdd` are replaced by
properties that record and fail any access from our code (semid_spark, the notebook) — classic
pyspark's own internals still reach them, as they must; Connect's do not. The Databricks
notebook's cells run in order under the guard.
"""

import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from semid_spark.config import JobConfig
from semid_spark.spark import pipeline
from semid_spark.spark.session import CONNECT_SAFE_CONF, is_connect_safe
from tests.spark.conftest import catalog, frame

NOTEBOOK = Path(__file__).resolve().parents[2] / "jobs" / "databricks" / "semantic_ids.py"


@pytest.fixture
def connect_safe(spark, monkeypatch):
    touched = []

    def forbidden(cls, name):
        original = getattr(cls, name)

        def access(self):
            caller = sys._getframe(1)
            module, filename = caller.f_globals.get("__name__", ""), caller.f_code.co_filename
            if module.startswith(("semid_spark", "tests.spark.test_connect_safe")) or NOTEBOOK.name in filename:
                touched.append(f"{cls.__name__}.{name} from {module or filename}:{caller.f_lineno}")
                raise AssertionError(f"{cls.__name__}.{name} used on the Connect-safe path")
            return original.__get__(self)
        return property(access)

    spark.conf.set(CONNECT_SAFE_CONF, "true")
    monkeypatch.setattr(SparkSession, "sparkContext", forbidden(SparkSession, "sparkContext"))
    frame_cls = type(spark.range(1))  # the classic DataFrame, which defines its own rdd
    monkeypatch.setattr(frame_cls, "rdd", forbidden(frame_cls, "rdd"))
    yield touched
    monkeypatch.undo()
    spark.conf.unset(CONNECT_SAFE_CONF)
    assert not touched, f"the Connect-safe path touched {sorted(set(touched))}"


def test_the_guard_catches_a_use(spark, connect_safe):
    assert is_connect_safe(spark)
    with pytest.raises(AssertionError):
        spark.sparkContext  # noqa: B018
    with pytest.raises(AssertionError):
        spark.range(3).rdd  # noqa: B018
    assert len(connect_safe) == 2
    connect_safe.clear()


@pytest.mark.heavy  # ~40 s; test-heavy also runs the job on a real Spark Connect server
def test_job_runs_without_spark_context(spark, tmp_path, connect_safe):
    keys, x = catalog(700)
    frame(spark, keys, x).write.format("delta").save(str(tmp_path / "in"))
    cfg = JobConfig.from_dict({"input": {"path": str(tmp_path / "in")},
                               "model": {"path": str(tmp_path / "model"), "n_clusters": 8, "sample_size": 500},
                               "output": {"path": str(tmp_path / "out")}})
    report = pipeline.run(spark, cfg)
    assert report.n_inserted == 700


def notebook_cells(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Databricks notebook source\n")
    cells = text.split("\n# COMMAND ----------\n")
    return [c for c in cells if any(line.strip() and not line.startswith(("# MAGIC", "# Databricks"))
                                    for line in c.splitlines())]


@pytest.mark.heavy  # the whole notebook, cell by cell (half a minute): `make test-heavy`, run by .ci/run
def test_databricks_notebook_cells_run_in_order_on_metastore_tables(spark, tmp_path, connect_safe):
    keys, x = catalog(900)
    frame(spark, keys[:800], x[:800]).write.format("delta").saveAsTable("semid_nb_catalog")
    params = {"input_table": "semid_nb_catalog", "output_table": "semid_nb_ids", "model_path": str(tmp_path / "model"),
              "report_dir": str(tmp_path / "report"), "n_clusters": "8", "sample_size": "500"}
    cells = notebook_cells(NOTEBOOK)
    assert len(cells) == 5  # parameters, config, fit, assign, evaluate (markdown and %pip cells skipped)
    try:
        first = {"spark": spark, "semid_params": params, "__name__": "__main__"}
        for i, cell in enumerate(cells):
            exec(compile(cell, f"{NOTEBOOK.name}[cell {i}]", "exec"), first)
        assert not first["have_model"] and first["assign_report"].n_inserted == 800
        assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "atlas.parquet").exists()
        ids_before = {r.item_id: r.semantic_id for r in spark.table("semid_nb_ids").collect()}

        frame(spark, keys[800:], x[800:]).write.format("delta").mode("append").saveAsTable("semid_nb_catalog")
        second = {"spark": spark, "semid_params": params, "__name__": "__main__"}
        for i, cell in enumerate(cells):
            exec(compile(cell, f"{NOTEBOOK.name}[cell {i}]", "exec"), second)
        assert second["have_model"] and second["assign_report"].n_inserted == 100  # the saved model, new items only
        ids_after = {r.item_id: r.semantic_id for r in spark.table("semid_nb_ids").collect()}
        assert len(ids_after) == 900 == len(set(ids_after.values()))
        assert {k: ids_after[k] for k in ids_before} == ids_before

        # the refit widget runs `semid refit`: a new version published beside the table, which keeps its model
        saved = (tmp_path / "model" / "metadata.json").read_bytes()
        third = {"spark": spark, "semid_params": {**params, "refit": "true"}, "__name__": "__main__"}
        for i, cell in enumerate(cells):
            exec(compile(cell, f"{NOTEBOOK.name}[cell {i}]", "exec"), third)
        refit_report = third["refit_report"]
        refit_table = refit_report.ids_table
        assert refit_report.published and refit_table != "semid_nb_ids" and spark.table(refit_table).count() == 900
        assert (tmp_path / "model" / "metadata.json").read_bytes() == saved
        assert third["assign_report"].n_inserted == 0  # the old table still takes runs of its own model
        assert {r.item_id: r.semantic_id for r in spark.table("semid_nb_ids").collect()} == ids_after
    finally:
        if "third" in locals() and "refit_report" in third:
            spark.sql(f"DROP TABLE IF EXISTS {third['refit_report'].ids_table}")
        spark.sql("DROP TABLE IF EXISTS semid_nb_catalog")
        spark.sql("DROP TABLE IF EXISTS semid_nb_ids")
