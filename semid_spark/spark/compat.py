"""What the job uses from pyspark 4 that pyspark 3.5 (Databricks 15.4/16.4 LTS, EMR 7) lacks, with the
3.5 way of doing it: a DataFrame to and from a pyarrow Table, pyspark.ml's metadata files. Both
versions run the same job."""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession


def to_arrow(df: DataFrame) -> pa.Table:
    """``df.toArrow()`` (pyspark >= 4.0); on 3.5 the Arrow collect that method is built on."""
    if hasattr(df, "toArrow"):
        return df.toArrow()
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(df.schema)
    return pa.Table.from_batches(df._collect_as_arrow(), schema=schema)


def from_arrow(spark: SparkSession, table: pa.Table) -> DataFrame:
    """``spark.createDataFrame(table)`` (pyspark >= 4.0 takes a pyarrow Table); on 3.5 through pandas,
    with the Table's schema so that list columns keep their element type."""
    if _major(spark) >= 4:
        return spark.createDataFrame(table)
    from pyspark.sql.pandas.types import from_arrow_schema

    return spark.createDataFrame(table.to_pandas(), schema=from_arrow_schema(table.schema))


def ml_context(io) -> object:
    """What ``DefaultParamsWriter.saveMetadata``/``DefaultParamsReader.loadMetadata`` take from an
    MLWriter or MLReader *io*: the session on pyspark >= 4 (so they work on Spark Connect), the
    SparkContext before."""
    session = io.sparkSession
    return session if _major(session) >= 4 else io.sc


def _major(spark: SparkSession) -> int:
    return int(spark.version.split(".")[0])
