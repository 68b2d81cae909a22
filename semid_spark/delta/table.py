"""The output Delta table: created if absent, bound to one model, written only by insert-only merges.

Table properties record the model (``semid.model_sha256``, levels, sizes). Rows are added
with a MERGE that has only a ``whenNotMatchedInsertAll`` clause, so an ID once written never
changes, re-running the same input inserts nothing, and a failed run commits nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.utils import AnalysisException

from semid_spark.algorithms import codebook_sizes
from semid_spark.exceptions import ModelMismatchError

SHA_PROPERTY = "semid.model_sha256"


@dataclass(frozen=True)
class TableRef:
    path: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        return self.name or self.path or "?"

    def exists(self, spark: SparkSession) -> bool:
        if self.name:
            return spark.catalog.tableExists(self.name)
        return DeltaTable.isDeltaTable(spark, self.path)

    def delta(self, spark: SparkSession) -> DeltaTable:
        return DeltaTable.forName(spark, self.name) if self.name else DeltaTable.forPath(spark, self.path)

    def read(self, spark: SparkSession) -> DataFrame:
        return spark.read.table(self.name) if self.name else spark.read.format("delta").load(self.path)


def model_properties(encoder) -> dict[str, str]:
    sizes = codebook_sizes(encoder)
    return {
        SHA_PROPERTY: encoder.sha256,
        "semid.model_type": type(encoder).__name__,
        "semid.n_levels": str(len(sizes)),
        "semid.codebook_sizes": ",".join(map(str, sizes)),
    }


def table_model_sha(spark: SparkSession, ref: TableRef) -> str | None:
    props = ref.delta(spark).detail().select("properties").first()[0] or {}
    return props.get(SHA_PROPERTY)


def check_table(spark: SparkSession, ref: TableRef, encoder, *, replace_on_new_model: bool) -> str:
    """'append' (the table holds this model's IDs), 'create' (no table) or 'replace' (another
    model's table, replacement allowed); another model's table otherwise raises."""
    if not ref.exists(spark):
        return "create"
    stored = table_model_sha(spark, ref)
    if stored == encoder.sha256:
        return "append"
    if replace_on_new_model:
        return "replace"
    raise ModelMismatchError(
        f"table {ref} holds IDs of model sha256={str(stored)[:12]}…, this run's model is "
        f"{encoder.sha256[:12]}…; IDs of two models must not mix. Write to a new output table, or set "
        "output.new_table_on_model_change=true to replace it (the old version stays in Delta history)"
    )


def write_ids(spark: SparkSession, ref: TableRef, rows: DataFrame, *, key_col: str, encoder, mode: str) -> int:
    """Create (one atomic CREATE TABLE AS SELECT, with the model's properties) or insert-only MERGE."""
    if mode == "append":
        return insert_new(spark, ref, rows, key_col)
    # a path identifier must be absolute, or Spark reads `delta` as a schema name
    path = ref.path if ref.path is None or "://" in ref.path else os.path.abspath(ref.path)
    identifier = ref.name or f"delta.`{path}`"
    writer = rows.writeTo(identifier).using("delta")
    for key, value in model_properties(encoder).items():
        writer = writer.tableProperty(key, value)
    writer.createOrReplace() if mode == "replace" else writer.create()
    metrics = ref.delta(spark).history(1).select("operationMetrics").first()[0] or {}
    if "numOutputRows" in metrics:  # Delta records the rows its CREATE TABLE AS SELECT wrote: no re-scan
        return int(metrics["numOutputRows"])
    return ref.read(spark).count()


def insert_new(spark: SparkSession, ref: TableRef, rows: DataFrame, key_col: str) -> int:
    """Insert-only MERGE on the item key; returns the number of rows inserted."""
    (ref.delta(spark).alias("t")
        .merge(rows.alias("s"), f"t.`{key_col}` = s.`{key_col}`")
        .whenNotMatchedInsertAll()  # no whenMatched clause: written IDs never change
        .execute())
    last = ref.delta(spark).history(1).select("operation", "operationMetrics").first()
    if last is None or last["operation"] != "MERGE":
        return 0
    return int(last["operationMetrics"].get("numTargetRowsInserted", 0))


def written_ids(spark: SparkSession, ref: TableRef) -> DataFrame | None:
    try:
        return ref.read(spark)
    except AnalysisException:
        return None
