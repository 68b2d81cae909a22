"""IDs for a run's new items: encode on executors, check the gates, rank after the written IDs, MERGE.

``assign_ids`` returns what it did as an ``Assignment``; the uniqueness strategy (``strategies``)
decides the ranking, the encode pass keeps the candidates it asks for, and the table layer
(``delta.table``) decides whether the table is created, claimed or appended to.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from semid_spark.config import JobConfig
from semid_spark.core import FittedEncoder
from semid_spark.delta.schema import ASSIGNED_AT, CODES, COUNTER, PROBLEM, RELOCATED, RUN_ID, id_rows
from semid_spark.delta.table import TableRef, check_table, is_commit_conflict, merge_new_rows, prepare_table
from semid_spark.exceptions import ConcurrentRunError, InvalidInputError, QualityGateError, ShapeMismatchError
from semid_spark.spark.encode import FrozenModel, arrow_batch_rows, encode_embeddings
from semid_spark.spark.files import encode_files
from semid_spark.spark.incremental import unwritten_rows, without_written_keys
from semid_spark.spark.ranking import CodeStats, code_stats, with_code_key, with_semantic_id
from semid_spark.spark.session import Seconds, stage
from semid_spark.spark.source import input_files, input_ref
from semid_spark.spark.strategies import Strategy, StrategyFigures, strategy_for
from semid_spark.spark.validate import InputReport, check_input

log = logging.getLogger(__name__)


@dataclass
class Assignment:
    """What assigning IDs did (``RunReport`` takes these figures under the same names)."""

    model_sha256: str
    n_new: int = 0
    n_inserted: int = 0
    collision_share: float = 0.0  # share of the new items whose codes another item also has
    counter_share: float | None = None  # share of them whose ID got a counter (relocate, or the counter gate)
    moved_share: float | None = None  # relocate: share moved to a free last-level code of their prefix
    error_ratio: float | None = None  # relocate: reconstruction error of the assigned codes / of the nearest ones
    utilisation: list[float] | None = None  # per level, share of its codes they use (with quality.min_utilisation)
    n_retries: int = 0  # merges retried because another run committed first
    seconds: Seconds = field(default_factory=Seconds)


@dataclass(frozen=True)
class GateFigures:
    """The figures the quality gates computed (None: that gate is off)."""

    utilisation: list[float] | None = None
    counter_share: float | None = None


def assign_ids(spark: SparkSession, df: DataFrame, info: InputReport, encoder: FittedEncoder, cfg: JobConfig, *,
               run_id: str, before_write: Callable[[], None] | None = None, whole_input: DataFrame | None = None,
               rebinding_from: str | None = None, ids_from: DataFrame | None = None) -> Assignment:
    """Encode, rank new items after the written ones, insert them into the Delta table.

    *whole_input*: the input as read, when df holds all of it unfiltered: on a first run (every row
    new) executors may then read its files themselves (``spark.files``), so only keys and codes
    cross into the JVM.

    When the input's rows were not checked yet, encoding checks them; a bad row (or a quality gate)
    raises before *before_write* runs (it saves a model fitted by this run, or starts a refit's
    publish) and before anything is written. *rebinding_from*: the model the table is bound to, which
    a keep_ids refit moves onto *encoder*. *ids_from*: a table of an earlier version whose ID strings
    items keep where their codes are unchanged (see ``ranked_rows``). When another run commits to the
    table first, the codes stay as encoded: only the ranking and the MERGE run again, against the new
    snapshot (``output.max_retries`` times, then ``ConcurrentRunError``).
    """
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    out = TableRef(cfg.output.path, cfg.output.table)
    strategy = strategy_for(cfg.uniqueness)
    dim = encoder.n_features_in_
    if dim != info.dim:
        raise_mismatch(info.dim, dim, emb)
    mode = check_table(spark, out, encoder, replace_on_new_model=cfg.output.new_table_on_model_change,
                       rebinding_from=rebinding_from)
    done = Assignment(encoder.sha256)
    new_rows = (unwritten_rows(df, out.read(spark), key, n_input=info.n_rows) if mode == "append"
                else contextlib.nullcontext(df))
    with stage(spark, "semid: encode new items on executors"), done.seconds.timed("encode"), \
            arrow_batch_rows(spark, cfg.encode.batch_rows), new_rows as todo:
        frozen = FrozenModel(spark, encoder)
        files = None
        if whole_input is not None and mode != "append":
            files = input_files(spark, whole_input, input_ref(cfg), key_col=key, embedding_col=emb,
                                reader=cfg.encode.reader)
        if files is not None:
            encoded = encode_files(spark, files, frozen, dim=info.dim, device=cfg.encode.device,
                                   flag_problems=not info.rows_checked, batch_rows=cfg.encode.batch_rows,
                                   candidates=strategy.candidates)
        else:
            encoded = encode_embeddings(todo, frozen, key_col=key, embedding_col=emb, dim=info.dim,
                                        device=cfg.encode.device, flag_problems=not info.rows_checked,
                                        batch_rows=cfg.encode.batch_rows, candidates=strategy.candidates)
        # key, codes and code key: ~30 bytes an item (~160 with relocation's candidates), read by the ranking
        # and the MERGE. One job fills the cache and counts the rows, the rows that could not be encoded, and
        # the rows per code
        sizes = encoder.codebook_sizes
        encoded = _kept(with_code_key(encoded, sizes), reads_table=mode == "append")
        stats = code_stats(encoded, cfg.uniqueness.hot_code_rows)
        done.n_new = stats.n_rows
        if stats.n_unencoded:  # only when the rows were not checked before: encoding flags them
            encoded.unpersist()
            check_input(df, key, emb, dim=info.dim)  # counts every bad row and raises, naming them
            raise InvalidInputError(f"rows of {emb!r} could not be encoded (null, wrong length or NaN/inf)")
        if not info.rows_checked:
            encoded = encoded.drop(PROBLEM)
        done.collision_share = stats.shared / max(done.n_new, 1)
        if cfg.quality.active and done.n_new:
            try:
                gates = check_quality(encoded, stats, sizes, out.read(spark) if mode == "append" else None, cfg,
                                      strategy)
            except QualityGateError:
                encoded.unpersist()
                raise
            done.utilisation, done.counter_share = gates.utilisation, gates.counter_share
    try:
        if before_write is not None:  # once every row proved valid and every gate passed
            before_write()
        if done.n_new == 0:
            log.info("no new items: the table already holds every key")
        else:
            _rank_and_merge(spark, encoded, stats.hot, encoder, out, mode, cfg, strategy, done, run_id=run_id,
                            rebinding_from=rebinding_from, ids_from=ids_from)
    finally:
        encoded.unpersist()
    return done


def _kept(encoded: DataFrame, *, reads_table: bool) -> DataFrame:
    """*encoded*, computed once (by the first job that reads it). Where its plan reads the output table
    (the new keys of an appending run), a local checkpoint instead of a cache: a commit to the table
    drops the caches of plans that read it, so the next read would encode again, and after this run's
    MERGE find no new key (the retry after a conflict, and the relocation figures, read it after one)."""
    return encoded.localCheckpoint(eager=False) if reads_table else encoded.cache()


def _rank_and_merge(spark: SparkSession, encoded: DataFrame, hot: list, encoder: FittedEncoder, out: TableRef,
                    mode: str, cfg: JobConfig, strategy: Strategy, done: Assignment, *, run_id: str,
                    rebinding_from: str | None = None, ids_from: DataFrame | None = None) -> None:
    """Rank the encoded items (with their code key; *hot*: the codes over the hot-code threshold) after the
    table's counters and MERGE them in; on a commit conflict, again against the table as the other run left
    it. Fills *done*'s inserted rows, retries, the ranking's and the write's seconds and the strategy's figures."""
    key = cfg.input.key_col
    for attempt in range(cfg.output.max_retries + 1):
        if attempt:  # another run committed: its keys are not ours to insert, its counters are taken
            mode = check_table(spark, out, encoder, replace_on_new_model=cfg.output.new_table_on_model_change,
                               rebinding_from=rebinding_from)
        new_items, unread = encoded, None
        written = out.read(spark) if mode == "append" else None
        if written is not None:  # the keys written by then are dropped by a read inside the MERGE
            checked = without_written_keys(encoded, written, key, n_new=done.n_new)
            if checked is not None:
                new_items, unread = checked, (RUN_ID, run_id)
            elif attempt:  # too many new keys to broadcast: the codes are cached, the anti-join reads no embedding
                new_items = encoded.join(written.select(key), key, "left_anti")
        with stage(spark, "semid: rank items by code, then key"), done.seconds.timed("rank"):  # lazy but for hot codes' key ranges
            rows = ranked_rows(encoded=new_items, written=written, hot=hot, encoder=encoder, cfg=cfg,
                               strategy=strategy, run_id=run_id, n_new=done.n_new, ids_from=ids_from,
                               seconds=done.seconds)
        try:
            with stage(spark, "semid: insert-only MERGE into the Delta table"), done.seconds.timed("write"):
                prepare_table(spark, out, rows.schema, encoder, mode, stats_columns=(key, RUN_ID, ASSIGNED_AT))
                # counters and the written keys are read inside the MERGE
                done.n_inserted = merge_new_rows(spark, out, rows, key, unread_rows=unread)
            with done.seconds.timed(strategy.stage) if strategy.stage else contextlib.nullcontext():
                figures = strategy.figures(lambda: out.read(spark).where(F.col(RUN_ID) == run_id), encoded,
                                           key_col=key, n_levels=len(encoder.codebook_sizes))
            _take_figures(done, figures)
            return
        except Exception as exc:
            if not is_commit_conflict(exc):
                raise
            winner = out.version(spark)
            if attempt == cfg.output.max_retries:
                raise ConcurrentRunError(
                    f"another run committed version {winner} of table {out} while this run ({run_id}) merged "
                    f"its {done.n_new} new items, {attempt + 1} time(s); nothing of this run was written. Run it "
                    "again (it inserts only what is still missing), or raise output.max_retries"
                ) from exc
            done.n_retries += 1
            log.warning("table %s: another run committed version %s first; ranking again against it (retry %d of %d)",
                        out, winner, attempt + 1, cfg.output.max_retries)


def _take_figures(done: Assignment, figures: StrategyFigures | None) -> None:
    if figures is not None:
        done.counter_share, done.moved_share, done.error_ratio = (figures.counter_share, figures.moved_share,
                                                                  figures.error_ratio)


def check_quality(encoded: DataFrame, stats: CodeStats, sizes: Sequence[int], written: DataFrame | None,
                  cfg: JobConfig, strategy: Strategy) -> GateFigures:
    """The ``quality`` gates over this run's new items (*encoded*, cached, with ``CODE_KEY``), checked
    before anything is written and before a model fitted by this run is saved; QualityGateError names
    the figure, its value and the threshold. Each gate costs one job, run only when it is set: the
    utilisation one over the cached codes, the counter one also over the table's codes column (with
    relocation, the relocation itself, which the MERGE then runs again)."""
    quality, n_new = cfg.quality, stats.n_rows
    untouched = "nothing was written, and a model fitted by this run was not saved"
    utilisation = counter_share = None
    if quality.min_utilisation is not None:
        used = encoded.agg(*(F.countDistinct(F.col(CODES)[level]) for level in range(len(sizes)))).first()
        utilisation = [used[level] / k for level, k in enumerate(sizes)]
        worst = min(range(len(sizes)), key=lambda level: utilisation[level])
        if utilisation[worst] < quality.min_utilisation:
            raise QualityGateError(
                f"level {worst} uses {used[worst]} of its {sizes[worst]} codes ({utilisation[worst]:.3f}) among "
                f"this run's {n_new} new items, under quality.min_utilisation={quality.min_utilisation}; {untouched}")
    if quality.max_counter_share is not None:
        n_counters = strategy.n_counters(encoded, written, sizes, stats, key_col=cfg.input.key_col)
        counter_share = n_counters / n_new
        if counter_share > quality.max_counter_share:
            raise QualityGateError(
                f"{n_counters} of this run's {n_new} new items ({counter_share:.4f}) would get a counter "
                f"(their code is taken), over quality.max_counter_share={quality.max_counter_share}; {untouched}")
    return GateFigures(utilisation, counter_share)


def ranked_rows(*, encoded: DataFrame, written: DataFrame | None, hot: list, encoder: FittedEncoder, cfg: JobConfig,
                strategy: Strategy, run_id: str, n_new: int, ids_from: DataFrame | None = None,
                seconds: Seconds | None = None) -> DataFrame:
    """The rows to insert (``schema.id_rows``). Lazy on purpose: the written codes and counters are read
    by the MERGE itself, so a commit that lands before it is counted.

    *ids_from* (a refit's new table): the old version's table. An item whose code there equals its new
    code keeps its ID string there (its counter): those strings are unique, so each is still free. The
    other items are then ranked as new items after them, by the strategy's rule (their counters
    continue after the kept ones; with relocation, the kept codes are taken)."""
    key, sizes = cfg.input.key_col, encoder.codebook_sizes
    kept = None
    if ids_from is not None:
        kept, encoded = split_kept_ids(encoded, ids_from, key)
        taken = kept.select(CODES, COUNTER)
        written = taken if written is None else written.select(CODES, COUNTER).unionByName(taken)
    ranked = strategy.ranked_rows(encoded, written, sizes, key_col=key, n_new=n_new, hot=hot, seconds=seconds)
    if kept is not None:
        ranked = ranked.select(key, CODES, COUNTER, RELOCATED).unionByName(
            kept.select(key, CODES, COUNTER, F.lit(False).alias(RELOCATED)))
    return id_rows(ranked.transform(with_semantic_id, cfg.uniqueness.sep, len(sizes)), key_col=key,
                   model_sha=encoder.sha256, run_id=run_id)


def split_kept_ids(encoded: DataFrame, previous: DataFrame, key_col: str) -> tuple[DataFrame, DataFrame]:
    """(kept, rest): the items of *encoded* whose codes in *previous* (an ID table) equal their codes
    here, as (key, codes, counter there), and the other rows of *encoded*. One join on the key (no
    embedding crosses it), computed once: the ranking reads both several times, and *previous* is
    not the table being written, so nothing it reads can change under the MERGE."""
    old = previous.select(key_col, F.col(CODES).alias("_old_codes"), F.col(COUNTER).alias("_old_counter"))
    keep = F.coalesce(F.col(CODES) == F.col("_old_codes"), F.lit(False))
    flagged = encoded.join(old, key_col, "left").withColumn("_kept", keep).localCheckpoint(eager=True)
    kept = flagged.where(F.col("_kept")).select(key_col, CODES, F.col("_old_counter").alias(COUNTER))
    return kept, flagged.where(~F.col("_kept")).drop("_old_codes", "_old_counter", "_kept")


def raise_mismatch(data_dim: int, model_dim, col: str) -> None:
    raise ShapeMismatchError(
        f"the input's embeddings in {col!r} are {data_dim}-d and the model expects {model_dim}-d: this input and this "
        "model do not match (vectors of another embedding model?). Fit a model for them at a new model.path (with a "
        "new output table), or `semid refit` the table onto them. Nothing was written")
