"""The built wheel runs under spark-submit: `make dist`'s wheel shipped with --py-files, jobs/run.py as
the entry point, a small catalog in, a Delta table of unique IDs out."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semid_spark.spark.session import delta_package
from tests.spark.conftest import catalog, frame, write_input

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy  # spark-submit in its own JVM: `make test-heavy`, run by .ci/run
def test_spark_submit_of_the_built_wheel_writes_the_delta_table(spark, tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, cwd=tmp_path, timeout=300)
    wheel = next((tmp_path / "dist").glob("semid_spark-*-py3-none-any.whl"))
    keys, x = catalog(600)
    write_input(spark, frame(spark, keys, x), str(tmp_path / "in"))
    (tmp_path / "job.yaml").write_text(
        f"spark: {{master: 'local[2]', shuffle_partitions: 4}}\n"
        f"input: {{path: {tmp_path}/in}}\n"
        f"model: {{path: {tmp_path}/model, n_clusters: 8, sample_size: 500}}\n"
        f"output: {{path: {tmp_path}/out}}\n")
    submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(submit), "--master", "local[2]", "--packages", delta_package(),
         "--conf", "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
         "--conf", "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog",
         "--py-files", str(wheel), str(ROOT / "jobs" / "run.py"), "--config", str(tmp_path / "job.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]  # PythonRunner sends the traceback to stdout
    # spark-submit's PythonRunner merges the driver's stderr (our logs) into its stdout
    assert f"semid_spark 0.1.0 from {wheel}" in done.stdout  # the shipped wheel's code, not the source tree's
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert report["n_inserted"] == 600
    table = spark.read.format("delta").load(str(tmp_path / "out"))
    assert table.count() == 600 == table.select("semantic_id").distinct().count()
