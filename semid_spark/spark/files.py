"""Encoding straight from the input's Parquet files: only file names go into Python, keys and codes come out.

Spark's own path (``encode.encode_embeddings``) decodes Parquet in the JVM and ships every embedding
to the Python workers through Arrow; that transfer, not the arithmetic, caps the encode rate. Here
each task is handed a slice of the input's data files (the list comes from the Delta snapshot, or
the Parquet directory), reads the key and embedding columns with pyarrow, checks and encodes them,
and returns (key, codes). The codes are the same either way: the same rows meet the same encoder.

Spark's reader stays in charge where a file is not the table: Delta deletion vectors (a file's rows
are not all live), column mapping (physical column names differ from the schema's) and type
widening; ``source.input_files`` then answers None and the job uses ``encode_embeddings``.
"""

from __future__ import annotations

import logging
from typing import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from semid_spark import storage
from semid_spark.spark.encode import FrozenModel, cached_encoder, codes_schema, encode_batch
from semid_spark.spark.source import InputFiles

log = logging.getLogger(__name__)

SPLIT_BYTES = 128 * 1024 * 1024  # a task reads about this much (Spark's spark.sql.files.maxPartitionBytes)


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
