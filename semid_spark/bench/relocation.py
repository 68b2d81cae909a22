"""`semid bench --relocation`: what relocation costs the job, beside the same job with suffix counters.

At each size, in a process of its own: a synthetic catalog (d = 64, ``--topics`` unit-normal topic
centres plus ``--noise`` x unit-normal noise, as a Delta table with its Change Data Feed on); per
shape, a first run that fits the model (and warms Spark's Python workers up; it is left out of every
figure), then a first run with ``uniqueness.strategy: relocate`` and one with ``suffix`` on that
model and the same rows, each into a table of its own; then +1% new rows and a daily run of each.

Relocation's cost is the difference of the two runs' row stages (encode, rank, relocate, write):
the candidates found while encoding, the ``relocate`` stage (the report's own name for the
assignment's jobs and the figures), and what the ranking and the MERGE do beyond suffix's; its
ratio to the suffix run's encode stage is the figure the goal is set on (<= 0.25), beside the
share of items left with a counter (<= 0.1%). On an increment the relocation is planned inside
the MERGE (its inputs are the table as the MERGE reads it), so its seconds are in ``write``.

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

ROW_STAGES = ("encode", "rank", "relocate", "write")
GOALS = {"relocation_over_encode": ("<=", 0.25), "counter_share": ("<=", 0.001)}


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


def one_size(n: int, shapes: list[list[int]], work: str, cores: int, *, n_topics: int, noise: float,
             sample: int) -> dict:
    """Every run at one size (in a fresh process, started by ``main``)."""
    from semid_spark.config import JobConfig, SparkConfig
    from semid_spark.spark.session import get_session

    spark = get_session(SparkConfig(master=f"local[{cores}]", shuffle_partitions=max(2 * cores, n // 500_000),
                                    driver_memory="8g", warehouse_dir=os.path.join(work, "warehouse")))
    inc = max(1, n // 100)
    catalog = {"n_topics": n_topics, "noise": noise}
    out: dict = {"n": n, "generate_s": write_catalog(spark, f"{work}/in", 0, n, **catalog), "shapes": {}}

    def config(sizes: list[int], strategy: str, table: str | None = None):
        name = shape_name(sizes)
        return JobConfig.from_dict({
            "input": {"path": f"{work}/in", "since": "last_run"},
            "output": {"path": f"{work}/out-{name}-{table or strategy}"},
            "model": {"path": f"{work}/model-{name}", "n_levels": len(sizes), "n_clusters": sizes,
                      "sample_size": sample},
            "uniqueness": {"strategy": strategy}})

    for sizes in shapes:
        runs = out["shapes"][shape_name(sizes)] = {}
        # a first run fits the model both use and warms the workers up (its encode would be the slower)
        runs["fit"] = _run(spark, config(sizes, "suffix", "fit"))
        for strategy in ("relocate", "suffix"):
            runs[f"{strategy}_first"] = _run(spark, config(sizes, strategy))
            print(f"  {n:,} rows {shape_name(sizes)} {strategy}: {_brief(runs[f'{strategy}_first'])}", flush=True)
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
    """Per shape at one size: relocation's seconds and ratios, first and daily runs."""
    rows = []
    for name, runs in result["shapes"].items():
        row = {"n": result["n"], "shape": name}
        for when in ("first", "daily"):
            suffix, relocate = runs[f"suffix_{when}"], runs[f"relocate_{when}"]
            extra = row_seconds(relocate) - row_seconds(suffix)
            encode = suffix["stages_s"].get("encode", 0.0)
            row[when] = {
                "n_new": relocate["n_new"], "encode_s": encode, "suffix_row_s": row_seconds(suffix),
                "relocate_row_s": row_seconds(relocate), "relocation_s": extra,
                "relocate_stage_s": relocate["stages_s"].get("relocate", 0.0),
                "candidates_s": relocate["stages_s"].get("encode", 0.0) - encode,
                "relocation_over_encode": extra / encode if encode else None,
                "collision_share": relocate["collision_share"], "suffix_counter_share": suffix["counter_share"],
                "counter_share": relocate["counter_share"], "moved_share": relocate["moved_share"],
                "error_ratio": relocate["error_ratio"]}
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    lines = ["| rows | shape | run | encode s | relocation s (relocate stage) | / encode | collisions | "
             "counters: suffix -> relocate | moved | error ratio |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        for when in ("first", "daily"):
            f = row[when]
            ratio = "-" if f["relocation_over_encode"] is None else f"{f['relocation_over_encode']:.2f}"
            lines.append(
                f"| {f['n_new']:,} | {row['shape']} | {when} | {f['encode_s']:.1f} | {f['relocation_s']:.1f} "
                f"({f['relocate_stage_s']:.1f}) | {ratio} | {f['collision_share']:.2%} | "
                f"{f['suffix_counter_share']:.2%} -> {f['counter_share']:.3%} | {f['moved_share']:.2%} | "
                f"{f['error_ratio']:.4f} |")
    return "\n".join(lines)


def goals(rows: list[dict]) -> dict:
    """Each goal's worst value over the first runs, and whether it is met."""
    out = {}
    for name, (op, bound) in GOALS.items():
        values = [row["first"][name] for row in rows if row["first"][name] is not None]
        worst = max(values) if values else None
        out[name] = {"worst": worst, "goal": f"{op} {bound}", "met": worst is not None and worst <= bound}
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semid bench --relocation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,4M", help="comma-separated row counts, e.g. 1M,4M,16M")
    parser.add_argument("--shapes", default="3x256,3x4096", help="comma-separated shapes, e.g. 3x256,3x4096")
    parser.add_argument("--topics", type=int, default=64, help="topic centres of the synthetic catalog")
    parser.add_argument("--noise", type=float, default=0.3, help="noise around them (x unit normal)")
    parser.add_argument("--sample", type=int, default=100_000, help="model.sample_size")
    parser.add_argument("--cores", type=int, default=2, help="local[N]")
    parser.add_argument("--out", default="artifacts/bench")
    parser.add_argument("--work", default=None, help="scratch directory for the tables (default: a temporary one)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one size, this process
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shapes = [list(parse_shape(s)) for s in args.shapes.split(",")]
    if args.one is not None:
        result = one_size(args.one, shapes, args.work, args.cores, n_topics=args.topics, noise=args.noise,
                          sample=args.sample)
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
                        "--sample", str(args.sample), "--cores", str(args.cores), "--result", result_file],
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
