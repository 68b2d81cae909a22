"""A deterministic training sample: a hash of the item key against a threshold, never ``df.sample``.

The same catalog gives the same sample on any cluster, partitioning or executor count.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from semid_spark.spark.encode import arrow_embeddings

_HASH_RANGE = 1 << 30


def sample_embeddings(
    df: DataFrame, *, key_col: str, embedding_col: str, dim: int, n_rows: int, sample_size: int, seed: int,
) -> np.ndarray:
    """Up to *sample_size* embeddings (n, dim) float32, to the driver through Arrow.

    Rows whose ``pmod(xxhash64(key, seed), 2^30)`` falls under a threshold sized for ~1.2x
    the target are kept, then the smallest hashes (ties by key) down to *sample_size*: the
    driver holds at most ~1.2 x sample_size x dim floats.
    """
    h = F.pmod(F.xxhash64(F.col(key_col), F.lit(seed)), F.lit(_HASH_RANGE))
    fraction = min(1.0, 1.2 * sample_size / max(n_rows, 1))
    picked = (df.select(key_col, embedding_col, h.alias("_h"))
                .where(F.col("_h") < F.lit(int(fraction * _HASH_RANGE)))
                .orderBy("_h", key_col).limit(sample_size)
                .select(embedding_col))
    table = picked.toArrow()
    return arrow_embeddings(table.column(embedding_col), dim, copy=True)
