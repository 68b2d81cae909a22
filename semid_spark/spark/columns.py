"""Column names and the output schema of the job."""

from __future__ import annotations

from pyspark.sql import types as T

CODES, BASE_ID, COUNTER, SEMANTIC_ID = "codes", "base_id", "counter", "semantic_id"
MODEL_SHA, RUN_ID, ASSIGNED_AT, REASON = "model_sha256", "run_id", "assigned_at", "reject_reason"
KEY_TYPES = (T.StringType, T.LongType, T.IntegerType)


def output_schema(key_field: T.StructField) -> T.StructType:
    """Item key (its input type), semantic_id, codes, counter, model sha, run id and time."""
    return T.StructType([
        T.StructField(key_field.name, key_field.dataType, False),
        T.StructField(SEMANTIC_ID, T.StringType(), False),
        T.StructField(CODES, T.ArrayType(T.IntegerType(), False), False),
        T.StructField(COUNTER, T.IntegerType(), False),
        T.StructField(MODEL_SHA, T.StringType(), False),
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(ASSIGNED_AT, T.TimestampType(), False),
    ])
