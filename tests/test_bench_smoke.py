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


@pytest.mark.heavy  # faiss beside ours, a fresh process per fit's memory: `make test-heavy`
def test_bench_shapes_writes_fit_and_encode_figures_for_uniform_and_shrinking_shapes(tmp_path):
    """`semid bench --shapes` at a tiny size: every shape fitted beside faiss, encoded on one core with the
    same codes as faiss's greedy RQ holding our codebooks (where faiss can hold them), and the table."""
    assert main(["bench", "--shapes", "2x32,32/16/8", "--rows", "3000", "--encode-rows", "1024",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "shapes.json").read_text())
    assert list(report["shapes"]) == ["2x32", "32/16/8"] and report["rows"] == 3000
    for entry in report["shapes"].values():
        fit, encode = entry["fit"], entry["encode"]
        assert fit["ours_seconds"] > 0 and fit["faiss_seconds"] > 0 and 0 < fit["ours_mse"] < 2 * fit["faiss_mse"]
        assert fit["ours_peak_bytes"] > 0 and encode["rows_per_s_core"] > 0 and encode["ratio_to_gemm"] > 0
        billion = entry["billion"]  # the advisor's figures for the fitted model, kernels timed at 128 and 768
        assert 0 <= billion["counter_share"] <= billion["suffix_counter_share"] <= 1 and billion["largest_bucket"] >= 1
        assert set(billion["kernels"]) == {"128", "768"} and "plan" not in entry  # no scale.json in --out
        assert fit["peak_measured_by"] in ("os", "tracemalloc")  # a fit in a fresh process
        assert fit["ours_peak_bytes"] >= fit["sample_bytes"]
    assert report["shapes"]["2x32"]["encode"]["same_codes_as_faiss"] == 1.0
    assert "same_codes_as_faiss" not in report["shapes"]["32/16/8"]["encode"]  # faiss takes one size for all levels
    assert (tmp_path / "shapes.md").read_text().startswith("Shapes on 3,000 x 128-d synthetic rows")
    assert main(["bench", "--shapes", "--repeak", "--out", str(tmp_path)]) == 0  # the peaks again, fresh processes
    again = json.loads((tmp_path / "shapes.json").read_text())
    assert [e["fit"]["ours_mse"] for e in again["shapes"].values()] == [
        e["fit"]["ours_mse"] for e in report["shapes"].values()]  # nothing else fitted again
    assert all(e["fit"]["ours_peak_bytes"] >= e["fit"]["sample_bytes"] for e in again["shapes"].values())


SCALE = {"cores": 2, "dim": 64, "shape": "3x256", "machine": {"date": "2026-12-07"}, "per_size": [
    {"n": 1_000, "full": {"stages_s": {"validate": 1.0, "sample": 0.5, "fit": 9.0, "encode": 2.0, "rank": 0.5,
                                       "relocate": 1.0, "write": 2.0}}, "incremental": {"wall_s": 3.0, "n_new": 10}},
    {"n": 5_000, "full": {"stages_s": {"validate": 3.0, "sample": 1.0, "fit": 9.0, "encode": 6.0, "rank": 1.0,
                                       "relocate": 2.0, "write": 4.0}}, "incremental": {"wall_s": 5.0, "n_new": 50},
     "encode": {"numpy_ceiling_rows_s": 5_000.0}}]}


def test_the_billion_plan_rebases_the_jobs_per_item_costs_to_the_shape_and_d():
    """The plan's arithmetic on a scale summary with round figures: at the scale run's own d and kernel, a
    first run costs its row stages per item; reading grows with d, nothing else does; the
    daily run is the new items at that rate plus the codes scan (the slope between the two sizes)."""
    from semid_spark.bench.shapes import BILLION, DAILY_NEW, job_costs, plan

    job = job_costs(SCALE)
    assert job["read_s_per_item"] == pytest.approx((3.0 + 1.0 + 6.0) * 2 / 5_000 - 1 / 5_000)
    assert job["rest_s_per_item"] == pytest.approx((1.0 + 4.0) * 2 / 5_000)
    per_item = (lambda r: sum(v for k, v in r["full"]["stages_s"].items() if k != "fit") * 2 / r["n"])
    spend = [r["incremental"]["wall_s"] * 2 - r["incremental"]["n_new"] * per_item(r) for r in SCALE["per_size"]]
    assert job["daily_scan_s_per_catalog_item"] == pytest.approx((spend[1] - spend[0]) / 4_000)
    same = {"encode_s_per_row": 1 / 5_000, "candidates_s_per_row": 0.0}
    entry = {"billion": {"assign_core_hours": 0.0, "kernels": {"64": same, "768": same}}}
    out = plan(entry, job, driver_cores=2)
    row_stages = (3.0 + 1.0 + 6.0 + 1.0 + 2.0 + 4.0) * 2 / 5_000
    assert out["64"]["first_run_core_hours"] == pytest.approx(BILLION * row_stages / 3600)
    assert out["768"]["first_run_core_hours"] - out["64"]["first_run_core_hours"] == pytest.approx(
        BILLION * job["read_s_per_item"] * (768 / 64 - 1) / 3600)
    assert out["64"]["daily_core_hours"] == pytest.approx(
        (DAILY_NEW * row_stages + BILLION * job["daily_scan_s_per_catalog_item"] + job["daily_fixed_core_s"]) / 3600)
    entry["billion"]["assign_core_hours"], entry["fit"] = 3.0, {"ours_seconds": 1800.0}  # the assignment, the fit
    assert plan(entry, job, driver_cores=2)["64"]["first_run_core_hours"] == pytest.approx(
        out["64"]["first_run_core_hours"] + 3.0 + 1.0)


@pytest.mark.parametrize("text, sizes", [("3x4096", (4096,) * 3), ("2048/1024/512/256", (2048, 1024, 512, 256)),
                                         (" 1X8 ", (8,))])
def test_shape_syntax(text, sizes):
    from semid_spark.advise import parse_shape, shape_name

    assert parse_shape(text) == sizes and parse_shape(shape_name(sizes)) == sizes


@pytest.mark.parametrize("bad", ["3x", "x256", "3x0", "3x1", "256/0", "3-256", ""])
def test_shape_syntax_errors_name_the_forms(bad):
    from semid_spark.advise import parse_shape

    with pytest.raises(ValueError, match="LEVELSxCODES"):
        parse_shape(bad)


def test_bench_advice_sets_predictions_beside_larger_catalogs(tmp_path):
    """`semid bench --advice` at a tiny size: per shape and multiple, the predicted and the real figures of
    the same model, the real ones counted from its codes and its relocation."""
    assert main(["bench", "--advice", "--shapes", "2x16,32/8", "--sample", "500", "--multiples", "4",
                 "--dim", "16", "--topics", "8", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "advice-synthetic.json").read_text())
    assert [(r["shape"], r["rows"]) for r in report["rows"]] == [("2x16", 2000), ("32/8", 2000)]
    for row in report["rows"]:
        real, predicted = row["real"], row["predicted"]
        assert 0 <= real["counter_share"] <= real["suffix_counter_share"] <= real["collision_share"] <= 1
        assert 0 <= predicted["counter_share"] <= predicted["suffix_counter_share"] <= 1
        assert real["largest_bucket"] >= 1 and predicted["encode_core_hours"] > 0
    assert report["rows"][0]["real"]["suffix_counter_share"] >= 1 - 256 / 2000  # 256 full codes for 2,000 items
    assert set(report["worst_gaps"]) >= {"counter_share", "suffix_counter_share", "collision_share"}
    assert (tmp_path / "advice-synthetic.md").read_text().startswith("The advisor's predictions from a sample of 500")
