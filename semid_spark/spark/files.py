"""Encoding straight from the input's Parquet files: only file names go into Python, keys and codes come out.

Spark's own path (``encode.encode_embeddings``) decodes Parquet in the JVM and ships every embedding
to the Python workers through Arrow; that transfer, not the arithmetic, caps the encode rate. Here
each task is handed a slice of the input's data files (the list comes from the Delta snapshot, or
the Parquet directory), reads the key and embedding columns with pyarrow, checks and encodes them,
and returns (key, codes). The codes are the same either way: the same rows meet the same encoder.

Spark's reader stays in charge where a file is not the table: Delta deletion vectors (a file's rows
are not all live), column mapping (physical column names differ from the schema's) and type
widening; ``input_files`` then answers None and the job uses ``encode_embeddings``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from semid_spark import storage
from semid_spark.delta.table import TableRef
from semid_spark.exceptions import ConfigError
from semid_spark.spark.encode import FrozenModel, cached_encoder, codes_schema, encode_batch

log = logging.getLogger(__name__)

SPLIT_BYTES = 128 * 1024 * 1024  # a task reads about this much (Spark's spark.sql.files.maxPartitionBytes)
_NEEDS_SPARK_READER = ("deletionVectors", "columnMapping", "typeWidening")  # Delta table features


@dataclass(frozen=True)
class InputFiles:
    """The data files of one input snapshot and the columns to read from them."""

    paths: tuple[str, ...]  # readable by the executors' pyarrow (local, FUSE, or an fsspec URL)
    sizes: tuple[int, ...]  # bytes of each file: splits big ones over several tasks
    key_col: str
    embedding_col: str
    key_type: T.DataType


def input_files(spark: SparkSession, df: DataFrame, ref: TableRef | None, *, key_col: str, embedding_col: str,
                reader: str) -> InputFiles | None:
    """The files under *df* (a whole, unfiltered read of the input *ref*, Delta; None: Parquet), or None
    when Spark's reader must read them. *reader*: ``auto`` (local and FUSE files only), ``files``
    (any fsspec URL too; an input that needs Spark's reader is then an error) or ``spark`` (None)."""
    if reader == "spark":
        return None
    why = _needs_spark_reader(spark, df, ref, key_col, embedding_col)
    paths = [_reachable(p) for p in df.inputFiles()] if why is None else []
    if why is None and reader == "auto" and any(storage.is_url(p) for p in paths):
        why = "its files are on remote storage (set encode.reader=files to read them with pyarrow and fsspec)"
    if why is not None:
        if reader == "files":
            raise ConfigError(f"encode.reader=files: the input cannot be read from its files: {why}; "
                              "set encode.reader=auto or spark")
        log.info("encoding through Spark's reader: %s", why)
        return None
    return InputFiles(tuple(paths), tuple(_size(p) for p in paths), key_col, embedding_col,
                      df.schema[key_col].dataType)


def _needs_spark_reader(spark: SparkSession, df: DataFrame, ref: TableRef | None, key_col: str,
                        embedding_col: str) -> str | None:
    emb_type = df.schema[embedding_col].dataType
    if not (isinstance(emb_type, T.ArrayType) and isinstance(emb_type.elementType, (T.FloatType, T.DoubleType))):
        return f"{embedding_col!r} is {emb_type.simpleString()}, not an array of floats"
    if ref is None:
        return None
    detail = ref.detail(spark)
    if detail is None:
        return f"no Delta table at {ref}"
    props = detail["properties"] or {}
    features = set(detail.asDict().get("tableFeatures") or ())
    if props.get("delta.columnMapping.mode", "none") != "none":
        features.add("columnMapping")
    if str(props.get("delta.enableDeletionVectors", "false")).lower() == "true":
        features.add("deletionVectors")
    needs = sorted(features.intersection(_NEEDS_SPARK_READER))
    if needs:
        return f"Delta table {ref} uses {', '.join(needs)}"
    if {key_col, embedding_col} & set(detail["partitionColumns"] or ()):
        return f"Delta table {ref} is partitioned by {key_col!r} or {embedding_col!r}"
    return None


def _reachable(uri: str) -> str:
    """A path the executors' pyarrow opens: Spark's ``file:`` URIs (percent-encoded) as local paths,
    ``dbfs:`` as FUSE paths, other URLs as they are (fsspec's)."""
    from urllib.parse import unquote, urlsplit

    if urlsplit(uri).scheme == "file":
        return unquote(urlsplit(uri).path)
    local = storage.local_path(uri)
    return local if local is not None else uri


def _size(path: str) -> int:
    if not storage.is_url(path):
        return os.path.getsize(path)
    fs, inner = storage.filesystem(path)
    return int(fs.size(inner))


def encode_files(spark: SparkSession, files: InputFiles, model: FrozenModel, *, dim: int, device: str = "cpu",
                 flag_problems: bool = False, batch_rows: int = 8192, candidates: int = 0) -> DataFrame:
    """(key, codes[, candidates, distances][, problem]) for every row of *files*, as
    ``encode.encode_embeddings`` gives them."""
    schema, arrow_schema = codes_schema(files.key_type, files.key_col, flag_problems, candidates)
    columns = [files.key_col, files.embedding_col]
    key_type = arrow_schema.field(files.key_col).type
    splits = [(path, part, n_parts) for path, size in zip(files.paths, files.sizes)
              for n_parts in [max(1, -(-size // SPLIT_BYTES))] for part in range(n_parts)]

    def encode_splits(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        encoder = cached_encoder(model)
        for batch in batches:
            for path, part, n_parts in zip(*(batch.column(i).to_pylist() for i in range(3))):
                with _open(path) as fh:
                    parquet = pq.ParquetFile(fh)
                    groups = list(range(part, parquet.num_row_groups, n_parts))  # row groups part, part + n, ...
                    if not groups:
                        continue
                    for rows in parquet.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns):
                        keys = rows.column(files.key_col)
                        keys = keys if keys.type == key_type else keys.cast(key_type)
                        yield from encode_batch(encoder, keys, rows.column(files.embedding_col), dim=dim,
                                                device=device, flag_problems=flag_problems, schema=arrow_schema,
                                                candidates=candidates)

    tasks = spark.createDataFrame(splits, "path string, part int, n_parts int")
    return tasks.repartition(max(1, len(splits))).mapInArrow(encode_splits, schema)


def _open(path: str):
    if not storage.is_url(path):
        return open(path, "rb")
    fs, inner = storage.filesystem(path)
    return fs.open(inner, "rb")
