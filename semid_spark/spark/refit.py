"""``semid refit``: a new model version for a grown, drifted catalog, without churning IDs.

1. *Fit*: today's training sample (``model.sample_size`` rows, drawn as ``fit`` draws them), each
   with its codes in the current table where it has one; RQ-KMeans of the current shape starts
   Lloyd from the current codebooks (a warm start keeps the clusters the data still supports).
   A cold fit (what a plain ``semid fit`` would give) is made too, for the report only.
2. *Align*: each level of the new model is relabelled so that the table's sampled items keep as
   many of their codes as possible (``algorithms.align``): the version that would be published.
3. *Report before publishing*: churn per prefix depth with and without alignment, reconstruction
   error and collisions of both versions, to ``<out>/churn.md`` and ``churn.json`` and as one row
   of the churn table beside the output. ``quality.max_churn`` refuses to publish a version that
   changes more of the sampled items' full codes than that: no model saved, no table touched.
4. *Publish* (``output.on_refit``):

   - ``new_table``: the aligned model is saved at ``model.refit_path``; a run of it writes every
     item's ID to a new table (``output.refit_path``/``refit_table``); the old table keeps its
     rows. Lineage properties: the new table names its parent model and table, the old one its
     successor model, table and model path.
   - ``keep_ids``: the table is bound to the aligned model (with the lineage and the list of its
     models), then a run of it gives IDs to the items the table does not hold yet. Every written
     ID stays; a new item whose code a written item holds moves to a free code of its prefix
     (``uniqueness.strategy: relocate``) or takes the next counter; each row's ``model_sha256``
     says which version encoded it. Needs the same codebook sizes as the current model. The
     run's own gates (``quality.max_counter_share``, ``min_utilisation``) are checked after the
     rebinding: one that refuses leaves the table bound to the new version with no new row, and
     ``semid assign`` with the new model (or the refit again) completes it.

The same seed and catalog give the same aligned model (its digest names the default paths), so
a refit stopped while publishing resumes where it stopped when it is run again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from semid_spark import storage
from semid_spark.algorithms import codebook_sizes, input_dim
from semid_spark.config import JobConfig
from semid_spark.delta.table import (
    MODEL_PATH_PROPERTY, PARENT_SHA_PROPERTY, PARENT_TABLE_PROPERTY, SHA_PROPERTY, SUCCESSOR_PATH_PROPERTY,
    SUCCESSOR_SHA_PROPERTY, SUCCESSOR_TABLE_PROPERTY, TableRef, append_idempotent, rebind_table, set_properties,
)
from semid_spark.exceptions import ConfigError, InvalidInputError, ModelMismatchError, QualityGateError
from semid_spark.spark.columns import CODES
from semid_spark.spark.preflight import check_locations
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
    current = pipeline.load_encoder(cfg.model.path)
    out = TableRef(cfg.output.path, cfg.output.table)
    detail = out.detail(spark)
    if detail is None:
        raise InvalidInputError(f"no ID table at {out} (output.path/output.table) to refit: `semid run` writes the "
                                "first version")
    props = dict(detail["properties"] or {})
    if current.sha256 not in (props.get(SHA_PROPERTY), props.get(PARENT_SHA_PROPERTY)):
        raise ModelMismatchError(f"table {out} holds IDs of model {str(props.get(SHA_PROPERTY))[:12]}…, model.path "
                                 f"holds {current.sha256[:12]}…: point model.path at the table's model to refit it")
    sizes = cfg.model.sizes
    if cfg.output.on_refit == "keep_ids" and sizes != codebook_sizes(current):
        raise ConfigError(f"output.on_refit=keep_ids keeps the table's IDs of {codebook_sizes(current)} codes per level; "
                          f"model.n_levels/n_clusters ask for {sizes}: use output.on_refit=new_table for another shape")

    run_report = pipeline.RunReport()
    df, info = pipeline._read_validated(spark, cfg, run_report, None, dim=input_dim(current), rows_checked_later=True)
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
    report.warm_start = cfg.model.kind == "rq_kmeans" and type(current).__name__ == "RQKMeans" \
        and codebook_sizes(current) == sizes
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
    report.files = _write_files(comparison, out_dir, "churn", REFIT_TITLE)

    limit = cfg.quality.max_churn
    if limit is not None and comparison.churn_aligned[-1] > limit:
        _record(spark, cfg, report)
        raise QualityGateError(
            f"the new version {comparison.new_model_sha256[:12]}… would change the full code of "
            f"{comparison.churn_aligned[-1]:.4f} of the table's {comparison.n_items} sampled items (aligned), over "
            f"quality.max_churn={limit}; nothing was published: no model saved, no ID table changed (report: "
            f"{report.files['md']})")

    report.new_model_path = cfg.model.refit_path or _versioned(cfg.model.path, model.sha256, "_v")
    started = time.perf_counter()
    model.save(report.new_model_path)  # the same sha256 every time: a resumed refit rewrites the same files
    publish_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=report.new_model_path, refit=False))
    if cfg.output.on_refit == "new_table":
        target = _new_table(cfg, model.sha256)
        publish_cfg = dataclasses.replace(publish_cfg, output=dataclasses.replace(
            cfg.output, path=target.path, table=target.name, new_table_on_model_change=False))
        published = pipeline.run(spark, publish_cfg, fit=False)
        set_properties(spark, target, {PARENT_SHA_PROPERTY: current.sha256, PARENT_TABLE_PROPERTY: str(out),
                                       MODEL_PATH_PROPERTY: report.new_model_path})
        set_properties(spark, out, {SUCCESSOR_SHA_PROPERTY: model.sha256, SUCCESSOR_TABLE_PROPERTY: str(target),
                                    SUCCESSOR_PATH_PROPERTY: report.new_model_path})
    else:  # keep_ids: the table moves on to the new version first, so that no old-model run lands after it
        target = out
        rebind_table(spark, out, current.sha256, model, {PARENT_SHA_PROPERTY: current.sha256,
                                                         MODEL_PATH_PROPERTY: report.new_model_path})
        published = pipeline.run(spark, publish_cfg, fit=False)
    report.seconds["publish"] = time.perf_counter() - started
    report.published, report.ids_table, report.run = True, str(target), published.as_dict()
    _record(spark, cfg, report)
    log.info("refit %s published model %s (%s) to %s: %d items inserted", report.refit_id, model.sha256[:12],
             cfg.output.on_refit, target, published.n_inserted)
    return report


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
           c.collision_old, c.collision_new, cfg.quality.max_churn, report.published, report.ids_table, report.new_model_path)
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

    current, other = pipeline.load_encoder(cfg.model.path), pipeline.load_encoder(other_path)
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
