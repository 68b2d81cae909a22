"""What a run reads: the input as a path or a table, one snapshot of it, or its changes since the last run;
and whether executors may read its files themselves.

- ``read_input``: the whole input, ``input.path`` (Parquet or Delta) or ``input.table``.
- ``input.since: last_run`` reads only the rows a Delta input gained since the last run, from its
  Change Data Feed. Each run records the input version it read in the output table's properties
  (``semid.input_version``); the next reads the change feed from the version after that one up to
  the current one: inserted rows and the new images of updated rows, the latest per key. Deleted
  rows are ignored (written IDs are never removed). A run that dies before recording its version
  is read again by the next one: the insert-only MERGE skips the keys it already wrote.
- ``input_files``: the data files of a whole snapshot, for ``spark.files``' direct reader, or None
  where Spark's reader must stay in charge (Delta deletion vectors, column mapping, type widening,
  remote files under ``encode.reader: auto``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from semid_spark import storage
from semid_spark.config import JobConfig
from semid_spark.delta.table import TableRef, is_commit_conflict
from semid_spark.exceptions import ConfigError, InvalidInputError
from semid_spark.spark.incremental import broadcast_limit

log = logging.getLogger(__name__)

INPUT_VERSION_PROPERTY, INPUT_PROPERTY = "semid.input_version", "semid.input"
_CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")
_NEEDS_SPARK_READER = ("deletionVectors", "columnMapping", "typeWidening")  # Delta table features


@dataclass(frozen=True)
class InputRead:
    rows: DataFrame
    version: int | None  # the input's Delta version read up to (None: not a Delta input)
    since: int | None = None  # the version read from (exclusive); None: the whole input
    unchanged: bool = False  # no input version since the last run: nothing to read
    whole: bool = False  # rows are one whole, unfiltered snapshot of the input (its files can be read directly)


def input_ref(cfg: JobConfig) -> TableRef | None:
    """The input as a Delta table, or None when it is Parquet."""
    if cfg.input.table:
        return TableRef(name=cfg.input.table)
    return TableRef(path=cfg.input.path) if cfg.input.format == "delta" else None


def read_since_last_run(spark: SparkSession, cfg: JobConfig, out: TableRef, current: int | None) -> InputRead:
    """The rows to process: the input's changes since the version recorded on *out*, up to *current*
    (the input's latest version, ``current_version``), or all of version *current* when no version
    is recorded yet."""
    ref = input_ref(cfg)
    if ref is None or current is None:
        raise ConfigError("input.since=last_run needs a Delta input (input.table, or input.path with "
                          "input.format=delta) with its Change Data Feed on")
    props = out.properties(spark)
    last = props.get(INPUT_VERSION_PROPERTY) if props.get(INPUT_PROPERTY) == str(ref) else None
    if last is None:
        log.info("input %s: no run of it recorded on %s yet; reading all of version %d", ref, out, current)
        return InputRead(ref.read(spark, versionAsOf=current), current, whole=True)
    last = int(last)
    if last >= current:
        log.info("input %s: no new version since %d", ref, last)
        return InputRead(ref.read(spark, versionAsOf=current).limit(0), current, last, unchanged=True)
    if str(ref.properties(spark).get("delta.enableChangeDataFeed", "false")).lower() != "true":
        raise ConfigError(f"input.since=last_run: input {ref} has no Change Data Feed; turn it on with "
                          f"ALTER TABLE {ref.identifier} SET TBLPROPERTIES (delta.enableChangeDataFeed = true), "
                          "or set input.since=all")
    changes = ref.read(spark, readChangeFeed=True, startingVersion=last + 1, endingVersion=current)
    changed = changes.where(F.col("_change_type").isin("insert", "update_postimage"))
    # one version holds one image per key (two would be duplicate keys, which the input checks refuse):
    # only a feed of several versions needs its older images dropped
    rows = latest_images(changed, cfg.input.key_col) if current > last + 1 else changed.drop(*_CDF_COLUMNS)
    log.info("input %s: reading its changes of versions %d..%d", ref, last + 1, current)
    return InputRead(rows, current, last)


def latest_images(changes: DataFrame, key_col: str, *, broadcast_keys: int | None = None) -> DataFrame:
    """The latest image per key of a change feed's inserts and post-images, without shuffling embeddings:
    keys changed in more than one version are found by a key-only aggregation (broadcast back when
    they are few, as they are on a normal day), and only their older images are dropped."""
    repeated = (changes.groupBy(key_col).agg(F.countDistinct("_commit_version").alias("_versions"),
                                             F.max("_commit_version").alias("_latest"))
                       .where(F.col("_versions") > 1).select(key_col, "_latest"))
    n_repeated = repeated.count()  # reads the feed's key and version columns only
    columns = [c for c in changes.columns if c not in _CDF_COLUMNS]
    if n_repeated == 0:
        return changes.select(*columns)
    repeated = F.broadcast(repeated) if n_repeated <= broadcast_limit(broadcast_keys) else repeated
    kept = changes.join(repeated, key_col, "left").where(
        F.col("_latest").isNull() | (F.col("_commit_version") == F.col("_latest")))
    return kept.select(*columns)


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def current_version(spark: SparkSession, cfg: JobConfig) -> int | None:
    """The input's latest Delta version (None for Parquet), taken before the input is read: a run
    records at most what it read, so the next ``since: last_run`` run misses nothing."""
    ref = input_ref(cfg)
    return ref.version(spark) if ref is not None else None


def record_input_version(spark: SparkSession, out: TableRef, ref: TableRef | None, version: int | None) -> None:
    """Write the input (*ref*) and the version of it this run read onto the output table, after its
    commit (no commit when they are there already). A conflict only costs the next run a re-read:
    it is logged, not raised."""
    if version is None or ref is None:
        return
    props = out.properties(spark)
    if not props or (props.get(INPUT_PROPERTY), props.get(INPUT_VERSION_PROPERTY)) == (str(ref), str(version)):
        return
    try:
        spark.sql(f"ALTER TABLE {out.identifier} SET TBLPROPERTIES ('{INPUT_PROPERTY}' = '{_quoted(str(ref))}', "
                  f"'{INPUT_VERSION_PROPERTY}' = '{version}')")
    except Exception as exc:
        if not is_commit_conflict(exc):
            raise
        log.warning("table %s: input version %d not recorded (another run committed); the next run reads "
                    "those changes again, and inserts none of them twice", out, version)


def read_input(spark: SparkSession, cfg: JobConfig) -> DataFrame:
    """The catalog, or an error saying what could not be read and which setting names it."""
    src = cfg.input
    try:
        if src.table:
            return spark.read.table(src.table)
        return spark.read.format(src.format).load(src.path)
    except AnalysisException as exc:
        what = f"table {src.table!r} (input.table)" if src.table else f"{src.format} path {src.path!r} (input.path, input.format)"
        raise InvalidInputError(f"cannot read the input {what}: {str(exc).splitlines()[0]}") from None


def read_source(spark: SparkSession, cfg: JobConfig, out: TableRef, items: DataFrame | None, *,
            changes_only: bool) -> InputRead:
    """What this run reads: *items*, the input's changes since the last run, or the whole input."""
    if items is not None:
        return InputRead(items, None)
    version = current_version(spark, cfg)  # before reading: a run records at most what it read
    if changes_only:
        return read_since_last_run(spark, cfg, out, version)
    return InputRead(read_input(spark, cfg), version, whole=True)


@dataclass(frozen=True)
class InputFiles:
    """The data files of one input snapshot and the columns to read from them."""

    paths: tuple[str, ...]  # readable by the executors' pyarrow (local, FUSE, or an fsspec URL)
    sizes: tuple[int, ...]  # bytes of each file: splits big ones over several tasks
    key_col: str
    embedding_col: str
    key_type: T.DataType


def input_files(spark: SparkSession, df: DataFrame, ref: TableRef | None, *, key_col: str, embedding_col: str,
                reader: str) -> InputFiles | None:
    """The files under *df* (a whole, unfiltered read of the input *ref*, Delta; None: Parquet), or None
    when Spark's reader must read them. *reader*: ``auto`` (local and FUSE files only), ``files``
    (any fsspec URL too; an input that needs Spark's reader is then an error) or ``spark`` (None)."""
    if reader == "spark":
        return None
    why = _needs_spark_reader(spark, df, ref, key_col, embedding_col)
    paths = [_reachable(p) for p in df.inputFiles()] if why is None else []
    if why is None and reader == "auto" and any(storage.is_url(p) for p in paths):
        why = "its files are on remote storage (set encode.reader=files to read them with pyarrow and fsspec)"
    if why is not None:
        if reader == "files":
            raise ConfigError(f"encode.reader=files: the input cannot be read from its files: {why}; "
                              "set encode.reader=auto or spark")
        log.info("encoding through Spark's reader: %s", why)
        return None
    return InputFiles(tuple(paths), tuple(_size(p) for p in paths), key_col, embedding_col,
                      df.schema[key_col].dataType)


def _needs_spark_reader(spark: SparkSession, df: DataFrame, ref: TableRef | None, key_col: str,
                        embedding_col: str) -> str | None:
    emb_type = df.schema[embedding_col].dataType
    if not (isinstance(emb_type, T.ArrayType) and isinstance(emb_type.elementType, (T.FloatType, T.DoubleType))):
        return f"{embedding_col!r} is {emb_type.simpleString()}, not an array of floats"
    if ref is None:
        return None
    detail = ref.detail(spark)
    if detail is None:
        return f"no Delta table at {ref}"
    props = detail["properties"] or {}
    features = set(detail.asDict().get("tableFeatures") or ())
    if props.get("delta.columnMapping.mode", "none") != "none":
        features.add("columnMapping")
    if str(props.get("delta.enableDeletionVectors", "false")).lower() == "true":
        features.add("deletionVectors")
    needs = sorted(features.intersection(_NEEDS_SPARK_READER))
    if needs:
        return f"Delta table {ref} uses {', '.join(needs)}"
    if {key_col, embedding_col} & set(detail["partitionColumns"] or ()):
        return f"Delta table {ref} is partitioned by {key_col!r} or {embedding_col!r}"
    return None


def _reachable(uri: str) -> str:
    """A path the executors' pyarrow opens: Spark's ``file:`` URIs (percent-encoded) as local paths,
    ``dbfs:`` as FUSE paths, other URLs as they are (fsspec's)."""
    if urlsplit(uri).scheme == "file":
        return unquote(urlsplit(uri).path)
    local = storage.local_path(uri)
    return local if local is not None else uri


def _size(path: str) -> int:
    if not storage.is_url(path):
        return os.path.getsize(path)
    fs, inner = storage.filesystem(path)
    return int(fs.size(inner))
