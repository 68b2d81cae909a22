"""The job: read and validate → sample → fit on the driver → encode on executors → rank → Delta.

Everything testable lives here; ``jobs/`` and the CLI only parse arguments and call these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from semid_spark.algorithms import codebook_sizes, input_dim
from semid_spark.algorithms import io as model_io
from semid_spark.algorithms import load_encoder as _load_saved
from semid_spark.config import RQ_VAE_JOB_PARAMS, JobConfig, ModelConfig
from semid_spark.delta.table import (
    SHA_PROPERTY, TableRef, append_idempotent, check_table, is_commit_conflict, merge_new_rows, prepare_table,
)
from semid_spark.exceptions import ConcurrentRunError, ConfigError, InvalidInputError, ModelFormatError, QualityGateError
from semid_spark.spark.changes import InputRead, current_version, input_ref, read_since_last_run, record_input_version
from semid_spark.spark.columns import (
    ASSIGNED_AT, CODES, COUNTER, MODEL_SHA, PROBLEM, RELOCATED, RUN_ID, SEMANTIC_ID,
)
from semid_spark.spark.encode import FrozenModel, arrow_batch_rows, encode_embeddings
from semid_spark.spark.files import encode_files, input_files
from semid_spark.spark.preflight import check_locations, check_model_matches_config, model_exists
from semid_spark.spark.publish import check_published
from semid_spark.spark.session import stage
from semid_spark.spark.sample import bad_rows_named, sample_embeddings
from semid_spark.spark.validate import InputReport, check_input, check_keys, normalize_columns, split_invalid
from semid_spark.spark.incremental import next_counters, unwritten_rows, without_written_keys
from semid_spark.spark.ranking import CODE_KEY, assign_counters, code_stats, with_code_key, with_semantic_id
from semid_spark.spark.relocate import relocated_rows, relocation_figures

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a run did: row counts and seconds per stage."""

    n_input: int = 0
    n_rejected: int = 0
    n_new: int = 0
    n_inserted: int = 0
    model_sha256: str = ""
    collision_share: float = 0.0  # share of this run's new items whose codes another item also has
    counter_share: float | None = None  # share of them whose ID gets a counter (relocate, or quality.max_counter_share)
    moved_share: float | None = None  # relocate: share of them moved to a free last-level code of their prefix
    error_ratio: float | None = None  # relocate: reconstruction error of the assigned codes / of the nearest ones
    utilisation: list[float] | None = None  # per level, share of its codes they use (with quality.min_utilisation)
    seconds: dict[str, float] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    n_retries: int = 0  # merges retried because another run committed first
    rejected: DataFrame | None = field(default=None, repr=False)  # on_invalid=reject: written once the run commits

    def summary(self) -> str:
        """One line for a person: what the run read, inserted and how long it took."""
        text = f"{self.n_input:,} input rows, {self.n_new:,} new, {self.n_inserted:,} inserted"
        if self.n_rejected:
            text += f", {self.n_rejected:,} rejected"
        share = self.counter_share if self.counter_share is not None else None
        if share is not None and self.n_new:
            text += f", {share:.2%} of the new got a counter"
        return text + f" in {sum(self.seconds.values()):.0f} s"

    def as_dict(self) -> dict:
        """The figures (for JSON), without the rejected rows' DataFrame."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rejected"}


def read_input(spark: SparkSession, cfg: JobConfig) -> DataFrame:
    """The catalog, or an error saying what could not be read and which setting names it."""
    from pyspark.errors import AnalysisException

    src = cfg.input
    try:
        if src.table:
            return spark.read.table(src.table)
        return spark.read.format(src.format).load(src.path)
    except AnalysisException as exc:
        what = f"table {src.table!r} (input.table)" if src.table else f"{src.format} path {src.path!r} (input.path, input.format)"
        raise InvalidInputError(f"cannot read the input {what}: {str(exc).splitlines()[0]}") from None


REJECT_ID = "reject_id"


def validated_input(spark: SparkSession, df: DataFrame, cfg: JobConfig, dim: int | None, report: RunReport,
                    *, rows_checked_later: bool = False, allow_empty: bool = False) -> tuple[DataFrame, InputReport]:
    """Normalized, checked input; bad rows raise (or, with on_invalid=reject, are set aside in
    ``report.rejected``, written by ``write_rejects`` once the run has committed).

    *rows_checked_later*: check only the keys here (one aggregation over the key column); the
    caller checks the embeddings in the passes that read them (``run``: the sample and encode), and
    learns their length from the sample when *dim* is None (``InputReport.dim`` None until then).
    *dim*: the expected embedding length (the model's); None: the most common one. *allow_empty*:
    no rows is no error (a day without changes).
    """
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    source = df
    df = normalize_columns(df, key, emb)
    if cfg.input.on_invalid == "reject":
        rows_checked_later = False
        valid, rejected, dim = split_invalid(df, key, emb, dim=dim)
        valid = valid.cache()
        n_rejected = rejected.count()
        if n_rejected:
            log.warning("%d rows rejected; they go to %s once the run commits", n_rejected, cfg.input.reject_path)
            report.rejected = rejected.withColumn(REJECT_ID, _reject_id(source, key, emb))
        report.n_rejected = n_rejected
        df = valid
    if rows_checked_later:  # keys now; embeddings where they are read anyway (sample, encode)
        info = InputReport(n_rows=check_keys(df, key, allow_empty=allow_empty), dim=dim, rows_checked=False)
    else:
        df, info = check_input(df, key, emb, dim=dim, allow_empty=allow_empty)
    report.n_input = info.n_rows
    return df, info


def _reject_id(source: DataFrame, key: str, emb: str):
    """A rejected row's identity: its key and embedding, within this input (its files), so that a
    retried run over the same input rejects into the same ids and the reject table keeps one copy."""
    try:
        files = sorted(source.inputFiles())
    except Exception:  # a DataFrame built in memory has no files
        files = []
    input_digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
    return F.sha2(F.to_json(F.struct(F.lit(input_digest).alias("input"), F.col(key).cast("string").alias("key"),
                                     F.col(emb).cast("string").alias("embedding"))), 256)


def write_rejects(spark: SparkSession, cfg: JobConfig, report: RunReport) -> None:
    """Append this run's rejected rows to ``input.reject_path``, once: a retry of the same input adds no copy."""
    if report.rejected is None:
        return
    rows = report.rejected.withColumn(RUN_ID, F.lit(report.run_id))
    added = append_idempotent(spark, TableRef(cfg.input.reject_path), rows, REJECT_ID)
    log.warning("%d rejected rows written to %s (%d were there from an earlier try)",
                added, cfg.input.reject_path, report.n_rejected - added)


def _import_torch_in_background() -> None:
    """The fit needs torch, whose import takes seconds of the driver's time: start it while Spark
    reads and checks the input (an ``import torch`` meanwhile waits for this one, then finds it done)."""
    if "torch" in sys.modules or importlib.util.find_spec("torch") is None:
        return
    threading.Thread(target=importlib.import_module, args=("torch",), name="semid-import-torch", daemon=True).start()


def fit_device(model_cfg: ModelConfig) -> str:
    if model_cfg.fit_device != "auto":
        return model_cfg.fit_device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def new_encoder(model_cfg: ModelConfig, dim: int):
    if model_cfg.kind == "rq_kmeans":
        from semid_spark.algorithms.rq_kmeans import RQKMeans

        return RQKMeans(model_cfg.n_levels, model_cfg.sizes, random_state=model_cfg.seed, **model_cfg.params)
    from semid_spark.algorithms.rq_vae import RQVAE

    params = {**RQ_VAE_JOB_PARAMS, **model_cfg.params}
    return RQVAE(in_dim=dim, num_emb_list=model_cfg.sizes,
                 random_state=model_cfg.seed, **params)


def load_encoder(path: str, cfg: JobConfig | None = None, *, published: bool = True):
    """The model at ``model.path``, or an error that names the setting and what to do; with *cfg*, also
    when the saved model's kind or shape is not the config's (never a silent reuse). *published*:
    refuse a refit's version that was saved and not published (``spark.publish``)."""
    if not model_exists(path):
        raise ModelFormatError(f"no model at model.path={path!r}: run `semid fit --config …` (or `semid run`, which fits "
                               "when the model is missing), or point model.path at a saved model")
    if published:
        check_published(path)
    if cfg is not None:
        check_model_matches_config(model_io.read_metadata(path), cfg)
    try:
        return _load_saved(path)
    except ModelFormatError as exc:
        raise ModelFormatError(f"model.path={path!r}: {exc}") from None


def refuse_fitting_over_bound_model(spark: SparkSession, cfg: JobConfig, *, replaces_table: bool = False) -> None:
    """A fit must not overwrite the model that the output table's IDs were assigned with: every later
    run would then refuse the table (ModelMismatchError) and that model would be gone. Checked before
    anything is read or fitted. *replaces_table*: the run replaces the table itself (``run`` with
    ``output.new_table_on_model_change``), so the table's old model may go."""
    if replaces_table or not model_exists(cfg.model.path):
        return
    out = TableRef(cfg.output.path, cfg.output.table)
    detail = out.detail(spark)
    saved = model_io.read_metadata(cfg.model.path).get("sha256")
    if detail is None or (detail["properties"] or {}).get(SHA_PROPERTY) != saved:
        return
    raise ConfigError(
        f"model.path={cfg.model.path!r} holds model {str(saved)[:12]}…, which table {out}'s IDs were assigned with; "
        "fitting over it would make every later run refuse that table. Use `semid refit --config …` for a new "
        "version (aligned to these IDs, with its churn report), or set model.path to a new location and "
        "output to a new table")


def _training_sample(spark: SparkSession, df: DataFrame, info: InputReport, cfg: JobConfig):
    """The rows the model is fitted on (``model.sample_size``, drawn by key hash), on the driver; a bad
    row among them makes the whole input's bad rows counted and named."""
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    with stage(spark, "semid: sample embeddings to the driver"), bad_rows_named(df, key, emb, info.dim):
        return sample_embeddings(df, key_col=key, embedding_col=emb, dim=info.dim, n_rows=info.n_rows,
                                 sample_size=cfg.model.sample_size, seed=cfg.model.seed)


def fit_model(spark: SparkSession, df: DataFrame, info: InputReport, cfg: JobConfig, report: RunReport, *,
              save: bool = True):
    """Sample to the driver, fit there (cuda when it has one), save the model (or leave that to the caller).
    With ``info.dim`` None the sample says the embedding length (the fitted model's ``input_dim``)."""
    with _timed(report, "sample"):
        x = _training_sample(spark, df, info, cfg)
    device = fit_device(cfg.model)
    with _timed(report, "fit"):
        encoder = new_encoder(cfg.model, x.shape[1]).fit(x, device=device)
        if save:
            encoder.save(cfg.model.path)
    log.info("fitted %s on %d sampled rows (%s), sha256 %s", type(encoder).__name__, len(x), device, encoder.sha256[:12])
    return encoder


def assign_ids(spark: SparkSession, df: DataFrame, info: InputReport, encoder, cfg: JobConfig, report: RunReport,
               *, before_write: Callable[[], None] | None = None, whole_input: DataFrame | None = None,
               rebinding_from: str | None = None, ids_from: DataFrame | None = None) -> None:
    """Encode, rank new items after the written ones, insert them into the Delta table.

    *whole_input*: the input as read, when df holds all of it unfiltered: on a first run (every row
    new) executors may then read its files themselves (``spark.files``), so only keys and codes
    cross into the JVM.

    When the input's rows were not checked yet, encoding checks them; a bad row (or a quality gate)
    raises before *before_write* runs (it saves a model fitted by this run, or starts a refit's
    publish) and before anything is written. *rebinding_from*: the model the table is bound to, which
    a keep_ids refit moves onto *encoder*. *ids_from*: a table of an earlier version whose ID strings
    items keep where their codes are unchanged (see ``_ranked_rows``). When another run commits to the table
    first, the codes stay as encoded: only the ranking and the MERGE run again, against the new
    snapshot (``output.max_retries`` times, then ``ConcurrentRunError``).
    """
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    out = TableRef(cfg.output.path, cfg.output.table)
    dim = input_dim(encoder)
    if dim != info.dim:
        raise_mismatch(info.dim, dim, emb)
    mode = check_table(spark, out, encoder, replace_on_new_model=cfg.output.new_table_on_model_change,
                       rebinding_from=rebinding_from)
    report.model_sha256 = encoder.sha256
    new_rows = (unwritten_rows(df, out.read(spark), key, n_input=info.n_rows) if mode == "append"
                else contextlib.nullcontext(df))
    with stage(spark, "semid: encode new items on executors"), _timed(report, "encode"), \
            arrow_batch_rows(spark, cfg.encode.batch_rows), new_rows as todo:
        frozen = FrozenModel(spark, encoder)
        files = None
        if whole_input is not None and mode != "append":
            files = input_files(spark, whole_input, input_ref(cfg), key_col=key, embedding_col=emb,
                                reader=cfg.encode.reader)
        candidates = cfg.uniqueness.candidates
        if files is not None:
            encoded = encode_files(spark, files, frozen, dim=info.dim, device=cfg.encode.device,
                                   flag_problems=not info.rows_checked, batch_rows=cfg.encode.batch_rows,
                                   candidates=candidates)
        else:
            encoded = encode_embeddings(todo, frozen, key_col=key, embedding_col=emb, dim=info.dim,
                                        device=cfg.encode.device, flag_problems=not info.rows_checked,
                                        batch_rows=cfg.encode.batch_rows, candidates=candidates)
        # key, codes and code key: ~30 bytes an item (~160 with relocation's candidates), read by the ranking
        # and the MERGE. One job fills the cache and counts the rows, the rows that could not be encoded, and
        # the rows per code
        sizes = codebook_sizes(encoder)
        encoded = _kept(with_code_key(encoded, sizes), reads_table=mode == "append")
        stats = code_stats(encoded, cfg.uniqueness.hot_code_rows)
        report.n_new = stats.n_rows
        if stats.n_unencoded:  # only when the rows were not checked before: encoding flags them
            encoded.unpersist()
            check_input(df, key, emb, dim=info.dim)  # counts every bad row and raises, naming them
            raise InvalidInputError(f"rows of {emb!r} could not be encoded (null, wrong length or NaN/inf)")
        if not info.rows_checked:
            encoded = encoded.drop(PROBLEM)
        report.collision_share = stats.shared / max(report.n_new, 1)
        if cfg.quality.active and report.n_new:
            try:
                check_quality(encoded, stats, sizes, out.read(spark) if mode == "append" else None, cfg, report)
            except QualityGateError:
                encoded.unpersist()
                raise
    try:
        if before_write is not None:  # once every row proved valid and every gate passed
            before_write()
        if report.n_new == 0:
            report.n_inserted = 0
            log.info("no new items: the table already holds every key")
        else:
            _rank_and_merge(spark, encoded, stats.hot, encoder, out, mode, cfg, report, rebinding_from=rebinding_from,
                            ids_from=ids_from)
        write_rejects(spark, cfg, report)
    finally:
        encoded.unpersist()


def _kept(encoded: DataFrame, *, reads_table: bool) -> DataFrame:
    """*encoded*, computed once (by the first job that reads it). Where its plan reads the output table
    (the new keys of an appending run), a local checkpoint instead of a cache: a commit to the table
    drops the caches of plans that read it, so the next read would encode again, and after this run's
    MERGE find no new key (the retry after a conflict, and the relocation figures, read it after one)."""
    return encoded.localCheckpoint(eager=False) if reads_table else encoded.cache()


def _rank_and_merge(spark: SparkSession, encoded: DataFrame, hot: list, encoder, out: TableRef, mode: str,
                    cfg: JobConfig, report: RunReport, *, rebinding_from: str | None = None,
                    ids_from: DataFrame | None = None) -> None:
    """Rank the encoded items (with their code key; *hot*: the codes over the hot-code threshold) after the
    table's counters and MERGE them in; on a commit conflict, again against the table as the other run left it."""
    key = cfg.input.key_col
    for attempt in range(cfg.output.max_retries + 1):
        if attempt:  # another run committed: its keys are not ours to insert, its counters are taken
            mode = check_table(spark, out, encoder, replace_on_new_model=cfg.output.new_table_on_model_change,
                               rebinding_from=rebinding_from)
        new_items, unread = encoded, None
        written = out.read(spark) if mode == "append" else None
        if written is not None:  # the keys written by then are dropped by a read inside the MERGE
            checked = without_written_keys(encoded, written, key, n_new=report.n_new)
            if checked is not None:
                new_items, unread = checked, (RUN_ID, report.run_id)
            elif attempt:  # too many new keys to broadcast: the codes are cached, the anti-join reads no embedding
                new_items = encoded.join(written.select(key), key, "left_anti")
        with stage(spark, "semid: rank items by code, then key"), _timed(report, "rank"):  # lazy but for hot codes' key ranges
            rows = _ranked_rows(encoded=new_items, written=written, hot=hot, encoder=encoder, cfg=cfg,
                                run_id=report.run_id, n_new=report.n_new, ids_from=ids_from)
        try:
            with stage(spark, "semid: insert-only MERGE into the Delta table"), _timed(report, "write"):
                prepare_table(spark, out, rows.schema, encoder, mode, stats_columns=(key, RUN_ID, ASSIGNED_AT))
                # counters and the written keys are read inside the MERGE
                report.n_inserted = merge_new_rows(spark, out, rows, key, unread_rows=unread)
            if cfg.uniqueness.strategy == "relocate":
                with stage(spark, "semid: relocation figures"):
                    figures = relocation_figures(out.read(spark).where(F.col(RUN_ID) == report.run_id), encoded,
                                                 key_col=key, n_levels=len(codebook_sizes(encoder)))
                report.moved_share, report.counter_share = figures["moved_share"], figures["counter_share"]
                report.error_ratio = figures["error_ratio"]
            return
        except Exception as exc:
            if not is_commit_conflict(exc):
                raise
            winner = out.version(spark)
            if attempt == cfg.output.max_retries:
                raise ConcurrentRunError(
                    f"another run committed version {winner} of table {out} while this run ({report.run_id}) merged "
                    f"its {report.n_new} new items, {attempt + 1} time(s); nothing of this run was written. Run it "
                    "again (it inserts only what is still missing), or raise output.max_retries"
                ) from exc
            report.n_retries += 1
            log.warning("table %s: another run committed version %s first; ranking again against it (retry %d of %d)",
                        out, winner, attempt + 1, cfg.output.max_retries)


def check_quality(encoded: DataFrame, stats, sizes: list[int], written: DataFrame | None, cfg: JobConfig,
                  report: RunReport) -> None:
    """The ``quality`` gates over this run's new items (*encoded*, cached, with ``CODE_KEY``), checked
    before anything is written and before a model fitted by this run is saved; QualityGateError names
    the figure, its value and the threshold. Each gate costs one job, run only when it is set: the
    utilisation one over the cached codes, the counter one also over the table's codes column (with
    relocation, the relocation itself, which the MERGE then runs again)."""
    quality, n_new = cfg.quality, stats.n_rows
    untouched = "nothing was written, and a model fitted by this run was not saved"
    if quality.min_utilisation is not None:
        used = encoded.agg(*(F.countDistinct(F.col(CODES)[level]) for level in range(len(sizes)))).first()
        report.utilisation = [used[level] / k for level, k in enumerate(sizes)]
        worst = min(range(len(sizes)), key=lambda level: report.utilisation[level])
        if report.utilisation[worst] < quality.min_utilisation:
            raise QualityGateError(
                f"level {worst} uses {used[worst]} of its {sizes[worst]} codes ({report.utilisation[worst]:.3f}) among "
                f"this run's {n_new} new items, under quality.min_utilisation={quality.min_utilisation}; {untouched}")
    if quality.max_counter_share is not None:
        if cfg.uniqueness.strategy == "relocate":
            rows = relocated_rows(encoded, written, sizes, key_col=cfg.input.key_col, n_new=n_new, hot=stats.hot,
                                  hot_code_rows=cfg.uniqueness.hot_code_rows)
            fresh = n_new - rows.where(F.col(COUNTER) > 0).count()
        else:
            fresh = stats.n_codes  # each code no written item holds gives one new item its bare code
            if written is not None:
                held = with_code_key(written.select(CODES), sizes).select(CODE_KEY)
                fresh -= encoded.select(CODE_KEY).distinct().join(held, CODE_KEY, "left_semi").count()
        report.counter_share = (n_new - fresh) / n_new
        if report.counter_share > quality.max_counter_share:
            raise QualityGateError(
                f"{n_new - fresh} of this run's {n_new} new items ({report.counter_share:.4f}) would get a counter "
                f"(their code is taken), over quality.max_counter_share={quality.max_counter_share}; {untouched}")


def _ranked_rows(*, encoded: DataFrame, written: DataFrame | None, hot: list, encoder, cfg: JobConfig,
                 run_id: str, n_new: int, ids_from: DataFrame | None = None) -> DataFrame:
    """The rows to insert: key, semantic_id, codes, counter, relocated, model, run, time. Lazy on purpose:
    the written codes and counters are read by the MERGE itself, so a commit that lands before it is counted.

    *ids_from* (a refit's new table): the old version's table. An item whose code there equals its new
    code keeps its ID string there (its counter): those strings are unique, so each is still free. The
    other items are then ranked as new items after them, by the usual rule (their counters continue
    after the kept ones; with relocation, the kept codes are taken)."""
    key, sizes = cfg.input.key_col, codebook_sizes(encoder)
    kept = None
    if ids_from is not None:
        kept, encoded = split_kept_ids(encoded, ids_from, key)
        taken = kept.select(CODES, COUNTER)
        written = taken if written is None else written.select(CODES, COUNTER).unionByName(taken)
    if cfg.uniqueness.strategy == "relocate":
        ranked = relocated_rows(encoded, written, sizes, key_col=key, n_new=n_new, hot=hot,
                                hot_code_rows=cfg.uniqueness.hot_code_rows)
    else:
        counters = None if written is None else next_counters(written, encoded, sizes, n_new=n_new)
        ranked = assign_counters(encoded, counters, key_col=key, hot_code_rows=cfg.uniqueness.hot_code_rows,
                                 hot=hot).withColumn(RELOCATED, F.lit(False))
    if kept is not None:
        ranked = ranked.select(key, CODES, COUNTER, RELOCATED).unionByName(
            kept.select(key, CODES, COUNTER, F.lit(False).alias(RELOCATED)))
    return ranked.transform(with_semantic_id, cfg.uniqueness.sep, len(sizes)).select(
        key, SEMANTIC_ID, CODES, COUNTER, RELOCATED,
        F.lit(encoder.sha256).alias(MODEL_SHA), F.lit(run_id).alias(RUN_ID),
        F.current_timestamp().alias(ASSIGNED_AT),
    )


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
    from semid_spark.exceptions import ShapeMismatchError

    raise ShapeMismatchError(
        f"the input's embeddings in {col!r} are {data_dim}-d and the model expects {model_dim}-d: this input and this "
        "model do not match (vectors of another embedding model?). Fit a model for them at a new model.path (with a "
        "new output table), or `semid refit` the table onto them. Nothing was written")


def run(spark: SparkSession, cfg: JobConfig, *, fit: bool | None = None, items: DataFrame | None = None) -> RunReport:
    """The whole pipeline. ``fit=None``: fit when no model is saved at model.path (or refit is set).

    ``items``: a DataFrame to use instead of reading ``cfg.input`` (e.g. in a notebook).
    With ``input.since: last_run`` (and a saved model) only the input's changes since the last run
    are read; every run records the Delta input version it read on the output table.
    """
    report = RunReport()
    must_fit = fit if fit is not None else (cfg.model.refit or not model_exists(cfg.model.path))
    check_locations(spark, cfg, model=must_fit)  # before a row is read: nothing fitted for an unwritable output
    if must_fit:
        refuse_fitting_over_bound_model(spark, cfg, replaces_table=cfg.output.new_table_on_model_change)
        _import_torch_in_background()
    encoder = None if must_fit else load_encoder(cfg.model.path, cfg)
    dim = None if encoder is None else input_dim(encoder)  # the model says what length to expect
    out = TableRef(cfg.output.path, cfg.output.table)
    source = _source(spark, cfg, out, items, changes_only=not must_fit and cfg.input.since == "last_run")
    if source.unchanged:
        return report
    df, info = _read_validated(spark, cfg, report, source.rows, dim=dim, rows_checked_later=True,
                               allow_empty=source.since is not None)
    if info.n_rows:
        if encoder is None:
            encoder = fit_model(spark, df, info, cfg, report, save=False)
            info = dataclasses.replace(info, dim=input_dim(encoder))  # learnt from the sample
        save = (lambda: _save_model(encoder, cfg.model.path)) if must_fit else None
        assign_ids(spark, df, info, encoder, cfg, report, before_write=save,
                   whole_input=source.rows if source.whole and cfg.input.on_invalid == "fail" else None)
    else:  # no valid new row (a day of deletes, or of rejects only)
        write_rejects(spark, cfg, report)
    record_input_version(spark, out, input_ref(cfg), source.version)
    log.info("run %s: %d input rows, %d rejected, %d new, %d inserted, collision share %.4f, seconds %s",
             report.run_id, report.n_input, report.n_rejected, report.n_new, report.n_inserted,
             report.collision_share, {k: round(v, 1) for k, v in report.seconds.items()})
    warn_if_mostly_counters(report, cfg)
    if report.moved_share is not None:
        log.info("run %s: relocation moved %.4f of the new items to free codes of their prefix; %.4f got a counter; "
                 "reconstruction error x%.4f", report.run_id, report.moved_share, report.counter_share,
                 report.error_ratio)
    return report


MOSTLY_COUNTERS = 0.5  # a run whose new items get counters more often than this is warned


def warn_if_mostly_counters(report: RunReport, cfg: JobConfig) -> None:
    """A run where most new items share a code (so their IDs need counters) succeeds, but says so: the
    codebooks are too small for the catalog. The quality gates stay opt-in."""
    share = report.counter_share if report.counter_share is not None else report.collision_share
    if report.n_new < 100 or share <= MOSTLY_COUNTERS:
        return
    sizes = cfg.model.sizes
    full = 1
    for k in sizes:
        full *= k
    log.warning(
        "%.0f%% of this run's %d new items %s: levels of %s codes give %s full codes, too few or too unevenly used "
        "for this catalog. `semid advise --config … --target-rows N` predicts the counter share of other shapes "
        "(more codes per level, or a level more: model.n_clusters, model.n_levels); a new shape needs a new "
        "model.path and output table, or `semid refit`. quality.max_counter_share makes this an error",
        100 * share, report.n_new, "got a counter" if report.counter_share is not None else "share a code",
        "x".join(map(str, sizes)), f"{full:,}")


def _save_model(encoder, path: str) -> None:
    encoder.save(path)
    log.info("model saved to %s", path)


def _source(spark: SparkSession, cfg: JobConfig, out: TableRef, items: DataFrame | None, *,
            changes_only: bool) -> InputRead:
    """What this run reads: *items*, the input's changes since the last run, or the whole input."""
    if items is not None:
        return InputRead(items, None)
    version = current_version(spark, cfg)  # before reading: a run records at most what it read
    if changes_only:
        return read_since_last_run(spark, cfg, out, version)
    return InputRead(read_input(spark, cfg), version, whole=True)


def _read_validated(spark: SparkSession, cfg: JobConfig, report: RunReport, items: DataFrame | None, *,
                    dim: int | None = None, rows_checked_later: bool = False, allow_empty: bool = False):
    with stage(spark, "semid: read and validate input"), _timed(report, "validate"):
        source = items if items is not None else read_input(spark, cfg)
        return validated_input(spark, source, cfg, dim, report, rows_checked_later=rows_checked_later,
                               allow_empty=allow_empty)


def fit_only(spark: SparkSession, cfg: JobConfig) -> RunReport:
    check_locations(spark, cfg, output=False)
    refuse_fitting_over_bound_model(spark, cfg)
    report = RunReport()
    df, info = _read_validated(spark, cfg, report, None)
    report.model_sha256 = fit_model(spark, df, info, cfg, report).sha256
    return report


def advise(spark: SparkSession, cfg: JobConfig, *, target_rows: int | None, choices, max_counter_share: float):
    """``semid advise``: the job's training sample (``model.sample_size`` rows, drawn as ``fit`` draws
    them), RQ-KMeans fitted on it for each (levels, codes) choice, and the collisions each would give a
    catalog of *target_rows* items (None: the input's valid rows): (predictions, the recommended one);
    see ``utils.advise``."""
    from semid_spark.utils import advise as advice

    df, info = _read_validated(spark, cfg, RunReport(), None)
    x = _training_sample(spark, df, info, cfg)
    target = info.n_rows if target_rows is None else target_rows
    predictions = advice.advise(x, target, choices, random_state=cfg.model.seed,
                                strategy=cfg.uniqueness.strategy)
    return predictions, advice.recommend(predictions, max_counter_share)


def assign_only(spark: SparkSession, cfg: JobConfig, *, items: DataFrame | None = None) -> RunReport:
    return run(spark, cfg, fit=False, items=items)


class _timed:
    def __init__(self, report: RunReport, name: str) -> None:
        self.report, self.name = report, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.report.seconds[self.name] = self.report.seconds.get(self.name, 0.0) + time.perf_counter() - self.start
