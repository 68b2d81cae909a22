"""Encoding on executors: the frozen model, cached once per Python worker, over Arrow batches.

``mapInArrow`` hands each task's rows to Python as Arrow record batches; the embedding
column (``list<float>``) becomes one (n, dim) numpy array without a per-row Python loop,
and the codes go back as ``list<int32>``. Executors use numpy (no torch) unless
``device="cuda"``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from semid_spark.algorithms import encoder_from_bytes
from semid_spark.delta.schema import CANDIDATES, CODES, DISTANCES, PROBLEM
from semid_spark.spark.session import spark_context
from semid_spark.spark.validate import row_problems
from semid_spark.uniqueness.relocate import encode_with_candidates

_MODELS: dict[str, object] = {}  # model sha256 -> encoder, per Python worker; the one deliberate global


class FrozenModel:
    """What executors receive: the model's bytes (broadcast when there is a SparkContext) and sha."""

    def __init__(self, spark: SparkSession, encoder) -> None:
        self.sha256 = encoder.sha256
        payload = encoder.to_bytes()
        sc = spark_context(spark)
        if sc is not None:
            self._broadcast, self._bytes = sc.broadcast(payload), None
        else:  # Spark Connect / Databricks serverless: no SparkContext, ship the bytes in the closure
            self._broadcast, self._bytes = None, payload

    def payload(self) -> bytes:
        return self._broadcast.value if self._broadcast is not None else self._bytes

    def __getstate__(self) -> dict:  # the closure carries the broadcast handle (or the bytes), not the session
        return {"sha256": self.sha256, "_broadcast": self._broadcast, "_bytes": self._bytes}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def cached_encoder(model: FrozenModel):
    if model.sha256 not in _MODELS:
        encoder = encoder_from_bytes(model.payload())
        if encoder.sha256 != model.sha256:
            raise RuntimeError(f"executor received model {encoder.sha256[:12]}, expected {model.sha256[:12]}")
        _MODELS[model.sha256] = encoder
    return _MODELS[model.sha256]


def arrow_embeddings(column: pa.Array, dim: int, *, copy: bool = False) -> np.ndarray:
    """list<float> Arrow column -> (n, dim) float32 (input already validated: no nulls, all length dim).

    Without *copy* the array is a read-only view of Arrow's buffer (no copy, for encoding);
    with it, a writable array (torch, fitting on the driver, wants to own its input).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten() if column.offset or len(column) == 0 else column.values
    flat = values.to_numpy(zero_copy_only=False)[: len(column) * dim]
    return (np.array(flat, dtype=np.float32) if copy else flat.astype(np.float32, copy=False)).reshape(len(column), dim)


def codes_column(codes: np.ndarray) -> pa.Array:
    n, n_levels = codes.shape
    offsets = pa.array(np.arange(0, (n + 1) * n_levels, n_levels, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(codes.astype(np.int32, copy=False).ravel()))


def encode_embeddings(
    df: DataFrame, model: FrozenModel, *, key_col: str, embedding_col: str, dim: int, device: str = "cpu",
    flag_problems: bool = False, batch_rows: int | None = None, candidates: int = 0,
) -> DataFrame:
    """(key, embedding) -> (key, codes array<int>) on executors; order and partitioning kept.

    With *flag_problems* the rows are not assumed valid: each batch is checked in numpy as it
    is encoded (``validate.row_problems``), and a ``problem`` column says why a row has null
    codes (0 for encoded rows), so one pass both validates and encodes. *batch_rows* caps the rows
    encoded at once (larger Arrow batches are sliced, without copying); the job also asks Spark for
    batches of that size (``spark.sql.execution.arrow.maxRecordsPerBatch``, see ``arrow_batch_rows``).
    *candidates* > 0 adds each row's last-level candidates for relocation (``uniqueness.relocate``):
    ``CANDIDATES`` array<int> (the own code first) and ``DISTANCES`` array<float>.
    """
    schema, arrow_schema = codes_schema(df.schema[key_col].dataType, key_col, flag_problems, candidates)

    def encode_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        encoder = cached_encoder(model)
        for batch in sliced(batches, batch_rows):
            yield from encode_batch(encoder, batch.column(key_col), batch.column(embedding_col), dim=dim,
                                    device=device, flag_problems=flag_problems, schema=arrow_schema,
                                    candidates=candidates)

    return df.select(key_col, embedding_col).mapInArrow(encode_partition, schema)


def codes_schema(key_type: T.DataType, key_col: str, flag_problems: bool, candidates: int = 0
                 ) -> tuple[T.StructType, pa.Schema]:
    """Spark and Arrow schemas of encode's output: (key, codes[, candidates, distances][, problem])."""
    fields = [T.StructField(key_col, key_type, flag_problems),
              T.StructField(CODES, T.ArrayType(T.IntegerType(), False), flag_problems)]
    arrow_fields = [pa.field(key_col, _arrow_type(key_type), flag_problems),
                    pa.field(CODES, pa.list_(pa.field("element", pa.int32(), False)), flag_problems)]
    if candidates:
        fields += [T.StructField(CANDIDATES, T.ArrayType(T.IntegerType(), False), flag_problems),
                   T.StructField(DISTANCES, T.ArrayType(T.FloatType(), False), flag_problems)]
        arrow_fields += [pa.field(CANDIDATES, pa.list_(pa.field("element", pa.int32(), False)), flag_problems),
                         pa.field(DISTANCES, pa.list_(pa.field("element", pa.float32(), False)), flag_problems)]
    if flag_problems:
        fields.append(T.StructField(PROBLEM, T.IntegerType(), False))
        arrow_fields.append(pa.field(PROBLEM, pa.int32(), False))
    return T.StructType(fields), pa.schema(arrow_fields)


def encode_batch(encoder, keys: pa.Array, emb: pa.Array, *, dim: int, device: str, flag_problems: bool,
                 schema: pa.Schema, candidates: int = 0) -> Iterator[pa.RecordBatch]:
    """One Arrow batch of (keys, embeddings) -> record batches of *schema* (``codes_schema``).

    With *flag_problems*, rows that cannot be encoded come back with null codes and their problem."""
    def encoded(keys: pa.Array, emb: pa.Array, extra: list) -> pa.RecordBatch:
        x = arrow_embeddings(emb, dim)
        if candidates:  # in the encode pass itself where the model can (RQ-KMeans on the cpu)
            codes, cand, dist = encode_with_candidates(encoder, x, candidates, device=device)
            columns = [keys, codes_column(codes), codes_column(cand), _float_lists(dist)]
        else:
            columns = [keys, codes_column(encoder.encode(x, device=device))]
        return pa.RecordBatch.from_arrays([*columns, *extra], schema=schema)

    if len(keys) == 0:
        return
    if not flag_problems:
        yield encoded(keys, emb, [])
        return
    problem = row_problems(emb, dim)
    good = problem == 0
    if good.all():
        yield encoded(keys, emb, [pa.array(np.zeros(len(good), dtype=np.int32))])
        return
    if good.any():
        mask = pa.array(good)
        yield encoded(keys.filter(mask), emb.filter(mask), [pa.array(np.zeros(int(good.sum()), dtype=np.int32))])
    bad = pa.array(~good)
    n_bad = int((~good).sum())
    nulls = [pa.nulls(n_bad, schema.field(name).type) for name in (CODES, CANDIDATES, DISTANCES) if name in schema.names]
    yield pa.RecordBatch.from_arrays([keys.filter(bad), *nulls, pa.array(problem[~good].astype(np.int32))],
                                     schema=schema)


def _float_lists(values: np.ndarray) -> pa.Array:  # (n, t) float32 -> list<float>, no per-row work
    n, t = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * t, t, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.astype(np.float32, copy=False).ravel()))


def sliced(batches: Iterator[pa.RecordBatch], batch_rows: int | None) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of at most *batch_rows* (zero-copy slices); unchanged when None."""
    for batch in batches:
        if batch_rows is None or batch.num_rows <= batch_rows:
            yield batch
            continue
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)


ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


@contextlib.contextmanager
def arrow_batch_rows(spark: SparkSession, batch_rows: int) -> Iterator[None]:
    """Spark hands Python at most *batch_rows* rows per Arrow batch inside the block; the setting is restored after."""
    before = spark.conf.get(ARROW_BATCH_CONF, None)
    spark.conf.set(ARROW_BATCH_CONF, str(batch_rows))
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(ARROW_BATCH_CONF)
        else:
            spark.conf.set(ARROW_BATCH_CONF, before)


def _arrow_type(data_type: T.DataType) -> pa.DataType:
    return {T.StringType: pa.string(), T.LongType: pa.int64(), T.IntegerType: pa.int32()}[type(data_type)]
