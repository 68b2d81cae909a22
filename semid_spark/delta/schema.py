"""The tables the job writes, declared once: their columns, their types, and what an older table lacks.

- **The ID table** (``output.path`` / ``output.table``): the item key (its input type), then
  ``semantic_id``, ``codes`` (array<int>), ``counter``, ``relocated``, ``model_sha256``,
  ``run_id``, ``assigned_at`` (:func:`id_rows` builds them). One row an item, never updated.
- **The reject table** (``input.reject_path``, ``input.on_invalid: reject``): the input's columns
  as read, ``reject_reason``, ``reject_id`` (the row's identity within its input: a retry adds no
  copy) and ``run_id`` (:func:`reject_rows`).
- **The churn table** (``output.churn_table``): a row a refit, :data:`CHURN_SCHEMA`.

Migrations: a table written by an earlier version lacks the columns :data:`ADDED_COLUMNS` names;
a write adds them (:func:`missing_columns`) as nullable columns, where its older rows read null
(no later write changes a written row).

The job's working columns (encode's candidates and its row-problem flag) are named here too, with
a leading ``_``: they never reach a table.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

# the ID table
CODES, COUNTER, SEMANTIC_ID = "codes", "counter", "semantic_id"
RELOCATED = "relocated"  # the item moved to a free last-level code of its prefix (uniqueness.strategy: relocate)
MODEL_SHA, RUN_ID, ASSIGNED_AT = "model_sha256", "run_id", "assigned_at"
KEY_TYPES = (T.StringType, T.LongType, T.IntegerType)  # what the item key may be

# the reject table
REASON, REJECT_ID = "reject_reason", "reject_id"

# working columns of the job
CANDIDATES, DISTANCES = "_candidates", "_distances"  # encode's last-level candidates for relocation
PROBLEM = "_problem"  # encode's flag for a row it could not encode (0: encoded)

# the churn table
REFIT_ID = "refit_id"
CHURN_SCHEMA = T.StructType([
    T.StructField(REFIT_ID, T.StringType()),
    T.StructField("refit_at", T.TimestampType()),
    T.StructField("old_model_sha256", T.StringType()),
    T.StructField("new_model_sha256", T.StringType()),
    T.StructField("on_refit", T.StringType()),
    T.StructField("n_items", T.LongType()),
    T.StructField("churn_unaligned", T.ArrayType(T.DoubleType())),
    T.StructField("churn_aligned", T.ArrayType(T.DoubleType())),
    T.StructField("churn_cold_refit", T.ArrayType(T.DoubleType())),  # a plain cold refit's, unaligned (or null)
    T.StructField("error_old", T.DoubleType()),
    T.StructField("error_new", T.DoubleType()),
    T.StructField("collision_old", T.DoubleType()),
    T.StructField("collision_new", T.DoubleType()),
    T.StructField("max_churn", T.DoubleType()),
    T.StructField("published", T.BooleanType()),
    T.StructField("ids_table", T.StringType()),  # where the new version's IDs are (null when not published)
    T.StructField("new_model_path", T.StringType()),
    # share of the items in both tables whose ID string changed (keep_ids: 0, no written ID changes)
    T.StructField("id_churn", T.DoubleType()),
])

# what tables written by earlier versions lack, by table; added by the next write, null in older rows
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "ids": (RELOCATED,),  # since relocation
    "churn": ("id_churn",),  # since refits keep ID strings where codes stay
}


def id_rows(ranked: DataFrame, *, key_col: str, model_sha: str, run_id: str) -> DataFrame:
    """The ID table's rows, in its column order, from ranked items (key, semantic_id, codes, counter,
    relocated) assigned by model *model_sha* in run *run_id*."""
    return ranked.select(
        key_col, SEMANTIC_ID, CODES, COUNTER, RELOCATED,
        F.lit(model_sha).alias(MODEL_SHA), F.lit(run_id).alias(RUN_ID), F.current_timestamp().alias(ASSIGNED_AT),
    )


def reject_rows(rejected: DataFrame, run_id: str) -> DataFrame:
    """The reject table's rows: the rejected input rows (with ``reject_reason`` and ``reject_id``), the run."""
    return rejected.withColumn(RUN_ID, F.lit(run_id))


def missing_columns(have: set[str], schema: T.StructType) -> list[T.StructField]:
    """The fields of *schema* a table whose columns are *have* lacks (written by an earlier version)."""
    return [f for f in schema.fields if f.name not in have]
