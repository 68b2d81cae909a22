"""The SparkSession: the one the cluster gives, or, when nobody chose a master, the embedded default.

Who decides what, in order:

1. an active session (a notebook, Databricks, a caller) is used as it is;
2. the Databricks runtime (a wheel task: ``DATABRICKS_RUNTIME_VERSION``) or Spark Connect
   (``SPARK_REMOTE``) gives its session, as it is;
3. spark-submit (which starts the driver's JVM before this code runs), ``PYSPARK_SUBMIT_ARGS``, the
   ``MASTER`` variable or ``spark-defaults.conf``: the master and every ``--conf`` come from there and
   are never overridden; the job adds only Delta's two SQL settings where none is set, and the
   config's ``spark:`` section is not applied (a warning names the keys it skips);
4. nobody chose a master: the job starts an embedded session from the config's ``spark:`` section
   (only the keys written there) over ``EMBEDDED_DEFAULTS``, with Delta's jars from Maven Central.

The log names the master in use and where it came from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pyspark.sql import SparkSession

from semid_spark.config import SparkConfig
from semid_spark.exceptions import ConfigError
from semid_spark.spark.logs import StageProgress, jvm_output, log4j2_properties

log = logging.getLogger(__name__)

DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# The embedded session's settings where the config's spark: section leaves them out. Never applied to
# a session whose master spark-submit, PYSPARK_SUBMIT_ARGS, MASTER or spark-defaults.conf chose.
EMBEDDED_DEFAULTS = {
    "spark.master": "local[*]",
    "spark.app.name": "semid_spark",
    "spark.sql.warehouse.dir": "artifacts/spark-warehouse",
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "4g",  # local mode runs the executors inside this JVM
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
}


@dataclass(frozen=True)
class MasterOrigin:
    """Where the master was chosen, outside the job's config: ``source`` says it in words."""

    master: str | None  # None: not known before the JVM starts (spark-defaults.conf's launcher decides)
    source: str
    jvm_running: bool  # spark-submit started the driver's JVM: its settings are read, not passed


def master_origin(environ: dict[str, str] | None = None) -> MasterOrigin | None:
    """Who chose a master before the job looked, or None when nobody did.

    spark-submit starts the driver's JVM first and hands the Python driver its gateway
    (``PYSPARK_GATEWAY_PORT``); otherwise pyspark starts one with ``PYSPARK_SUBMIT_ARGS``, which
    like spark-submit honours ``MASTER`` and ``spark-defaults.conf``.
    """
    env = os.environ if environ is None else environ
    if env.get("PYSPARK_GATEWAY_PORT"):
        return MasterOrigin(None, "spark-submit", True)
    args = shlex.split(env.get("PYSPARK_SUBMIT_ARGS", ""))
    for i, arg in enumerate(args[:-1]):
        if arg == "--master":
            return MasterOrigin(args[i + 1], "PYSPARK_SUBMIT_ARGS --master", False)
        if arg == "--conf" and args[i + 1].startswith("spark.master="):
            return MasterOrigin(args[i + 1].partition("=")[2], "PYSPARK_SUBMIT_ARGS --conf spark.master", False)
    if env.get("MASTER"):
        return MasterOrigin(env["MASTER"], "the MASTER environment variable", False)
    defaults = spark_defaults_file(env)
    if defaults is not None and (master := _read_properties(defaults).get("spark.master")):
        return MasterOrigin(master, f"spark-defaults.conf ({defaults})", False)
    return None


def spark_defaults_file(env: dict[str, str]) -> Path | None:
    """The ``spark-defaults.conf`` spark-submit reads: ``$SPARK_CONF_DIR``'s, else ``$SPARK_HOME/conf``'s."""
    for folder in (env.get("SPARK_CONF_DIR"), env.get("SPARK_HOME") and os.path.join(env["SPARK_HOME"], "conf")):
        if folder and os.path.isfile(path := os.path.join(folder, "spark-defaults.conf")):
            return Path(path)
    return None


def _read_properties(path: Path) -> dict[str, str]:
    """``key value`` (or ``key=value``) lines of a Java properties file, without comments."""
    settings = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.replace("=", " ", 1).partition(" ")
            settings[key.strip()] = value.strip()
    return settings


def get_session(cfg: SparkConfig | None = None) -> SparkSession:
    """The active session, the cluster's (spark-submit, Connect, Databricks), or a new embedded one.

    Only an embedded session (nobody chose a master) takes the config's ``spark:`` section; its
    Delta jars are fetched once from Maven Central through Spark's Ivy (``delta-spark``'s own
    configuration) and cached in ``~/.ivy2*``; its warehouse lives under the working directory.
    """
    cfg = cfg or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        not_applied(cfg, "the session was already active")
        _log_master(active, "an active session (notebook, Databricks or the caller's)")
        return active
    if runtime := os.environ.get("DATABRICKS_RUNTIME_VERSION"):  # a wheel or Python script task
        not_applied(cfg, "the session is the Databricks runtime's")
        spark = SparkSession.builder.getOrCreate()  # Delta is built in; shared clusters forbid the JVM
        _log_master(spark, f"Databricks Runtime {runtime}")
        return spark
    if os.environ.get("SPARK_REMOTE") or os.environ.get("SPARK_CONNECT_MODE_ENABLED"):
        not_applied(cfg, "the session is Spark Connect's")
        spark = SparkSession.builder.getOrCreate()
        log.info("Spark %s: Spark Connect session at %s", spark.version, os.environ.get("SPARK_REMOTE", "?"))
        return spark
    origin = master_origin()
    start = time.perf_counter()
    if origin is not None:
        not_applied(cfg, f"the master comes from {origin.source}")
        spark = _cluster_session(origin)
        _log_master(spark, origin.source, time.perf_counter() - start)
        return spark
    spark = _embedded_session(cfg)
    _log_master(spark, "config spark.master" if cfg.master else "the embedded default (no master was chosen)",
                time.perf_counter() - start)
    return spark


def _cluster_session(origin: MasterOrigin) -> SparkSession:
    """A session on the JVM spark-submit started (or pyspark starts with PYSPARK_SUBMIT_ARGS): its
    settings stand; Delta's SQL settings are added only where none is set."""
    from pyspark import SparkConf, SparkContext

    if not origin.jvm_running:  # pyspark launches spark-submit with PYSPARK_SUBMIT_ARGS (+ Delta's jars)
        launch = SparkConf(loadDefaults=False)
        if not _names_packages(os.environ.get("PYSPARK_SUBMIT_ARGS", "")) and (package := _pip_delta_package()):
            launch.set("spark.jars.packages", package)
        SparkContext._ensure_initialized(conf=launch)
    chosen = dict(SparkConf().getAll())  # the JVM's: spark-submit's flags, --conf, spark-defaults.conf
    builder = SparkSession.builder
    for key, value in DELTA_SQL_CONF.items():
        if key not in chosen:
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    _check_delta(spark)
    return spark


def _names_packages(submit_args: str) -> bool:
    return "--packages" in submit_args or "spark.jars.packages" in submit_args


def _embedded_session(cfg: SparkConfig) -> SparkSession:
    """The local session the job starts itself: EMBEDDED_DEFAULTS under the config's own keys, Delta."""
    from delta import configure_spark_with_delta_pip

    settings = {**EMBEDDED_DEFAULTS, **cfg.settings(), **DELTA_SQL_CONF}
    warehouse = os.path.abspath(settings["spark.sql.warehouse.dir"])
    settings["spark.sql.warehouse.dir"] = warehouse
    settings.setdefault("spark.driver.extraJavaOptions",
                        f"-Dderby.system.home={warehouse} -Dlog4j2.configurationFile={log4j2_properties()}")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers run this interpreter (numpy, pyarrow)
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    with jvm_output():  # Ivy's resolution and the JVM's startup lines: to a file, for the CLI
        spark = configure_spark_with_delta_pip(builder).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def not_applied(cfg: SparkConfig, why: str) -> None:
    """Warn that the config's ``spark:`` keys (those written there) do not reach this session, and why."""
    if written := cfg.settings():
        log.warning("config spark: section not applied (%s): %s; pass these as spark-submit --conf (or the "
                    "cluster's settings) instead", why, ", ".join(f"{k}={v}" for k, v in sorted(written.items())))


def _log_master(spark: SparkSession, source: str, seconds: float | None = None) -> None:
    started = "" if seconds is None else f", started in {seconds:.1f} s"
    log.info("Spark %s, master %s (from %s), spark.sql.shuffle.partitions=%s%s", spark.version,
             _conf(spark, "spark.master"), source, _conf(spark, "spark.sql.shuffle.partitions"), started)


def _conf(spark: SparkSession, key: str) -> str:
    """A setting as the session sees it, '?' where it has none (a default given to ``conf.get`` must
    type-check against the key, so '?' cannot be that default)."""
    try:
        return spark.conf.get(key) or "?"
    except Exception:  # unset and without a default (spark.master on Connect)
        return "?"


def _check_delta(spark: SparkSession) -> None:
    """Delta Lake's classes are on the driver's class path, or a ConfigError naming the flags that put them there."""
    try:
        loader = spark.sparkContext._jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass("io.delta.tables.DeltaTable")
    except Exception:
        package = _pip_delta_package() or "io.delta:delta-spark_<scala>:<version>"
        raise ConfigError(f"Delta Lake is not on this Spark's class path: add `--packages {package}` to spark-submit "
                          "(or install Delta's jar on the cluster)") from None


@contextlib.contextmanager
def stage(spark: SparkSession, description: str, rows: int | None = None) -> Iterator[None]:
    """Name the Spark jobs of a pipeline stage (the Spark UI then reads as the pipeline), show their
    progress (*rows*: how many rows the stage reads, for a rows/s figure), and log its time."""
    start = time.perf_counter()
    sc = spark_context(spark)
    if sc is not None:
        sc.setJobDescription(description)
    try:
        with StageProgress(sc, description, rows) if sc is not None else contextlib.nullcontext():
            yield
    finally:
        if sc is not None:
            sc.setJobDescription(None)
        log.info("%s: %.1f s", description, time.perf_counter() - start)


class Seconds(dict):
    """Seconds per stage of a run, by name, in the order the stages ran; a stage timed twice (the
    ranking of a retried MERGE) adds up, and one timed inside another is its own (the relocation
    inside the ranking): the outer stage's seconds leave it out, so the figures add up to the run's.
    Stage results carry one; the run's report adds them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._inner: list[float] = []  # per open stage, the seconds of the stages timed inside it

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed, inner = time.perf_counter() - start, self._inner.pop()
            self[name] = self.get(name, 0.0) + elapsed - inner
            if self._inner:
                self._inner[-1] += elapsed

    def add(self, other: dict[str, float]) -> "Seconds":
        for name, seconds in other.items():
            self[name] = self.get(name, 0.0) + seconds
        return self


def delta_package() -> str:
    """The Maven coordinate of Delta's jar for this pyspark and delta-spark: what ``--packages`` needs.

    Delta 3.x is built for Scala 2.12 (pyspark 3.5's), 4.0 for 2.13, and from 4.1 on each Spark
    minor version has its own artifact (``delta-spark_4.2_2.13``), as ``delta-spark``'s own
    ``configure_spark_with_delta_pip`` names them."""
    from importlib.metadata import version

    import pyspark

    delta = version("delta-spark")
    if int(delta.split(".")[0]) < 4:
        return f"io.delta:delta-spark_2.12:{delta}"
    if delta.startswith("4.0."):
        return f"io.delta:delta-spark_2.13:{delta}"
    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{delta}"


def _pip_delta_package() -> str | None:
    """``delta_package()``, or None where delta-spark is not pip-installed (a cluster brings Delta's jar)."""
    from importlib.metadata import PackageNotFoundError

    try:
        return delta_package()
    except PackageNotFoundError:
        return None


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
