"""``semid refit``: a new model version for a grown, drifted catalog, without churning IDs.

1. *Fit*: today's training sample (``model.sample_size`` rows, drawn as ``fit`` draws them), each
   with its codes in the current table where it has one; RQ-KMeans of the current shape starts
   Lloyd from the current codebooks (a warm start keeps the clusters the data still supports).
   A cold fit (what a plain ``semid fit`` would give) is made too, for the report only.
2. *Align*: each level of the new model is relabelled so that the table's sampled items keep as
   many of their codes as possible (``algorithms.align``): the version that would be published.
3. *Report*: churn per prefix depth with and without alignment, reconstruction error and
   collisions of both versions, to ``<out>/churn.md`` and ``churn.json`` and as one row of the
   churn table beside the output. ``quality.max_churn`` refuses to publish a version that changes
   more of the sampled items' full codes than that: the report is written, no model saved, no
   table touched.
4. *Publish*, all or nothing (``spark.publish``): every row the version publishes is encoded with
   it and checked, and the run's gates (``quality.max_counter_share``, ``min_utilisation``) pass,
   before the model is saved (marked unpublished) or a table changes; one commit then publishes it.
   A failure before that commit (a bad row, a gate, a concurrent run, kill -9) leaves the table
   bound to the old model with its old rows; the same refit run again publishes the same version.

   - ``new_table``: a run of the aligned model writes every item's ID to a new table
     (``output.refit_path``/``refit_table``); an item whose full code is unchanged keeps its ID
     string (its counter), the others are ranked after them. The old table keeps its rows; naming
     its successor (model, table, model path) publishes the version.
   - ``keep_ids``: the new items' IDs are merged into the table; that MERGE switches the table to
     the new model (named pending by a commit before it), and every written ID stays. A new item
     whose code a written item holds moves to a free code of its prefix (``uniqueness.strategy:
     relocate``) or takes the next counter; each row's ``model_sha256`` says which version encoded
     it. Needs the same codebook sizes as the current model.

   The ID strings that changed, over the items in both tables, are reported beside the code churn
   (``id_churn``; 0 for keep_ids).

The same seed and catalog give the same aligned model (its digest names the default paths).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from semid_spark import storage
from semid_spark.algorithms import load_encoder as load_saved_model
from semid_spark.config import JobConfig
from semid_spark.core import FittedEncoder
from semid_spark.delta.schema import CHURN_SCHEMA, CODES, REFIT_ID, SEMANTIC_ID
from semid_spark.delta.table import (
    MODEL_PATH_PROPERTY, PARENT_SHA_PROPERTY, PARENT_TABLE_PROPERTY, PENDING_PATH_PROPERTY, PENDING_SHA_PROPERTY,
    SHA_PROPERTY, SUCCESSOR_PATH_PROPERTY, SUCCESSOR_SHA_PROPERTY, SUCCESSOR_TABLE_PROPERTY, TableRef,
    abandon_rebinding, append_idempotent, begin_rebinding, pending_rows_in, rebind_table, set_properties,
)
from semid_spark.exceptions import ConfigError, InvalidInputError, ModelMismatchError, QualityGateError
from semid_spark.spark.assign import assign_ids
from semid_spark.spark.intake import Intake, read_validated, write_rejects
from semid_spark.spark.models import fit_device, load_encoder, new_encoder
from semid_spark.spark.pipeline import RunReport
from semid_spark.spark.preflight import check_locations
from semid_spark.spark.publish import mark_published, save_unpublished, unpublished_note
from semid_spark.spark.sample import bad_rows_named, sample_embeddings, sample_with_codes
from semid_spark.spark.session import Seconds, stage
from semid_spark.spark.source import current_version, input_ref, read_input, record_input_version
from semid_spark.versions import VersionComparison, compare_versions

log = logging.getLogger(__name__)

REFIT_TITLE = "Refit: churn of the current table's items"
COMPARE_TITLE = "Two model versions on the same catalog items"


@dataclass
class RefitReport:
    """What a refit did: the comparison, whether it published, where, and the publishing run's report."""

    refit_id: str = field(default_factory=lambda: f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    on_refit: str = ""
    comparison: VersionComparison | None = None
    published: bool = False
    ids_table: str | None = None
    new_model_path: str | None = None
    n_sampled: int = 0  # training sample rows (today's catalog)
    warm_start: bool = False
    run: dict | None = None  # the publishing run's RunReport
    files: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["comparison"] = None if self.comparison is None else self.comparison.as_dict()
        return out


@dataclass(frozen=True)
class Candidate:
    """A new version fitted on today's sample (``fit_version``), before it is compared and aligned."""

    x: np.ndarray  # the training sample (n, d)
    old_codes: np.ndarray  # (n, L) their codes in the table; -1 where an item is not in it
    model: FittedEncoder  # warm-started from the current model where it can be
    cold: FittedEncoder | None  # what a plain refit gives (only beside a warm start, for the report)
    warm_start: bool
    seconds: Seconds


@dataclass(frozen=True)
class Publication:
    """Where a version was published, and the run that wrote its IDs."""

    target: TableRef
    run: RunReport
    comparison: VersionComparison  # with id_churn, the ID strings that changed
    seconds: Seconds


def refit(spark: SparkSession, cfg: JobConfig, *, out_dir: str = "artifacts/refit") -> RefitReport:
    """Check, fit, compare (and align), then publish a new model version unless ``quality.max_churn`` refuses."""
    report = RefitReport(on_refit=cfg.output.on_refit)
    current, out = check_refit(spark, cfg, out_dir)
    run_report = RunReport()
    version = current_version(spark, cfg)  # before reading: the publish records at most what it read
    source = read_input(spark, cfg)
    intake = read_validated(spark, cfg, source, dim=current.n_features_in_, rows_checked_later=True)
    run_report.took_input(intake)

    candidate = fit_version(spark, cfg, intake, current, out)
    report.n_sampled, report.warm_start = len(candidate.x), candidate.warm_start
    seconds = Seconds().add(candidate.seconds)
    with seconds.timed("compare"):
        comparison, model = compare_version(current, candidate)
    report.comparison, report.seconds = comparison, seconds
    log.info("refit %s: %d sampled rows (%d in the table), full-ID churn %.4f aligned, %.4f unaligned",
             report.refit_id, len(candidate.x), comparison.n_items, comparison.churn_aligned[-1],
             comparison.churn_unaligned[-1])

    limit = cfg.quality.max_churn
    if limit is not None and comparison.churn_aligned[-1] > limit:
        report.files = _write_files(comparison, out_dir, "churn", REFIT_TITLE)
        _record(spark, cfg, report)
        raise QualityGateError(
            f"the new version {comparison.new_model_sha256[:12]}… would change the full code of "
            f"{comparison.churn_aligned[-1]:.4f} of the table's {comparison.n_items} sampled items (aligned), over "
            f"quality.max_churn={limit}; nothing was published: no model saved, no ID table changed (report: "
            f"{report.files['md']})")

    report.new_model_path = cfg.model.refit_path or _versioned(cfg.model.path, model.sha256, "_v")
    published = publish_version(spark, cfg, intake, source, current, model, comparison, out, run_report,
                                path=report.new_model_path, refit_id=report.refit_id)
    record_input_version(spark, published.target, input_ref(cfg), version)
    seconds.add(published.seconds)
    report.comparison = published.comparison
    report.published, report.ids_table, report.run = True, str(published.target), published.run.as_dict()
    report.files = _write_files(report.comparison, out_dir, "churn", REFIT_TITLE)
    _record(spark, cfg, report)
    log.info("refit %s published model %s (%s) to %s: %d items inserted", report.refit_id, model.sha256[:12],
             cfg.output.on_refit, published.target, published.run.n_inserted)
    return report


def check_refit(spark: SparkSession, cfg: JobConfig, out_dir: str) -> tuple[FittedEncoder, TableRef]:
    """(the current model, its ID table), once every location the refit writes is writable, an
    interrupted publish is finished, the table is the model's and the shape suits ``output.on_refit``."""
    check_locations(spark, cfg, extra={"--out": out_dir, **({"model.refit_path": cfg.model.refit_path}
                                                          if cfg.model.refit_path else {})})
    out = TableRef(cfg.output.path, cfg.output.table)
    current = load_encoder(cfg.model.path)
    detail = out.detail(spark)
    if detail is None:
        raise InvalidInputError(f"no ID table at {out} (output.path/output.table) to refit: `semid run` writes the "
                                "first version")
    props = finish_interrupted_publish(spark, out, dict(detail["properties"] or {}))
    if current.sha256 not in (props.get(SHA_PROPERTY), props.get(PARENT_SHA_PROPERTY)):
        raise ModelMismatchError(f"table {out} holds IDs of model {str(props.get(SHA_PROPERTY))[:12]}…, model.path "
                                 f"holds {current.sha256[:12]}…: point model.path at the table's model to refit it")
    sizes = current.codebook_sizes if cfg.model.auto_shape else cfg.model.sizes
    if cfg.output.on_refit == "keep_ids" and sizes != current.codebook_sizes:
        raise ConfigError(f"output.on_refit=keep_ids keeps the table's IDs of {current.codebook_sizes} codes per level; "
                          f"model.n_levels/n_clusters ask for {sizes}: use output.on_refit=new_table for another shape")
    return current, out


def fit_version(spark: SparkSession, cfg: JobConfig, intake: Intake, current: FittedEncoder, out: TableRef
                ) -> Candidate:
    """Today's training sample with each item's codes in *out*, and the new version fitted on it
    (warm-started from *current* where kind and shape allow), with a cold fit beside a warm one."""
    seconds = Seconds()
    key, emb, info = cfg.input.key_col, cfg.input.embedding_col, intake.info
    with seconds.timed("sample"), stage(spark, "semid: sample the catalog, with the table's codes, to the driver"), \
            bad_rows_named(intake.rows, key, emb, info.dim):
        x, old_codes = sample_with_codes(intake.rows, out.read(spark), key_col=key, embedding_col=emb, codes_col=CODES,
                                         n_levels=len(current.codebook_sizes), dim=info.dim, n_rows=info.n_rows,
                                         sample_size=cfg.model.sample_size, seed=cfg.model.seed)
    if not (old_codes >= 0).all(axis=1).any():
        raise InvalidInputError(f"none of the {len(x)} sampled input items is in table {out}: nothing to align the new "
                                "version to (is input the catalog the table was written from?)")
    # n_clusters auto: a new version keeps the shape chosen for the first (`semid advise` for another)
    model_cfg = cfg.model.with_shape(current.codebook_sizes) if cfg.model.auto_shape else cfg.model
    with seconds.timed("fit"):
        encoder = new_encoder(model_cfg, info.dim)
        warm = _can_warm_start(model_cfg, encoder, current)
        device = fit_device(model_cfg)
        model = encoder.fit(x, device=device, **({"init": current} if warm else {}))
        # what a plain refit gives, for the report: warm-started, the new model's own labels already
        # follow the current ones, so "unaligned" alone would hide what a cold refit churns
        cold = new_encoder(model_cfg, info.dim).fit(x, device=device) if warm else None
    return Candidate(x, old_codes, model, cold, warm, seconds)


def compare_version(current: FittedEncoder, candidate: Candidate) -> tuple[VersionComparison, FittedEncoder]:
    """The candidate against the current version on the sampled items the table holds (their codes there),
    and the candidate aligned to those codes: the version that would be published."""
    in_table = (candidate.old_codes >= 0).all(axis=1)
    comparison, alignment = compare_versions(current, candidate.model, candidate.x[in_table],
                                             old_codes=candidate.old_codes[in_table], reference=candidate.cold)
    return comparison, alignment.model


def publish_version(spark: SparkSession, cfg: JobConfig, intake: Intake, source: DataFrame, current: FittedEncoder,
                    model: FittedEncoder, comparison: VersionComparison, out: TableRef, run_report: RunReport, *,
                    path: str, refit_id: str) -> Publication:
    """Write the version's IDs and publish it in one commit (``spark.publish``): every row it publishes
    is encoded and checked, and every gate passed, before the model is saved at *path* (marked
    unpublished) and before a table changes. Fills *run_report* with the publishing run."""
    seconds = Seconds()
    note = {"refit_id": refit_id, "table": str(out), "on_refit": cfg.output.on_refit,
            "model_sha256": model.sha256, "parent_model_sha256": current.sha256}

    def write_ids(run_cfg: JobConfig, **options) -> None:  # the version's IDs, then the run's rejects
        done = assign_ids(spark, intake.rows, intake.info, model, run_cfg, run_id=run_report.run_id, **options)
        run_report.took_assignment(done)
        write_rejects(spark, cfg, intake, run_report.run_id)

    with seconds.timed("publish"):
        if cfg.output.on_refit == "new_table":
            target = _new_table(cfg, model.sha256)
            publish_cfg = dataclasses.replace(cfg, output=dataclasses.replace(
                cfg.output, path=target.path, table=target.name, new_table_on_model_change=False))
            write_ids(publish_cfg, before_write=lambda: save_unpublished(model, path, note), ids_from=out.read(spark),
                      whole_input=source if cfg.input.on_invalid == "fail" else None)
            set_properties(spark, target, {PARENT_SHA_PROPERTY: current.sha256, PARENT_TABLE_PROPERTY: str(out),
                                           MODEL_PATH_PROPERTY: path})
            set_properties(spark, out, {SUCCESSOR_SHA_PROPERTY: model.sha256, SUCCESSOR_TABLE_PROPERTY: str(target),
                                        SUCCESSOR_PATH_PROPERTY: path})  # the version is published
            with stage(spark, "semid: ID strings changed between the two tables"):
                changed = table_churn(out.read(spark), target.read(spark), cfg.input.key_col)
                comparison = dataclasses.replace(comparison, id_churn=changed["strings"],
                                                 id_churn_items=changed["items"])
        else:
            target = out

            def before_write() -> None:
                save_unpublished(model, path, note)
                begin_rebinding(spark, out, current.sha256, model, run_report.run_id, path)

            try:
                write_ids(cfg, before_write=before_write, rebinding_from=current.sha256)
            except BaseException:
                _quietly(abandon_rebinding, spark, out, run_report.run_id)
                raise
            # the MERGE switched the table (bound_model); this records it in the table's own properties
            rebind_table(spark, out, current.sha256, model, {PARENT_SHA_PROPERTY: current.sha256,
                                                             MODEL_PATH_PROPERTY: path})
            # insert-only: no written ID changed
            comparison = dataclasses.replace(comparison, id_churn=0.0, id_churn_items=None)
        mark_published(path)
    return Publication(target, run_report, comparison, seconds)


def _can_warm_start(model_cfg, encoder, current) -> bool:
    """Whether the new model can start from the current one: the same kind, shape and (RQ-VAE) layers."""
    return (type(encoder) is type(current) and model_cfg.sizes == current.codebook_sizes
            and getattr(encoder, "architecture", None) == getattr(current, "architecture", None))


def finish_interrupted_publish(spark: SparkSession, out: TableRef, props: dict[str, str]) -> dict[str, str]:
    """Complete what a refit stopped after its version was published left undone: the table's record
    of a keep_ids switch, and the unpublished mark of a model the table names (a no-op otherwise).
    *props*: the table's properties; returns them as they are after."""
    pending, old = props.get(PENDING_SHA_PROPERTY), props.get(SHA_PROPERTY)
    if pending and pending_rows_in(spark, out, props):
        path = props[PENDING_PATH_PROPERTY]
        log.warning("table %s: a refit stopped after its rows switched the table to model %s; recording the switch",
                    out, pending[:12])
        rebind_table(spark, out, old, load_saved_model(path), {PARENT_SHA_PROPERTY: old, MODEL_PATH_PROPERTY: path})
        props = out.properties(spark)
    for name in (MODEL_PATH_PROPERTY, SUCCESSOR_PATH_PROPERTY):  # published models the table names
        if props.get(name) and unpublished_note(props[name]) is not None:
            log.warning("table %s names model %s, left marked unpublished by a stopped refit: marking it published",
                        out, props[name])
            mark_published(props[name])
    return props


def table_churn(old: DataFrame, new: DataFrame, key_col: str) -> dict:
    """Over the items in both ID tables: how many (``items``), and the shares whose full code (``codes``)
    and whose ID string (``strings``) differ. One join of keys, codes and strings."""
    both = old.select(key_col, F.col(CODES).alias("_old_codes"), F.col(SEMANTIC_ID).alias("_old_id")).join(
        new.select(key_col, CODES, SEMANTIC_ID), key_col)
    n, codes, strings = both.agg(F.count(F.lit(1)), F.sum((F.col("_old_codes") != F.col(CODES)).cast("long")),
                                 F.sum((F.col("_old_id") != F.col(SEMANTIC_ID)).cast("long"))).first()
    return {"items": int(n), "codes": (codes or 0) / n if n else 0.0, "strings": (strings or 0) / n if n else 0.0}


def _quietly(function, *args) -> None:
    """Clean-up after a failure: its own error is logged, never raised over the failure's."""
    try:
        function(*args)
    except Exception as exc:  # noqa: BLE001
        log.warning("clean-up %s failed: %s", function.__name__, exc)


def churn_table(cfg: JobConfig) -> TableRef:
    """Where the refits' churn rows go: output.churn_path/churn_table, or beside the output table."""
    o = cfg.output
    if o.churn_path or o.churn_table:
        return TableRef(o.churn_path, o.churn_table)
    return TableRef(None, f"{o.table}_churn") if o.table else TableRef(f"{o.path.rstrip('/')}_churn")


def _new_table(cfg: JobConfig, sha: str) -> TableRef:
    o = cfg.output
    if o.refit_path or o.refit_table:
        return TableRef(o.refit_path, o.refit_table)
    return TableRef(None, _versioned(o.table, sha, "_v")) if o.table else TableRef(_versioned(o.path, sha, "_v"))


def _versioned(name: str, sha: str, sep: str) -> str:
    return f"{name.rstrip('/')}{sep}{sha[:12]}"


def _write_files(comparison: VersionComparison, out_dir: str, name: str, title: str) -> dict[str, str]:
    """<out_dir>/<name>.md and .json (a local path or any URL); their paths."""
    paths = {"md": storage.join(out_dir, f"{name}.md"), "json": storage.join(out_dir, f"{name}.json")}
    storage.write_bytes(paths["md"], comparison.markdown(title).encode())
    storage.write_bytes(paths["json"], comparison.json().encode())
    return paths


def _record(spark: SparkSession, cfg: JobConfig, report: RefitReport) -> None:
    """The refit's row of the churn table (written once: a retry of the same refit adds no copy)."""
    c = report.comparison
    row = (report.refit_id, datetime.datetime.now(), c.old_model_sha256, c.new_model_sha256, report.on_refit,
           c.n_items, c.churn_unaligned, c.churn_aligned, c.churn_reference, c.error_old, c.error_new,
           c.collision_old, c.collision_new, cfg.quality.max_churn, report.published, report.ids_table, report.new_model_path,
           c.id_churn)
    ref = churn_table(cfg)
    append_idempotent(spark, ref, spark.createDataFrame([row], CHURN_SCHEMA), REFIT_ID)
    report.files["churn_table"] = str(ref)


def compare_models(spark: SparkSession, cfg: JobConfig, other_path: str, *, out_dir: str = "artifacts/evaluate",
                   sample_size: int = 20_000) -> tuple[VersionComparison, dict[str, str]]:
    """``semid evaluate --compare PATH``: model.path's model (the current version) and the model at
    *other_path* on the same sampled catalog items (*sample_size*, drawn by key hash as for fitting):
    churn from the current model's codes to the other's, unaligned and aligned, error and collisions
    of both. Writes ``compare.md`` and ``compare.json`` into *out_dir*."""
    current, other = load_encoder(cfg.model.path), load_encoder(other_path, published=False)
    if current.n_features_in_ != other.n_features_in_:
        raise ModelMismatchError(f"model.path's model takes embeddings of length {current.n_features_in_}, the one at "
                                 f"{other_path!r} of length {other.n_features_in_}: they cannot encode the same items")
    intake = read_validated(spark, cfg, None, dim=current.n_features_in_, rows_checked_later=True)
    df, info = intake.rows, intake.info
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    with stage(spark, "semid: sample the catalog to the driver"), bad_rows_named(df, key, emb, info.dim):
        x = sample_embeddings(df, key_col=key, embedding_col=emb, dim=info.dim, n_rows=info.n_rows,
                              sample_size=sample_size, seed=cfg.model.seed)
    comparison, _ = compare_versions(current, other, x)
    return comparison, _write_files(comparison, out_dir, "compare", COMPARE_TITLE)
