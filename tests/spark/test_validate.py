"""The numpy row checks count exactly what Spark's own array expressions count."""

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from semid_spark.spark.validate import _problems, _row_problem_counts, normalize_columns
from semid_spark.spark.compat import from_arrow

DIM = 4
value = st.one_of(st.floats(-5, 5, width=32), st.sampled_from([float("nan"), float("inf"), float("-inf"), None]))
row = st.tuples(st.one_of(st.none(), st.text("ab", min_size=1, max_size=3)),
                st.one_of(st.none(), st.lists(value, min_size=DIM - 1, max_size=DIM + 1)))


@settings(max_examples=10, deadline=None)
@given(st.lists(row, min_size=1, max_size=40), st.integers(1, 3))
def test_numpy_checks_count_what_spark_expressions_count(spark, rows, n_partitions):
    keys, embs = zip(*rows)
    table = pa.table({"k": pa.array(keys, pa.string()), "e": pa.array(embs, pa.list_(pa.float32()))})
    df = normalize_columns(from_arrow(spark, table).repartition(n_partitions), "k", "e")
    got = _row_problem_counts(df, "k", "e", DIM)
    conditions = [(label, cond) for label, cond in _problems("k", "e", F.lit(DIM)) if label != "duplicate key"]
    want = df.agg(*[F.sum(F.when(cond, 1).otherwise(0)).alias(label) for label, cond in conditions]).first().asDict()
    assert got == {"n": len(rows), **{label: int(n or 0) for label, n in want.items()}}
