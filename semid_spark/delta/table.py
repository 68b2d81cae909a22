"""The output Delta table: bound to one model, written only by insert-only merges.

Table properties record the model (``semid.model_sha256``, levels, sizes). Rows are only ever
added by ``MERGE ... WHEN NOT MATCHED THEN INSERT *`` on the item key, so an ID once written
never changes, re-running the same input inserts nothing, and a failed run commits nothing.

The first run creates the table empty, with its properties, before it merges the IDs in:
a run killed while it writes the IDs leaves an empty table of its model (or, killed in the
create, a folder without a commit), and the next run merges into it as if nothing happened.
An empty table that records no model yet is claimed by the next run.

Everything goes through Delta SQL (``DESCRIBE DETAIL``, ``DESCRIBE HISTORY``, ``ALTER TABLE``,
``MERGE INTO``) and the DataFrame writer, never the ``DeltaTable`` Python API: so the same code
runs on Spark Connect (Databricks serverless and shared clusters), where the ``DeltaTable`` API
needs a server plugin that open-source Spark does not have.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Literal, Sequence

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from semid_spark.exceptions import ModelMismatchError
from semid_spark.delta.schema import RUN_ID, missing_columns

log = logging.getLogger(__name__)

SHA_PROPERTY = "semid.model_sha256"
# lineage of model versions (semid refit): the model a table's IDs came from before, where its own
# model is saved, the version that followed it and where that one's IDs are, every model in order
PARENT_SHA_PROPERTY = "semid.parent_model_sha256"
PARENT_TABLE_PROPERTY = "semid.parent_table"
MODEL_PATH_PROPERTY = "semid.model_path"
SUCCESSOR_SHA_PROPERTY = "semid.successor_model_sha256"
SUCCESSOR_TABLE_PROPERTY = "semid.successor_table"
SUCCESSOR_PATH_PROPERTY = "semid.successor_model_path"
HISTORY_PROPERTY = "semid.model_history"
# a keep_ids refit being published: its model, the run whose rows move the table onto it, where it is
# saved. Set by a commit before that run's MERGE; the MERGE is the moment of the switch (the table is
# bound to the pending model once rows of that run are in it); a last commit folds these into the
# binding and empties them
PENDING_SHA_PROPERTY = "semid.pending_model_sha256"
PENDING_RUN_PROPERTY = "semid.pending_run_id"
PENDING_PATH_PROPERTY = "semid.pending_model_path"
PENDING_PROPERTIES = (PENDING_SHA_PROPERTY, PENDING_RUN_PROPERTY, PENDING_PATH_PROPERTY)
STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"
Mode = Literal["create", "claim", "append", "replace"]


@dataclass(frozen=True)
class TableRef:
    """A Delta table by path (``output.path``) or by name (``output.table``)."""

    path: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        return self.name or self.path or "?"

    @property
    def identifier(self) -> str:
        """The name, or ``delta.`<absolute path or URL>``` (a relative path would read as a schema name)."""
        if self.name:
            return self.name
        path = self.path if "://" in self.path else os.path.abspath(self.path)
        return "delta.`{}`".format(path.replace("`", "``"))

    def detail(self, spark: SparkSession) -> Row | None:
        """``DESCRIBE DETAIL``'s row, or None when there is no Delta table (no folder, or no commit in it)."""
        if self.name and not spark.catalog.tableExists(self.name):
            return None
        try:
            row = spark.sql(f"DESCRIBE DETAIL {self.identifier}").first()
        except AnalysisException as exc:
            if _condition(exc) in ("DELTA_MISSING_DELTA_TABLE", "DELTA_PATH_DOES_NOT_EXIST", "PATH_NOT_FOUND"):
                return None
            raise
        return row if row is not None and str(row["format"]).lower() == "delta" else None

    def exists(self, spark: SparkSession) -> bool:
        return self.detail(spark) is not None

    def properties(self, spark: SparkSession) -> dict[str, str]:
        detail = self.detail(spark)
        return dict(detail["properties"] or {}) if detail is not None else {}

    def version(self, spark: SparkSession) -> int | None:
        """The latest committed version, or None without a table."""
        if not self.exists(spark):
            return None
        return int(spark.sql(f"DESCRIBE HISTORY {self.identifier} LIMIT 1").first()["version"])

    def read(self, spark: SparkSession, **options: object) -> DataFrame:
        """The table, with Delta reader *options* (``versionAsOf``, ``readChangeFeed``, ...)."""
        reader = spark.read.format("delta").options(**options)
        return reader.table(self.name) if self.name else reader.load(self.path)


def _condition(exc: Exception) -> str:
    getter = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    try:
        return (getter() if getter else None) or ""
    except Exception:  # a remote error without one
        return ""


def is_commit_conflict(exc: BaseException) -> bool:
    """Whether *exc* is Delta's answer to another writer committing first (classic or Connect)."""
    try:
        from delta.exceptions import base

        conflict_types = tuple(getattr(base, name) for name in dir(base)
                               if name.endswith("Exception") and name != "PySparkException")
        if isinstance(exc, conflict_types):
            return True
    except ImportError:  # a Databricks runtime may ship Delta without its pip package
        pass
    condition = _condition(exc) if isinstance(exc, Exception) else ""
    if condition.startswith("DELTA_CONCURRENT") or condition in ("DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED"):
        return True
    text = str(exc)
    return any(name in text for name in ("ConcurrentAppendException", "ConcurrentWriteException",
                                         "MetadataChangedException", "ProtocolChangedException",
                                         "ConcurrentTransactionException", "ConcurrentDeleteReadException"))


SHAPE_ADVICE_PROPERTY = "semid.shape_advice"  # model.n_clusters: auto: the choice and what was tried (JSON)


def model_properties(encoder) -> dict[str, str]:
    sizes = encoder.codebook_sizes
    advice = getattr(encoder, "shape_advice", None)
    return {
        SHA_PROPERTY: encoder.sha256,
        "semid.model_type": type(encoder).__name__,
        "semid.n_levels": str(len(sizes)),
        "semid.codebook_sizes": ",".join(map(str, sizes)),
        **({SHAPE_ADVICE_PROPERTY: json.dumps(advice, sort_keys=True)} if advice else {}),
    }


def table_model_sha(spark: SparkSession, ref: TableRef) -> str | None:
    """The model whose IDs *ref* holds (see ``bound_model``), or None."""
    return bound_model(spark, ref, ref.properties(spark))


def bound_model(spark: SparkSession, ref: TableRef, props: dict[str, str]) -> str | None:
    """The model whose IDs the table (with properties *props*) holds: ``semid.model_sha256``, or the
    pending model of a keep_ids refit once rows of its run are in the table (its MERGE committed)."""
    pending = props.get(PENDING_SHA_PROPERTY)
    if pending and pending_rows_in(spark, ref, props):
        return pending
    return props.get(SHA_PROPERTY)


def pending_rows_in(spark: SparkSession, ref: TableRef, props: dict[str, str]) -> bool:
    """Whether the pending refit's run has inserted its rows (one read that Delta's statistics on
    ``run_id`` narrow to the files that may hold them)."""
    run = props.get(PENDING_RUN_PROPERTY)
    if not run:
        return False
    return bool(ref.read(spark).where(F.col(RUN_ID) == run).select(RUN_ID).limit(1).collect())


def check_table(spark: SparkSession, ref: TableRef, encoder, *, replace_on_new_model: bool,
                rebinding_from: str | None = None) -> Mode:
    """How this run writes *ref*:

    - 'append': the table holds this model's IDs (or is being moved onto it: it is the pending model of
      a keep_ids refit, or *rebinding_from* is the model the table is bound to);
    - 'create': there is no table (a folder left by a killed create counts as none);
    - 'claim': an empty table that records no model yet (a run stopped right after creating it);
    - 'replace': another model's table, and replacing it is allowed.

    Another model's table otherwise raises ``ModelMismatchError``.
    """
    detail = ref.detail(spark)
    if detail is None:
        return "create"
    props = dict(detail["properties"] or {})
    stored, sha = bound_model(spark, ref, props), encoder.sha256
    if sha in (stored, props.get(PENDING_SHA_PROPERTY)) or (rebinding_from is not None and stored == rebinding_from):
        return "append"
    if stored is None and int(detail["numFiles"] or 0) == 0:
        return "claim"
    if replace_on_new_model:
        return "replace"
    if stored != props.get(SHA_PROPERTY) and sha == props.get(SHA_PROPERTY):  # a keep_ids refit's rows are in
        raise ModelMismatchError(
            f"table {ref} was refitted from this run's model {sha[:12]}… to {stored[:12]}…, saved at "
            f"{props.get(PENDING_PATH_PROPERTY, '?')}: set model.path to that (`semid refit` again finishes "
            "recording the switch)")
    if props.get(PARENT_SHA_PROPERTY) == sha:  # `semid refit --set output.on_refit=keep_ids` moved it on
        raise ModelMismatchError(
            f"table {ref} was refitted from this run's model {sha[:12]}… to {str(stored)[:12]}…, saved at "
            f"{props.get(MODEL_PATH_PROPERTY, '?')}: set model.path to that")
    held = f"IDs of model sha256={stored[:12]}…" if stored else "rows of no recorded model"
    raise ModelMismatchError(
        f"table {ref} holds {held}, this run's model is {sha[:12]}…; IDs of two models must not "
        "mix. Write to a new output table, or set output.new_table_on_model_change=true to replace it (the old "
        "version stays in Delta history), or move the table to a new model with `semid refit`"
    )


def prepare_table(spark: SparkSession, ref: TableRef, schema: T.StructType, encoder, mode: Mode, *,
                  stats_columns: Sequence[str] = ()) -> None:
    """Make *ref* an empty-or-this-model's table with the model's properties ('append': only the columns an earlier version's table lacks).

    *stats_columns*: the only columns whose min/max Delta keeps per file (the ones reads filter on);
    statistics on every column cost the writer about an eighth of its time (semantic IDs, codes and
    the model digest are strings and arrays no reader skips files by). Empty: Delta's default."""
    if mode == "append":
        _add_missing_columns(spark, ref, schema)
        return
    props = model_properties(encoder)
    if stats_columns:
        props[STATS_COLUMNS_PROPERTY] = ",".join("`{}`".format(c.replace("`", "``")) for c in stats_columns)
    if mode == "replace":  # one commit; the old version stays in the table's history
        # REPLACE TABLE: Delta 3.x (Spark 3.5) refuses DataFrameWriterV2.createOrReplace on a path table,
        # and CREATE OR REPLACE of a path table checks the new properties against the old ones
        columns = ", ".join("`{}` {}".format(f.name.replace("`", "``"), f.dataType.simpleString()) for f in schema.fields)
        spark.sql(f"REPLACE TABLE {ref.identifier} ({columns}) USING delta "
                  f"TBLPROPERTIES ({_property_list(props)})")
        return
    if mode == "create":
        writer = spark.createDataFrame([], schema).writeTo(ref.identifier).using("delta")
        for key, value in props.items():
            writer = writer.tableProperty(key, value)
        try:
            writer.create()  # one commit: the empty table and its model
            return
        except AnalysisException as exc:
            if _condition(exc) not in ("TABLE_OR_VIEW_ALREADY_EXISTS", "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION"):
                raise
        # a folder that a killed run left without a commit: CREATE TABLE refuses it, the DataFrame writer does not
        log.info("table %s: a folder without a Delta commit is there (a run stopped while creating it); "
                 "creating the table over it", ref)
        _append_empty(spark, ref, schema)
    if mode in ("create", "claim"):
        stored = table_model_sha(spark, ref)
        if stored == encoder.sha256:  # a concurrent run of the same model created it first
            return
        if stored is not None:
            raise ModelMismatchError(f"table {ref} was just created for model {stored[:12]}… by another run; "
                                     f"this run's model is {encoder.sha256[:12]}…")
        set_properties(spark, ref, props)
        stored = table_model_sha(spark, ref)
        if stored != encoder.sha256:  # another run claimed it between our check and our ALTER
            raise ModelMismatchError(f"table {ref} was just bound to model {str(stored)[:12]}… by another run; "
                                     f"this run's model is {encoder.sha256[:12]}…")


def set_properties(spark: SparkSession, ref: TableRef, props: dict[str, str]) -> None:
    """Set table properties (one metadata commit)."""
    spark.sql(f"ALTER TABLE {ref.identifier} SET TBLPROPERTIES ({_property_list(props)})")


def _property_list(props: dict[str, str]) -> str:
    return ", ".join(f"'{key}' = '{_sql_string(value)}'" for key, value in props.items())


def begin_rebinding(spark: SparkSession, ref: TableRef, old_sha: str, encoder, run_id: str, model_path: str) -> None:
    """Name *encoder* (saved at *model_path*) as *ref*'s pending model, and *run_id* as the run whose rows
    switch the table onto it (one commit; the table stays bound to *old_sha*, for every reader, until
    that run's MERGE commits). A table already bound to *encoder* is left as it is."""
    props = ref.properties(spark)
    if not _moves_on(ref, bound_model(spark, ref, props), old_sha, encoder):
        return
    set_properties(spark, ref, {PENDING_SHA_PROPERTY: encoder.sha256, PENDING_RUN_PROPERTY: run_id,
                                PENDING_PATH_PROPERTY: model_path})


def abandon_rebinding(spark: SparkSession, ref: TableRef, run_id: str) -> None:
    """Forget *run_id*'s pending model when none of its rows got in (a publish that failed before its
    MERGE committed); the table was bound to its old model all along."""
    props = ref.properties(spark)
    if props.get(PENDING_RUN_PROPERTY) == run_id and not pending_rows_in(spark, ref, props):
        set_properties(spark, ref, dict.fromkeys(PENDING_PROPERTIES, ""))


def rebind_table(spark: SparkSession, ref: TableRef, old_sha: str, encoder, lineage: dict[str, str]) -> None:
    """Bind *ref*, the table of model *old_sha*, to *encoder* (``output.on_refit: keep_ids``): one commit
    of its model properties and *lineage*, with the model list ``semid.model_history`` extended and
    the pending properties emptied. A table already bound to *encoder* is left as it is.

    A run of the old model that merges after this commit (or after the pending run's MERGE) conflicts
    with it, and its retry stops on the model mismatch: no row of the old model lands after the switch.
    """
    props = ref.properties(spark)
    if not _moves_on(ref, props.get(SHA_PROPERTY), old_sha, encoder):
        return
    history = [sha for sha in props.get(HISTORY_PROPERTY, old_sha).split(",") if sha]
    set_properties(spark, ref, {**model_properties(encoder), **lineage, **dict.fromkeys(PENDING_PROPERTIES, ""),
                                HISTORY_PROPERTY: ",".join(history + [encoder.sha256])})


def _moves_on(ref: TableRef, stored: str | None, old_sha: str, encoder) -> bool:
    """Whether a table bound to *stored* is still to move from *old_sha* to *encoder* (False: it has);
    bound to another model, it raises."""
    if stored == encoder.sha256:
        return False
    if stored != old_sha:
        raise ModelMismatchError(f"table {ref} holds IDs of model {str(stored)[:12]}…, not of the model being "
                                 f"refitted ({old_sha[:12]}…); nothing was changed")
    return True


def _add_missing_columns(spark: SparkSession, ref: TableRef, schema: T.StructType) -> None:
    """Columns of *schema* a table written by an earlier version lacks (``schema.ADDED_COLUMNS``), added
    as nullable: its rows read null there, which no later MERGE changes."""
    missing = missing_columns(set(ref.read(spark).columns), schema)
    if missing:
        columns = ", ".join("`{}` {}".format(f.name.replace("`", "``"), f.dataType.simpleString()) for f in missing)
        log.info("table %s: adding column(s) %s", ref, columns)
        spark.sql(f"ALTER TABLE {ref.identifier} ADD COLUMNS ({columns})")


def merge_new_rows(spark: SparkSession, ref: TableRef, rows: DataFrame, key_col: str, *,
                   unread_rows: tuple[str, str] | None = None) -> int:
    """Insert-only MERGE on the item key; the number of rows this MERGE inserted (from its own result).

    *unread_rows* ``(column, value)``: a value no written row holds (this run's id), for *rows* that
    drop the keys the table holds by a read of their own, which runs inside this MERGE (lazy). The
    MERGE then matches only target rows with that value: Delta's data skipping reads no file and
    Spark shuffles no key of the table, while a commit by another run after this MERGE's snapshot
    still conflicts (the condition is on a data column, so every added file counts as read).
    """
    view = f"semid_new_rows_{uuid.uuid4().hex}"
    rows.createOrReplaceTempView(view)
    condition = f"t.`{key_col}` = s.`{key_col}`"
    if unread_rows is not None:
        column, value = unread_rows
        condition += f" AND t.`{column}` = '{value}'"
    try:
        result = spark.sql(
            f"MERGE INTO {ref.identifier} AS t USING {view} AS s ON {condition} "
            "WHEN NOT MATCHED THEN INSERT *"  # no WHEN MATCHED: written IDs never change
        ).first()
    finally:
        spark.catalog.dropTempView(view)
    return int(result["num_inserted_rows"]) if result is not None else 0


def append_idempotent(spark: SparkSession, ref: TableRef, rows: DataFrame, id_col: str) -> int:
    """Insert the rows of *rows* whose *id_col* the table does not hold yet (created if absent): a retry adds nothing."""
    if not ref.exists(spark):
        _append_empty(spark, ref, rows.schema)
    else:  # written by an earlier version of semid_spark, with fewer columns
        _add_missing_columns(spark, ref, rows.schema)
    return merge_new_rows(spark, ref, rows, id_col)


def _append_empty(spark: SparkSession, ref: TableRef, schema: T.StructType) -> None:
    """An empty append with the DataFrame writer: creates the table, over a folder without a commit too."""
    empty = spark.createDataFrame([], schema).write.format("delta").mode("append")
    empty.saveAsTable(ref.name) if ref.name else empty.save(ref.path)


def _sql_string(text: str) -> str:
    """*text* for the inside of a single-quoted Spark SQL literal."""
    return text.replace("\\", "\\\\").replace("'", "\\'")
