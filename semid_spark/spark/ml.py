"""Spark ML: ``SemanticIdEstimator`` / ``SemanticIdModel`` for ``pyspark.ml.Pipeline``.

``fit`` validates the input, samples to the driver and fits RQ-KMeans or RQ-VAE there (as
the job does); ``transform`` encodes on executors and ranks items sharing codes by key, so
the output column holds IDs unique within the transformed DataFrame, identical on any
partitioning. (IDs that must stay fixed as a catalog grows come from the Delta job, which
continues counters after those already written.)

Saved with Spark ML's own writer: params as Spark's metadata JSON, the model as data — its
arrays and manifest (the bytes of ``to_bytes``, no pickle) in a one-row Parquet file under
``<path>/data`` — so a fitted ``PipelineModel`` saves to and loads from any store Spark writes to.
"""

from __future__ import annotations

import os

from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol, HasSeed
from pyspark.ml.util import (DefaultParamsReadable, DefaultParamsReader, DefaultParamsWritable, DefaultParamsWriter,
                             MLReadable, MLReader, MLWritable, MLWriter)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from semid_spark.algorithms import codebook_sizes, input_dim
from semid_spark.exceptions import ModelFormatError, NotFittedError
from semid_spark.spark.columns import CODES

_DATA = "data"


class _SemanticIdParams(HasInputCol, HasOutputCol, HasSeed):
    keyCol = Param(Params._dummy(), "keyCol", "item key column (string, bigint or int); ranks items sharing codes",
                   TypeConverters.toString)
    codesCol = Param(Params._dummy(), "codesCol", "output column of the codes, array<int>", TypeConverters.toString)
    algorithm = Param(Params._dummy(), "algorithm", "rq_kmeans or rq_vae", TypeConverters.toString)
    nLevels = Param(Params._dummy(), "nLevels", "code levels (the ID's length)", TypeConverters.toInt)
    nClusters = Param(Params._dummy(), "nClusters", "codes per level", TypeConverters.toInt)
    sampleSize = Param(Params._dummy(), "sampleSize", "at most this many rows go to the driver for fitting",
                       TypeConverters.toInt)
    sep = Param(Params._dummy(), "sep", "separator of the ID's parts", TypeConverters.toString)
    hotCodeRows = Param(Params._dummy(), "hotCodeRows", "a code with more rows is ranked in several tasks",
                        TypeConverters.toInt)

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._setDefault(inputCol="embedding", outputCol="semantic_id", keyCol="item_id", codesCol="codes",
                         algorithm="rq_kmeans", nLevels=3, nClusters=256, sampleSize=200_000, seed=0, sep="-",
                         hotCodeRows=1_000_000)

    def _params_from(self, kwargs: dict) -> None:
        unknown = sorted(set(kwargs) - {p.name for p in self.params})
        if unknown:
            raise TypeError(f"unknown params {unknown}; valid: {sorted(p.name for p in self.params)}")
        self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def _columns(self) -> tuple[str, str]:
        return self.getOrDefault(self.keyCol), self.getOrDefault(self.inputCol)


class SemanticIdEstimator(Estimator, _SemanticIdParams, DefaultParamsReadable, DefaultParamsWritable):
    """Fits the quantiser on a driver-side sample; ``fit(df)`` gives a :class:`SemanticIdModel`.

    >>> SemanticIdEstimator(inputCol="embedding", keyCol="item_id", nLevels=3, nClusters=256)  # doctest: +SKIP
    """

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self._params_from(kwargs)

    def setParams(self, **kwargs) -> "SemanticIdEstimator":
        self._params_from(kwargs)
        return self

    def _fit(self, dataset: DataFrame) -> "SemanticIdModel":
        from semid_spark.config import ModelConfig
        from semid_spark.spark.pipeline import fit_device, new_encoder
        from semid_spark.spark.sample import sample_embeddings
        from semid_spark.spark.validate import check_input, normalize_columns

        key, emb = self._columns()
        df, info = check_input(normalize_columns(dataset, key, emb), key, emb)
        cfg = ModelConfig(kind=self.getOrDefault(self.algorithm), n_levels=self.getOrDefault(self.nLevels),
                          n_clusters=self.getOrDefault(self.nClusters), sample_size=self.getOrDefault(self.sampleSize),
                          seed=self.getOrDefault(self.seed))
        x = sample_embeddings(df, key_col=key, embedding_col=emb, dim=info.dim, n_rows=info.n_rows,
                              sample_size=cfg.sample_size, seed=cfg.seed)
        encoder = new_encoder(cfg, info.dim).fit(x, device=fit_device(cfg))
        model = SemanticIdModel()
        model._set_encoder(encoder)
        return self._copyValues(model)


class SemanticIdModel(Model, _SemanticIdParams, MLReadable, MLWritable):
    """Encodes ``inputCol`` into ``codesCol`` and writes IDs unique within the DataFrame to ``outputCol``."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = None

    def _set_encoder(self, encoder) -> None:
        self._encoder = encoder

    @property
    def encoder(self):
        """The fitted RQKMeans / RQVAE (decode, save, semantic_id on the driver)."""
        return self._encoder

    @property
    def sha256(self) -> str:
        return self._encoder.sha256

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from semid_spark.spark.encode import FrozenModel, encode_embeddings
        from semid_spark.spark.validate import check_input, normalize_columns
        from semid_spark.spark.ranking import assign_counters, with_code_key, with_semantic_id

        if self._encoder is None:
            raise NotFittedError("SemanticIdModel has no model: get one from SemanticIdEstimator.fit or SemanticIdModel.load")
        key, emb = self._columns()
        codes_col, out_col, sep = (self.getOrDefault(p) for p in (self.codesCol, self.outputCol, self.sep))
        df, info = check_input(normalize_columns(dataset, key, emb), key, emb)
        dim = input_dim(self._encoder)
        if info.dim != dim:
            from semid_spark.spark.pipeline import raise_mismatch

            raise_mismatch(info.dim, dim, emb)
        spark = dataset.sparkSession
        encoded = encode_embeddings(df, FrozenModel(spark, self._encoder), key_col=key, embedding_col=emb, dim=dim)
        sizes = codebook_sizes(self._encoder)
        ranked = assign_counters(with_code_key(encoded, sizes), None, key_col=key,
                                 hot_code_rows=self.getOrDefault(self.hotCodeRows))
        ids = ranked.transform(with_semantic_id, sep, len(sizes), out_col).select(key, F.col(CODES).alias(codes_col), out_col)
        kept = [c for c in dataset.columns if c not in (codes_col, out_col)]
        return dataset.select(*kept).join(ids, key)

    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ModelReader()


class _ModelWriter(MLWriter):
    def __init__(self, instance: SemanticIdModel) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        encoder = self.instance.encoder
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession,
                                         extraMetadata={"modelSha256": encoder.sha256, "modelType": type(encoder).__name__})
        (self.sparkSession.createDataFrame([(encoder.sha256, bytearray(encoder.to_bytes()))], "sha256 string, model binary")
            .coalesce(1).write.parquet(os.path.join(path, _DATA)))


class _ModelReader(MLReader):
    def load(self, path: str) -> SemanticIdModel:
        from semid_spark.algorithms import encoder_from_bytes

        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        row = self.sparkSession.read.parquet(os.path.join(path, _DATA)).first()
        if row is None:
            raise ModelFormatError(f"{path}/{_DATA} holds no model")
        encoder = encoder_from_bytes(bytes(row["model"]))  # checks the manifest's digest
        if encoder.sha256 != metadata.get("modelSha256") or encoder.sha256 != row["sha256"]:
            raise ModelFormatError(f"model at {path} has sha256 {encoder.sha256[:12]}…, its metadata says "
                                   f"{str(metadata.get('modelSha256'))[:12]}…")
        model = SemanticIdModel()
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        model._set_encoder(encoder)
        return model
