"""The table layer on its own (``delta.table``, ``delta.schema``): create, claim, bind, merge counts,
migrations and properties, on real Delta tables, without the job around them."""

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.delta import schema
from semid_spark.delta.table import (
    HISTORY_PROPERTY, PENDING_PROPERTIES, PENDING_RUN_PROPERTY, PENDING_SHA_PROPERTY, SHA_PROPERTY, TableRef,
    abandon_rebinding, append_idempotent, begin_rebinding, bound_model, check_table, merge_new_rows,
    model_properties, prepare_table, rebind_table,
)
from semid_spark.exceptions import ModelMismatchError

KEY = "item_id"


def _model(seed: int) -> RQKMeans:
    x = np.random.default_rng(seed).standard_normal((200, 4)).astype(np.float32)
    return RQKMeans(n_levels=2, n_clusters=4, random_state=seed).fit(x)


@pytest.fixture(scope="module")
def models():
    return _model(0), _model(1)


def _rows(spark, keys, sha, run_id="run-1", counter=0):
    """ID rows in the table's layout (``schema.id_rows``), one per key."""
    data = [(k, f"{i % 4}-{i // 4}", [i % 4, i // 4], counter, False) for i, k in enumerate(keys)]
    ranked = spark.createDataFrame(data, f"{KEY} string, {schema.SEMANTIC_ID} string, {schema.CODES} array<int>, "
                                         f"{schema.COUNTER} int, {schema.RELOCATED} boolean")
    return schema.id_rows(ranked, key_col=KEY, model_sha=sha, run_id=run_id)


def _written(spark, path, model, keys):
    """A table created for *model* with rows for *keys* (run-1): (its ref, the rows' schema)."""
    ref = TableRef(str(path))
    rows = _rows(spark, keys, model.sha256)
    prepare_table(spark, ref, rows.schema, model, "create")
    merge_new_rows(spark, ref, rows, KEY)
    return ref, rows.schema


def test_the_id_rows_are_in_the_declared_column_order(spark, models):
    rows = _rows(spark, ["a"], models[0].sha256)
    assert rows.columns == [KEY, schema.SEMANTIC_ID, schema.CODES, schema.COUNTER, schema.RELOCATED,
                            schema.MODEL_SHA, schema.RUN_ID, schema.ASSIGNED_AT]


def test_create_binds_the_table_to_its_model_and_merge_counts_inserted_rows(spark, tmp_path, models):
    model, _ = models
    ref = TableRef(str(tmp_path / "ids"))
    assert check_table(spark, ref, model, replace_on_new_model=False) == "create"
    rows = _rows(spark, ["a", "b", "c"], model.sha256)
    prepare_table(spark, ref, rows.schema, model, "create", stats_columns=(KEY, schema.RUN_ID))
    props = ref.properties(spark)
    assert {k: props[k] for k in model_properties(model)} == model_properties(model)
    assert props["delta.dataSkippingStatsColumns"] == f"`{KEY}`,`{schema.RUN_ID}`"
    assert ref.read(spark).count() == 0  # the empty table and its model: one commit

    assert merge_new_rows(spark, ref, rows, KEY) == 3
    again = _rows(spark, ["b", "c", "d"], model.sha256, run_id="run-2", counter=7)
    assert merge_new_rows(spark, ref, again, KEY) == 1  # insert-only: b and c keep their rows
    table = ref.read(spark).select(KEY, schema.COUNTER, schema.RUN_ID)
    expected = spark.createDataFrame([("a", 0, "run-1"), ("b", 0, "run-1"), ("c", 0, "run-1"), ("d", 7, "run-2")],
                                     table.schema)
    assert_df_equality(table, expected, ignore_row_order=True)
    assert check_table(spark, ref, model, replace_on_new_model=False) == "append"


def test_merge_of_unread_rows_skips_no_key_it_should_insert(spark, tmp_path, models):
    model, _ = models
    ref, _ = _written(spark, tmp_path / "ids", model, ["a", "b"])
    # rows that dropped the written keys themselves: the MERGE matches only this run's id
    fresh = _rows(spark, ["c"], model.sha256, run_id="run-2")
    assert merge_new_rows(spark, ref, fresh, KEY, unread_rows=(schema.RUN_ID, "run-2")) == 1
    assert ref.read(spark).count() == 3


def test_an_empty_table_without_a_model_is_claimed_and_another_models_table_refused(spark, tmp_path, models):
    model, other = models
    ref = TableRef(str(tmp_path / "ids"))
    rows = _rows(spark, ["a"], model.sha256)
    spark.createDataFrame([], rows.schema).write.format("delta").save(ref.path)  # a run stopped after creating it
    assert check_table(spark, ref, model, replace_on_new_model=False) == "claim"
    prepare_table(spark, ref, rows.schema, model, "claim")
    assert ref.properties(spark)[SHA_PROPERTY] == model.sha256
    with pytest.raises(ModelMismatchError, match="IDs of two models must not mix"):
        check_table(spark, ref, other, replace_on_new_model=False)
    assert check_table(spark, ref, other, replace_on_new_model=True) == "replace"


def test_replace_keeps_the_old_version_in_history(spark, tmp_path, models):
    model, other = models
    ref, layout = _written(spark, tmp_path / "ids", model, ["a", "b"])
    before = ref.version(spark)
    prepare_table(spark, ref, layout, other, "replace")
    assert ref.properties(spark)[SHA_PROPERTY] == other.sha256 and ref.read(spark).count() == 0
    assert ref.read(spark, versionAsOf=before).count() == 2


def test_rebinding_switches_the_table_at_the_pending_runs_merge(spark, tmp_path, models):
    old, new = models
    ref, _ = _written(spark, tmp_path / "ids", old, ["a"])

    begin_rebinding(spark, ref, old.sha256, new, "run-new", "/models/new")
    props = ref.properties(spark)
    assert props[PENDING_SHA_PROPERTY] == new.sha256 and props[PENDING_RUN_PROPERTY] == "run-new"
    assert bound_model(spark, ref, props) == old.sha256  # named pending; no row of its run yet
    abandon_rebinding(spark, ref, "run-new")  # a publish that failed before its MERGE
    assert all(not ref.properties(spark).get(name) for name in PENDING_PROPERTIES)

    begin_rebinding(spark, ref, old.sha256, new, "run-new", "/models/new")
    merge_new_rows(spark, ref, _rows(spark, ["b"], new.sha256, run_id="run-new"), KEY)
    assert bound_model(spark, ref, ref.properties(spark)) == new.sha256  # the MERGE was the switch
    assert check_table(spark, ref, new, replace_on_new_model=False) == "append"
    with pytest.raises(ModelMismatchError, match="was refitted from this run's model"):
        check_table(spark, ref, old, replace_on_new_model=False)

    rebind_table(spark, ref, old.sha256, new, {"semid.model_path": "/models/new"})
    props = ref.properties(spark)
    assert props[SHA_PROPERTY] == new.sha256 and props[HISTORY_PROPERTY] == f"{old.sha256},{new.sha256}"
    assert all(not props.get(name) for name in PENDING_PROPERTIES)
    version = ref.version(spark)
    rebind_table(spark, ref, old.sha256, new, {})  # already bound: no commit
    assert ref.version(spark) == version


def test_append_idempotent_creates_migrates_and_adds_each_id_once(spark, tmp_path):
    ref = TableRef(str(tmp_path / "churn"))
    old_layout = T.StructType([f for f in schema.CHURN_SCHEMA.fields if f.name not in schema.ADDED_COLUMNS["churn"]])
    row = {f.name: None for f in schema.CHURN_SCHEMA.fields}
    row[schema.REFIT_ID] = "r1"
    spark.createDataFrame([tuple(row[f.name] for f in old_layout.fields)], old_layout).write.format("delta").save(ref.path)

    row.update({schema.REFIT_ID: "r2", "id_churn": 0.25})
    new_rows = spark.createDataFrame([tuple(row[f.name] for f in schema.CHURN_SCHEMA.fields)], schema.CHURN_SCHEMA)
    assert append_idempotent(spark, ref, new_rows, schema.REFIT_ID) == 1
    assert append_idempotent(spark, ref, new_rows, schema.REFIT_ID) == 0  # a retry adds no copy
    table = ref.read(spark)
    assert set(table.columns) == {f.name for f in schema.CHURN_SCHEMA.fields}  # the missing column was added
    got = {r[schema.REFIT_ID]: r["id_churn"] for r in table.select(schema.REFIT_ID, "id_churn").collect()}
    assert got == {"r1": None, "r2": 0.25}  # older rows read null there


def test_an_id_table_without_relocated_gains_it_on_the_next_merge(spark, tmp_path, models):
    model, _ = models
    ref = TableRef(str(tmp_path / "ids"))
    rows = _rows(spark, ["a"], model.sha256)
    prepare_table(spark, ref, rows.drop(schema.RELOCATED).schema, model, "create")  # an earlier version's table
    merge_new_rows(spark, ref, rows.drop(schema.RELOCATED), KEY)
    more = _rows(spark, ["b"], model.sha256, run_id="run-2")
    prepare_table(spark, ref, more.schema, model, "append")
    assert schema.missing_columns(set(ref.read(spark).columns), more.schema) == []
    merge_new_rows(spark, ref, more, KEY)
    got = {r[KEY]: r[schema.RELOCATED] for r in ref.read(spark).collect()}
    assert got == {"a": None, "b": False}
    assert schema.ADDED_COLUMNS["ids"] == (schema.RELOCATED,)


def test_reject_rows_carry_their_id_and_run(spark):
    bad = spark.createDataFrame([("a", "nan", "x1")], f"{KEY} string, {schema.REASON} string, {schema.REJECT_ID} string")
    rows = schema.reject_rows(bad, "run-9")
    assert rows.columns == [KEY, schema.REASON, schema.REJECT_ID, schema.RUN_ID]
    assert rows.where(F.col(schema.RUN_ID) == "run-9").count() == 1
