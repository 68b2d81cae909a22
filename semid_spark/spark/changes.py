"""``input.since: last_run``: read only the rows a Delta input gained since the last run, from its Change Data Feed.

Each run records the input version it read in the output table's properties
(``semid.input_version``). With ``since: last_run`` the next run reads the input's change feed
from the version after that one up to the current one: inserted rows and the new images of
updated rows, the latest per key. Deleted rows are ignored (written IDs are never removed). A
run that dies before recording its version is simply read again by the next one: the
insert-only MERGE skips the keys it already wrote.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from semid_spark.config import JobConfig
from semid_spark.delta.table import TableRef, is_commit_conflict
from semid_spark.exceptions import ConfigError

log = logging.getLogger(__name__)

INPUT_VERSION_PROPERTY, INPUT_PROPERTY = "semid.input_version", "semid.input"
_CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


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
    from semid_spark.spark.incremental import broadcast_limit

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
