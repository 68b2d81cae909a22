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
import logging
import time
import uuid
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from semid_spark import storage
from semid_spark.algorithms import codebook_sizes, input_dim
from semid_spark.algorithms import load_encoder as load_saved_model
from semid_spark.config import JobConfig
from semid_spark.delta.table import (
    MODEL_PATH_PROPERTY, PARENT_SHA_PROPERTY, PARENT_TABLE_PROPERTY, PENDING_PATH_PROPERTY, PENDING_SHA_PROPERTY,
    SHA_PROPERTY, SUCCESSOR_PATH_PROPERTY, SUCCESSOR_SHA_PROPERTY, SUCCESSOR_TABLE_PROPERTY, TableRef,
    abandon_rebinding, append_idempotent, begin_rebinding, pending_rows_in, rebind_table, set_properties,
)
from semid_spark.exceptions import ConfigError, InvalidInputError, ModelMismatchError, QualityGateError
from semid_spark.spark.changes import current_version, input_ref, record_input_version
from semid_spark.spark.columns import CODES, SEMANTIC_ID
from semid_spark.spark.preflight import check_locations
from semid_spark.spark.publish import mark_published, save_unpublished, unpublished_note
from semid_spark.spark.sample import bad_rows_named, sample_embeddings, sample_with_codes
from semid_spark.spark.session import stage
from semid_spark.versions import VersionComparison, compare_versions

log = logging.getLogger(__name__)

REFIT_ID = "refit_id"
REFIT_TITLE = "Refit: churn of the current table's items"
COMPARE_TITLE = "Two model versions on the same catalog items"
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


def refit(spark: SparkSession, cfg: JobConfig, *, out_dir: str = "artifacts/refit") -> RefitReport:
    """Fit, align, report and (unless ``quality.max_churn`` refuses) publish a new model version."""
    from semid_spark.spark import pipeline

    report = RefitReport(on_refit=cfg.output.on_refit)
    check_locations(spark, cfg, extra={"--out": out_dir, **({"model.refit_path": cfg.model.refit_path}
                                                          if cfg.model.refit_path else {})})
    out = TableRef(cfg.output.path, cfg.output.table)
    current = pipeline.load_encoder(cfg.model.path)
    detail = out.detail(spark)
    if detail is None:
        raise InvalidInputError(f"no ID table at {out} (output.path/output.table) to refit: `semid run` writes the "
                                "first version")
    props = finish_interrupted_publish(spark, out, dict(detail["properties"] or {}))
    if current.sha256 not in (props.get(SHA_PROPERTY), props.get(PARENT_SHA_PROPERTY)):
        raise ModelMismatchError(f"table {out} holds IDs of model {str(props.get(SHA_PROPERTY))[:12]}…, model.path "
                                 f"holds {current.sha256[:12]}…: point model.path at the table's model to refit it")
    sizes = cfg.model.sizes
    if cfg.output.on_refit == "keep_ids" and sizes != codebook_sizes(current):
        raise ConfigError(f"output.on_refit=keep_ids keeps the table's IDs of {codebook_sizes(current)} codes per level; "
                          f"model.n_levels/n_clusters ask for {sizes}: use output.on_refit=new_table for another shape")

    run_report = pipeline.RunReport()
    version = current_version(spark, cfg)  # before reading: the publish records at most what it read
    source = pipeline.read_input(spark, cfg)
    df, info = pipeline._read_validated(spark, cfg, run_report, source, dim=input_dim(current), rows_checked_later=True)
    started = time.perf_counter()
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    with stage(spark, "semid: sample the catalog, with the table's codes, to the driver"), \
            bad_rows_named(df, key, emb, info.dim):
        x, old_codes = sample_with_codes(df, out.read(spark), key_col=key, embedding_col=emb, codes_col=CODES,
                                         n_levels=len(codebook_sizes(current)), dim=info.dim, n_rows=info.n_rows,
                                         sample_size=cfg.model.sample_size, seed=cfg.model.seed)
    report.seconds["sample"] = time.perf_counter() - started
    report.n_sampled = len(x)
    in_table = (old_codes >= 0).all(axis=1)
    if not in_table.any():
        raise InvalidInputError(f"none of the {len(x)} sampled input items is in table {out}: nothing to align the new "
                                "version to (is input the catalog the table was written from?)")

    started = time.perf_counter()
    encoder = pipeline.new_encoder(cfg.model, info.dim)
    report.warm_start = _can_warm_start(cfg, encoder, current)
    init = {"init": current} if report.warm_start else {}
    device = pipeline.fit_device(cfg.model)
    new = encoder.fit(x, device=device, **init)
    # what a plain refit gives, for the report: warm-started, the new model's own labels already
    # follow the current ones, so "unaligned" alone would hide what a cold refit churns
    cold = pipeline.new_encoder(cfg.model, info.dim).fit(x, device=device) if report.warm_start else None
    report.seconds["fit"] = time.perf_counter() - started
    started = time.perf_counter()
    comparison, alignment = compare_versions(current, new, x[in_table], old_codes=old_codes[in_table], reference=cold)
    report.seconds["compare"] = time.perf_counter() - started
    report.comparison, model = comparison, alignment.model
    log.info("refit %s: %d sampled rows (%d in the table), full-ID churn %.4f aligned, %.4f unaligned",
             report.refit_id, len(x), int(in_table.sum()), comparison.churn_aligned[-1], comparison.churn_unaligned[-1])

    limit = cfg.quality.max_churn
    if limit is not None and comparison.churn_aligned[-1] > limit:
        report.files = _write_files(comparison, out_dir, "churn", REFIT_TITLE)
        _record(spark, cfg, report)
        raise QualityGateError(
            f"the new version {comparison.new_model_sha256[:12]}… would change the full code of "
            f"{comparison.churn_aligned[-1]:.4f} of the table's {comparison.n_items} sampled items (aligned), over "
            f"quality.max_churn={limit}; nothing was published: no model saved, no ID table changed (report: "
            f"{report.files['md']})")

    report.new_model_path = path = cfg.model.refit_path or _versioned(cfg.model.path, model.sha256, "_v")
    note = {"refit_id": report.refit_id, "table": str(out), "on_refit": cfg.output.on_refit,
            "model_sha256": model.sha256, "parent_model_sha256": current.sha256}
    started = time.perf_counter()
    # every row the version publishes is encoded and checked, and every gate passed, before the model is
    # saved (marked unpublished) and before a table changes; the version is published by one commit
    if cfg.output.on_refit == "new_table":
        target = _new_table(cfg, model.sha256)
        publish_cfg = dataclasses.replace(cfg, output=dataclasses.replace(
            cfg.output, path=target.path, table=target.name, new_table_on_model_change=False))
        pipeline.assign_ids(spark, df, info, model, publish_cfg, run_report,
                            before_write=lambda: save_unpublished(model, path, note), ids_from=out.read(spark),
                            whole_input=source if cfg.input.on_invalid == "fail" else None)
        set_properties(spark, target, {PARENT_SHA_PROPERTY: current.sha256, PARENT_TABLE_PROPERTY: str(out),
                                       MODEL_PATH_PROPERTY: path})
        set_properties(spark, out, {SUCCESSOR_SHA_PROPERTY: model.sha256, SUCCESSOR_TABLE_PROPERTY: str(target),
                                    SUCCESSOR_PATH_PROPERTY: path})  # the version is published
        with stage(spark, "semid: ID strings changed between the two tables"):
            changed = table_churn(out.read(spark), target.read(spark), key)
            report.comparison = dataclasses.replace(comparison, id_churn=changed["strings"], id_churn_items=changed["items"])
    else:
        target = out

        def before_write() -> None:
            save_unpublished(model, path, note)
            begin_rebinding(spark, out, current.sha256, model, run_report.run_id, path)

        try:
            pipeline.assign_ids(spark, df, info, model, cfg, run_report, before_write=before_write,
                                rebinding_from=current.sha256)
        except BaseException:
            _quietly(abandon_rebinding, spark, out, run_report.run_id)
            raise
        # the MERGE switched the table (bound_model); this records it in the table's own properties
        rebind_table(spark, out, current.sha256, model, {PARENT_SHA_PROPERTY: current.sha256, MODEL_PATH_PROPERTY: path})
        # insert-only: no written ID changed
        report.comparison = dataclasses.replace(comparison, id_churn=0.0, id_churn_items=None)
    mark_published(path)
    record_input_version(spark, target, input_ref(cfg), version)
    report.seconds["publish"] = time.perf_counter() - started
    report.published, report.ids_table, report.run = True, str(target), run_report.as_dict()
    report.files = _write_files(report.comparison, out_dir, "churn", REFIT_TITLE)
    _record(spark, cfg, report)
    log.info("refit %s published model %s (%s) to %s: %d items inserted", report.refit_id, model.sha256[:12],
             cfg.output.on_refit, target, run_report.n_inserted)
    return report


def _can_warm_start(cfg: JobConfig, encoder, current) -> bool:
    """Whether the new model can start from the current one: the same kind, shape and (RQ-VAE) layers."""
    return (type(encoder) is type(current) and cfg.model.sizes == codebook_sizes(current)
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
    import datetime

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
    from semid_spark.spark import pipeline

    current, other = pipeline.load_encoder(cfg.model.path), pipeline.load_encoder(other_path, published=False)
    if input_dim(current) != input_dim(other):
        raise ModelMismatchError(f"model.path's model takes embeddings of length {input_dim(current)}, the one at "
                                 f"{other_path!r} of length {input_dim(other)}: they cannot encode the same items")
    df, info = pipeline._read_validated(spark, cfg, pipeline.RunReport(), None, dim=input_dim(current),
                                        rows_checked_later=True)
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    with stage(spark, "semid: sample the catalog to the driver"), bad_rows_named(df, key, emb, info.dim):
        x = sample_embeddings(df, key_col=key, embedding_col=emb, dim=info.dim, n_rows=info.n_rows,
                              sample_size=sample_size, seed=cfg.model.seed)
    comparison, _ = compare_versions(current, other, x)
    return comparison, _write_files(comparison, out_dir, "compare", COMPARE_TITLE)
