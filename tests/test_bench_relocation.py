"""`semid bench --relocation` end to end at a tiny size: both strategies' runs, first and daily, and
the figures read from them."""

import json

import pytest

from semid_spark.bench.relocation import GOALS, figures, row_seconds
from semid_spark.cli import main


@pytest.mark.heavy  # its own JVM and ten job runs: minutes
def test_relocation_bench_runs_both_strategies_on_the_same_model(tmp_path):
    assert main(["bench", "--relocation", "--sizes", "20k", "--shapes", "2x16,2x64", "--topics", "8",
                 "--sample", "5000", "--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 0
    summary = json.loads((tmp_path / "relocation.json").read_text())
    assert set(summary["goals"]) == set(GOALS)
    (run,) = summary["runs"]
    for shape in ("2x16", "2x64"):
        runs = run["shapes"][shape]
        assert "fit" in runs["fit"]["stages_s"] and "fit" not in runs["relocate_first"]["stages_s"]
        assert "relocate" in runs["relocate_first"]["stages_s"] and "relocate" not in runs["suffix_first"]["stages_s"]
        assert runs["relocate_first"]["n_new"] == runs["suffix_first"]["n_new"] == 20_000
        assert runs["relocate_daily"]["n_new"] == runs["suffix_daily"]["n_new"] == 200
    tight = summary["rows"][0]["first"]  # 2x16: 256 codes for 20k items, relocation has nowhere to go
    assert tight["suffix_counter_share"] > 0.9 and tight["counter_share"] > 0.9
    roomy = summary["rows"][1]["first"]  # 2x64: 4,096 codes, 8 topics: relocation frees most collisions
    assert roomy["counter_share"] < roomy["suffix_counter_share"]
    assert "| 20,000 | 2x16 | first |" in (tmp_path / "relocation.md").read_text()


def test_relocation_is_the_difference_of_the_row_stages():
    run = lambda **s: {"stages_s": s, "n_new": 10, "collision_share": 0.5, "counter_share": 0.1,  # noqa: E731
                       "moved_share": 0.2, "error_ratio": 1.01}
    result = {"n": 10, "shapes": {"3x8": {
        "suffix_first": run(validate=9.0, encode=10.0, rank=1.0, write=4.0),
        "relocate_first": run(validate=7.0, encode=11.0, relocate=2.0, rank=1.5, write=4.5),
        "suffix_daily": run(encode=1.0, write=1.0), "relocate_daily": run(encode=1.0, write=2.0)}}}
    (row,) = figures(result)
    assert row_seconds(result["shapes"]["3x8"]["relocate_first"]) == 19.0
    assert row["first"]["relocation_s"] == pytest.approx(4.0) and row["first"]["relocation_over_encode"] == 0.4
    assert row["first"]["candidates_s"] == pytest.approx(1.0) and row["first"]["relocate_stage_s"] == 2.0
    assert row["daily"]["relocation_s"] == pytest.approx(1.0)
