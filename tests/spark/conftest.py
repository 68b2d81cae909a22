"""Helpers of the Spark tests: a small synthetic catalog, its DataFrame and Delta input, a job config.

The session itself is ``tests/conftest.py``'s ``spark`` fixture (one for the whole run)."""

import numpy as np
import pyarrow as pa
from pyspark.sql import types as T

from semid_spark.config import JobConfig
from semid_spark.spark.compat import from_arrow
from semid_spark.synthetic import generated_catalog

DIM = 16
ID_COLS = ["item_id", "semantic_id", "codes", "counter"]


def catalog(n, seed=0, start=0):
    x = generated_catalog(n + start, DIM, 12, seed)[start:]
    keys = [f"sku{i:06d}" for i in range(start, start + n)]
    return keys, x


def frame(spark, keys, x, key_type=pa.string()):
    table = pa.table({"item_id": pa.array(keys, type=key_type),
                      "embedding": pa.array(list(np.asarray(x, dtype=np.float32)), type=pa.list_(pa.float32()))})
    return from_arrow(spark, table)


def config(tmp, **sections):
    raw = {"input": {"path": f"{tmp}/in"}, "model": {"path": f"{tmp}/model", "n_clusters": 8, "sample_size": 1000},
           "output": {"path": f"{tmp}/out"}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return JobConfig.from_dict(raw)


def write_input(spark, df, path, mode="overwrite"):
    df.write.format("delta").mode(mode).save(path)


def ids(spark, cfg):
    return spark.read.format("delta").load(cfg.output.path).select(*ID_COLS)


def bad_frame(spark, problem):
    keys, x = catalog(50)
    keys, x = list(keys), [list(map(float, row)) for row in x]
    if problem == "null key":
        keys[3] = None
    elif problem == "duplicate key":
        keys[4] = keys[5] = "dup"
    elif problem == "nan":
        x[7][2] = float("nan")
    elif problem == "inf":
        x[8][0] = -float("inf")
    elif problem == "null element":
        x[11][3] = None
    elif problem == "length":
        x[9] = x[9][:5]
    elif problem == "null embedding":
        x[10] = None
    schema = T.StructType([T.StructField("item_id", T.StringType()), T.StructField("embedding", T.ArrayType(T.DoubleType()))])
    return spark.createDataFrame(list(zip(keys, x)), schema)


def shuffles_carrying(df, column):
    """Names of the shuffle exchanges in df's physical plan whose rows hold *column* (AQE off, so the plan is final)."""
    found = []

    def walk(node):
        name = node.nodeName()
        if "Exchange" in name and "Broadcast" not in name and column in node.output().toString():
            found.append(name)
        children = node.children()
        for i in range(children.size()):
            walk(children.apply(i))

    walk(df._jdf.queryExecution().executedPlan())
    return found
