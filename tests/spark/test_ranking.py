"""The ranking's code key and ID strings: one order and one spelling whatever the codebook sizes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semid_spark.spark.ranking import CODE_KEY, base_id, code_stats, with_code_key, with_semantic_id


@st.composite
def sized_codes(draw):
    sizes = draw(st.lists(st.integers(2, 4096), min_size=1, max_size=4))
    rows = draw(st.lists(st.tuples(*(st.integers(0, s - 1) for s in sizes)), min_size=1, max_size=30))
    return sizes, rows


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sized_codes())
def test_the_code_key_orders_and_separates_codes_as_the_tuples_do(spark, data):
    sizes, rows = data
    df = spark.createDataFrame([(list(r),) for r in rows], "codes array<int>")
    keyed = with_code_key(df, sizes).select("codes", CODE_KEY).collect()
    by_key = sorted(keyed, key=lambda r: r[CODE_KEY])
    assert [tuple(r["codes"]) for r in by_key] == sorted(tuple(r["codes"]) for r in keyed)  # same order
    assert len({r[CODE_KEY] for r in keyed}) == len({tuple(r) for r in rows})  # one key per code tuple


def test_codebooks_past_63_bits_group_by_the_codes_array(spark):
    sizes = [1 << 16] * 4  # 2^64 code tuples do not fit a long
    df = spark.createDataFrame([([65535, 0, 1, 2],), ([1, 2, 3, 4],)], "codes array<int>")
    keyed = with_code_key(df, sizes)
    assert keyed.schema[CODE_KEY].dataType.simpleString() == "array<int>"
    assert [r[CODE_KEY] for r in keyed.orderBy(CODE_KEY).collect()] == [[1, 2, 3, 4], [65535, 0, 1, 2]]


def test_semantic_ids_are_the_codes_then_the_counter_when_it_is_not_zero(spark):
    df = spark.createDataFrame([([3, 9, 1], 0), ([3, 9, 1], 2), ([12, 0, 255], 0)], "codes array<int>, counter int")
    rows = with_semantic_id(df, "-", 3).withColumn("base", base_id("/", 3)).collect()
    assert [(r["semantic_id"], r["base"]) for r in rows] == [("3-9-1", "3/9/1"), ("3-9-1-2", "3/9/1"),
                                                             ("12-0-255", "12/0/255")]


def test_code_stats_counts_rows_unencoded_rows_rows_sharing_a_code_and_hot_codes(spark):
    rows = [("a", [1, 2]), ("b", [1, 2]), ("c", [1, 2]), ("d", [0, 5]), ("e", None), ("f", [3, 3]), ("g", [3, 3]),
            ("h", None)]
    items = spark.createDataFrame(rows, "item_id string, codes array<int>").transform(with_code_key, [8, 8])
    stats = code_stats(items, hot_code_rows=2)
    # rows without codes (flagged by the encoder) are counted apart, never as sharing a code
    assert (stats.n_rows, stats.n_unencoded, stats.shared, stats.n_codes) == (8, 2, 5, 3)
    assert [(r[CODE_KEY], r["count"]) for r in stats.hot] == [(1 * 8 + 2, 3)]
    assert code_stats(items.limit(0), hot_code_rows=2) == type(stats)(0, 0, 0, [], 0)
