"""Spark ML: SemanticIdEstimator in a Pipeline, fit -> save -> load -> transform gives the same IDs."""

import os

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import Normalizer
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql.types import StringType, StructField, StructType

from semid_spark.exceptions import InvalidInputError, ModelFormatError, NotFittedError
from semid_spark.spark.ml import SemanticIdEstimator, SemanticIdModel
from tests.spark.test_pipeline import catalog


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
    np.testing.assert_array_equal(np.array([r.codes for r in rows]), model.encoder.encode(unit))
    for r in rows:  # the ID is its codes, plus a counter when another item shares them
        assert r.semantic_id.split("-")[:3] == [str(c) for c in r.codes]


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
    with pytest.raises(TypeError, match="unknown params \\['nLevel'\\]"):
        SemanticIdEstimator(nLevel=3)
    df, _ = raw
    with pytest.raises(InvalidInputError, match="no column 'embedding'.*'raw'"):
        SemanticIdEstimator(nClusters=8, sampleSize=500).fit(df)
    with pytest.raises(NotFittedError, match="SemanticIdEstimator.fit"):
        SemanticIdModel().transform(df)
