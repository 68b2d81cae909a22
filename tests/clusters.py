"""Real Spark deployments on 127.0.0.1 for the tests: a Spark Connect server, and a standalone
master with workers. Both come from the pyspark package itself (``bin/spark-submit``, ``bin/spark-class``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyspark

from semid_spark.spark.session import delta_package

SPARK_HOME = Path(pyspark.__file__).resolve().parent
DELTA_CONF = {"spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
              "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process ended (rc={proc.returncode}) before port {port} opened:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"port {port} did not open in {timeout} s:\n{log.read_text()[-3000:]}")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SPARK_HOME", "SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE")}
    env.update(SPARK_HOME=str(SPARK_HOME), PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def connect_server(workdir: Path) -> Iterator[str]:
    """A Spark Connect server (local[2], Delta) on 127.0.0.1; yields its ``sc://`` URL."""
    port, warehouse = free_port(), workdir / "warehouse"
    conf = {**DELTA_CONF, "spark.master": "local[2]", "spark.connect.grpc.binding.port": str(port),
            "spark.connect.grpc.binding.address": "127.0.0.1", "spark.sql.warehouse.dir": str(warehouse),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={warehouse}", "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "4", "spark.driver.memory": "2g"}
    cmd = [str(SPARK_HOME / "bin" / "spark-submit"), "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
           "--packages", delta_package(), *[a for k, v in conf.items() for a in ("--conf", f"{k}={v}")], "spark-internal"]
    log = workdir / "connect-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, proc, log)
        yield f"sc://127.0.0.1:{port}"
    finally:
        _stop(proc)


@contextmanager
def standalone_cluster(workdir: Path, n_workers: int = 2) -> Iterator[str]:
    """A standalone master and *n_workers* workers (1 core, 1 GiB each) on 127.0.0.1; yields ``spark://...``."""
    port = free_port()
    procs = []
    spark_class = str(SPARK_HOME / "bin" / "spark-class")

    def start(name, *args):
        log = workdir / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([spark_class, *args], cwd=workdir, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        procs.append(proc)
        return proc, log

    try:
        master, log = start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                            str(port), "--webui-port", str(free_port()))
        _wait_for_port(port, master, log)
        url = f"spark://127.0.0.1:{port}"
        for i in range(n_workers):
            worker_dir = workdir / f"worker{i}"
            worker_dir.mkdir(exist_ok=True)
            start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                  "--memory", "1g", "--webui-port", str(free_port()), "--work-dir", str(worker_dir), url)
        deadline = time.time() + 120
        while time.time() < deadline:  # both workers registered with the master
            if (workdir / "master.log").read_text().count("Registering worker") >= n_workers:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"workers did not register:\n{(workdir / 'master.log').read_text()[-3000:]}")
        yield url
    finally:
        for proc in reversed(procs):
            _stop(proc)
