"""The Databricks Asset Bundle: its wheel tasks call an entry point the built wheel declares, with
arguments the CLI accepts, on a config that loads; its cluster names its access mode."""

import re
import subprocess
import sys
import zipfile
from configparser import ConfigParser
from pathlib import Path

import yaml

from semid_spark.cli import parse_args
from semid_spark.config import JobConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_bundle_runs_the_wheels_semid_entry_point(tmp_path):
    bundle = yaml.safe_load((ROOT / "databricks.yml").read_text())
    job = bundle["resources"]["jobs"]["semid_spark_ids"]
    (cluster,) = job["job_clusters"]
    assert cluster["new_cluster"]["data_security_mode"] in ("SINGLE_USER", "USER_ISOLATION")
    assert re.fullmatch(r"\$\{var\.spark_version\}", cluster["new_cluster"]["spark_version"])
    assert re.fullmatch(r"1[5-7]\.\d\.x-scala2\.1[23]", bundle["variables"]["spark_version"]["default"])

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("semid_spark-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        (entry_file,) = [n for n in whl.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = ConfigParser()
        entry_points.read_string(whl.read(entry_file).decode())
        packaged = set(whl.namelist())
    config = bundle["variables"]["config"]["default"]
    assert config.endswith("/conf/databricks.uc.yaml")
    for task in job["tasks"]:
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"].replace("_", "-") == "semid-spark"
        target = entry_points["console_scripts"][wheel_task["entry_point"]]
        module, function = target.split(":")
        assert f"{module.replace('.', '/')}.py" in packaged and function == "main"
        params = [p.replace("${var.config}", "conf/databricks.uc.yaml").replace("${var.report_dir}", "/Volumes/x")
                  for p in wheel_task["parameters"]]
        args = parse_args(params)  # the CLI takes them as written
        assert args.config == "conf/databricks.uc.yaml"
        assert task["libraries"] == [{"whl": "./dist/*.whl"}]
    assert "conf/*.yaml" in bundle["sync"]["include"]


def test_the_unity_catalog_config_loads():
    cfg = JobConfig.from_yaml(str(ROOT / "conf" / "databricks.uc.yaml"))
    assert cfg.input.table.count(".") == 2 and cfg.output.table.count(".") == 2
    assert cfg.model.path.startswith("/Volumes/") and cfg.spark.settings() == {}
