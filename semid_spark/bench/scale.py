"""`semid bench --scale`: the job at 1M, 4M and 16M rows on this machine, as growth curves.

At each size, in a process of its own (so that its peak memory is its own): a synthetic topic
mixture (d=64, written as a Delta table with its Change Data Feed on) gets a full first run
(3 levels x 256 RQ-KMeans, or ``--shape``; the job's default uniqueness, relocation), then a +1%
daily run that reads only the input's new version (``input.since: last_run``), then, for
reference, a +1% run over the whole snapshot (``input.since: all``: keys of the catalog are joined,
embeddings of written items are not read into Python). Per run: seconds per stage, shuffle bytes read and written (Spark's REST API),
rows inserted; per size: the driver's peak RSS (this Python process) and the JVM's (in local
mode the JVM also runs the executors).

At the baseline size (4M) it also measures the encode pass alone: Spark encode rows/s per core
through the files path the job uses and through Spark's reader, against a one-thread numpy
ceiling; a plain Parquet write of the codes (the job's floor); and the hot-code ranking row.

Writes ``<out>/scale.json`` (keys: growth_exponent, incremental_ratio, incremental_shuffle_ratio,
driver_rss_ratio, encode_per_core_ratio, job_over_encode_write, sizes, full_s, incremental_s, and
the per-size detail) and ``<out>/scale.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

DIM, N_TOPICS, N_LEVELS, N_CLUSTERS = 64, 1024, 3, 256
NOISE = 0.8  # around unit-normal topic centres: about 2 in 3 items share their codes with another at 400k
ROWS_PER_FILE = 250_000  # ~64 MB of d=64 embeddings a file, as a Delta writer leaves them
GOALS = {"growth_exponent": ("<=", 1.05), "incremental_ratio": ("<=", 0.10),
         "incremental_shuffle_ratio": ("<=", 0.05), "driver_rss_ratio": ("<=", 1.2),
         "encode_per_core_ratio": (">=", 0.80), "job_over_encode_write": ("<=", 2.0)}


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000, "B": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


# ------------------------------------------------------------------ one size, in its own process
def write_catalog(spark, path: str, start: int, end: int, *, seed: int = 0, mode: str = "overwrite",
                  n_topics: int = N_TOPICS, noise: float = NOISE) -> float:
    """Rows start..end-1 of the synthetic catalog (keys ``item0000000042``): *n_topics* unit-normal
    centres in d = ``DIM``, plus *noise* x unit-normal noise; generated on executors."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    def generate(batches):
        topics = np.random.default_rng(seed).standard_normal((n_topics, DIM)).astype(np.float32)
        for batch in batches:
            ids = batch.column(0)
            if len(ids) == 0:
                continue
            rng = np.random.default_rng([seed, ids[0].as_py()])
            x = topics[rng.integers(0, n_topics, len(ids))] + noise * rng.standard_normal((len(ids), DIM), np.float32)
            keys = pc.binary_join_element_wise("item", pc.utf8_lpad(pc.cast(ids, pa.string()), 10, "0"), "")
            emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM).cast(pa.list_(pa.float32()))
            yield pa.RecordBatch.from_arrays([keys, emb], names=["item_id", "embedding"])

    started = time.perf_counter()
    n_files = max(2, -(-(end - start) // ROWS_PER_FILE))
    rows = spark.range(start, end, numPartitions=n_files).mapInArrow(generate, "item_id string, embedding array<float>")
    rows.write.format("delta").mode(mode).save(path)
    if mode == "overwrite":
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    return time.perf_counter() - started


class SparkMetrics:
    """Shuffle bytes and task times of the stages that ran since ``mark`` (Spark's REST API)."""

    def __init__(self, spark) -> None:
        sc = spark.sparkContext
        self.sc, self.base = sc, f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"
        self.seen: set[int] = set()

    def get(self, path: str):
        import urllib.request

        with urllib.request.urlopen(self.base + path, timeout=60) as response:
            return json.load(response)

    def _settled(self) -> list[dict]:
        for _ in range(60):  # the status store is fed by the listener bus, a moment behind the action
            if not self.get("/stages?status=active") and not self.sc.statusTracker().getActiveStageIds():
                break
            time.sleep(0.5)
        time.sleep(1.0)
        return self.get("/stages?status=complete")

    def mark(self) -> None:
        self.seen = {s["stageId"] for s in self._settled()}

    def shuffle_since_mark(self) -> dict:
        new = [s for s in self._settled() if s["stageId"] not in self.seen]
        return {"shuffle_read_bytes": sum(s.get("shuffleReadBytes", 0) for s in new),
                "shuffle_write_bytes": sum(s.get("shuffleWriteBytes", 0) for s in new), "stages": len(new)}

    def jvm_peak_heap(self) -> int:
        peaks = [e.get("peakMemoryMetrics", {}).get("JVMHeapMemory", 0) for e in self.get("/executors")]
        return max(peaks or [0])


def _timed_run(spark, metrics: SparkMetrics, cfg) -> dict:
    from semid_spark.spark import pipeline

    metrics.mark()
    started = time.perf_counter()
    report = pipeline.run(spark, cfg)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "stages_s": report.seconds, "n_input": report.n_input, "n_new": report.n_new,
            "n_inserted": report.n_inserted, "collision_share": report.collision_share,
            "counter_share": report.counter_share, "moved_share": report.moved_share, **metrics.shuffle_since_mark()}


def _proc_peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) of a process, bytes; 0 where /proc is not there."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def encode_rates(spark, cfg, n: int, cores: int) -> dict:
    """Encode rows/s per core through the job's files path and Spark's reader, an empty mapInArrow (the
    JVM->Python transfer), and the one-thread numpy ceiling on rows of the same input."""
    import pyarrow as pa

    from semid_spark.bench.suite import single_thread_blas
    from semid_spark.utils.timing import best_of
    from semid_spark.spark.compat import to_arrow
    from semid_spark.spark.encode import FrozenModel, arrow_embeddings, encode_embeddings
    from semid_spark.spark.files import encode_files
    from semid_spark.spark.models import load_encoder
    from semid_spark.spark.source import input_files

    model = load_encoder(cfg.model.path)
    frozen = FrozenModel(spark, model)
    df = spark.read.format("delta").load(cfg.input.path)
    files = input_files(spark, df, None, key_col="item_id", embedding_col="embedding", reader="files")
    sample = to_arrow(df.limit(100_000))
    x = arrow_embeddings(sample.column("embedding"), DIM, copy=True)
    with single_thread_blas():  # Spark's Python workers get one BLAS thread each (OMP_NUM_THREADS=1)
        ceiling = len(x) / best_of(lambda: model.encode(x), 3)
        with_candidates = ceiling
        if cfg.uniqueness.strategy == "relocate":  # the job's encode pass also finds relocation candidates
            from semid_spark.uniqueness.relocate import N_CANDIDATES, encode_with_candidates

            with_candidates = len(x) / best_of(lambda: encode_with_candidates(model, x, N_CANDIDATES), 2)

    def rate(frame, repeat: int = 1) -> float:
        return n / best_of(lambda: frame.write.format("noop").mode("overwrite").save(), repeat) / cores

    def empty(batches):
        for batch in batches:
            yield pa.RecordBatch.from_arrays([batch.column(0)], names=["item_id"])

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.encode.batch_rows))
    via_files = rate(encode_files(spark, files, frozen, dim=DIM, flag_problems=True, batch_rows=cfg.encode.batch_rows),
                     repeat=2)  # steady state: the first pass also starts the Python workers
    via_spark = rate(encode_embeddings(df, frozen, key_col="item_id", embedding_col="embedding", dim=DIM,
                                       flag_problems=True))
    transfer = rate(df.mapInArrow(empty, "item_id string"))
    started = time.perf_counter()  # the job's floor: the same encode, written as plain Parquet
    encode_files(spark, files, frozen, dim=DIM, batch_rows=cfg.encode.batch_rows).write.mode("overwrite").parquet(
        os.path.join(os.path.dirname(cfg.output.path), "plain_codes"))
    plain_s = time.perf_counter() - started
    return {"numpy_ceiling_rows_s": ceiling, "numpy_with_candidates_rows_s": with_candidates,
            "files_rows_s_per_core": via_files, "spark_reader_rows_s_per_core": via_spark,
            "transfer_rows_s_per_core": transfer, "encode_plain_parquet_s": plain_s,
            "encode_per_core_ratio": via_files / ceiling, "spark_reader_ratio": via_spark / ceiling}


def one_size(n: int, work: str, cores: int, baseline: bool, sizes: list[int] | None = None) -> dict:
    """Everything measured at one size (run in a fresh process by ``main``)."""
    from semid_spark.bench.suite import hot_code_row
    from semid_spark.config import JobConfig, SparkConfig
    from semid_spark.spark.session import get_session

    # no process-wide BLAS limit: the driver fits with its cores, as a cluster's driver does (the executors
    # are idle meanwhile), and Spark starts its Python workers with one BLAS thread each
    partitions = max(2 * cores, n // 500_000)
    spark = get_session(SparkConfig(master=f"local[{cores}]", shuffle_partitions=partitions, driver_memory="8g",
                                    warehouse_dir=os.path.join(work, "warehouse")))
    metrics = SparkMetrics(spark)
    inc = max(1, n // 100)
    raw = {"input": {"path": f"{work}/in", "since": "last_run"}, "output": {"path": f"{work}/out"},
           "model": {"path": f"{work}/model", "n_levels": len(sizes) if sizes else N_LEVELS,
                     "n_clusters": sizes or N_CLUSTERS, "sample_size": 100_000,
                     "params": {"max_iter": 10, "max_samples_per_cluster": 256}}}
    out: dict = {"n": n, "shuffle_partitions": partitions, "generate_s": write_catalog(spark, f"{work}/in", 0, n)}
    out["full"] = _timed_run(spark, metrics, JobConfig.from_dict(raw))
    if baseline:
        out["encode"] = encode_rates(spark, JobConfig.from_dict(raw), n, cores)
        hot = hot_code_row(n, 8)
        out["hot_code"] = {"slowest_over_median": hot.value, "detail": hot.detail}
    out["generate_s"] += write_catalog(spark, f"{work}/in", n, n + inc, mode="append")
    out["incremental"] = _timed_run(spark, metrics, JobConfig.from_dict(raw))
    out["generate_s"] += write_catalog(spark, f"{work}/in", n + inc, n + 2 * inc, mode="append")
    out["incremental_snapshot"] = _timed_run(spark, metrics, JobConfig.from_dict(
        {**raw, "input": {"path": f"{work}/in", "since": "all"}}))
    out["jvm_peak_heap_bytes"] = metrics.jvm_peak_heap()
    out["jvm_peak_rss_bytes"] = _proc_peak_rss(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    out["driver_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    spark.stop()
    return out


# ------------------------------------------------------------------ all sizes, and the ratios
def summarize(results: list[dict], baseline_n: int) -> dict:
    by_n = {r["n"]: r for r in results}
    sizes = sorted(by_n)
    small, large = by_n[sizes[0]], by_n[sizes[-1]]
    base = by_n.get(baseline_n) or next((r for r in results if "encode" in r), None)

    def shuffled(run: dict) -> int:
        return run["shuffle_read_bytes"] + run["shuffle_write_bytes"]

    span = math.log(sizes[-1] / sizes[0]) if len(sizes) > 1 else float("nan")
    summary = {
        "growth_exponent": math.log(large["full"]["wall_s"] / small["full"]["wall_s"]) / span if len(sizes) > 1 else None,
        "incremental_ratio": large["incremental"]["wall_s"] / large["full"]["wall_s"],
        "incremental_shuffle_ratio": shuffled(large["incremental"]) / max(1, shuffled(large["full"])),
        "driver_rss_ratio": large["driver_peak_rss_bytes"] / small["driver_peak_rss_bytes"],
        "encode_per_core_ratio": base["encode"]["encode_per_core_ratio"] if base else None,
        "job_over_encode_write": base["full"]["wall_s"] / base["encode"]["encode_plain_parquet_s"] if base else None,
        "sizes": sizes,
        "full_s": [by_n[n]["full"]["wall_s"] for n in sizes],
        "incremental_s": [by_n[n]["incremental"]["wall_s"] for n in sizes],
        "incremental_snapshot_s": [by_n[n]["incremental_snapshot"]["wall_s"] for n in sizes],
        "row_stage_growth_exponent": (math.log(_row_stages(large["full"]) / _row_stages(small["full"])) / span
                                      if len(sizes) > 1 else None),
        "incremental_snapshot_ratio": large["incremental_snapshot"]["wall_s"] / large["full"]["wall_s"],
        "jvm_rss_ratio": large["jvm_peak_rss_bytes"] / max(1, small["jvm_peak_rss_bytes"]),
        "hot_code_slowest_over_median": base["hot_code"]["slowest_over_median"] if base else None,
        "baseline_n": base["n"] if base else None,
        "machine": machine(),
        "per_size": results,
    }
    return summary


def _row_stages(run: dict) -> float:
    """Seconds of the stages that grow with the rows (all but sampling and fitting)."""
    return sum(v for k, v in run["stages_s"].items() if k not in ("sample", "fit"))


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    import pyspark

    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf(
        "SC_PHYS_PAGES") / 2**30, 1), "python": platform.python_version(), "pyspark": pyspark.__version__,
        "date": time.strftime("%Y-%m-%d")}


def render(summary: dict) -> str:
    lines = [f"Measured on {summary['machine']['cpu']}, {summary['machine']['cores']} cores, "
             f"{summary['machine']['memory_gib']} GiB, pyspark {summary['machine']['pyspark']}, local[{summary['cores']}], "
             f"{summary['machine']['date']}; d={DIM}, {summary.get('shape', f'{N_LEVELS}x{N_CLUSTERS}')} RQ-KMeans.", "",
             "| figure | value | goal | met |", "|---|---|---|---|"]
    for key, (op, goal) in GOALS.items():
        value = summary[key]
        met = "" if value is None else ("yes" if (value <= goal if op == "<=" else value >= goal) else "**no**")
        lines.append(f"| {key} | {'n/a' if value is None else f'{value:.3f}'} | {op} {goal} | {met} |")
    lines += ["", "| rows | full run s | +1% run s (changes) | +1% run s (snapshot) | full shuffle MB | +1% shuffle MB "
              "| driver peak RSS MiB | JVM peak RSS MiB | full run: shared codes, counters | stages of the full run (s) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["per_size"]:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["full"]["stages_s"].items())
        mb = lambda run: (run["shuffle_read_bytes"] + run["shuffle_write_bytes"]) / 1e6  # noqa: E731
        lines.append(f"| {r['n']:,} | {r['full']['wall_s']:.1f} | {r['incremental']['wall_s']:.1f} | "
                     f"{r['incremental_snapshot']['wall_s']:.1f} | {mb(r['full']):,.0f} | {mb(r['incremental']):,.1f} | "
                     f"{r['driver_peak_rss_bytes'] / 2**20:,.0f} | {r['jvm_peak_rss_bytes'] / 2**20:,.0f} | "
                     f"{r['full'].get('collision_share', 0):.4f}, {r['full'].get('counter_share') or 0:.4f} | {stages} |")
    base = next((r for r in summary["per_size"] if "encode" in r), None)
    if base:
        e = base["encode"]
        lines += ["", f"Encode at {base['n']:,} rows, per core: files path {e['files_rows_s_per_core']:,.0f} rows/s, "
                  f"Spark's reader {e['spark_reader_rows_s_per_core']:,.0f}, empty mapInArrow (transfer only) "
                  f"{e['transfer_rows_s_per_core']:,.0f}, one-thread numpy ceiling {e['numpy_ceiling_rows_s']:,.0f}; "
                  f"encode + plain Parquet write {e['encode_plain_parquet_s']:.1f} s. Hot code: "
                  f"{base['hot_code']['detail']}: slowest / median task {base['hot_code']['slowest_over_median']:.2f}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semid bench --scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,4M,16M", help="comma-separated row counts, e.g. 1M,4M,16M")
    parser.add_argument("--baseline", default="4M", help="the size of the encode, plain-write and hot-code figures")
    parser.add_argument("--cores", type=int, default=2, help="local[N]")
    parser.add_argument("--shape", default=f"{N_LEVELS}x{N_CLUSTERS}",
                        help="the model's shape: 3x4096, or codes per level 2048/1024/512/256 (default %(default)s)")
    parser.add_argument("--out", default="artifacts/bench")
    parser.add_argument("--work", default=None, help="scratch directory for the tables (default: a temporary one)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one size, this process
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--is-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from semid_spark.advise import parse_shape, shape_name

    shape = list(parse_shape(args.shape))
    if args.one is not None:
        result = one_size(args.one, args.work, args.cores, args.is_baseline, shape)
        with open(args.result, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
        return 0
    from semid_spark.bench.suite import write_figures

    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    baseline = parse_size(args.baseline)
    if baseline not in sizes:
        baseline = max((s for s in sizes if s <= baseline), default=sizes[0])
    work_root = args.work or tempfile.mkdtemp(prefix="semid-scale-")
    results = []
    started = time.perf_counter()
    for n in sizes:
        work = os.path.join(work_root, f"n{n}")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        result_file = os.path.join(work, "result.json")
        cmd = [sys.executable, "-m", "semid_spark.bench.scale", "--one", str(n), "--work", work, "--cores",
               str(args.cores), "--shape", args.shape, "--result", result_file] + (["--is-baseline"] if n == baseline else [])
        print(f"[{time.strftime('%H:%M:%S')}] {n:,} rows ...", flush=True)
        subprocess.run(cmd, check=True)
        with open(result_file, encoding="utf-8") as fh:
            results.append(json.load(fh))
        r = results[-1]
        print(f"[{time.strftime('%H:%M:%S')}] {n:,} rows: full {r['full']['wall_s']:.1f} s, +1% "
              f"{r['incremental']['wall_s']:.1f} s, +1% over the snapshot {r['incremental_snapshot']['wall_s']:.1f} s, "
              f"driver peak RSS {r['driver_peak_rss_bytes'] / 2**20:,.0f} MiB", flush=True)
        shutil.rmtree(os.path.join(work, "in"), ignore_errors=True)  # the big part; results stay
    summary = summarize(results, baseline)
    summary["cores"] = args.cores
    summary["shape"], summary["dim"] = shape_name(shape), DIM
    summary["total_s"] = time.perf_counter() - started
    table = render(summary)
    print(table)
    write_figures(args.out, "scale", summary, table)
    if args.work is None:
        shutil.rmtree(work_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
