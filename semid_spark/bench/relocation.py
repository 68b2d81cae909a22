"""`semid bench --relocation`: what relocation costs the job, beside the same job with suffix counters.

At each size, in a process of its own: a synthetic catalog (d = 64, ``--topics`` unit-normal topic
centres plus ``--noise`` x unit-normal noise, as a Delta table with its Change Data Feed on); per
shape, a first run that fits the model (and warms Spark's Python workers up; it is left out of every
figure), then first runs on that model and the same rows, each into a table of its own: ``relocate``
with the default greedy placement, ``relocate`` with ``relocate_solver: exact`` (``--solvers``), and
``suffix``; then +1% new rows and a daily run of greedy relocation and of suffix.

What users pay for is the whole job: the goals are its seconds (every stage the run reports) with
``relocate`` over those with ``suffix``, <= 1.20 at shapes of K < 4096 and <= 1.05 at K >= 4096 for
first runs, <= 1.15 for the daily run; the share of items left with a counter <= 0.1%; and greedy's
assigned error within +0.3% of exact's (``error_ratio``: the assigned codes' reconstruction error over
the nearest codes'). Each stage's seconds are printed beside the ratio: the candidates found while
encoding (the encode stage's excess over suffix's), the ``relocate`` stage (the placement's jobs and
the figures) and what the MERGE does beyond suffix's. On an increment the relocation is planned
inside the MERGE (its inputs are the table as the MERGE reads it), so its seconds are in ``write``.

Writes ``<out>/relocation.json`` and ``relocation.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from semid_spark.bench.scale import parse_size, write_catalog
from semid_spark.advise import parse_shape, shape_name
from semid_spark.bench.suite import write_figures
from semid_spark.config import RELOCATE_SOLVERS
from semid_spark.exceptions import ConfigError

ROW_STAGES = ("encode", "rank", "relocate", "write")
LARGE_K = 4096  # a last level this large: almost nothing collides, relocation should cost almost nothing
GOALS = {"first_job_ratio": ("<=", "1.20 (K < 4096), 1.05 (K >= 4096)"), "daily_job_ratio": ("<=", 1.15),
         "counter_share": ("<=", 0.001), "greedy_error_over_exact": ("<=", 1.003)}


def _run(spark, cfg) -> dict:
    """One run's seconds and figures; its counter share read back from the rows it wrote (suffix reports none)."""
    from pyspark.sql import functions as F

    from semid_spark.delta.schema import COUNTER, RUN_ID
    from semid_spark.spark import pipeline

    started = time.perf_counter()
    report = pipeline.run(spark, cfg)
    wall = time.perf_counter() - started
    written = spark.read.format("delta").load(cfg.output.path).where(F.col(RUN_ID) == report.run_id)
    counters = written.where(F.col(COUNTER) > 0).count()
    return {"wall_s": wall, "stages_s": dict(report.seconds), "n_new": report.n_new,
            "collision_share": report.collision_share, "counter_share": counters / max(report.n_new, 1),
            "moved_share": report.moved_share or 0.0, "error_ratio": report.error_ratio or 1.0}


def row_seconds(run: dict) -> float:
    return sum(run["stages_s"].get(name, 0.0) for name in ROW_STAGES)


def job_seconds(run: dict) -> float:
    """Every stage the run reports (the model is given: no fit)."""
    return sum(seconds for name, seconds in run["stages_s"].items() if name != "fit")


def first_run_bound(shape: str) -> float:
    return 1.05 if parse_shape(shape)[-1] >= LARGE_K else 1.20


def one_size(n: int, shapes: list[list[int]], work: str, cores: int, *, n_topics: int, noise: float,
             sample: int, solvers: list[str]) -> dict:
    """Every run at one size (in a fresh process, started by ``main``)."""
    from semid_spark.config import JobConfig, SparkConfig
    from semid_spark.spark.session import get_session

    spark = get_session(SparkConfig(master=f"local[{cores}]", shuffle_partitions=max(2 * cores, n // 500_000),
                                    driver_memory="8g", warehouse_dir=os.path.join(work, "warehouse")))
    inc = max(1, n // 100)
    catalog = {"n_topics": n_topics, "noise": noise}
    out: dict = {"n": n, "generate_s": write_catalog(spark, f"{work}/in", 0, n, **catalog), "shapes": {}}

    def config(sizes: list[int], variant: str):
        name = shape_name(sizes)
        ids = {"strategy": "suffix"} if variant in ("suffix", "fit") else {
            "strategy": "relocate", "relocate_solver": "greedy" if variant == "relocate" else variant}
        return JobConfig.from_dict({
            "input": {"path": f"{work}/in", "since": "last_run"},
            "output": {"path": f"{work}/out-{name}-{variant}"},
            "model": {"path": f"{work}/model-{name}", "n_levels": len(sizes), "n_clusters": sizes,
                      "sample_size": sample},
            "uniqueness": ids})

    # "relocate": the default (greedy) placement; any other solver runs under its own name
    variants = ["relocate"] + [v for v in solvers if v != "greedy"] + ["suffix"]
    for sizes in shapes:
        runs = out["shapes"][shape_name(sizes)] = {}
        # a first run fits the model all use and warms the workers up (its encode would be the slower)
        runs["fit"] = _run(spark, config(sizes, "fit"))
        for variant in variants:
            runs[f"{variant}_first"] = _run(spark, config(sizes, variant))
            print(f"  {n:,} rows {shape_name(sizes)} {variant}: {_brief(runs[f'{variant}_first'])}", flush=True)
    out["generate_s"] += write_catalog(spark, f"{work}/in", n, n + inc, mode="append", **catalog)
    for sizes in shapes:
        runs = out["shapes"][shape_name(sizes)]
        for strategy in ("suffix", "relocate"):
            runs[f"{strategy}_daily"] = _run(spark, config(sizes, strategy))
            print(f"  +{inc:,} rows {shape_name(sizes)} {strategy}: {_brief(runs[f'{strategy}_daily'])}", flush=True)
    spark.stop()
    return out


def _brief(run: dict) -> str:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in run["stages_s"].items())
    return f"{run['wall_s']:.1f} s ({stages}); counters {run['counter_share']:.4%}"


def figures(result: dict) -> list[dict]:
    """Per shape at one size: relocation's seconds and ratios, first and daily runs; the exact solver's
    first run beside greedy's where it ran."""
    rows = []
    for name, runs in result["shapes"].items():
        row = {"n": result["n"], "shape": name}
        for when in ("first", "daily"):
            suffix, relocate = runs[f"suffix_{when}"], runs[f"relocate_{when}"]
            row[when] = _relocation(suffix, relocate)
        if "exact_first" in runs:
            row["exact_first"] = _relocation(runs["suffix_first"], runs["exact_first"])
            row["greedy_error_over_exact"] = row["first"]["error_ratio"] / row["exact_first"]["error_ratio"]
        rows.append(row)
    return rows


def _relocation(suffix: dict, relocate: dict) -> dict:
    extra = row_seconds(relocate) - row_seconds(suffix)
    encode = suffix["stages_s"].get("encode", 0.0)
    return {"n_new": relocate["n_new"], "encode_s": encode, "suffix_job_s": job_seconds(suffix),
            "relocate_job_s": job_seconds(relocate), "job_ratio": job_seconds(relocate) / job_seconds(suffix),
            "relocation_s": extra, "relocate_stage_s": relocate["stages_s"].get("relocate", 0.0),
            "candidates_s": relocate["stages_s"].get("encode", 0.0) - encode,
            "write_extra_s": relocate["stages_s"].get("write", 0.0) - suffix["stages_s"].get("write", 0.0),
            "collision_share": relocate["collision_share"], "suffix_counter_share": suffix["counter_share"],
            "counter_share": relocate["counter_share"], "moved_share": relocate["moved_share"],
            "error_ratio": relocate["error_ratio"]}


def render(rows: list[dict]) -> str:
    lines = ["| rows | shape | run | job s: relocate / suffix (ratio) | candidates s | relocate stage s | "
             "MERGE extra s | collisions | counters: suffix -> relocate | moved | error ratio |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        for when, label in (("first", "first"), ("exact_first", "first, exact"), ("daily", "daily")):
            if when not in row:
                continue
            f = row[when]
            lines.append(
                f"| {f['n_new']:,} | {row['shape']} | {label} | {f['relocate_job_s']:.1f} / {f['suffix_job_s']:.1f} "
                f"({f['job_ratio']:.2f}) | {f['candidates_s']:.1f} | {f['relocate_stage_s']:.1f} | "
                f"{f['write_extra_s']:.1f} | {f['collision_share']:.2%} | "
                f"{f['suffix_counter_share']:.3%} -> {f['counter_share']:.4%} | {f['moved_share']:.2%} | "
                f"{f['error_ratio']:.5f} |")
    return "\n".join(lines)


def goals(rows: list[dict]) -> dict:
    """Each goal's worst value (over the sizes and shapes) and whether it is met; the first run's job
    ratio against its shape's bound (its worst is the largest excess over the bound, as a ratio)."""
    def worst(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return max(values) if values else None

    first = worst([row["first"]["job_ratio"] / first_run_bound(row["shape"]) for row in rows])
    checks = {"first_job_ratio": (first, 1.0),
              "daily_job_ratio": (worst([r["daily"]["job_ratio"] for r in rows]), 1.15),
              "counter_share": (worst([r["first"]["counter_share"] for r in rows]), 0.001),
              "greedy_error_over_exact": (worst([r.get("greedy_error_over_exact") for r in rows]), 1.003)}
    return {name: {"worst": value, "goal": f"{GOALS[name][0]} {GOALS[name][1]}" if name != "first_job_ratio"
                   else "<= 1 x the shape's bound (1.20 at K < 4096, 1.05 at K >= 4096)",
                   "met": value is not None and value <= bound} for name, (value, bound) in checks.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semid bench --relocation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,4M", help="comma-separated row counts, e.g. 1M,4M,16M")
    parser.add_argument("--shapes", default="3x256,3x4096", help="comma-separated shapes, e.g. 3x256,3x4096")
    parser.add_argument("--topics", type=int, default=64, help="topic centres of the synthetic catalog")
    parser.add_argument("--noise", type=float, default=0.3, help="noise around them (x unit normal)")
    parser.add_argument("--sample", type=int, default=100_000, help="model.sample_size")
    parser.add_argument("--cores", type=int, default=2, help="local[N]")
    parser.add_argument("--solvers", default="greedy,exact",
                        help="relocation's placements to run, first runs (greedy, the default, always runs)")
    parser.add_argument("--out", default="artifacts/bench")
    parser.add_argument("--work", default=None, help="scratch directory for the tables (default: a temporary one)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one size, this process
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shapes = [list(parse_shape(s)) for s in args.shapes.split(",")]
    unknown = sorted(set(args.solvers.split(",")) - set(RELOCATE_SOLVERS))
    if unknown:
        raise ConfigError(f"--solvers names {unknown}; expected some of {list(RELOCATE_SOLVERS)}")
    if args.one is not None:
        result = one_size(args.one, shapes, args.work, args.cores, n_topics=args.topics, noise=args.noise,
                          sample=args.sample, solvers=args.solvers.split(","))
        with open(args.result, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
        return 0
    work_root = args.work or tempfile.mkdtemp(prefix="semid-relocation-")
    rows: list[dict] = []
    runs: list[dict] = []
    for n in sorted(parse_size(s) for s in args.sizes.split(",")):
        work = os.path.join(work_root, f"n{n}")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        result_file = os.path.join(work, "result.json")
        print(f"[{time.strftime('%H:%M:%S')}] {n:,} rows ...", flush=True)
        subprocess.run([sys.executable, "-m", "semid_spark.bench.relocation", "--one", str(n), "--work", work,
                        "--shapes", args.shapes, "--topics", str(args.topics), "--noise", str(args.noise),
                        "--sample", str(args.sample), "--cores", str(args.cores), "--solvers", args.solvers,
                        "--result", result_file],
                       check=True)
        with open(result_file, encoding="utf-8") as fh:
            runs.append(json.load(fh))
        rows.extend(figures(runs[-1]))
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    table = render(rows)
    summary = {"goals": goals(rows), "rows": rows, "runs": runs, "cores": args.cores,
               "catalog": {"dim": 64, "topics": args.topics, "noise": args.noise, "sample": args.sample}}
    print(table)
    for name, goal in summary["goals"].items():
        print(f"{name}: worst {goal['worst']} (goal {goal['goal']}): {'met' if goal['met'] else 'NOT met'}")
    write_figures(args.out, "relocation", summary, table)
    if args.work is None:
        shutil.rmtree(work_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
