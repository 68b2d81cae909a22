"""A run's input, read and checked: the rows to encode, what the checks learnt, the rows set aside.

``input.on_invalid: fail`` (the default): a bad row raises, naming how many there are and which
(``validate``). ``reject``: bad rows are set aside with their reason and written to
``input.reject_path`` once the run has committed, once (``write_rejects``: a retry of the same
input adds no copy).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from semid_spark.config import JobConfig
from semid_spark.delta.schema import REJECT_ID, reject_rows
from semid_spark.delta.table import TableRef, append_idempotent
from semid_spark.spark.session import Seconds, stage
from semid_spark.spark.source import read_input
from semid_spark.spark.validate import InputReport, check_input, check_keys, normalize_columns, split_invalid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Intake:
    """The input of a run, checked."""

    rows: DataFrame  # normalized valid rows (with rows_checked_later, their embeddings are checked where read)
    info: InputReport  # rows, embedding length, whether the embeddings were checked
    rejected: DataFrame | None = None  # on_invalid=reject: the bad rows, with reject_reason and reject_id
    n_rejected: int = 0
    seconds: Seconds = field(default_factory=Seconds)


def validated_input(df: DataFrame, cfg: JobConfig, dim: int | None, *, rows_checked_later: bool = False,
                    allow_empty: bool = False) -> Intake:
    """Normalized, checked input; bad rows raise (or, with on_invalid=reject, are set aside in
    ``Intake.rejected``, for ``write_rejects`` once the run has committed).

    *rows_checked_later*: check only the keys here (one aggregation over the key column); the
    caller checks the embeddings in the passes that read them (``run``: the sample and encode), and
    learns their length from the sample when *dim* is None (``InputReport.dim`` None until then).
    *dim*: the expected embedding length (the model's); None: the most common one. *allow_empty*:
    no rows is no error (a day without changes).
    """
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    source = df
    df = normalize_columns(df, key, emb)
    rejected, n_rejected = None, 0
    if cfg.input.on_invalid == "reject":
        rows_checked_later = False
        valid, bad, dim = split_invalid(df, key, emb, dim=dim)
        valid = valid.cache()
        n_rejected = bad.count()
        if n_rejected:
            log.warning("%d rows rejected; they go to %s once the run commits", n_rejected, cfg.input.reject_path)
            rejected = bad.withColumn(REJECT_ID, _reject_id(source, key, emb))
        df = valid
    if rows_checked_later:  # keys now; embeddings where they are read anyway (sample, encode)
        info = InputReport(n_rows=check_keys(df, key, allow_empty=allow_empty), dim=dim, rows_checked=False)
    else:
        df, info = check_input(df, key, emb, dim=dim, allow_empty=allow_empty)
    return Intake(df, info, rejected, n_rejected)


def read_validated(spark: SparkSession, cfg: JobConfig, items: DataFrame | None, *, dim: int | None = None,
                   rows_checked_later: bool = False, allow_empty: bool = False) -> Intake:
    """``validated_input`` of *items* (None: the configured input, read here), as the run's validate stage."""
    seconds = Seconds()
    with stage(spark, "semid: read and validate input"), seconds.timed("validate"):
        source = items if items is not None else read_input(spark, cfg)
        intake = validated_input(source, cfg, dim, rows_checked_later=rows_checked_later, allow_empty=allow_empty)
    return replace(intake, seconds=seconds)


def _reject_id(source: DataFrame, key: str, emb: str) -> Column:
    """A rejected row's identity: its key and embedding, within this input (its files), so that a
    retried run over the same input rejects into the same ids and the reject table keeps one copy."""
    try:
        files = sorted(source.inputFiles())
    except Exception:  # a DataFrame built in memory has no files
        files = []
    input_digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
    return F.sha2(F.to_json(F.struct(F.lit(input_digest).alias("input"), F.col(key).cast("string").alias("key"),
                                     F.col(emb).cast("string").alias("embedding"))), 256)


def write_rejects(spark: SparkSession, cfg: JobConfig, intake: Intake, run_id: str) -> None:
    """Append this run's rejected rows to ``input.reject_path``, once: a retry of the same input adds no copy."""
    if intake.rejected is None:
        return
    rows = reject_rows(intake.rejected, run_id)
    added = append_idempotent(spark, TableRef(cfg.input.reject_path), rows, REJECT_ID)
    log.warning("%d rejected rows written to %s (%d were there from an earlier try)",
                added, cfg.input.reject_path, intake.n_rejected - added)
