"""`semid bench --scale` end to end at tiny sizes: every key of scale.json, the runs it says it made."""

import json

import pytest

from semid_spark.bench.scale import GOALS, parse_size
from semid_spark.cli import main

@pytest.mark.heavy  # two sizes, each in its own JVM: minutes
def test_scale_bench_writes_every_figure(tmp_path):
    assert main(["bench", "--scale", "--sizes", "20k,40k", "--baseline", "40k", "--out", str(tmp_path),
                 "--work", str(tmp_path / "work")]) == 0
    summary = json.loads((tmp_path / "scale.json").read_text())
    for key in [*GOALS, "sizes", "full_s", "incremental_s"]:
        assert summary[key] is not None, key
    assert summary["sizes"] == [20_000, 40_000]
    for result in summary["per_size"]:
        n = result["n"]
        assert result["full"]["n_inserted"] == n
        assert result["incremental"]["n_input"] == n // 100  # the change feed: only the new version's rows
        assert result["incremental"]["n_inserted"] == n // 100
        assert result["incremental_snapshot"]["n_input"] == n + 2 * (n // 100)
        assert result["incremental_snapshot"]["n_inserted"] == n // 100
        assert result["full"]["shuffle_write_bytes"] > 0 and result["driver_peak_rss_bytes"] > 0
    assert "| growth_exponent |" in (tmp_path / "scale.md").read_text()


def test_sizes_parse():
    assert [parse_size(s) for s in ("1M", "4m", "16M", "20k", "1.5B", "1000")] == [
        1_000_000, 4_000_000, 16_000_000, 20_000, 1_500_000_000, 1000]
