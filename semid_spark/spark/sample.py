"""A deterministic training sample: a hash of the item key against a threshold, never ``df.sample``.

The same catalog gives the same sample on any cluster, partitioning or executor count.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from semid_spark.exceptions import InvalidInputError
from semid_spark.spark.compat import to_arrow
from semid_spark.spark.encode import arrow_embeddings
from semid_spark.spark.validate import check_input, infer_dim, most_common_length, row_problems

_HASH_RANGE = 1 << 30
HASH = "_h"


def hash_filtered(df: DataFrame, key_col: str, *, n_rows: int, sample_size: int, seed: int) -> DataFrame:
    """*df* plus its key's hash column ``_h`` = pmod(xxhash64(key, seed), 2^30), kept where the hash
    falls under a threshold sized for ~1.2x *sample_size* of *n_rows*; callers take the smallest
    hashes (ties by key) down to *sample_size*."""
    fraction = min(1.0, 1.2 * sample_size / max(n_rows, 1))
    h = F.pmod(F.xxhash64(F.col(key_col), F.lit(seed)), F.lit(_HASH_RANGE))
    return df.withColumn(HASH, h).where(F.col(HASH) < F.lit(int(fraction * _HASH_RANGE)))


def sample_embeddings(
    df: DataFrame, *, key_col: str, embedding_col: str, dim: int | None, n_rows: int, sample_size: int, seed: int,
) -> np.ndarray:
    """Up to *sample_size* embeddings (n, dim) float32, to the driver through Arrow. *dim* None: the
    most common length among the sampled rows (ties to the shorter), which a job fitting a new model
    learns here instead of in a pass of its own.

    Rows whose ``pmod(xxhash64(key, seed), 2^30)`` falls under a threshold sized for ~1.2x
    the target are kept, then the smallest hashes (ties by key) down to *sample_size*: the
    driver holds at most ~1.2 x sample_size x dim floats.
    """
    picked = _smallest_hashes(df, key_col, embedding_col, n_rows=n_rows, sample_size=sample_size, seed=seed)
    return _embeddings(to_arrow(picked.select(embedding_col)).column(embedding_col).combine_chunks(), df, embedding_col, dim)


def sample_with_codes(
    df: DataFrame, written: DataFrame, *, key_col: str, embedding_col: str, codes_col: str, n_levels: int,
    dim: int, n_rows: int, sample_size: int, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``sample_embeddings``'s rows, each with its codes in *written* (the ID table): (x (n, dim)
    float32, codes (n, n_levels) int64, -1 for an item the table does not hold).

    The table is read through the same key-hash filter as the input, so the join meets only the
    ~1.2 x sample_size keys that can be sampled on either side: no embedding and no table row
    outside them is shuffled.
    """
    picked = _smallest_hashes(df, key_col, embedding_col, n_rows=n_rows, sample_size=sample_size, seed=seed)
    held = hash_filtered(written.select(key_col, codes_col), key_col, n_rows=n_rows, sample_size=sample_size,
                         seed=seed).drop(HASH)
    rows = to_arrow(picked.join(held, key_col, "left").orderBy(HASH, key_col).select(embedding_col, codes_col))
    x = _embeddings(rows.column(embedding_col).combine_chunks(), df, embedding_col, dim)
    column = rows.column(codes_col).combine_chunks()
    codes = np.full((len(column), n_levels), -1, dtype=np.int64)
    present = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if present.any():
        values = column.filter(pa.array(present)).flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        if len(values) != int(present.sum()) * n_levels:
            raise InvalidInputError(f"the ID table's {codes_col!r} rows are not all of {n_levels} levels, as its "
                                    "model's are")
        codes[present] = values.reshape(-1, n_levels)
    return x, codes


def _smallest_hashes(df: DataFrame, key_col: str, embedding_col: str, *, n_rows: int, sample_size: int,
                     seed: int) -> DataFrame:
    """The sampled rows: key, embedding and hash, the *sample_size* smallest hashes under the threshold."""
    return (hash_filtered(df.select(key_col, embedding_col), key_col, n_rows=n_rows, sample_size=sample_size, seed=seed)
            .orderBy(HASH, key_col).limit(sample_size))


@contextlib.contextmanager
def bad_rows_named(df: DataFrame, key_col: str, embedding_col: str, dim: int | None):
    """Around a sample draw from *df*: a bad sampled row makes ``check_input`` count and name every bad
    row of the input (it raises); *dim* None: the length the sample was checked against."""
    try:
        yield
    except BadSampleError as exc:
        check_input(df, key_col, embedding_col, dim=dim if dim is not None else exc.dim)
        raise


def _embeddings(column, df: DataFrame, embedding_col: str, dim: int | None) -> np.ndarray:
    """Sampled embeddings (an Arrow list column) as (n, dim) float32; BadSampleError for a bad row."""
    if dim is None:
        lengths = np.diff(column.offsets.to_numpy())[~np.asarray(column.is_null().to_numpy(zero_copy_only=False))]
        dim = most_common_length(lengths.tolist())
        if dim is None:  # no sampled row has an embedding: the input's first rows decide (or say it is empty)
            dim = infer_dim(df, embedding_col)
    problems = row_problems(column, dim)
    if problems.any():  # the input was not checked row by row before (the job checks while encoding)
        raise BadSampleError(f"{int((problems != 0).sum())} of {len(column)} sampled rows of {embedding_col!r} are null, "
                             f"not of length {dim}, or hold NaN/inf/null values", dim=dim)
    return arrow_embeddings(column, dim, copy=True)


class BadSampleError(InvalidInputError):
    """Raised when the sample holds rows that cannot be fitted on (the job then counts them exactly);
    *dim*: the length the sample was checked against."""

    def __init__(self, message: str, *, dim: int) -> None:
        super().__init__(message)
        self.dim = dim
