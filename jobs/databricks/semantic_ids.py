# Databricks notebook source
# MAGIC %md
# MAGIC # Semantic IDs with semid_spark: fit → assign → evaluate
# MAGIC
# MAGIC Reads a catalog of item embeddings (a Unity Catalog / metastore table, or a Delta path),
# MAGIC fits RQ-KMeans on a driver-side sample (skipped when a model is already saved; `refit=true`
# MAGIC runs `semid refit`: a new version aligned to the written IDs, published beside them), writes
# MAGIC unique, stable semantic IDs into a Delta table with an insert-only MERGE (IDs already
# MAGIC written never change; re-running adds only new items), then writes the quality report.
# MAGIC
# MAGIC Works on classic clusters and on serverless / shared clusters (Spark Connect): it uses the
# MAGIC session it is given, `spark`, and never `sparkContext`. Set the widgets, or pass job parameters
# MAGIC of the same names.

# COMMAND ----------

# MAGIC %pip install /Volumes/main/default/wheels/semid_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

# Parameters: widgets on Databricks (job parameters fill them); `semid_params` or these defaults elsewhere.
defaults = {
    "input_table": "main.default.item_embeddings",  # or leave empty and set input_path
    "input_path": "",
    "output_table": "main.default.semantic_ids",  # or leave empty and set output_path
    "output_path": "",
    "model_path": "/Volumes/main/default/semid/model",  # a local or /Volumes path
    "report_dir": "/Volumes/main/default/semid/report",
    "key_col": "item_id",
    "embedding_col": "embedding",
    "n_levels": "3",
    "n_clusters": "256",
    "sample_size": "200000",
    "refit": "false",
}
try:
    for _name, _value in defaults.items():
        dbutils.widgets.text(_name, _value)  # noqa: F821 (defined on Databricks)
    params = {name: dbutils.widgets.get(name) for name in defaults}  # noqa: F821
except NameError:  # not on Databricks
    params = {**defaults, **globals().get("semid_params", {})}
print(params)

# COMMAND ----------

from semid_spark.config import JobConfig
from semid_spark.spark.pipeline import model_exists

cfg = JobConfig.from_dict({
    "input": {"table": params["input_table"] or None, "path": params["input_path"] or None,
              "key_col": params["key_col"], "embedding_col": params["embedding_col"]},
    "model": {"path": params["model_path"], "n_levels": int(params["n_levels"]),
              "n_clusters": int(params["n_clusters"]), "sample_size": int(params["sample_size"])},
    "output": {"table": params["output_table"] or None, "path": params["output_path"] or None},
})
have_model = model_exists(cfg.model.path)  # a path, dbfs:/Volumes/… or URL
refit_requested = params["refit"].lower() == "true"

# COMMAND ----------

from semid_spark.spark import pipeline
from semid_spark.spark.refit import refit

if not have_model:
    fit_report = pipeline.fit_only(spark, cfg)  # noqa: F821 (the notebook's session)
    print(f"fitted model {fit_report.model_sha256[:12]} in {fit_report.seconds}")
elif refit_requested:  # a new version beside the table's model, aligned to its IDs: `semid refit`
    refit_report = refit(spark, cfg, out_dir=params["report_dir"].rstrip("/") + "/refit")  # noqa: F821
    print(f"refit published={refit_report.published}: model {refit_report.new_model_path}, IDs in "
          f"{refit_report.ids_table}; point model_path (and output_table) there for the next runs")
else:
    print(f"using the model saved at {cfg.model.path}")

# COMMAND ----------

assign_report = pipeline.assign_only(spark, cfg)  # noqa: F821
print(f"{assign_report.n_input:,} items read, {assign_report.n_inserted:,} new IDs written; "
      f"collision share {assign_report.collision_share:.4f}; seconds {assign_report.seconds}")

# COMMAND ----------

from semid_spark.spark.evaluate import EvaluateOptions, evaluate_job

quality, paths = evaluate_job(spark, cfg, EvaluateOptions(out_dir=params["report_dir"]))  # noqa: F821
print(open(paths["markdown"], encoding="utf-8").read())
