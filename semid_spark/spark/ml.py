"""Spark ML: ``SemanticIdEstimator`` / ``SemanticIdModel`` for ``pyspark.ml.Pipeline``.

pyspark.ml's conventions: ``@keyword_only`` constructors and ``setParams``, a getter and a
setter per Param. ``fit`` validates the input, samples to the driver and fits RQ-KMeans or
RQ-VAE there (as the job does); ``transform`` only plans (no Spark job until an action): it
encodes on executors and makes IDs unique within the transformed DataFrame as the job does
(``strategy``: ``relocate``, the default, moves items sharing a code to free last-level codes of
their prefix; ``suffix`` keeps every item's nearest code), ranking the items that still share a
code in ``rankBuckets`` buckets of their key's hash, then by key: identical on any partitioning. (IDs that must stay fixed as a catalog grows come from the Delta
job, which continues counters after those already written.)

Saved with Spark ML's own writer: params as Spark's metadata JSON, the model as data — its
arrays and manifest (the bytes of ``to_bytes``, no pickle) in a one-row Parquet file under
``<path>/data`` — so a fitted ``PipelineModel`` saves to and loads from any store Spark writes to.
"""

from __future__ import annotations

import logging
import os

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol, HasSeed
from pyspark.ml.util import (DefaultParamsReadable, DefaultParamsReader, DefaultParamsWritable, DefaultParamsWriter,
                             MLReadable, MLReader, MLWritable, MLWriter)
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from semid_spark.algorithms import encoder_from_bytes
from semid_spark.config import ModelConfig, UniquenessConfig
from semid_spark.delta.schema import CODES, PROBLEM
from semid_spark.exceptions import ConfigError, ModelFormatError, NotFittedError
from semid_spark.spark.compat import ml_context
from semid_spark.spark.encode import FrozenModel, encode_embeddings
from semid_spark.spark.models import fit_device, new_encoder
from semid_spark.spark.ranking import with_code_key, with_semantic_id
from semid_spark.spark.sample import sample_embeddings
from semid_spark.spark.strategies import strategy_for
from semid_spark.spark.validate import NON_FINITE, NULL_EMBEDDING, WRONG_LENGTH, check_input, normalize_columns

log = logging.getLogger(__name__)

_DATA = "data"
_JOB, _IDS = ModelConfig(), UniquenessConfig()  # the estimator's defaults are the job's
RANK_BUCKETS = 16  # per code, for transform's lazy ranking (a code of 16M rows: 1M a task)


def _int_or_ints(value) -> int | list[int]:
    """nClusters' converter: one size, or one per level (as the job's model.n_clusters)."""
    if TypeConverters._can_convert_to_list(value):
        return TypeConverters.toListInt(value)
    return TypeConverters.toInt(value)


class _SemanticIdParams(HasInputCol, HasOutputCol, HasSeed):
    keyCol = Param(Params._dummy(), "keyCol", "item key column (string, bigint or int); ranks items sharing codes",
                   TypeConverters.toString)
    codesCol = Param(Params._dummy(), "codesCol", "output column of the codes, array<int>", TypeConverters.toString)
    algorithm = Param(Params._dummy(), "algorithm", "rq_kmeans or rq_vae", TypeConverters.toString)
    nLevels = Param(Params._dummy(), "nLevels", "code levels (the ID's length)", TypeConverters.toInt)
    nClusters = Param(Params._dummy(), "nClusters", "codes per level: one size for every level, or a list of one "
                      "size per level ([2048, 1024, 512], whose length is then the ID's)", _int_or_ints)
    sampleSize = Param(Params._dummy(), "sampleSize", "at most this many rows go to the driver for fitting",
                       TypeConverters.toInt)
    sep = Param(Params._dummy(), "sep", "separator of the ID's parts", TypeConverters.toString)
    rankBuckets = Param(Params._dummy(), "rankBuckets", "buckets each code's rows are ranked in, by key hash, so "
                        "that no code lands in one task", TypeConverters.toInt)
    strategy = Param(Params._dummy(), "strategy", "relocate (items sharing a code move to free last-level codes of "
                     "their prefix, counters only where none is near) or suffix (every item keeps its nearest code, "
                     "a counter tells items sharing it apart), as the job's uniqueness.strategy", TypeConverters.toString)
    relocateCandidates = Param(Params._dummy(), "relocateCandidates", "last-level codes an item may move to (its own "
                               "included), as the job's uniqueness.relocate_candidates", TypeConverters.toInt)
    relocateSolver = Param(Params._dummy(), "relocateSolver", "greedy (nearest free code first) or exact (an "
                           "assignment solver), as the job's uniqueness.relocate_solver", TypeConverters.toString)

    def __init__(self, *args) -> None:
        super().__init__(*args)
        # the job's defaults (ModelConfig): 3 levels of 256 codes, a 200k sample, seed 0, RQ-KMeans
        self._setDefault(inputCol="embedding", outputCol="semantic_id", keyCol="item_id", codesCol="codes",
                         algorithm=_JOB.kind, nLevels=_JOB.n_levels, nClusters=_JOB.n_clusters,
                         sampleSize=_JOB.sample_size, seed=_JOB.seed, sep="-", rankBuckets=RANK_BUCKETS,
                         strategy=_IDS.strategy, relocateCandidates=_IDS.relocate_candidates,
                         relocateSolver=_IDS.relocate_solver)

    def getKeyCol(self) -> str:
        return self.getOrDefault(self.keyCol)

    def getCodesCol(self) -> str:
        return self.getOrDefault(self.codesCol)

    def getAlgorithm(self) -> str:
        return self.getOrDefault(self.algorithm)

    def getNLevels(self) -> int:
        return self.getOrDefault(self.nLevels)

    def getNClusters(self) -> int | list[int]:
        return self.getOrDefault(self.nClusters)

    def getSampleSize(self) -> int:
        return self.getOrDefault(self.sampleSize)

    def getSep(self) -> str:
        return self.getOrDefault(self.sep)

    def getRankBuckets(self) -> int:
        return self.getOrDefault(self.rankBuckets)

    def getStrategy(self) -> str:
        return self.getOrDefault(self.strategy)

    def getRelocateCandidates(self) -> int:
        return self.getOrDefault(self.relocateCandidates)

    def getRelocateSolver(self) -> str:
        return self.getOrDefault(self.relocateSolver)

    def setInputCol(self, value: str):
        return self._set(inputCol=value)

    def setOutputCol(self, value: str):
        return self._set(outputCol=value)

    def setSeed(self, value: int):
        return self._set(seed=value)

    def setKeyCol(self, value: str):
        return self._set(keyCol=value)

    def setCodesCol(self, value: str):
        return self._set(codesCol=value)

    def setAlgorithm(self, value: str):
        return self._set(algorithm=value)

    def setNLevels(self, value: int):
        return self._set(nLevels=value)

    def setNClusters(self, value: int | list[int]):
        return self._set(nClusters=value)

    def setSampleSize(self, value: int):
        return self._set(sampleSize=value)

    def setSep(self, value: str):
        return self._set(sep=value)

    def setRankBuckets(self, value: int):
        return self._set(rankBuckets=value)

    def setStrategy(self, value: str):
        return self._set(strategy=value)

    def setRelocateCandidates(self, value: int):
        return self._set(relocateCandidates=value)

    def setRelocateSolver(self, value: str):
        return self._set(relocateSolver=value)

    def _columns(self) -> tuple[str, str]:
        return self.getKeyCol(), self.getInputCol()


class SemanticIdEstimator(Estimator, _SemanticIdParams, DefaultParamsReadable, DefaultParamsWritable):
    """Fits the quantiser on a driver-side sample; ``fit(df)`` gives a :class:`SemanticIdModel`.

    >>> SemanticIdEstimator(inputCol="embedding", keyCol="item_id", nLevels=3, nClusters=256)  # doctest: +SKIP
    """

    @keyword_only
    def __init__(self, *, inputCol: str = "embedding", outputCol: str = "semantic_id", keyCol: str = "item_id",
                 codesCol: str = "codes", algorithm: str = _JOB.kind, nLevels: int = _JOB.n_levels,
                 nClusters: int | list[int] = _JOB.n_clusters, sampleSize: int = _JOB.sample_size, seed: int = _JOB.seed,
                 sep: str = "-", rankBuckets: int = RANK_BUCKETS,
                 strategy: str = _IDS.strategy, relocateCandidates: int = _IDS.relocate_candidates,
                 relocateSolver: str = _IDS.relocate_solver) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol: str = "embedding", outputCol: str = "semantic_id", keyCol: str = "item_id",
                  codesCol: str = "codes", algorithm: str = _JOB.kind, nLevels: int = _JOB.n_levels,
                  nClusters: int | list[int] = _JOB.n_clusters, sampleSize: int = _JOB.sample_size, seed: int = _JOB.seed,
                  sep: str = "-", rankBuckets: int = RANK_BUCKETS,
                 strategy: str = _IDS.strategy, relocateCandidates: int = _IDS.relocate_candidates,
                 relocateSolver: str = _IDS.relocate_solver) -> "SemanticIdEstimator":
        """Set the params named (the others keep their values)."""
        return self._set(**self._input_kwargs)

    @classmethod
    def read(cls) -> MLReader:
        return _EstimatorReader(cls)

    def _fit(self, dataset: DataFrame) -> "SemanticIdModel":
        key, emb = self._columns()
        df, info = check_input(normalize_columns(dataset, key, emb), key, emb)
        sizes = self.getNClusters()
        # a list of sizes gives the levels; nLevels, when set too, must agree (ModelConfig says so)
        levels = self.getNLevels() if not isinstance(sizes, list) or self.isSet(self.nLevels) else None
        cfg = ModelConfig(kind=self.getAlgorithm(), n_levels=levels, n_clusters=sizes,
                          sample_size=self.getSampleSize(), seed=self.getSeed())
        x = sample_embeddings(df, key_col=key, embedding_col=emb, dim=info.dim, n_rows=info.n_rows,
                              sample_size=cfg.sample_size, seed=cfg.seed)
        encoder = new_encoder(cfg, info.dim).fit(x, device=fit_device(cfg))
        model = SemanticIdModel()
        model._set_encoder(encoder)
        return self._copyValues(model)


class SemanticIdModel(Model, _SemanticIdParams, MLReadable, MLWritable):
    """Encodes ``inputCol`` into ``codesCol`` and writes IDs unique within the DataFrame to ``outputCol``.

    ``transform`` only plans: no Spark job runs until an action. Bad rows (a null key, an embedding
    that is null, of another length than the model's or holding NaN/inf) and duplicate keys fail
    that action, with an error naming the key and the problem.
    """

    @keyword_only
    def __init__(self, *, inputCol: str = "embedding", outputCol: str = "semantic_id", keyCol: str = "item_id",
                 codesCol: str = "codes", sep: str = "-", rankBuckets: int = RANK_BUCKETS,
                 strategy: str = _IDS.strategy, relocateCandidates: int = _IDS.relocate_candidates,
                 relocateSolver: str = _IDS.relocate_solver) -> None:
        super().__init__()
        self._set(**self._input_kwargs)
        self._encoder = None

    @keyword_only
    def setParams(self, *, inputCol: str = "embedding", outputCol: str = "semantic_id", keyCol: str = "item_id",
                  codesCol: str = "codes", sep: str = "-", rankBuckets: int = RANK_BUCKETS,
                 strategy: str = _IDS.strategy, relocateCandidates: int = _IDS.relocate_candidates,
                 relocateSolver: str = _IDS.relocate_solver) -> "SemanticIdModel":
        """Set the params named (the others keep their values)."""
        return self._set(**self._input_kwargs)

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
        if self._encoder is None:
            raise NotFittedError("SemanticIdModel has no model: get one from SemanticIdEstimator.fit or SemanticIdModel.load")
        key, emb = self._columns()
        codes_col, out_col, sep, buckets = self.getCodesCol(), self.getOutputCol(), self.getSep(), self.getRankBuckets()
        if buckets < 1:
            raise ConfigError(f"rankBuckets={buckets}; expected >= 1 (buckets each code's rows are ranked in)")
        strategy = strategy_for(UniquenessConfig(sep=sep, strategy=self.getStrategy(),
                                                 relocate_candidates=self.getRelocateCandidates(),
                                                 relocate_solver=self.getRelocateSolver()))
        dim, sizes = self._encoder.n_features_in_, self._encoder.codebook_sizes
        df = normalize_columns(dataset, key, emb)  # the schema only
        encoded = encode_embeddings(df, FrozenModel(dataset.sparkSession, self._encoder), key_col=key,
                                    embedding_col=emb, dim=dim, flag_problems=True, candidates=strategy.candidates)
        encoded = encoded.withColumn(PROBLEM, _row_problem(key, dim))  # its text, null when the row can have an ID
        why = F.col(PROBLEM)
        encoded = encoded.withColumn(CODES, F.when(why.isNotNull(), F.raise_error(
            F.concat(F.lit(f"SemanticIdModel.transform: the row whose {key!r} is "),
                     F.coalesce(F.col(key).cast("string"), F.lit("null")), F.lit(" has "), why))
        ).otherwise(F.col(CODES))).drop(PROBLEM)
        # as the job ranks, planned only (no hot-code job): each code's rows in key-hash buckets
        ranked = strategy.ranked_rows(with_code_key(encoded, sizes), None, sizes, key_col=key, n_new=0, hot=[],
                                      salts=buckets)
        ids = ranked.transform(with_semantic_id, sep, len(sizes), out_col).select(key, F.col(CODES).alias(codes_col), out_col)
        # a key twice would give its rows two IDs each after the join: fail instead (partitioned by key, as the join is)
        n_rows = F.count(F.lit(1)).over(Window.partitionBy(key))
        ids = ids.withColumn(out_col, F.when(n_rows > 1, F.raise_error(
            F.concat(F.lit(f"SemanticIdModel.transform: {key!r} "), F.col(key).cast("string"),
                     F.lit(" is on more than one row; keys must be unique")))).otherwise(F.col(out_col)))
        kept = [c for c in dataset.columns if c not in (codes_col, out_col)]
        return dataset.select(*kept).join(ids, key)

    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ModelReader()


def _row_problem(key: str, dim: int) -> Column:
    """Why a row of encode's output (with ``PROBLEM``) cannot have an ID, as text; null when it can."""
    problem = F.col(PROBLEM)
    return (F.when(F.col(key).isNull(), F.lit("a null key"))
            .when(problem == NULL_EMBEDDING, F.lit("a null embedding"))
            .when(problem == WRONG_LENGTH, F.lit(f"an embedding whose length is not the model's {dim}"))
            .when(problem == NON_FINITE, F.lit("an embedding holding NaN, inf or null values")))


class _ModelWriter(MLWriter):
    def __init__(self, instance: SemanticIdModel) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        encoder = self.instance.encoder
        DefaultParamsWriter.saveMetadata(self.instance, path, ml_context(self),
                                         extraMetadata={"modelSha256": encoder.sha256, "modelType": type(encoder).__name__})
        (self.sparkSession.createDataFrame([(encoder.sha256, bytearray(encoder.to_bytes()))], "sha256 string, model binary")
            .coalesce(1).write.parquet(os.path.join(path, _DATA)))


class _ModelReader(MLReader):
    def load(self, path: str) -> SemanticIdModel:
        metadata = DefaultParamsReader.loadMetadata(path, ml_context(self))
        row = self.sparkSession.read.parquet(os.path.join(path, _DATA)).first()
        if row is None:
            raise ModelFormatError(f"{path}/{_DATA} holds no model")
        encoder = encoder_from_bytes(bytes(row["model"]))  # checks the manifest's digest
        if encoder.sha256 != metadata.get("modelSha256") or encoder.sha256 != row["sha256"]:
            raise ModelFormatError(f"model at {path} has sha256 {encoder.sha256[:12]}…, its metadata says "
                                   f"{str(metadata.get('modelSha256'))[:12]}…")
        model = SemanticIdModel()
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, _known_params_only(model, metadata))
        model._set_encoder(encoder)
        return model


class _EstimatorReader(DefaultParamsReader):
    def load(self, path: str) -> SemanticIdEstimator:
        metadata = DefaultParamsReader.loadMetadata(path, ml_context(self))
        estimator = SemanticIdEstimator()
        estimator._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(estimator, _known_params_only(estimator, metadata))
        return estimator


def _known_params_only(instance: Params, metadata: dict) -> dict:
    """*metadata* without the params *instance* no longer has (``hotCodeRows``, before ``transform``
    became lazy), so that files saved by earlier versions still load."""
    names = {p.name for p in instance.params}
    for section in ("paramMap", "defaultParamMap"):
        values = metadata.get(section, {})
        if dropped := sorted(set(values) - names):
            log.info("%s: ignoring params %s saved by an earlier version", type(instance).__name__, dropped)
        metadata[section] = {k: v for k, v in values.items() if k in names}
    return metadata
