"""Airflow DAG: semantic IDs for each day's catalog snapshot, by spark-submit.

    choose_fit ──► fit ───────┐
         ├──────► refit ─────┤
         └──────► skip_fit ───┴─► assign ──► evaluate

* ``fit`` runs when no model is saved at ``model_path``; ``refit`` when one is and the run is
  triggered with ``{"refit": true}``: ``semid refit`` fits a new version aligned to the table's IDs
  and publishes it as the config's ``output.on_refit`` says (default ``new_table``: a new model and
  a new table beside the old ones, which go on working; switch ``model_path`` and the config's output
  to them when you are ready). A fit never overwrites the model a table is bound to (the job
  refuses), so no trigger can leave the table without its model; otherwise ``skip_fit``.
* ``assign`` writes IDs for keys not yet in the table with an insert-only MERGE, reading the
  snapshot of the run's logical date (``{{ ds }}``). Re-running a date (a retry, a backfill, a
  cleared task) inserts nothing new and changes no ID, so retries are safe.
* ``evaluate`` writes the quality report of the table for that date.

Set the Airflow Variables ``semid_jobs_dir`` (where jobs/fit.py, jobs/assign.py live on the worker),
``semid_wheel`` (the built wheel, shipped with --py-files) and ``semid_config`` (the job YAML), and a
``spark_default`` connection to the cluster (YARN, Kubernetes or standalone).
"""

from __future__ import annotations

from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.sdk import DAG, Param, Variable
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.models import Variable
    from airflow.models.param import Param
try:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.providers.standard.operators.python import BranchPythonOperator
except ImportError:  # Airflow 2.x without the standard provider
    from airflow.operators.empty import EmptyOperator
    from airflow.operators.python import BranchPythonOperator
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

DAG_ID = "semid_spark_ids"
JOBS_DIR = "{{ var.value.get('semid_jobs_dir', '/opt/semid_spark/jobs') }}"
WHEEL = "{{ var.value.get('semid_wheel', '/opt/semid_spark/dist/semid_spark-0.1.0-py3-none-any.whl') }}"
CONFIG = "{{ var.value.get('semid_config', '/opt/semid_spark/conf/cluster.example.yaml') }}"
# the logical date's snapshot replaces the config's input (a table name there is cleared)
SNAPSHOT = "--set", "input.table=null", "--set", "input.path={{ params.catalog_root }}/ds={{ ds }}"
SPARK_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def choose_fit(params: dict, **_) -> str:
    """'fit' when no model is saved yet, 'refit' when asked to, else 'skip_fit'. The model path is a
    local path or any fsspec URL the worker can reach (s3://, gs://, …): its manifest is written last."""
    import fsspec  # an Airflow dependency

    fs, manifest = fsspec.core.url_to_fs(params["model_path"].rstrip("/") + "/metadata.json")
    if not fs.exists(manifest):
        return "fit"
    return "refit" if params.get("refit") else "skip_fit"


def spark_job(task_id: str, script: str, *args: str, **kwargs) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=task_id,
        application=f"{JOBS_DIR}/{script}",
        application_args=["--config", CONFIG, "--set", "model.path={{ params.model_path }}", *args],
        py_files=WHEEL,
        packages="io.delta:delta-spark_4.2_2.13:4.4.0",
        conf=SPARK_CONF,
        name=f"semid-{task_id}-{{{{ ds }}}}",
        **kwargs,
    )


with DAG(
    dag_id=DAG_ID,
    description="Semantic IDs for the day's catalog snapshot (fit when needed, assign, evaluate)",
    start_date=datetime(2026, 1, 1),
    schedule="@daily",
    catchup=False,
    max_active_runs=1,  # one writer per table at a time
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},  # safe: the job is idempotent
    params={
        "catalog_root": Param("s3://my-bucket/catalog_embeddings", type="string"),
        "model_path": Param("/mnt/semid/model", type="string"),
        "refit": Param(False, type="boolean"),
    },
    tags=["semid_spark", "semantic-ids"],
) as dag:
    branch = BranchPythonOperator(task_id="choose_fit", python_callable=choose_fit)
    fit = spark_job("fit", "fit.py", *SNAPSHOT)
    refit = spark_job("refit", "refit.py", *SNAPSHOT, "--out", "{{ params.model_path }}/../refit/{{ ds }}")
    skip_fit = EmptyOperator(task_id="skip_fit")
    assign = spark_job("assign", "assign.py", *SNAPSHOT, trigger_rule="none_failed_min_one_success")
    evaluate = spark_job("evaluate", "evaluate.py", *SNAPSHOT, "--out", "{{ params.model_path }}/../report/{{ ds }}")
    branch >> [fit, refit, skip_fit] >> assign >> evaluate
