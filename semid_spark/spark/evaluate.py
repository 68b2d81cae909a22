"""``semid evaluate``: the quality report of a written ID table (or of a catalog and a model).

Counts are exact and computed by Spark over every item: distinct prefixes per depth,
bucket sizes, the largest bucket, items per code per level (only the ``codes`` column is
read, and only counts reach the driver). The neighbour figures (recall, NDCG, distance
correlation, agreement by prefix depth) and the 2-D projection use a deterministic sample
(a hash of the key, as for fitting) collected to the driver with its embeddings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from semid_spark import storage
from semid_spark.config import JobConfig
from semid_spark.delta.schema import CODES, COUNTER, RELOCATED, SEMANTIC_ID
from semid_spark.delta.table import TableRef, table_model_sha
from semid_spark.exceptions import InvalidInputError, ModelMismatchError
from semid_spark.spark.compat import to_arrow
from semid_spark.spark.encode import FrozenModel, arrow_embeddings, encode_embeddings
from semid_spark.spark.models import load_encoder, model_exists
from semid_spark.spark.ranking import base_id
from semid_spark.spark.sample import HASH, hash_filtered
from semid_spark.spark.session import stage
from semid_spark.spark.source import read_input
from semid_spark.spark.validate import normalize_columns
from semid_spark.utils import metrics
from semid_spark.utils.progress import Steps
from semid_spark.utils.quality import CodeCounts, DepthCounts, QualityReport, build_report, prefix_agreement, projection_2d
from semid_spark.utils.report_files import write_atlas, write_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateOptions:
    out_dir: str = "artifacts/evaluate"
    sample_size: int = 20_000  # rows collected for the neighbour figures and the projection
    k: int = 10
    n_queries: int = 1000
    projection: str = "pca"  # or "umap" (umap-learn)
    seed: int = 42
    source: str = "auto"  # "table": the written IDs; "catalog": encode cfg.input with the model; auto: table if it exists


def code_counts(ids: DataFrame, n_levels: int, codes_col: str = CODES) -> CodeCounts:
    """Exact counts of a (…, codes array<int>) frame; the driver receives only counts."""
    codes = ids.select(F.col(codes_col).alias("c")).cache()
    try:
        n_items = codes.count()
        if n_items == 0:
            raise InvalidInputError("the ID table is empty: nothing to evaluate")
        depths, bucket_sizes, largest_codes = [], {}, ""
        for depth in range(1, n_levels + 1):
            buckets = codes.groupBy(F.slice("c", 1, depth).alias("p")).count()
            row = buckets.agg(F.count(F.lit(1)).alias("n"), F.max("count").alias("largest"),
                              F.sum(F.col("count").cast("double") * (F.col("count") - 1)).alias("pairs")).first()
            depths.append(DepthCounts(depth, int(row["n"]), int(row["largest"]), float(row["pairs"])))
            if depth == n_levels:
                bucket_sizes = {int(r["count"]): int(r["n"]) for r in
                                buckets.groupBy("count").agg(F.count(F.lit(1)).alias("n")).collect()}
                top = buckets.orderBy(F.desc("count"), "p").first()
                largest_codes = "-".join(map(str, top["p"]))
        level_counts = [np.array([r["count"] for r in codes.groupBy(F.col("c")[lv]).count().collect()], dtype=np.int64)
                        for lv in range(n_levels)]
    finally:
        codes.unpersist()
    return CodeCounts(n_items, depths, level_counts, bucket_sizes, largest_codes)


def evaluate_job(spark: SparkSession, cfg: JobConfig, options: EvaluateOptions = EvaluateOptions()) -> tuple[QualityReport, dict[str, str]]:
    """Compute the report for ``cfg``'s output table (or its catalog encoded with its model) and
    write report.md / report.json / PNGs / atlas.parquet into ``options.out_dir``."""
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    out = TableRef(cfg.output.path, cfg.output.table)
    has_model = model_exists(cfg.model.path)
    source = options.source
    if source == "auto":
        source = "table" if out.exists(spark) else "catalog"
    if source == "table" and not out.exists(spark):
        raise InvalidInputError(f"no ID table at {out}: run `semid run --config …` first, or evaluate the catalog "
                                "with --source catalog")
    if source == "catalog" and not has_model:
        raise InvalidInputError(f"no model at {cfg.model.path!r} to encode the catalog with: run `semid fit` first")
    encoder = load_encoder(cfg.model.path) if has_model else None
    catalog = read_input(spark, cfg)
    text_cols = [f.name for f in catalog.schema.fields if isinstance(f.dataType, T.StringType) and f.name != key]
    items = normalize_columns(catalog, key, emb).join(catalog.select(key, *text_cols), key)

    sizes = encoder.codebook_sizes if encoder is not None else _table_sizes(spark, out)
    n_levels = len(sizes)
    if source == "table":
        stored = table_model_sha(spark, out)
        if encoder is not None and stored != encoder.sha256:
            raise ModelMismatchError(f"table {out} was written with model sha256={str(stored)[:12]}…; the model at "
                                     f"{cfg.model.path!r} is {encoder.sha256[:12]}…; point model.path at the table's model")
        table = out.read(spark)
        ids = table.select(key, SEMANTIC_ID, CODES)
    else:
        dim = encoder.n_features_in_
        encoded = encode_embeddings(items.select(key, emb), FrozenModel(spark, encoder), key_col=key,
                                    embedding_col=emb, dim=dim, device=cfg.encode.device)
        ids = encoded.withColumn(SEMANTIC_ID, base_id(cfg.uniqueness.sep, n_levels))  # codes only: no counters without the table

    step = Steps("semid evaluate", 5)
    try:
        step("exact counts")
        with stage(spark, "semid evaluate: exact counts of codes"):
            counts = code_counts(ids, n_levels)
        step("sample")
        with stage(spark, "semid evaluate: sample rows with embeddings"):
            sample = _sample(ids, items, key, emb, text_cols, counts.n_items, options)
        step("neighbour metrics")
        report, x, codes = _sampled_report(sample, counts, sizes, encoder, emb, n_levels, options)
        if source == "table":
            report.uniqueness = _uniqueness(table, encoder, x, codes)
        step("report files")
        with storage.writable_dir(options.out_dir) as staged:  # a local folder, or one uploaded to the URL
            paths = write_report(report, staged, level_counts=counts.level_counts,
                                 title=f"Semantic ID quality: {out if source == 'table' else 'catalog ' + str(cfg.input.path or cfg.input.table)}")
            step("Embedding Atlas file")
            paths["atlas"] = write_atlas(
                os.path.join(staged, "atlas.parquet"), keys=sample.column(key), semantic_ids=sample.column(SEMANTIC_ID),
                codes=codes, xy=projection_2d(x, options.projection, seed=options.seed), key_col=key,
                extra={c: sample.column(c) for c in text_cols})
            paths = {kind: storage.final_path(options.out_dir, staged, path) for kind, path in paths.items()}
    finally:
        step.close()
    log.info("quality report of %d items (%d sampled) written to %s", counts.n_items, len(x), options.out_dir)
    return report, paths


def _uniqueness(table: DataFrame, encoder, x: np.ndarray, codes: np.ndarray) -> dict:
    """Moved and counter shares over every row of the table (a table written before relocation reads
    its null flags as not moved), and, on the sample, the error of its codes over the nearest codes'."""
    moved = F.coalesce(F.col(RELOCATED), F.lit(False)) if RELOCATED in table.columns else F.lit(False)
    row = table.agg(F.count(F.lit(1)).alias("n"), F.sum(moved.cast("long")).alias("moved"),
                    F.sum((F.col(COUNTER) > 0).cast("long")).alias("counters")).first()
    n = max(int(row["n"] or 0), 1)
    out = {"moved_share": int(row["moved"] or 0) / n, "counter_share": int(row["counters"] or 0) / n}
    if encoder is not None and len(x) and hasattr(encoder, "decode"):
        written = float(((x - encoder.decode(codes)) ** 2).sum(axis=1).mean())
        nearest = float(((x - encoder.decode(encoder.encode(x))) ** 2).sum(axis=1).mean())
        out["error_ratio"] = written / nearest if nearest > 0 else 1.0
    return out


def _sampled_report(sample, counts: CodeCounts, sizes: list[int], encoder, emb: str, n_levels: int,
                    options: EvaluateOptions) -> tuple[QualityReport, np.ndarray, np.ndarray]:
    x = arrow_embeddings(sample.column(emb), encoder.n_features_in_ if encoder else len(sample.column(emb)[0]), copy=True)
    codes = np.array(sample.column(CODES).to_pylist(), dtype=np.int64).reshape(len(x), n_levels)
    k = min(options.k, len(x) - 1)
    sample_metrics = metrics.evaluate(x, codes, encoder, k=k, seed=options.seed) if k >= 1 else {}
    agreement = prefix_agreement(x, codes, k=k, n_queries=options.n_queries, seed=options.seed) if k >= 1 else []
    report = build_report(counts, sizes, sample=sample_metrics, agreement=agreement, k=k,
                          model_sha256=encoder.sha256 if encoder is not None else "")
    return report, x, codes


def _sample(ids: DataFrame, items: DataFrame, key: str, emb: str, text_cols: list[str], n_items: int,
            options: EvaluateOptions):
    """Up to sample_size rows (key, semantic_id, codes, embedding, text…) chosen by a hash of the key, sorted by key."""
    picked = (hash_filtered(ids, key, n_rows=n_items, sample_size=options.sample_size, seed=options.seed)
                 .join(items, key).orderBy(HASH, key).limit(options.sample_size)
                 .select(key, SEMANTIC_ID, CODES, emb, *text_cols).orderBy(key))
    table = to_arrow(picked)
    if table.num_rows < 2:
        raise InvalidInputError(f"only {table.num_rows} IDs matched catalog rows by {key!r}: is the catalog the one "
                                "the IDs were assigned from?")
    return table


def _table_sizes(spark: SparkSession, out: TableRef) -> list[int]:
    """Codebook sizes from the table's properties (written with the table), when the model file is absent."""
    props = out.properties(spark)
    sizes = [int(s) for s in props.get("semid.codebook_sizes", "").split(",") if s]
    if not sizes:
        raise InvalidInputError(f"table {out} has no semid.codebook_sizes property and no model was found to read them from")
    return sizes
