"""`semid bench --relocation` end to end at a tiny size: both strategies' runs, first and daily, and
the figures read from them."""

import json

import pytest

from semid_spark.bench.relocation import GOALS, figures, first_run_bound, goals, render, row_seconds
from semid_spark.bench.relocation import main as relocation_main
from semid_spark.cli import main
from semid_spark.exceptions import ConfigError


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
        assert {runs[f"{v}_first"]["n_new"] for v in ("relocate", "exact", "suffix")} == {20_000}
        assert runs["relocate_daily"]["n_new"] == runs["suffix_daily"]["n_new"] == 200
    tight = summary["rows"][0]["first"]  # 2x16: 256 codes for 20k items, relocation has nowhere to go
    assert tight["suffix_counter_share"] > 0.9 and tight["counter_share"] > 0.9
    roomy = summary["rows"][1]["first"]  # 2x64: 4,096 codes, 8 topics: relocation frees most collisions
    assert roomy["counter_share"] < roomy["suffix_counter_share"]
    exact = summary["rows"][1]["exact_first"]  # exact places at least as many, at no more error per item placed
    assert exact["counter_share"] <= roomy["counter_share"] and exact["moved_share"] > 0
    assert "| 20,000 | 2x16 | first |" in (tmp_path / "relocation.md").read_text()


def test_relocation_figures_are_whole_jobs_and_stages_against_suffix():
    run = lambda error=1.01, **s: {"stages_s": s, "n_new": 10, "collision_share": 0.5,  # noqa: E731
                                   "counter_share": 0.1, "moved_share": 0.2, "error_ratio": error}
    result = {"n": 10, "shapes": {"3x8": {
        "suffix_first": run(validate=9.0, encode=10.0, rank=1.0, write=4.0),
        "relocate_first": run(validate=7.0, encode=11.0, relocate=2.0, rank=1.5, write=4.5, error=1.0101),
        "exact_first": run(validate=7.0, encode=11.0, relocate=6.0, rank=1.5, write=4.5, error=1.01),
        "suffix_daily": run(encode=1.0, write=1.0), "relocate_daily": run(encode=1.0, write=2.0)}}}
    (row,) = figures(result)
    assert row_seconds(result["shapes"]["3x8"]["relocate_first"]) == 19.0
    assert row["first"]["job_ratio"] == pytest.approx(26.0 / 24.0)  # every stage: validate differs too
    assert row["first"]["relocation_s"] == pytest.approx(4.0) and row["first"]["write_extra_s"] == pytest.approx(0.5)
    assert row["first"]["candidates_s"] == pytest.approx(1.0) and row["first"]["relocate_stage_s"] == 2.0
    assert row["exact_first"]["job_ratio"] == pytest.approx(30.0 / 24.0)
    assert row["greedy_error_over_exact"] == pytest.approx(1.0001)
    assert row["daily"]["job_ratio"] == pytest.approx(1.5)
    met = goals([row])
    assert met["first_job_ratio"]["worst"] == pytest.approx(26.0 / 24.0 / 1.20) and met["first_job_ratio"]["met"]
    assert not met["daily_job_ratio"]["met"] and met["greedy_error_over_exact"]["met"]
    assert first_run_bound("3x4096") == 1.05 and first_run_bound("2048/1024/512/256") == 1.20
    assert "| 10 | 3x8 | first, exact | 30.0 / 24.0 (1.25) |" in render([row])


def test_unknown_solvers_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"--solvers names \['hungarian'\]"):
        relocation_main(["--solvers", "greedy,hungarian", "--out", str(tmp_path)])
