"""The light install as a cluster gets it: the built wheel alone (no extras) in an empty virtualenv, no
torch, no pyspark; spark-submit of the Spark the cluster provides runs jobs/run.py with that virtualenv's
python on the driver and the executors, fits RQ-KMeans and writes the IDs a torch install computes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.spark.session import delta_package
from semid_spark.uniqueness.relocate import relocate_codes
from tests.clusters import DELTA_CONF, SPARK_HOME
from tests.spark.conftest import catalog, frame, write_input

ROOT = Path(__file__).resolve().parents[1]
# what a core install holds: pyspark's own SQL needs (numpy, pandas with its three, pyarrow), scipy, and
# small packages (threadpoolctl, 18 kB, lets semid advise time encoding on one core); pip and setuptools are
# the virtualenv's own
CORE = {"numpy", "pandas", "python-dateutil", "pytz", "tzdata", "six", "pyarrow", "scipy", "pyyaml", "tqdm", "fsspec",
        "threadpoolctl", "semid-spark"}
VENV_TOOLS = {"pip", "setuptools"}
CORE_BUDGET_BYTES = 480 * 2**20  # measured 453 MiB (pyarrow, scipy with its OpenBLAS, pandas, numpy: 97%)


def installed_bytes(site: Path) -> int:
    """Bytes in *site* but those of the virtualenv's own pip and setuptools."""
    tools = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth")
    return sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink()
               and not f.relative_to(site).parts[0].lower().startswith(tools))


@pytest.mark.heavy  # a virtualenv from PyPI (the pip cache) and spark-submit: `make test-heavy`, run by .ci/run
def test_the_wheel_alone_runs_an_rq_kmeans_job_on_the_clusters_spark(spark, tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, cwd=tmp_path, timeout=300)
    wheel = next((tmp_path / "dist").glob("semid_spark-*-py3-none-any.whl"))
    venv = tmp_path / "light"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True,
                            text=True).stdout
    installed = {p["name"].lower() for p in json.loads(listed)} - VENV_TOOLS
    assert installed <= CORE, f"a core install pulls {sorted(installed - CORE)} too"  # no torch, no pyspark
    (site,) = (venv / "lib").glob("python3*/site-packages")
    size = installed_bytes(site)
    print(f"core install: {size / 2**20:.0f} MiB in {len(installed)} packages: {sorted(installed)}")
    assert size <= CORE_BUDGET_BYTES, f"{size / 2**20:.0f} MiB"

    keys, x = catalog(900, seed=2)
    write_input(spark, frame(spark, keys, x).repartition(3), str(tmp_path / "in"))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"input": {"path": str(tmp_path / "in")},
                                   "model": {"path": str(tmp_path / "model"), "kind": "rq_kmeans", "n_clusters": 8,
                                             "sample_size": 900},
                                   "output": {"path": str(tmp_path / "out")}}))
    settings = {**DELTA_CONF, "spark.pyspark.python": str(python), "spark.pyspark.driver.python": str(python),
                "spark.sql.shuffle.partitions": "4"}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env["SPARK_HOME"] = str(SPARK_HOME)  # the cluster's Spark: its own pyspark goes on the workers' path
    done = subprocess.run(
        [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", "--packages", delta_package(),
         *[a for k, v in settings.items() for a in ("--conf", f"{k}={v}")], str(ROOT / "jobs" / "run.py"),
         "--config", str(job)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"from {site}/semid_spark" in done.stdout  # the light virtualenv's package ran the job
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert report["n_inserted"] == 900 and "fit" in report["seconds"]

    model = RQKMeans.load(str(tmp_path / "model"))  # fitted there without torch; here with it: the same model
    assert model.sha256 == RQKMeans(3, 8, random_state=0).fit(_sampled(spark, tmp_path, x, keys)).sha256
    table = {r.item_id: list(r.codes) for r in spark.read.format("delta").load(str(tmp_path / "out")).collect()}
    assert [table[k] for k in keys] == relocate_codes(model, x, keys=keys).codes.tolist()


def _sampled(spark, tmp_path, x, keys):
    """The job's training rows: sample_size covers the whole catalog, drawn in the job's (key hash) order."""
    from semid_spark.spark.sample import sample_embeddings

    df = spark.read.format("delta").load(str(tmp_path / "in"))
    return sample_embeddings(df, key_col="item_id", embedding_col="embedding", dim=x.shape[1], n_rows=len(x),
                             sample_size=900, seed=0)
