"""Spark encode paths side by side, per core, against the single-thread numpy ceiling.

Run: ``make bench-encode`` (``--rows``/``--dim``/``--codes`` to change the size). The same
model and rows go through: our ``mapInArrow`` path; an iterator pandas UDF; a scalar pandas
UDF that encodes row by row (the naive baseline); and ``model.encode`` on one thread. Each
Spark path is timed over a cached DataFrame written to the ``noop`` sink, so only encoding
and Arrow transfer are measured.
"""


import argparse  # no "from __future__ import annotations": pandas_udf reads the hints at runtime
import os
import time
from typing import Iterator

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--codes", type=int, default=256)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--naive-rows", type=int, default=50_000, help="rows for the slow scalar UDF")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread per Python worker: cores are Spark's
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from semid_spark.algorithms.rq_kmeans import RQKMeans
    from semid_spark.config import SparkConfig
    from semid_spark.spark.compat import from_arrow
    from semid_spark.spark.encode import FrozenModel, cached_encoder, encode_embeddings
    from semid_spark.spark.session import get_session
    from semid_spark.synthetic import generated_catalog

    x = generated_catalog(args.rows, args.dim, 200, 0)
    model = RQKMeans(3, args.codes, random_state=0, max_iter=20).fit(x[:100_000])
    start = time.perf_counter()
    model.encode(x)
    ceiling = args.rows / (time.perf_counter() - start)
    print(f"{args.rows:,} rows x {args.dim}, 3 x {args.codes} codes, {args.cores} cores")
    print(f"numpy ceiling, one thread:        {ceiling:>10,.0f} rows/s")

    spark = get_session(SparkConfig(master=f"local[{args.cores}]", shuffle_partitions=args.cores * 2))
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), args.dim).cast(pa.list_(pa.float32()))
    df = from_arrow(spark, pa.table({"item_id": pa.array(np.arange(args.rows)), "embedding": emb}))
    df = df.repartition(args.cores * 4).cache()
    df.count()
    frozen = FrozenModel(spark, model)

    def timed(name: str, frame, n: int) -> float:
        start = time.perf_counter()
        frame.write.format("noop").mode("overwrite").save()
        rate = n / (time.perf_counter() - start)
        print(f"{name:<33} {rate:>10,.0f} rows/s   {rate / args.cores:>10,.0f} per core   "
              f"{rate / args.cores / ceiling:6.2f} of ceiling")
        return rate

    timed("warm-up (mapInArrow)", encode_embeddings(df, frozen, key_col="item_id", embedding_col="embedding", dim=args.dim), args.rows)
    arrow_rate = timed("mapInArrow (ours)", encode_embeddings(df, frozen, key_col="item_id", embedding_col="embedding", dim=args.dim), args.rows)

    dim = args.dim

    @F.pandas_udf(T.ArrayType(T.IntegerType()))
    def iterator_udf(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        encoder = cached_encoder(frozen)
        for s in batches:
            codes = encoder.encode(np.stack(s.to_numpy()).astype(np.float32))
            yield pd.Series(list(codes))

    timed("iterator pandas UDF", df.select("item_id", iterator_udf("embedding").alias("codes")), args.rows)

    @F.pandas_udf(T.ArrayType(T.IntegerType()))
    def scalar_udf(s: pd.Series) -> pd.Series:
        encoder = cached_encoder(frozen)
        return pd.Series([encoder.encode(np.asarray(v, dtype=np.float32).reshape(1, dim))[0] for v in s])

    naive = df.limit(args.naive_rows).cache()
    naive.count()
    naive_rate = timed(f"scalar pandas UDF ({args.naive_rows:,} rows)", naive.select("item_id", scalar_udf("embedding")), args.naive_rows)
    print(f"ratio mapInArrow per core / numpy ceiling: {arrow_rate / args.cores / ceiling:.2f}   (goal >= 0.80)")
    print(f"ratio mapInArrow / naive scalar UDF:       {arrow_rate / naive_rate:.1f}   (goal >= 2.5)")
    hours = 1e9 / (arrow_rate / args.cores) / 3600
    print(f"1B x {args.dim} items at this per-core rate: {hours:.1f} core-hours")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
