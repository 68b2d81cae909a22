"""`make demo`: the whole job on the embedded local Spark, twice.

1. writes a synthetic catalog (clustered embeddings, 200k items) as a Delta table;
2. runs the pipeline (validate, sample, fit RQ-KMeans, encode on executors, rank, write Delta);
3. appends 10% new items and runs again: only the new keys get IDs, and no old ID changes.
Prints sample IDs, row counts, the collision share and the seconds of each stage.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from typing import Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from semid_spark.config import JobConfig
from semid_spark.delta.table import TableRef
from semid_spark.spark import pipeline
from semid_spark.spark.compat import from_arrow
from semid_spark.spark.evaluate import EvaluateOptions, evaluate_job
from semid_spark.spark.session import get_session
from semid_spark.synthetic import generated_catalog


def catalog_frame(spark, x: np.ndarray, start: int):
    keys = pa.array([f"item{i:07d}" for i in range(start, start + len(x))])
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]).cast(pa.list_(pa.float32()))
    return from_arrow(spark, pa.table({"item_id": keys, "embedding": emb}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="conf/demo.yaml")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "semid_spark.algorithms"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = JobConfig.from_yaml(args.config, args.set)
    for path in (cfg.input.path, cfg.model.path, cfg.output.path):
        shutil.rmtree(path, ignore_errors=True)  # the demo starts from nothing each time
    start = time.perf_counter()
    spark = get_session(cfg.spark)
    print(f"Spark {spark.version} with Delta ready in {time.perf_counter() - start:.1f} s")

    n_new = args.items // 10
    x = generated_catalog(args.items + n_new, args.dim, n_topics=100, seed=0)
    start = time.perf_counter()
    catalog_frame(spark, x[: args.items], 0).write.format("delta").mode("overwrite").save(cfg.input.path)
    print(f"catalog: {args.items:,} items x {args.dim} written to {cfg.input.path} in {time.perf_counter() - start:.1f} s")

    first = pipeline.run(spark, cfg)
    _print_report("run 1 (fit + assign)", first)
    written = TableRef(cfg.output.path).version(spark)  # what run 1 committed: run 2 must leave it as it is
    table = spark.read.format("delta").load(cfg.output.path)
    print("sample IDs:")
    for row in table.orderBy("item_id").limit(5).collect():
        print(f"  {row.item_id}  {row.semantic_id:<14} codes={row.codes} counter={row.counter}")

    catalog_frame(spark, x[args.items:], args.items).write.format("delta").mode("append").save(cfg.input.path)
    second = pipeline.run(spark, cfg)
    _print_report(f"run 2 (+{n_new:,} new items, same model)", second)

    compared, changed = changed_ids(spark, cfg.output.path, written)
    after = spark.read.format("delta").load(cfg.output.path)
    total, distinct = after.count(), after.select("semantic_id").distinct().count()
    print(f"table {cfg.output.path}: {total:,} rows, {distinct:,} distinct semantic_ids; "
          f"of the {compared:,} IDs of version {written} (run 1's), changed or missing since: {changed}")
    if changed or compared != args.items or total != distinct or total != args.items + n_new:
        print("FAILED: IDs are not unique and stable")
        return 1

    report_dir = os.path.join(os.path.dirname(os.path.abspath(cfg.output.path)), "report")
    quality, paths = evaluate_job(spark, cfg, EvaluateOptions(out_dir=report_dir))
    agreement = ", ".join(f"{a:.3f} (random {r:.2g})" for a, r in zip(quality.prefix_agreement, quality.random_pair_agreement))
    print(f"quality: collision rate {quality.collision_rate:.4f}, largest bucket {quality.largest_bucket}; "
          f"share of {quality.k} nearest neighbours sharing the prefix, depth 1..{quality.n_levels}: {agreement}")
    print(f"report: {paths['markdown']} (+ report.json, plots); Embedding Atlas file: {paths['atlas']}")
    return 0


def changed_ids(spark, path: str, version: int) -> tuple[int, int]:
    """(rows of the table at *version*, how many of their keys have another semantic_id, codes or
    counter now, or are gone): the stability check of run 2."""
    before = spark.read.format("delta").option("versionAsOf", version).load(path).alias("a")
    after = spark.read.format("delta").load(path).alias("b")
    changed = before.join(after, "item_id", "left").where(
        F.col("b.item_id").isNull() | (F.col("a.semantic_id") != F.col("b.semantic_id"))
        | (F.col("a.counter") != F.col("b.counter")) | (F.col("a.codes") != F.col("b.codes")))
    return before.count(), changed.count()


def _print_report(title: str, report) -> None:
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    print(f"{title}: {report.n_input:,} input rows, {report.n_new:,} new, {report.n_inserted:,} inserted, "
          f"collision share {report.collision_share:.4f}; model {report.model_sha256[:12]}; {stages}")


if __name__ == "__main__":
    raise SystemExit(main())
