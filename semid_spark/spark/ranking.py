"""Counters on Spark: rank the new items of each code by item key, after those already written.

The rule is the single-machine resolver's, made order-free: among the items sharing a base
ID, the one with the smallest key takes the next counter, and so on. Counters continue after
the largest one already written for that base, so written IDs never change. The result does
not depend on partitioning, executors or input order: every order is total (base, key).

A *hot* code (more new rows than ``hot_code_rows``) would put all its rows in one window
task. Its keys are split into ordered ranges (boundaries from a hash sample of its keys);
each range is ranked in its own task and shifted by the row count of the ranges before it:
the same numbers as one window over the whole code.
"""

from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from semid_spark.spark.columns import BASE_ID, CODES, COUNTER, SEMANTIC_ID

_BUCKET, _RN, _BEFORE = "_bucket", "_rank_in_bucket", "_rows_before"
BOUNDARY_SAMPLE = 64  # sampled keys per range when choosing range boundaries of a hot code


def base_id(sep: str) -> Column:
    """The codes column joined with *sep*: [3, 9, 1] -> "3-9-1"."""
    return F.array_join(F.transform(CODES, lambda c: c.cast("string")), sep)


def with_base_id(df: DataFrame, sep: str) -> DataFrame:
    """df (..., codes) -> df + base_id."""
    return df.withColumn(BASE_ID, base_id(sep))


def with_semantic_id(df: DataFrame, sep: str, output_col: str = SEMANTIC_ID) -> DataFrame:
    """df (..., base_id, counter) -> df + the unique ID: the base for counter 0, else base, sep, counter."""
    suffixed = F.concat(F.col(BASE_ID), F.lit(sep), F.col(COUNTER).cast("string"))
    return df.withColumn(output_col, F.when(F.col(COUNTER) == 0, F.col(BASE_ID)).otherwise(suffixed))


def code_stats(new_items: DataFrame, hot_code_rows: int) -> tuple[int, list]:
    """(rows whose base another row shares, hot bases as rows of (base_id, count)) in one job."""
    per_base = new_items.groupBy(BASE_ID).count()
    row = per_base.agg(
        F.sum(F.when(F.col("count") > 1, F.col("count"))).alias("shared"),
        F.collect_list(F.when(F.col("count") > hot_code_rows, F.struct(BASE_ID, "count"))).alias("hot"),  # a handful
    ).first()
    return int(row["shared"] or 0), sorted(row["hot"], key=lambda r: r[BASE_ID])


def assign_counters(new_items: DataFrame, next_counters: DataFrame | None, *, key_col: str, hot_code_rows: int,
                    hot: list | None = None) -> DataFrame:
    """new_items (key, ..., base_id) + next_counters (base_id, next) -> new_items + counter (int).

    *next_counters* holds, per base already in the table, the first free counter; bases not
    in it start at 0. *hot*: the bases over *hot_code_rows*, when ``code_stats`` already found them.
    """
    if hot is None:
        hot = code_stats(new_items, hot_code_rows)[1]
    bucket = _bucket_expr(new_items, hot, key_col=key_col, hot_code_rows=hot_code_rows)
    items = new_items.withColumn(_BUCKET, bucket)
    ranked = items.withColumn(
        _RN, F.row_number().over(Window.partitionBy(BASE_ID, _BUCKET).orderBy(key_col)) - 1
    )
    if hot:
        sizes = items.groupBy(BASE_ID, _BUCKET).count()
        before = sizes.withColumn(
            _BEFORE,
            F.coalesce(F.sum("count").over(Window.partitionBy(BASE_ID).orderBy(_BUCKET)
                                           .rowsBetween(Window.unboundedPreceding, -1)), F.lit(0)),
        ).drop("count")
        ranked = ranked.join(F.broadcast(before), [BASE_ID, _BUCKET]).withColumn(_RN, F.col(_RN) + F.col(_BEFORE))
    if next_counters is not None:
        ranked = ranked.join(next_counters, BASE_ID, "left")
        start = F.coalesce(F.col("next"), F.lit(0))
    else:
        start = F.lit(0)
    return (ranked.withColumn(COUNTER, (start + F.col(_RN)).cast("int"))
                  .drop(_BUCKET, _RN, _BEFORE, "next"))


def _bucket_expr(items: DataFrame, hot: list, *, key_col: str, hot_code_rows: int) -> Column:
    """0 for ordinary codes; for each hot code, the index of the key range the key falls in."""
    if not hot:
        return F.lit(0)
    expr = F.lit(0)
    for row in hot:
        n_buckets = math.ceil(row["count"] / hot_code_rows)
        bounds = _boundaries(items, row[BASE_ID], key_col, n_buckets)
        if not bounds:
            continue
        index = F.lit(0)
        for i, bound in enumerate(bounds):  # the number of boundaries <= key
            index = index + F.when(F.col(key_col) >= F.lit(bound), 1).otherwise(0)
        expr = F.when(F.col(BASE_ID) == F.lit(row[BASE_ID]), index).otherwise(expr)
    return expr


def _boundaries(items: DataFrame, base: str, key_col: str, n_buckets: int) -> list:
    """n_buckets - 1 increasing keys of *base*, from a deterministic hash sample of its keys."""
    one = items.where(F.col(BASE_ID) == base)
    total = one.count()
    want = min(total, n_buckets * BOUNDARY_SAMPLE)
    threshold = int((1 << 30) * min(1.0, 2.0 * want / max(total, 1)))
    keys = sorted(r[0] for r in one.where(F.pmod(F.xxhash64(key_col), F.lit(1 << 30)) < threshold)
                  .select(key_col).collect())
    if len(keys) < n_buckets:
        return []
    step = len(keys) / n_buckets
    bounds = [keys[int(i * step)] for i in range(1, n_buckets)]
    return sorted(set(bounds))
