"""The job: read and validate → sample → fit on the driver → encode on executors → rank → Delta.

The orchestrator: each stage lives in its own module and returns what it did (``intake.Intake``,
``Fitted``, ``assign.Assignment``); ``run`` assembles them into the ``RunReport``. ``jobs/`` and the
CLI only parse arguments and call these.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass, field, fields

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from semid_spark import advise as advice
from semid_spark.config import JobConfig
from semid_spark.core import FittedEncoder
from semid_spark.exceptions import ConfigError
from semid_spark.delta.table import TableRef
from semid_spark.spark.assign import Assignment, assign_ids
from semid_spark.spark.intake import Intake, read_validated, write_rejects
from semid_spark.spark.models import (
    fit_device, import_torch_in_background, load_encoder, model_exists, new_encoder, refuse_fitting_over_bound_model,
    save_model,
)
from semid_spark.spark.preflight import check_locations
from semid_spark.spark.sample import bad_rows_named, sample_embeddings
from semid_spark.spark.session import Seconds, stage
from semid_spark.spark.source import input_ref, read_source, record_input_version
from semid_spark.spark.validate import InputReport

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
    seconds: dict[str, float] = field(default_factory=Seconds)
    run_id: str = field(default_factory=lambda: f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    n_retries: int = 0  # merges retried because another run committed first

    def summary(self) -> str:
        """One line for a person: what the run read, inserted and how long it took."""
        text = f"{self.n_input:,} input rows, {self.n_new:,} new, {self.n_inserted:,} inserted"
        if self.n_rejected:
            text += f", {self.n_rejected:,} rejected"
        if self.counter_share is not None and self.n_new:
            text += f", {self.counter_share:.2%} of the new got a counter"
        return text + f" in {sum(self.seconds.values()):.0f} s"

    def as_dict(self) -> dict:
        """The figures, for JSON."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def took_input(self, intake: Intake) -> None:
        self.n_input, self.n_rejected = intake.info.n_rows, intake.n_rejected
        self.seconds.add(intake.seconds)

    def took_assignment(self, done: Assignment) -> None:
        """The assignment's figures, under the same names, and its seconds."""
        for f in fields(done):
            if f.name != "seconds":
                setattr(self, f.name, getattr(done, f.name))
        self.seconds.add(done.seconds)


@dataclass(frozen=True)
class Fitted:
    """A model fitted by the run, and the seconds its sample and fit took."""

    encoder: FittedEncoder
    seconds: Seconds


def training_sample(spark: SparkSession, df: DataFrame, info: InputReport, cfg: JobConfig) -> np.ndarray:
    """The rows the model is fitted on (``model.sample_size``, drawn by key hash), on the driver; a bad
    row among them makes the whole input's bad rows counted and named."""
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    with stage(spark, "semid: sample embeddings to the driver"), bad_rows_named(df, key, emb, info.dim):
        return sample_embeddings(df, key_col=key, embedding_col=emb, dim=info.dim, n_rows=info.n_rows,
                                 sample_size=cfg.model.sample_size, seed=cfg.model.seed)


def fit_model(spark: SparkSession, df: DataFrame, info: InputReport, cfg: JobConfig, *, save: bool = True) -> Fitted:
    """Sample to the driver, fit there (cuda when it has one), save the model (or leave that to the caller).
    With ``info.dim`` None the sample says the embedding length (the fitted model's ``n_features_in_``)."""
    seconds = Seconds()
    with seconds.timed("sample"):
        x = training_sample(spark, df, info, cfg)
    device = fit_device(cfg.model)
    model_cfg, chosen = cfg.model, None
    if model_cfg.auto_shape:
        with seconds.timed("advise"):
            chosen = auto_shape(x, info.n_rows, cfg)
        model_cfg = model_cfg.with_shape(chosen.recommended.sizes)
    with seconds.timed("fit"):
        encoder = new_encoder(model_cfg, x.shape[1])
        if chosen is not None:
            encoder.shape_advice = chosen.record()
        encoder.fit(x, device=device)
        if save:
            save_model(encoder, cfg.model.path)
    log.info("fitted %s on %d sampled rows (%s), sha256 %s", type(encoder).__name__, len(x), device, encoder.sha256[:12])
    return Fitted(encoder, seconds)


def auto_shape(x: np.ndarray, n_rows: int, cfg: JobConfig) -> advice.Advice:
    """``model.n_clusters: auto``: the advisor's cheapest shape for the catalog (``model.target_rows``,
    or the input's *n_rows*) under ``quality.max_counter_share`` (default 0.001), from the sample *x*."""
    target = cfg.model.target_rows or n_rows
    goal = cfg.quality.max_counter_share
    goal = advice.DEFAULT_MAX_COUNTER_SHARE if goal is None else goal
    chosen = advice.choose_shape(x, target, n_levels=cfg.model.n_levels, max_counter_share=goal,
                                 random_state=cfg.model.seed, strategy=cfg.uniqueness.strategy,
                                 n_candidates=cfg.uniqueness.relocate_candidates)
    best = chosen.recommended
    if not best.fitted:
        raise ConfigError(f"model.n_clusters=auto: no shape could be fitted for {target:,} items ({best.note}); "
                          "raise model.sample_size or give model.n_clusters")
    tried = ", ".join(f"{p.choice} {p.counter_share:.4f}" + ("" if p.fitted else " (floor)") for p in chosen.predictions)
    log.log(logging.INFO if best.counter_share <= goal else logging.WARNING,
            "model.n_clusters=auto: %s (model.n_clusters: %s) for %s items, predicted counter share %.4f "
            "(goal <= %s%s); tried, cheapest first: %s", best.choice, best.n_clusters, f"{target:,}",
            best.counter_share, goal, "" if best.counter_share <= goal else ": no shape tried meets it", tried)
    return chosen


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
        import_torch_in_background()
    encoder = None if must_fit else load_encoder(cfg.model.path, cfg)
    dim = None if encoder is None else encoder.n_features_in_  # the model says what length to expect
    out = TableRef(cfg.output.path, cfg.output.table)
    source = read_source(spark, cfg, out, items, changes_only=not must_fit and cfg.input.since == "last_run")
    if source.unchanged:
        return report
    intake = read_validated(spark, cfg, source.rows, dim=dim, rows_checked_later=True,
                            allow_empty=source.since is not None)
    report.took_input(intake)
    info = intake.info
    if info.n_rows:
        if encoder is None:
            fitted = fit_model(spark, intake.rows, info, cfg, save=False)
            encoder = fitted.encoder
            report.seconds.add(fitted.seconds)
            info = dataclasses.replace(info, dim=encoder.n_features_in_)  # learnt from the sample
        save = (lambda: save_model(encoder, cfg.model.path)) if must_fit else None
        done = assign_ids(spark, intake.rows, info, encoder, cfg, run_id=report.run_id, before_write=save,
                          whole_input=source.rows if source.whole and cfg.input.on_invalid == "fail" else None)
        report.took_assignment(done)
    write_rejects(spark, cfg, intake, report.run_id)  # once the IDs are in (or there were no valid new rows)
    record_input_version(spark, out, input_ref(cfg), source.version)
    log.info("run %s: %d input rows, %d rejected, %d new, %d inserted, collision share %.4f, seconds %s",
             report.run_id, report.n_input, report.n_rejected, report.n_new, report.n_inserted,
             report.collision_share, {k: round(v, 1) for k, v in report.seconds.items()})
    if encoder is not None:
        warn_if_mostly_counters(report, encoder.codebook_sizes)
    if report.moved_share is not None:
        log.info("run %s: relocation moved %.4f of the new items to free codes of their prefix; %.4f got a counter; "
                 "reconstruction error x%.4f", report.run_id, report.moved_share, report.counter_share,
                 report.error_ratio)
    return report


MOSTLY_COUNTERS = 0.5  # a run whose new items get counters more often than this is warned


def warn_if_mostly_counters(report: RunReport, sizes: list[int]) -> None:
    """A run where most new items share a code (so their IDs need counters) succeeds, but says so: the
    codebooks are too small for the catalog. The quality gates stay opt-in."""
    share = report.counter_share if report.counter_share is not None else report.collision_share
    if report.n_new < 100 or share <= MOSTLY_COUNTERS:
        return
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


def fit_only(spark: SparkSession, cfg: JobConfig) -> RunReport:
    check_locations(spark, cfg, output=False)
    refuse_fitting_over_bound_model(spark, cfg)
    report = RunReport()
    intake = read_validated(spark, cfg, None)
    report.took_input(intake)
    fitted = fit_model(spark, intake.rows, intake.info, cfg)
    report.model_sha256 = fitted.encoder.sha256
    report.seconds.add(fitted.seconds)
    return report


def advise(spark: SparkSession, cfg: JobConfig, *, target_rows: int | None, shapes=None,
           max_counter_share: float = advice.DEFAULT_MAX_COUNTER_SHARE) -> advice.Advice:
    """``semid advise``: the job's training sample (``model.sample_size`` rows, drawn as ``fit`` draws
    them), RQ-KMeans fitted on it for each shape, and the counters each would give a catalog of
    *target_rows* items (None: the input's valid rows); see ``semid_spark.advise.choose_shape``."""
    intake = read_validated(spark, cfg, None)
    x = training_sample(spark, intake.rows, intake.info, cfg)
    target = intake.info.n_rows if target_rows is None else target_rows
    levels = cfg.model.n_levels if cfg.model.auto_shape else None
    return advice.choose_shape(x, target, shapes=shapes, n_levels=levels, max_counter_share=max_counter_share,
                               random_state=cfg.model.seed, strategy=cfg.uniqueness.strategy,
                               n_candidates=cfg.uniqueness.relocate_candidates)


def assign_only(spark: SparkSession, cfg: JobConfig, *, items: DataFrame | None = None) -> RunReport:
    return run(spark, cfg, fit=False, items=items)
