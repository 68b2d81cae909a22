"""Spark ML: SemanticIdEstimator in a Pipeline, fit -> save -> load -> transform gives the same IDs."""

import os

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import Normalizer
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql.types import StringType, StructField, StructType

from semid_spark.exceptions import ConfigError, InvalidInputError, ModelFormatError, NotFittedError
from semid_spark.spark.ml import RANK_BUCKETS, SemanticIdEstimator, SemanticIdModel
from semid_spark.uniqueness.relocate import relocate_codes
from tests.spark.conftest import catalog


@pytest.fixture(scope="module")
def raw(spark):
    keys, x = catalog(900)
    schema = StructType([StructField("item_id", StringType()), StructField("raw", VectorUDT()),
                         StructField("title", StringType())])
    return spark.createDataFrame([(k, Vectors.dense(v.tolist()), f"t{i}") for i, (k, v) in enumerate(zip(keys, x))],
                                 schema), x


@pytest.fixture(scope="module")
def fitted(raw):
    df, _ = raw
    pipeline = Pipeline(stages=[Normalizer(inputCol="raw", outputCol="embedding"),
                                SemanticIdEstimator(inputCol="embedding", keyCol="item_id", nLevels=3, nClusters=8,
                                                    sampleSize=500, seed=3)])
    return pipeline.fit(df)


def test_pipeline_fit_transform_gives_unique_ids_of_the_fitted_codes(raw, fitted):
    df, x = raw
    out = fitted.transform(df)
    assert set(df.columns) | {"embedding", "codes", "semantic_id"} == set(out.columns)
    rows = out.orderBy("item_id").collect()
    assert len(rows) == 900 and len({r.semantic_id for r in rows}) == 900
    model = fitted.stages[-1]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    # the job's default strategy: items sharing a code move to free last-level codes of their prefix
    assert model.getStrategy() == "relocate"
    relocation = relocate_codes(model.encoder, unit, keys=[r.item_id for r in rows])
    np.testing.assert_array_equal(np.array([r.codes for r in rows]), relocation.codes)
    assert relocation.relocated.any()
    for r in rows:  # the ID is its codes, plus a counter when another item shares them
        assert r.semantic_id.split("-")[:3] == [str(c) for c in r.codes]
    # suffix: every item keeps its nearest code
    suffix = model.copy().setStrategy("suffix").transform(fitted.stages[0].transform(df)).orderBy("item_id").collect()
    np.testing.assert_array_equal(np.array([r.codes for r in suffix]), model.encoder.encode(unit))
    assert len({r.semantic_id for r in suffix}) == 900
    counters = lambda got: sum(r.semantic_id.count("-") == 3 for r in got)  # noqa: E731
    assert counters(rows) < counters(suffix)


def test_saved_pipeline_loads_and_transforms_identically(spark, raw, fitted, tmp_path):
    df, _ = raw
    path = str(tmp_path / "pipeline")
    fitted.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    assert isinstance(loaded.stages[-1], SemanticIdModel)
    assert loaded.stages[-1].sha256 == fitted.stages[-1].sha256
    assert loaded.stages[-1].getOrDefault("nClusters") == 8
    before = fitted.transform(df).select("item_id", "codes", "semantic_id")
    after = loaded.transform(df.repartition(5)).select("item_id", "codes", "semantic_id")
    assert_df_equality(before, after, ignore_row_order=True)
    stage_dir = os.path.join(path, "stages", sorted(os.listdir(os.path.join(path, "stages")))[-1])
    files = [f for _, _, fs in os.walk(stage_dir) for f in fs if not f.startswith((".", "_"))]
    assert all(f.endswith((".parquet", ".txt")) or f.startswith("part-") for f in files), files  # no pickles


def test_a_damaged_model_is_refused(spark, fitted, tmp_path):
    path = str(tmp_path / "model")
    fitted.stages[-1].write().save(path)
    spark.createDataFrame([("0" * 64, bytearray(b"not a model"))], "sha256 string, model binary") \
        .write.mode("overwrite").parquet(os.path.join(path, "data"))
    with pytest.raises(ModelFormatError):
        SemanticIdModel.load(path)


def test_params_and_bad_input_are_named(spark, raw):
    with pytest.raises(TypeError, match="unexpected keyword argument 'nLevel'"):  # @keyword_only, as pyspark.ml's
        SemanticIdEstimator(nLevel=3)
    df, _ = raw
    with pytest.raises(InvalidInputError, match="no column 'embedding'.*'raw'"):
        SemanticIdEstimator(nClusters=8, sampleSize=500).fit(df)
    with pytest.raises(NotFittedError, match="SemanticIdEstimator.fit"):
        SemanticIdModel().transform(df)


def test_params_have_a_getter_and_a_setter_each_and_set_params_sets_the_named_ones():
    estimator = SemanticIdEstimator(nLevels=2)
    for param in estimator.params:
        name = param.name[0].upper() + param.name[1:]
        assert callable(getattr(estimator, f"get{name}")) and callable(getattr(estimator, f"set{name}")), name
    assert estimator.setNClusters(16).setKeyCol("sku") is estimator
    assert (estimator.getNLevels(), estimator.getNClusters(), estimator.getKeyCol()) == (2, 16, "sku")
    assert estimator.setParams(sep="/", seed=7) is estimator
    assert (estimator.getSep(), estimator.getSeed(), estimator.getNClusters()) == ("/", 7, 16)
    assert SemanticIdEstimator().getNLevels() == 3 and SemanticIdModel().getRankBuckets() == RANK_BUCKETS
    with pytest.raises(TypeError, match="keyword"):
        SemanticIdEstimator("embedding")  # keyword arguments only


def test_transform_starts_no_spark_job_until_an_action(spark, raw, fitted):
    df, _ = raw
    tracker, group = spark.sparkContext.statusTracker(), "semid-test-lazy-transform"
    spark.sparkContext.setJobGroup(group, "transform must only plan")
    try:
        out = fitted.transform(df)  # the Normalizer and our model
        assert tracker.getJobIdsForGroup(group) == []
        assert out.count() == 900
        assert tracker.getJobIdsForGroup(group)  # the action ran them
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)


def test_bad_rows_and_duplicate_keys_fail_the_action_naming_the_key(spark, raw, fitted):
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    model = fitted.stages[-1]
    df = fitted.stages[0].transform(raw[0]).select("item_id", vector_to_array("embedding", "float32").alias("embedding"))
    cases = [
        (df.withColumn("embedding", F.when(F.col("item_id") == "sku000007", F.lit(None)).otherwise(F.col("embedding"))),
         r"'item_id' is sku000007 has a null embedding"),
        (df.withColumn("embedding", F.when(F.col("item_id") == "sku000009", F.array(F.lit(1.0)))
                       .otherwise(F.col("embedding"))), r"sku000009 has an embedding whose length is not the model's"),
        (df.withColumn("embedding", F.when(F.col("item_id") == "sku000011", F.array_repeat(F.lit(float("nan")), 16))
                       .otherwise(F.col("embedding"))), r"sku000011 has an embedding holding NaN"),
        (df.union(df.where(F.col("item_id") == "sku000005")), r"'item_id' sku000005 is on more than one row"),
    ]
    for bad, message in cases:
        out = model.transform(bad)  # plans only
        with pytest.raises(Exception, match=message):
            out.collect()


def test_one_code_of_many_rows_is_ranked_over_several_buckets_into_unique_ids(spark, fitted):
    model = fitted.stages[-1].copy().setStrategy("suffix")
    vec = [1.0] + [0.0] * 15  # every row the same embedding: one code
    df = spark.createDataFrame([(f"k{i:04d}", vec) for i in range(600)], "item_id string, embedding array<float>")
    rows = model.transform(df).collect()
    assert len({tuple(r.codes) for r in rows}) == 1 and len({r.semantic_id for r in rows}) == 600
    counters = sorted(int(r.semantic_id.split("-")[3]) if r.semantic_id.count("-") == 3 else 0 for r in rows)
    assert counters == list(range(600))  # 0..599 across the buckets, no gap, no repeat
    out = model.transform(df)
    out.collect()
    final = out._jdf.queryExecution().executedPlan().toString().split("== Initial Plan ==")[0]
    assert final.count("MapInArrow") == 1  # encoded once: the ranking and the bucket sizes read one exchange
    again = model.transform(df.repartition(7)).select("item_id", "semantic_id")
    with pytest.raises(ConfigError, match="rankBuckets=0; expected >= 1"):
        model.copy().setRankBuckets(0).transform(df)
    assert_df_equality(model.transform(df).select("item_id", "semantic_id"), again, ignore_row_order=True)


def test_a_model_saved_with_a_param_since_removed_still_loads(spark, fitted, tmp_path):
    import json

    path = str(tmp_path / "model")
    fitted.stages[-1].write().save(path)
    meta_dir = os.path.join(path, "metadata")
    part = next(f for f in os.listdir(meta_dir) if f.startswith("part-"))
    meta = json.loads(open(os.path.join(meta_dir, part)).read())
    meta["paramMap"]["hotCodeRows"] = 5  # as saved before transform became lazy
    meta["defaultParamMap"]["hotCodeRows"] = 1_000_000
    open(os.path.join(meta_dir, part), "w").write(json.dumps(meta))
    os.remove(os.path.join(meta_dir, f".{part}.crc"))  # the local file system checks it
    loaded = SemanticIdModel.load(path)
    assert loaded.sha256 == fitted.stages[-1].sha256 and not loaded.hasParam("hotCodeRows")


def test_one_size_per_level_fits_saves_and_transforms(spark, raw, tmp_path):
    from pyspark.ml.functions import vector_to_array

    df = Normalizer(inputCol="raw", outputCol="unit").transform(raw[0]) \
        .select("item_id", vector_to_array("unit", "float32").alias("embedding"))
    estimator = SemanticIdEstimator(nClusters=[8, 4, 6], sampleSize=500, seed=1)
    model = estimator.fit(df)
    assert [len(c) for c in model.encoder.codebooks_] == [8, 4, 6] and model.getNLevels() == 3
    path = str(tmp_path / "model")
    model.write().save(path)
    loaded = SemanticIdModel.load(path)
    assert loaded.getNClusters() == [8, 4, 6]
    rows = loaded.transform(df).collect()
    codes = np.array([r.codes for r in rows])
    assert codes.shape == (900, 3) and (codes.max(axis=0) < [8, 4, 6]).all()
    assert len({r.semantic_id for r in rows}) == 900
    with pytest.raises(ConfigError, match=r"n_levels=2 but n_clusters lists 3 sizes"):
        SemanticIdEstimator(nLevels=2, nClusters=[8, 4, 6], sampleSize=500).fit(df)
    with pytest.raises(TypeError, match="nClusters"):
        SemanticIdEstimator(nClusters="many")
