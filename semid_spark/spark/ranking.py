"""Counters on Spark: rank the new items of each code by item key, after those already written.

The rule is the single-machine resolver's, made order-free: among the items sharing a base
ID, the one with the smallest key takes the next counter, and so on. Counters continue after
the largest one already written for that base, so written IDs never change. The result does
not depend on partitioning, executors or input order: every order is total (code, key).

Items are grouped and sorted by a *code key* (``CODE_KEY``): the codes packed into one long (mixed
radix, so its order is the codes' order) when the codebooks fit in 63 bits, else the codes array.
A long hashes and sorts (Spark's radix prefix sort) far faster than the base ID string; the strings
are built once, for the rows written (``with_semantic_id``), by expressions Spark compiles.

A *hot* code (more new rows than ``hot_code_rows``) would put all its rows in one window
task. Its keys are split into ordered ranges (boundaries from a hash sample of its keys);
each range is ranked in its own task and shifted by the row count of the ranges before it:
the same numbers as one window over the whole code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from semid_spark.delta.schema import CODES, COUNTER, SEMANTIC_ID

CODE_KEY = "_code"  # the ranking's group: codes packed in a long, or the codes array
_BUCKET, _RN, _BEFORE = "_bucket", "_rank_in_bucket", "_rows_before"
BOUNDARY_SAMPLE = 64  # sampled keys per range when choosing range boundaries of a hot code


def is_packed(sizes: Sequence[int]) -> bool:
    """Whether the code key is the codes packed in a long (prod(sizes) < 2^63) rather than the array."""
    return math.prod(int(s) for s in sizes) < 1 << 63


def code_key(sizes: Sequence[int]) -> Column:
    """One value per code tuple, ordered as the tuples are: sum of codes[i] x prod(sizes[i+1:]) as a
    long when prod(sizes) < 2^63 (3 x 256 is 2^24), else the codes array itself."""
    if not is_packed(sizes):
        return F.col(CODES)
    packed = F.lit(0).cast("long")
    for level, size in enumerate(sizes):
        packed = packed * F.lit(int(size)) + F.col(CODES).getItem(level).cast("long")
    return packed


def with_code_key(df: DataFrame, sizes: Sequence[int]) -> DataFrame:
    """df (..., codes) -> df + ``CODE_KEY``."""
    return df.withColumn(CODE_KEY, code_key(sizes))


def base_id(sep: str, n_levels: int) -> Column:
    """The codes column joined with *sep*: [3, 9, 1] -> "3-9-1" (one compiled expression, no lambda)."""
    return F.concat_ws(sep, *(F.col(CODES).getItem(level).cast("string") for level in range(n_levels)))


def with_semantic_id(df: DataFrame, sep: str, n_levels: int, output_col: str = SEMANTIC_ID) -> DataFrame:
    """df (..., codes, counter) -> df + the unique ID: the base ID for counter 0, else base, sep, counter."""
    suffix = F.when(F.col(COUNTER) == 0, F.lit("")).otherwise(F.concat(F.lit(sep), F.col(COUNTER).cast("string")))
    return df.withColumn(output_col, F.concat(base_id(sep, n_levels), suffix))


@dataclass(frozen=True)
class CodeStats:
    """What one pass over the encoded items tells: rows, rows without codes, rows sharing a code, hot codes,
    distinct codes."""

    n_rows: int
    n_unencoded: int  # rows whose codes are null (``encode``'s flagged problems)
    shared: int  # rows whose code another row also has
    hot: list  # rows of (code key, count) for the codes over the hot-code threshold, in code order
    n_codes: int  # distinct codes among the encoded rows


def code_stats(new_items: DataFrame, hot_code_rows: int) -> CodeStats:
    """``CodeStats`` of *new_items* (which has ``CODE_KEY``; null where the codes are) in one job: per
    code counts, partially aggregated where the rows are, then a handful of sums on one task. As the
    first action on a cached encode, this job also fills the cache."""
    per_code = new_items.groupBy(CODE_KEY).count()
    encoded = F.col(CODE_KEY).isNotNull()
    row = per_code.agg(
        F.sum("count").alias("n"),
        F.sum(F.when(~encoded, F.col("count"))).alias("unencoded"),
        F.sum(F.when(encoded & (F.col("count") > 1), F.col("count"))).alias("shared"),
        F.collect_list(F.when(encoded & (F.col("count") > hot_code_rows), F.struct(CODE_KEY, "count"))).alias("hot"),
        F.count(F.when(encoded, F.lit(1))).alias("codes"),
    ).first()
    return CodeStats(int(row["n"] or 0), int(row["unencoded"] or 0), int(row["shared"] or 0),
                     sorted(row["hot"], key=lambda r: r[CODE_KEY]), int(row["codes"] or 0))


def assign_counters(new_items: DataFrame, next_counters: DataFrame | None, *, key_col: str, hot_code_rows: int,
                    hot: list | None = None, salts: int = 0, start: int = 0) -> DataFrame:
    """new_items (key, ..., code key) + next_counters (code key, next) -> new_items + counter (int).

    *next_counters* holds, per code already in the table, the first free counter; codes not
    in it start at *start*. *hot*: the codes over *hot_code_rows*, when ``code_stats`` already found them.

    *salts* > 0 plans the ranking without running a job (``SemanticIdModel.transform`` stays lazy):
    every code's rows are spread over *salts* buckets by a hash of their key, so no code lands in
    one task whatever its size, and counters follow (bucket, key) instead of the key alone, which
    is as deterministic. The rows are shuffled once: the ranking and the bucket sizes read the same
    exchange.
    """
    if salts:
        ranked = _ranked_in_salted_buckets(new_items, key_col, salts)
    else:
        if hot is None:
            hot = code_stats(new_items, hot_code_rows).hot
        items = new_items.withColumn(_BUCKET, _bucket_expr(new_items, hot, key_col=key_col, hot_code_rows=hot_code_rows))
        ranked = items.withColumn(
            _RN, F.row_number().over(Window.partitionBy(CODE_KEY, _BUCKET).orderBy(key_col)) - 1
        )
        if hot:
            sizes = items.groupBy(CODE_KEY, _BUCKET).count()
            ranked = ranked.join(F.broadcast(_rows_before(sizes)), [CODE_KEY, _BUCKET]).withColumn(
                _RN, F.col(_RN) + F.col(_BEFORE))
    if next_counters is not None:
        ranked = ranked.join(next_counters, CODE_KEY, "left")
        first = F.coalesce(F.col("next"), F.lit(start))
    else:
        first = F.lit(start)
    return (ranked.withColumn(COUNTER, (first + F.col(_RN)).cast("int"))
                  .drop(_BUCKET, _RN, _BEFORE, "next"))


def _rows_before(sizes: DataFrame) -> DataFrame:
    """(code key, bucket, count) -> (code key, bucket, rows of the code in the buckets before this one)."""
    earlier = Window.partitionBy(CODE_KEY).orderBy(_BUCKET).rowsBetween(Window.unboundedPreceding, -1)
    return sizes.withColumn(_BEFORE, F.coalesce(F.sum("count").over(earlier), F.lit(0))).drop("count")


def _ranked_in_salted_buckets(new_items: DataFrame, key_col: str, salts: int) -> DataFrame:
    """Rank within (code, key-hash bucket), then add the rows of the code's earlier buckets, in a plan
    whose rows cross one exchange: the bucket sizes are counted from the same ranked rows.

    Spark reuses an exchange only where both reads of it are the same plan, so the join keys are
    non-nullable (a nullable one gets an ``is not null`` filter pushed into one read) and the rank
    orders by key, then codes (unique keys make the codes a no-op tie-break, but they keep the codes
    column in both reads, which would otherwise differ by it)."""
    key_type = new_items.schema[CODE_KEY].dataType
    never = F.lit(-1).cast(key_type) if isinstance(key_type, T.LongType) else F.array().cast(key_type)
    items = (new_items.withColumn(CODE_KEY, F.coalesce(F.col(CODE_KEY), never))
             .withColumn(_BUCKET, F.coalesce(F.pmod(F.xxhash64(F.col(key_col)), F.lit(salts)), F.lit(0).cast("long")))
             .repartition(CODE_KEY, _BUCKET))
    ranked = items.withColumn(
        _RN, F.row_number().over(Window.partitionBy(CODE_KEY, _BUCKET).orderBy(key_col, CODES)) - 1)
    sizes = ranked.groupBy(CODE_KEY, _BUCKET).agg((F.max(_RN) + 1).alias("count"))
    return ranked.join(_rows_before(sizes), [CODE_KEY, _BUCKET]).withColumn(_RN, F.col(_RN) + F.col(_BEFORE))


def _bucket_expr(items: DataFrame, hot: list, *, key_col: str, hot_code_rows: int) -> Column:
    """0 for ordinary codes; for each hot code, the index of the key range the key falls in."""
    if not hot:
        return F.lit(0)
    expr = F.lit(0)
    for row in hot:
        n_buckets = math.ceil(row["count"] / hot_code_rows)
        bounds = _boundaries(items, row[CODE_KEY], key_col, n_buckets)
        if not bounds:
            continue
        index = F.lit(0)
        for i, bound in enumerate(bounds):  # the number of boundaries <= key
            index = index + F.when(F.col(key_col) >= F.lit(bound), 1).otherwise(0)
        expr = F.when(F.col(CODE_KEY) == F.lit(row[CODE_KEY]), index).otherwise(expr)
    return expr


def _boundaries(items: DataFrame, code, key_col: str, n_buckets: int) -> list:
    """n_buckets - 1 increasing keys of *code*, from a deterministic hash sample of its keys."""
    one = items.where(F.col(CODE_KEY) == F.lit(code))
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
