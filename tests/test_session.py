"""Who chooses the Spark master: spark-submit, PYSPARK_SUBMIT_ARGS, MASTER and spark-defaults.conf win over
the config, whose spark: section writes only the keys it names. No JVM is started here."""

import pytest

from semid_spark.config import JobConfig, SparkConfig
from semid_spark.spark.session import EMBEDDED_DEFAULTS, master_origin


@pytest.mark.parametrize("env, master, source, jvm_running", [
    ({"PYSPARK_GATEWAY_PORT": "41234", "PYSPARK_SUBMIT_ARGS": "--master local[9] pyspark-shell"}, None,
     "spark-submit", True),
    ({"PYSPARK_SUBMIT_ARGS": "--conf spark.ui.enabled=false --master yarn pyspark-shell"}, "yarn",
     "PYSPARK_SUBMIT_ARGS --master", False),
    ({"PYSPARK_SUBMIT_ARGS": "--conf spark.master=k8s://https://h:443 pyspark-shell"}, "k8s://https://h:443",
     "PYSPARK_SUBMIT_ARGS --conf spark.master", False),
    ({"PYSPARK_SUBMIT_ARGS": "pyspark-shell", "MASTER": "spark://h:7077"}, "spark://h:7077",
     "the MASTER environment variable", False),
])
def test_a_master_chosen_outside_the_config_is_found(env, master, source, jvm_running):
    origin = master_origin(env)
    assert (origin.master, origin.source, origin.jvm_running) == (master, source, jvm_running)


def test_spark_defaults_conf_of_the_cluster_chooses_the_master(tmp_path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text("# cluster defaults\nspark.executor.memory  4g\nspark.master   yarn\n")
    origin = master_origin({"SPARK_CONF_DIR": str(conf_dir)})
    assert origin.master == "yarn" and "spark-defaults.conf" in origin.source
    assert master_origin({"SPARK_HOME": str(tmp_path)}).master == "yarn"  # $SPARK_HOME/conf too
    (conf_dir / "spark-defaults.conf").write_text("spark.executor.memory=4g\n")
    assert master_origin({"SPARK_CONF_DIR": str(conf_dir)}) is None  # defaults without a master choose none


def test_nobody_chose_a_master():
    assert master_origin({"PYSPARK_SUBMIT_ARGS": "--conf spark.ui.enabled=false pyspark-shell"}) is None
    assert master_origin({}) is None


def test_the_spark_section_writes_only_the_keys_it_names():
    assert SparkConfig().settings() == {}
    cfg = JobConfig.from_dict({"input": {"path": "x"}, "spark": {"shuffle_partitions": 3,
                                                                 "conf": {"spark.executor.memory": "2g"}}})
    assert cfg.spark.settings() == {"spark.sql.shuffle.partitions": "3", "spark.executor.memory": "2g"}
    # the embedded session's defaults are the package's, not the config's
    assert EMBEDDED_DEFAULTS["spark.master"] == "local[*]" and JobConfig.from_dict({"input": {"path": "x"}}).spark.master is None


def test_the_shipped_configs_leave_the_cluster_alone():
    assert JobConfig.from_yaml("conf/cluster.example.yaml").spark.settings() == {}


def test_the_log_names_the_master_when_the_shuffle_partitions_are_left_unset(spark, caplog):
    """spark-submit without --conf spark.sql.shuffle.partitions: the log line must not ask Spark for a
    typed setting with a placeholder default (pyspark 4.2 rejects '?' for an int setting)."""
    from semid_spark.spark.session import _log_master

    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.unset("spark.sql.shuffle.partitions")
    try:
        with caplog.at_level("INFO", logger="semid_spark"):
            _log_master(spark, "spark-submit")
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
    assert f"master {spark.sparkContext.master} (from spark-submit), spark.sql.shuffle.partitions=200" in caplog.text


def test_a_databricks_wheel_task_takes_the_runtimes_session_as_it_is(spark, monkeypatch, caplog):
    """A wheel task's process has no active session yet, but the runtime's is there: used as it is, its
    settings untouched, nothing asked of its JVM (shared clusters forbid it), the config's spark: skipped."""
    from pyspark.sql import SparkSession

    from semid_spark.spark.session import get_session

    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
    partitions = spark.conf.get("spark.sql.shuffle.partitions")
    with caplog.at_level("INFO", logger="semid_spark"):
        got = get_session(SparkConfig(master="local[1]", shuffle_partitions=99))
    assert got is spark and spark.conf.get("spark.sql.shuffle.partitions") == partitions
    assert "(from Databricks Runtime 17.3)" in caplog.text
    assert "not applied (the session is the Databricks runtime's)" in caplog.text


def test_a_stage_timed_inside_another_is_left_out_of_it(monkeypatch):
    from semid_spark.spark import session

    now = iter([0.0, 1.0, 3.0, 4.0, 6.0, 10.0, 10.0, 10.0])  # rank [0, 10] holds relocate [1, 3] and [4, 6]
    monkeypatch.setattr(session.time, "perf_counter", lambda: next(now))
    seconds = session.Seconds()
    with seconds.timed("rank"):
        with seconds.timed("relocate"):
            pass
        with seconds.timed("relocate"):
            pass
    with seconds.timed("write"):
        pass
    assert seconds == {"rank": 6.0, "relocate": 4.0, "write": 0.0}
    assert session.Seconds(seconds).add({"write": 2.0}) == {"rank": 6.0, "relocate": 4.0, "write": 2.0}
