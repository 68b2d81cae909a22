"""The SparkSession: the active one when there is one, otherwise the embedded default."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterator

from pyspark.sql import SparkSession

from semid_spark.config import SparkConfig

log = logging.getLogger(__name__)


def get_session(cfg: SparkConfig | None = None) -> SparkSession:
    """The active session (spark-submit, Databricks, a notebook), or a new embedded one.

    The embedded default is ``local[*]`` with Delta Lake: its jars are fetched once from
    Maven Central through Spark's Ivy (``delta-spark``'s own configuration) and cached in
    ``~/.ivy2*``; the warehouse lives under the working directory. A session that already
    has Delta (a cluster, Databricks) is used as it is.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    cfg = cfg or SparkConfig()
    from delta import configure_spark_with_delta_pip

    warehouse = os.path.abspath(cfg.warehouse_dir)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this interpreter (with numpy, pyarrow)
    builder = (
        SparkSession.builder.master(cfg.master).appName(cfg.app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.warehouse.dir", warehouse)
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={warehouse}")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.databricks.delta.snapshotPartitions", "2")
    )
    for key, value in cfg.conf.items():
        builder = builder.config(key, str(value))
    start = time.perf_counter()
    spark = configure_spark_with_delta_pip(builder).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("embedded Spark %s (%s) with Delta started in %.1f s", spark.version, cfg.master, time.perf_counter() - start)
    return spark


@contextlib.contextmanager
def stage(spark: SparkSession, description: str) -> Iterator[None]:
    """Name the Spark jobs of a pipeline stage (the Spark UI then reads as the pipeline), and log its time."""
    start = time.perf_counter()
    sc = spark_context(spark)
    if sc is not None:
        sc.setJobDescription(description)
    try:
        yield
    finally:
        if sc is not None:
            sc.setJobDescription(None)
        log.info("%s: %.1f s", description, time.perf_counter() - start)


def delta_package() -> str:
    """The Maven coordinate of Delta's jar for this pyspark and delta-spark: what ``--packages`` needs."""
    from importlib.metadata import version

    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"


CONNECT_SAFE_CONF = "semid.connectSafe"


def is_connect_safe(spark: SparkSession) -> bool:
    """True on Spark Connect (Databricks serverless and shared clusters, ``builder.remote``), or when
    the session sets ``semid.connectSafe=true``: the job then never touches ``sparkContext`` or RDDs
    (the model travels in the task closure, stages are not described)."""
    if type(spark).__module__.startswith("pyspark.sql.connect"):  # by name: importing pyspark's connect
        return True  # modules without grpc installed exits the process (its doctest guard)
    return str(spark.conf.get(CONNECT_SAFE_CONF, "false")).lower() == "true"


def spark_context(spark: SparkSession):
    """The SparkContext, or None on the Connect-safe path (never asks for it there)."""
    if is_connect_safe(spark):
        return None
    try:
        return spark.sparkContext
    except Exception:  # a remote session of a type we did not recognise
        return None
