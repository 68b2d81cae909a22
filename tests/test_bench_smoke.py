"""`semid bench --quick` runs end to end and writes its table (figures at this size mean nothing)."""

import json

import pytest

from semid_spark.cli import main


@pytest.mark.heavy  # 30 s of the suite's 14 minutes; CI runs it with make test-heavy
def test_bench_quick_writes_json_and_markdown(spark, tmp_path):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())
    figures = [r["figure"] for r in rows]
    assert any("Spark encode rows/s per core" in f for f in figures)
    assert any("SQLite uniqueness store" in f for f in figures)
    assert (tmp_path / "bench.md").read_text().startswith("| figure |")
