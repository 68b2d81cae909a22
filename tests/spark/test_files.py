"""Executors that read the input's Parquet files themselves give the IDs Spark's reader gives."""

import numpy as np
import pyarrow as pa
import pytest
from chispa import assert_df_equality

from semid_spark.delta.table import TableRef
from semid_spark.exceptions import ConfigError, InvalidInputError
from semid_spark.spark import files as files_module
from semid_spark.spark import assign, pipeline
from semid_spark.spark.source import input_files
from tests.spark.conftest import catalog, config, frame, ids, write_input


def _ids_of(spark, tmp, reader, **sections):
    cfg = config(tmp, encode={"reader": reader}, **sections)
    report = pipeline.run(spark, cfg)
    return ids(spark, cfg), report


def test_the_files_path_and_sparks_reader_give_the_same_ids(spark, tmp_path, monkeypatch):
    keys, x = catalog(1500)
    df = frame(spark, keys, x).repartition(3)
    write_input(spark, df, f"{tmp_path}/a/in")
    write_input(spark, df, f"{tmp_path}/b/in")
    # small row groups and splits: a file is read by several tasks, each row by exactly one
    monkeypatch.setattr(files_module, "SPLIT_BYTES", 4096)
    chosen = []
    real = files_module.encode_files
    monkeypatch.setattr(assign, "encode_files", lambda *a, **k: chosen.append("files") or real(*a, **k))
    with_files, report = _ids_of(spark, tmp_path / "a", "files")
    assert chosen == ["files"] and report.n_inserted == 1500
    with_spark, _ = _ids_of(spark, tmp_path / "b", "spark")
    assert chosen == ["files"]
    assert_df_equality(with_files, with_spark, ignore_row_order=True)
    assert with_files.count() == with_files.select("item_id").distinct().count() == 1500


def test_a_split_file_is_read_once_per_row(spark, tmp_path, monkeypatch):
    keys, x = catalog(3000)
    path = tmp_path / "one.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"item_id": keys, "embedding": pa.array(list(x.astype(np.float64)))}), path,
                   row_group_size=256)  # list<double>: cast to float32 as Spark's reader would
    monkeypatch.setattr(files_module, "SPLIT_BYTES", 20_000)
    cfg = config(tmp_path, input={"path": str(tmp_path), "format": "parquet"})
    df = spark.read.parquet(str(path))
    found = input_files(spark, df, None, key_col="item_id", embedding_col="embedding", reader="auto")
    assert found is not None and found.paths == (str(path),)
    report = pipeline.run(spark, config(tmp_path, input={"path": str(path), "format": "parquet"}))
    assert report.n_inserted == 3000
    written = ids(spark, cfg)
    assert written.select("item_id").distinct().count() == 3000
    with_spark, _ = _ids_of(spark, tmp_path / "b", "spark", input={"path": str(path), "format": "parquet"})
    assert_df_equality(written, with_spark, ignore_row_order=True)


def test_deletion_vectors_need_sparks_reader(spark, tmp_path):
    keys, x = catalog(600)
    write_input(spark, frame(spark, keys, x), f"{tmp_path}/in")
    spark.sql(f"ALTER TABLE delta.`{tmp_path}/in` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    spark.sql(f"DELETE FROM delta.`{tmp_path}/in` WHERE item_id < 'sku000100'")  # rows deleted in place
    df = spark.read.format("delta").load(f"{tmp_path}/in")
    with pytest.raises(ConfigError, match="deletionVectors"):
        input_files(spark, df, TableRef(f"{tmp_path}/in"), key_col="item_id", embedding_col="embedding",
                    reader="files")
    report = pipeline.run(spark, config(tmp_path))  # auto: Spark's reader, which honours the deletions
    assert report.n_inserted == 500
    assert ids(spark, config(tmp_path)).where("item_id < 'sku000100'").count() == 0


def test_a_bad_row_read_from_a_file_is_named_and_nothing_is_written(spark, tmp_path):
    keys, x = catalog(800)
    x[437, 3] = np.nan
    write_input(spark, frame(spark, keys, x), f"{tmp_path}/in")
    cfg = config(tmp_path, encode={"reader": "files"}, model={"sample_size": 100})
    with pytest.raises(InvalidInputError, match="1 rows with NaN, inf or null values in .embedding."):
        pipeline.run(spark, cfg)
    assert not TableRef(cfg.output.path).exists(spark) or ids(spark, cfg).count() == 0


def test_remote_files_are_left_to_spark_unless_asked(spark, tmp_path, monkeypatch):
    keys, x = catalog(50)
    write_input(spark, frame(spark, keys, x), f"{tmp_path}/in")
    df = spark.read.format("delta").load(f"{tmp_path}/in")
    monkeypatch.setattr(type(df), "inputFiles", lambda self: ["s3://bucket/in/part-0.parquet"])
    assert input_files(spark, df, None, key_col="item_id", embedding_col="embedding", reader="auto") is None
    assert input_files(spark, df, None, key_col="item_id", embedding_col="embedding", reader="spark") is None
