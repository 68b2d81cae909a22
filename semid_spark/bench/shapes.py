"""`semid bench --shapes`: large codebook shapes fitted and encoded beside faiss and the machine's GEMM.

Run: ``make bench-shapes`` (the ``compare`` extra brings faiss). On the same rows, for each shape
(``3x256`` ... ``3x8192``, or sizes per level such as ``2048/1024/512/256``):

- **fit**: ``RQKMeans`` with the job's defaults against faiss's ``Kmeans`` run greedily level by
  level (25 iterations, at most 256 rows per centroid: faiss's defaults) on the same rows; seconds
  and reconstruction error, alternating ours and faiss's ``--repeats`` times (the median is quoted),
  and the fit's peak memory beside the sample's bytes and the codebooks: one more fit in a fresh
  process, as a driver runs it, its peak resident set as the OS counts it (``VmHWM``, reset through
  ``/proc/self/clear_refs`` once the sample is loaded) less what was resident before the fit, plus
  the sample, which was resident already (where ``/proc`` does not allow it, numpy's allocations by
  ``tracemalloc``); in a process that has fitted before, memory the allocator kept would hide part
  of it. On cuda, torch's allocator peak;
- **encode**: rows/s on one core (one BLAS thread), and that rate's share of the float32 GEMM rate
  of the same products measured in the same run (each level's ``(rows, d) @ (d, K)`` into a
  preallocated output, at the best of 256, 1024 and 4096 rows); faiss's greedy
  ``ResidualQuantizer.compute_codes`` (beam 1) with our codebooks copied in, and whether its codes
  equal ours; on ``--device cuda`` the same with torch on the GPU, its codes against numpy's.
- **at 10^9 items**: the advisor's figures for the fitted model (``semid_spark.advise``: counter share
  after relocation, largest bucket, relocation core-hours), and the encode kernel and relocation
  candidates timed on one core at ``--plan-dims`` (128 and 768; at a d other than the rows', random
  rows and codebooks of the same shape: the kernel's cost depends on d and K, not on the values);
- **plan** for 10^9 items at each of those d: first-run and +0.1% daily core-hours, composed from
  the job's own per-item costs in a ``semid bench --scale`` result (``--scale-json``; its largest
  size's stages at its d and shape) re-based to this shape and d (see ``plan``).

Figures go to ``<out>/shapes.json`` and ``shapes.md``; ``--replan`` recomputes the plan of an existing
``shapes.json`` from a newer scale result without fitting again. ``--data synthetic`` (default) draws a
topic mixture of ``--rows`` x ``--dim``; ``--data sentences`` or ``words`` takes the real text of
``make bench-quality`` (WordLlama, 256-d: docstring sentences, wordfreq's words; at most ``--rows``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Callable, Iterator

import numpy as np

from semid_spark.advise import ENCODE_TIMING_ROWS, parse_shape, predict_from, sample_codes, shape_name
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.uniqueness.relocate import N_CANDIDATES, encode_with_candidates
from semid_spark.utils.timing import best_of, one_blas_thread

DEFAULT_SHAPES = ("3x1024", "2048/1024/512/256", "3x4096")
BILLION = 1_000_000_000
DAILY_NEW = BILLION // 1000  # +0.1%
PLAN_DIMS = (128, 768)
READ_STAGES = ("validate", "sample", "encode")  # stages that read the embeddings: their cost grows with d


def _seconds(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _mean_sq(rows: np.ndarray) -> float:
    """Mean squared norm of the rows, in float64 by blocks (no (n, d) float64 copy of a large sample)."""
    return sum(float(np.einsum("nd,nd->", b, b)) for b in
               (rows[s : s + 65536].astype(np.float64) for s in range(0, len(rows), 65536))) / len(rows)


def _error(x: np.ndarray, recon: np.ndarray) -> float:
    recon -= x  # the decoding is ours to overwrite
    return _mean_sq(recon)


# ------------------------------------------------------------------------------------ fit
def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


@contextlib.contextmanager
def added_peak_rss() -> Iterator[dict]:
    """``{"bytes": ...}``: how far the process's resident set rose above its size at entry, as the OS
    counts it ("how" says so), or numpy's peak allocations where /proc/self/clear_refs is not there."""
    out: dict = {}
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # resets VmHWM to the current resident set (Linux 4.0+)
        before = _status_bytes("VmRSS")
    except OSError:
        tracemalloc.start()
        try:
            yield out
            out.update(bytes=tracemalloc.get_traced_memory()[1], how="tracemalloc")
        finally:
            tracemalloc.stop()
        return
    yield out
    out.update(bytes=max(0, _status_bytes("VmHWM") - before), how="os")


def fit_peak(x: np.ndarray, sizes: list[int]) -> dict:
    """The default fit's peak memory on cpu: the sample's bytes plus what the fit added to the resident set."""
    with added_peak_rss() as added:
        RQKMeans(len(sizes), sizes, random_state=0).fit(x)
    return {"peak_bytes": x.nbytes + added["bytes"], "peak_measured_by": added["how"]}


def fit_peak_in_child(args, sizes: list[int]) -> dict:
    """``fit_peak`` in a fresh process on the same rows (``--rss-child``)."""
    cmd = [sys.executable, "-m", "semid_spark.bench.shapes", "--rss-child", shape_name(sizes), "--data", args.data,
           "--rows", str(args.rows), "--dim", str(args.dim), "--topics", str(args.topics), "--out", args.out]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit_ours(x: np.ndarray, sizes: list[int], device: str, seed: int) -> dict:
    """Seconds and error of the default fit (the job's model parameters); on cuda its allocator's peak."""
    model = RQKMeans(len(sizes), sizes, random_state=seed, device=device)
    peak = None
    if device == "cpu":
        _, seconds = _seconds(lambda: model.fit(x))
    else:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _, seconds = _seconds(lambda: model.fit(x))
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return {"seconds": seconds, "mse": _error(x, model.decode(model.encode(x))),
            **({"peak_bytes": int(peak), "peak_measured_by": "torch.cuda.max_memory_allocated"} if peak is not None else {}),
            "lloyd_iterations": [s.n_iter for s in model.level_stats_], "joint_passes": model.refine_passes_,
            "model": model}


def fit_faiss(x: np.ndarray, sizes: list[int], seed: int) -> dict:
    """faiss's Kmeans level by level on the residuals (greedy RQ with its k-means defaults)."""
    import faiss

    def fit() -> np.ndarray:
        residual = x.copy()
        for level, k in enumerate(sizes):
            km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed + level)
            km.train(residual)
            _, labels = km.index.search(residual, 1)
            residual -= km.centroids[labels[:, 0]]
        return residual

    residual, seconds = _seconds(fit)
    return {"seconds": seconds, "mse": _mean_sq(residual), "niter": 25}


def peak_figures(memory: dict, sample_bytes: int, sizes: list[int], dim: int) -> dict:
    book_bytes = 4 * dim * sum(sizes)
    return {"ours_peak_bytes": memory["peak_bytes"], "peak_measured_by": memory["peak_measured_by"],
            "peak_over_sample_and_codebooks": memory["peak_bytes"] / (sample_bytes + book_bytes),
            "peak_over_goal": memory["peak_bytes"] / (2 * sample_bytes + book_bytes)}  # the goal: <= 1


def fit_figures(x: np.ndarray, sizes: list[int], *, device: str, repeats: int, faiss_too: bool,
                peak: Callable[[list[int]], dict] | None = None) -> tuple[dict, RQKMeans]:
    """Fit seconds and error, ours and faiss's alternating, and the peak memory (*peak* on cpu)."""
    ours, theirs, model = [], [], None
    for repeat in range(repeats):  # alternating, in one process: the machine's noise falls on both
        run = fit_ours(x, sizes, device, seed=repeat)
        model = model or run["model"]
        ours.append({key: value for key, value in run.items() if key != "model"})
        if faiss_too:
            theirs.append(fit_faiss(x, sizes, seed=repeat))
    sample_bytes, book_bytes = x.nbytes, 4 * x.shape[1] * sum(sizes)
    memory = (peak or (lambda shape: fit_peak(x, shape)))(sizes) if device == "cpu" else {
        "peak_bytes": max(r["peak_bytes"] for r in ours), "peak_measured_by": ours[0]["peak_measured_by"]}
    out = {
        "ours_seconds": statistics.median(r["seconds"] for r in ours),
        "ours_mse": statistics.median(r["mse"] for r in ours),
        **peak_figures(memory, sample_bytes, sizes, x.shape[1]),
        "sample_bytes": sample_bytes, "codebook_bytes": book_bytes,
        "ours_runs": ours,
    }
    if theirs:
        out.update({
            "faiss_seconds": statistics.median(r["seconds"] for r in theirs),
            "faiss_mse": statistics.median(r["mse"] for r in theirs),
            "faiss_runs": theirs,
        })
        out["time_ratio"] = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(ours, theirs))
        out["mse_ratio"] = out["ours_mse"] / out["faiss_mse"]
    return out, model


# --------------------------------------------------------------------------------- encode
def gemm_seconds_per_row(dim: int, sizes: list[int], rows: np.ndarray) -> float:
    """The float32 GEMM's time per row for every level's product, at its best block of rows."""
    total = 0.0
    for k in sorted(set(sizes)):
        weights = np.ascontiguousarray(np.random.default_rng(k).standard_normal((dim, k)), dtype=np.float32)
        best = np.inf
        for block in [b for b in (256, 1024, 4096) if b <= len(rows)] or [len(rows)]:
            out = np.empty((block, k), dtype=np.float32)
            n = len(rows) - len(rows) % block
            best = min(best, best_of(lambda: [np.matmul(rows[i : i + block], weights, out=out)
                                            for i in range(0, n, block)]) / n)
        total += best * sizes.count(k)
    return total


def faiss_codes(model: RQKMeans, x: np.ndarray) -> tuple[np.ndarray | None, float | None]:
    """(codes (n, L), seconds) of faiss's greedy ResidualQuantizer holding our codebooks; None where
    the levels differ in size or one is not a power of two (faiss's codes are bit fields, and its
    Python constructor takes one size for all levels)."""
    import faiss

    sizes = [len(c) for c in model.codebooks_]
    if len(set(sizes)) > 1 or sizes[0] & (sizes[0] - 1):
        return None, None
    bits = [sizes[0].bit_length() - 1] * len(sizes)
    rq = faiss.ResidualQuantizer(x.shape[1], len(sizes), bits[0])
    rq.max_beam_size = 1
    rq.train_type = faiss.ResidualQuantizer.Skip_codebook_tables
    faiss.copy_array_to_vector(np.concatenate(model.codebooks_).ravel(), rq.codebooks)
    rq.is_trained = True
    seconds = best_of(lambda: rq.compute_codes(x))
    packed = rq.compute_codes(x)
    as_int = [int.from_bytes(row.tobytes(), "little") for row in packed]
    shifts = np.cumsum([0] + bits[:-1])
    codes = np.array([[(v >> int(s)) & (k - 1) for s, k in zip(shifts, sizes)] for v in as_int])
    return codes, seconds


def encode_figures(model: RQKMeans, x: np.ndarray, *, faiss_too: bool) -> dict:
    sizes, dim = [len(c) for c in model.codebooks_], model.D_
    flops = 2 * dim * sum(sizes)
    with one_blas_thread():
        seconds = best_of(lambda: model.encode(x, device="cpu"))
        gemm = gemm_seconds_per_row(dim, sizes, x)
        out = {"rows": len(x), "rows_per_s_core": len(x) / seconds, "gflops": flops * len(x) / seconds / 1e9,
               "gemm_gflops": flops / gemm / 1e9, "ratio_to_gemm": gemm * len(x) / seconds,
               "core_hours_per_billion": 1e9 * seconds / len(x) / 3600}
        if faiss_too:
            import faiss

            faiss.omp_set_num_threads(1)
            theirs, faiss_s = faiss_codes(model, x)
            if theirs is not None:
                ours = model.encode(x, device="cpu")
                out.update({"faiss_rows_per_s_core": len(x) / faiss_s, "faster_than_faiss": faiss_s / seconds,
                            "same_codes_as_faiss": float((theirs == ours).all(axis=1).mean())})
    return out


def cuda_encode_figures(model: RQKMeans, x: np.ndarray, device: str) -> dict:
    import torch

    sizes, dim = [len(c) for c in model.codebooks_], model.D_
    model.encode(x[:4096], device=device)  # warm: kernels, the codebooks' copies
    torch.cuda.synchronize()
    by_batch = {batch: best_of(lambda: model.encode(x, device=device, batch_size=batch)) for batch in (65536, 262144)}
    seconds = min(by_batch.values())
    a = torch.randn(16384, dim, device=device)
    weights = [torch.randn(dim, k, device=device) for k in sizes]
    from semid_spark.algorithms._torch_ops import full_fp32_matmul

    with full_fp32_matmul():
        def products():
            for w in weights:
                a @ w
            torch.cuda.synchronize()

        products()
        gemm = best_of(products) / len(a)
    check = x[: min(len(x), 100_000)]
    return {"rows": len(x), "rows_per_s": len(x) / seconds, "ratio_to_gemm": gemm * len(x) / seconds,
            "gemm_tflops": 2 * dim * sum(sizes) / gemm / 1e12,
            "rows_per_s_by_batch": {str(b): len(x) / t for b, t in by_batch.items()},
            "same_codes_as_numpy": float((model.encode(check, device=device) == model.encode(check, device="cpu"))
                                         .all(axis=1).mean())}


# ------------------------------------------------------------------------------- 10^9 items
def random_kernel_seconds_per_row(sizes: list[int], dim: int) -> dict:
    """One core's seconds a row for the encode, and the extra of the encode with relocation candidates,
    on random rows and codebooks of this shape and *dim* (the cost depends on d and K, not on values),
    timed as ``advise.sample_codes`` times the sample."""
    rng = np.random.default_rng(dim)
    model = RQKMeans(len(sizes), sizes)
    model._set_codebooks([rng.standard_normal((k, dim), dtype=np.float32) * 0.5**i for i, k in enumerate(sizes)])
    rows = rng.standard_normal((ENCODE_TIMING_ROWS // 4, dim), dtype=np.float32)
    with one_blas_thread():
        encode_s = best_of(lambda: model.encode(rows), 2) / len(rows)
        with_candidates_s = best_of(lambda: encode_with_candidates(model, rows, N_CANDIDATES), 2) / len(rows)
    return {"encode_s_per_row": encode_s, "candidates_s_per_row": max(with_candidates_s - encode_s, 0.0)}


def billion_figures(model: RQKMeans, x: np.ndarray, fit_s: float, dims=PLAN_DIMS) -> dict:
    """The advisor's prediction at 10^9 items for the fitted model, and the one-core kernel rates per d:
    at the rows' own d those the advisor timed on the sample, at another d random rows of the shape.
    Relocation's assignment (the items that share a code x its simulated seconds an item) does not
    depend on d; its candidates' extra does."""
    sizes = [len(book) for book in model.codebooks_]
    measured = sample_codes(model, x, strategy="relocate")
    advice = predict_from(measured, BILLION, fit_s=fit_s, strategy="relocate")
    own = {"encode_s_per_row": measured.encode_s_per_row, "candidates_s_per_row": measured.candidates_s_per_row}
    kernels = {str(d): own if d == x.shape[1] else random_kernel_seconds_per_row(sizes, d) for d in dims}
    assign_core_h = max(advice.relocation_core_hours - BILLION * own["candidates_s_per_row"] / 3600, 0.0)
    return {"counter_share": advice.counter_share, "suffix_counter_share": advice.suffix_counter_share,
            "collision_share": advice.collision_share, "largest_bucket": advice.largest_bucket,
            "relocation_core_hours_at_sample_d": advice.relocation_core_hours, "assign_core_hours": assign_core_h,
            "kernels": kernels}


def job_costs(scale: dict) -> dict:
    """Per-item core-seconds of the job, from a ``semid bench --scale`` summary: at its largest size,
    the first run's embedding-reading stages less its encode kernel (``read``: grows with d), its
    ranking and writing (``rest``), its kernel and relocation; the +1% daily run's cost per written
    item (the codes scan: the slope between its smallest and largest sizes, less the new items at the
    first run's rate) and its fixed part."""
    cores, runs = scale["cores"], sorted(scale["per_size"], key=lambda r: r["n"])
    large, small = runs[-1], runs[0]
    base = next((r for r in runs if "encode" in r), None)
    rates = base["encode"] if base else {}  # the encode stage's own kernel (with candidates under relocate)
    kernel = 1 / rates.get("numpy_with_candidates_rows_s", rates["numpy_ceiling_rows_s"]) if base else 0.0
    stages = large["full"]["stages_s"]

    def per_item(run: dict) -> float:  # the first run's rows stages, core-seconds an item
        return sum(v for k, v in run["full"]["stages_s"].items() if k != "fit") * cores / run["n"]

    read = sum(stages.get(k, 0.0) for k in READ_STAGES) * cores / large["n"] - kernel
    new_cost = lambda r: r["incremental"]["n_new"] * per_item(r)  # noqa: E731
    spend = lambda r: r["incremental"]["wall_s"] * cores - new_cost(r)  # noqa: E731
    slope = (spend(large) - spend(small)) / (large["n"] - small["n"]) if large["n"] > small["n"] else 0.0
    return {"dim": scale.get("dim", 64), "shape": scale.get("shape", "3x256"), "cores": cores, "n": large["n"],
            "date": scale.get("machine", {}).get("date"), "read_s_per_item": read,
            "rest_s_per_item": (stages.get("rank", 0.0) + stages.get("write", 0.0)) * cores / large["n"],
            "kernel_s_per_item": kernel, "kernel_counts_candidates": "numpy_with_candidates_rows_s" in rates,
            "relocate_s_per_item": stages.get("relocate", 0.0) * cores / large["n"],
            "daily_scan_s_per_catalog_item": max(slope, 0.0),
            "daily_fixed_core_s": max(spend(large) - max(slope, 0.0) * large["n"], 0.0)}


def plan(entry: dict, job: dict, driver_cores: int) -> dict:
    """First-run and +0.1% daily core-hours at 10^9 items for each d of ``entry["billion"]``: per item,
    the job's reading cost scaled from its d to this d, its ranking and writing, its ``relocate``
    stage (the prefixes' grouping and the candidates' shuffle, paid by every item; the scale run's
    shape should be one where few items collide, so that it holds little assignment), this shape's
    encode kernel and relocation candidates at this d; plus the assignment's core-hours (the
    advisor's, for the items that collide) and the fit (this bench's seconds x the driver's cores).
    The daily run adds the codes scan of 10^9 written items and its fixed part to the new items at
    that rate (growing keys)."""
    out = {}
    billion, fit_s = entry["billion"], entry.get("fit", {}).get("ours_seconds", 0.0)
    for d, kernel in billion["kernels"].items():
        relocation = job["relocate_s_per_item"] + kernel["candidates_s_per_row"]
        per_item = (job["read_s_per_item"] * int(d) / job["dim"] + job["rest_s_per_item"]
                    + kernel["encode_s_per_row"] + relocation)
        assign_h = billion["assign_core_hours"]
        first = BILLION * per_item / 3600 + assign_h + fit_s * driver_cores / 3600
        daily = (DAILY_NEW * per_item + BILLION * job["daily_scan_s_per_catalog_item"] + job["daily_fixed_core_s"]) / 3600
        out[d] = {"first_run_core_hours": first, "daily_core_hours": daily + assign_h * DAILY_NEW / BILLION,
                  "encode_core_hours": BILLION * kernel["encode_s_per_row"] / 3600,
                  "relocation_core_hours": BILLION * relocation / 3600 + assign_h,
                  "job_core_hours": BILLION * (per_item - kernel["encode_s_per_row"] - relocation) / 3600}
    return out


def add_plans(report: dict, scale_json: str | None) -> None:
    if not scale_json or not os.path.exists(scale_json):
        return
    with open(scale_json, encoding="utf-8") as fh:
        job = job_costs(json.load(fh))
    report["job"] = {**job, "from": scale_json}
    for entry in report["shapes"].values():
        if "billion" in entry:
            entry["plan"] = plan(entry, job, report.get("driver_cores", os.cpu_count() or 1))


# ----------------------------------------------------------------------------------- main
def load_rows(args) -> np.ndarray:
    if args.data in ("sentences", "words"):
        from semid_spark.bench.quality import real_text

        return real_text(args.data, args.rows, args.out)[1]
    from semid_spark.synthetic import generated_catalog

    return generated_catalog(args.rows, args.dim, n_topics=args.topics, seed=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semid bench --shapes", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                        help="comma-separated: 3x4096 or codes per level 2048/1024/512 (default %(default)s)")
    parser.add_argument("--data", choices=["synthetic", "sentences", "words"], default="synthetic")
    parser.add_argument("--rows", type=int, default=200_000, help="rows fitted and encoded (sentences: at most)")
    parser.add_argument("--dim", type=int, default=128, help="synthetic only")
    parser.add_argument("--topics", type=int, default=1000, help="synthetic only: topics of the mixture")
    parser.add_argument("--encode-rows", type=int, default=65_536, help="rows encoded on one core")
    parser.add_argument("--repeats", type=int, default=1, help="alternating fits of ours and faiss's (median)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: fit and encode there too")
    parser.add_argument("--no-faiss", dest="faiss", action="store_false", help="without the faiss baselines")
    parser.add_argument("--no-fit", dest="fit", action="store_false", help="encode only (random codebooks)")
    parser.add_argument("--plan-dims", default=",".join(map(str, PLAN_DIMS)), help="d of the 10^9 plan (default %(default)s)")
    parser.add_argument("--scale-json", default=None,
                        help="a semid bench --scale result for the job's per-item costs (default <out>/scale.json)")
    parser.add_argument("--replan", action="store_true", help="recompute the plan of <out>/shapes.json only")
    parser.add_argument("--repeak", action="store_true",
                        help="measure again the fit's peak memory of each shape of <out>/shapes.json, in fresh processes")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)  # internal: one fit's peak, this process
    parser.add_argument("--out", default="artifacts/bench")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scale_json = args.scale_json or os.path.join(args.out, "scale.json")
    path = os.path.join(args.out, "shapes.json")
    if args.replan or args.repeak:
        with open(path, encoding="utf-8") as fh:
            report = json.load(fh)
        if args.repeak:
            args.data, args.rows, args.dim = report["data"], report["rows"], report["dim"]
            args.topics = report.get("topics", args.topics)
            for name, entry in report["shapes"].items():
                if "fit" in entry and report["device"] == "cpu":
                    sizes = list(parse_shape(name))
                    entry["fit"].update(peak_figures(fit_peak_in_child(args, sizes), entry["fit"]["sample_bytes"],
                                                     sizes, report["dim"]))
        add_plans(report, scale_json)
        return _write(report, path)
    if args.rss_child:
        print(json.dumps(fit_peak(load_rows(args), list(parse_shape(args.rss_child)))))
        return 0
    shapes = [list(parse_shape(s)) for s in args.shapes.split(",")]
    x = load_rows(args)
    print(f"{len(x):,} rows x {x.shape[1]}-d ({args.data}), shapes {[shape_name(s) for s in shapes]}, "
          f"device {args.device}", flush=True)
    report = {"data": args.data, "rows": len(x), "dim": int(x.shape[1]), "topics": args.topics, "device": args.device,
              "driver_cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "shapes": {}}
    for sizes in shapes:
        name, entry = shape_name(sizes), {}
        if args.fit:
            entry["fit"], model = fit_figures(x, sizes, device=args.device, repeats=args.repeats,
                                              faiss_too=args.faiss and args.device == "cpu",
                                              peak=lambda shape: fit_peak_in_child(args, shape))
            fit = entry["fit"]
            print(f"{name} fit: ours {fit['ours_seconds']:.1f} s MSE {fit['ours_mse']:.5f} "
                  f"(iterations {fit['ours_runs'][0]['lloyd_iterations']}, passes {fit['ours_runs'][0]['joint_passes']}),"
                  f" peak {fit['ours_peak_bytes'] / 2**20:.0f} MiB ({fit['peak_measured_by']}) = {fit['peak_over_sample_and_codebooks']:.2f} x "
                  "(sample + codebooks)" + (f"; faiss {fit['faiss_seconds']:.1f} s MSE {fit['faiss_mse']:.5f}: "
                                            f"time ratio {fit['time_ratio']:.3f}, MSE ratio {fit['mse_ratio']:.4f}"
                                            if "faiss_seconds" in fit else ""), flush=True)
        else:
            rng = np.random.default_rng(0)
            model = RQKMeans(len(sizes), sizes)
            model._set_codebooks([rng.standard_normal((k, x.shape[1]), dtype=np.float32) * 0.5**i
                                  for i, k in enumerate(sizes)])
        rows = np.ascontiguousarray(x[: args.encode_rows])
        entry["encode"] = enc = encode_figures(model, rows, faiss_too=args.faiss)
        print(f"{name} encode, one core: {enc['rows_per_s_core']:,.0f} rows/s, {enc['gflops']:.1f} GFLOP/s = "
              f"{enc['ratio_to_gemm']:.3f} x GEMM ({enc['gemm_gflops']:.1f}); 10^9 rows: "
              f"{enc['core_hours_per_billion']:.1f} core-hours" + (
                  f"; faiss {enc['faiss_rows_per_s_core']:,.0f} rows/s ({enc['faster_than_faiss']:.2f}x), "
                  f"same codes {enc['same_codes_as_faiss']:.4f}" if "faiss_rows_per_s_core" in enc else ""), flush=True)
        if args.device != "cpu":
            entry["encode_device"] = dev = cuda_encode_figures(model, x, args.device)
            print(f"{name} encode on {args.device}: {dev['rows_per_s']:,.0f} rows/s = {dev['ratio_to_gemm']:.3f} x "
                  f"its float32 GEMM ({dev['gemm_tflops']:.1f} TFLOP/s); same codes as numpy "
                  f"{dev['same_codes_as_numpy']:.5f}", flush=True)
        if args.fit:
            entry["billion"] = bill = billion_figures(model, x, entry["fit"]["ours_seconds"],
                                                      [int(d) for d in args.plan_dims.split(",")])
            print(f"{name} at 10^9: counter share {bill['counter_share']:.4f}, largest bucket "
                  f"{bill['largest_bucket']:,.0f}, assignment {bill['assign_core_hours']:.2f} core-h; one core encodes "
                  + ", ".join(f"{1 / k['encode_s_per_row']:,.0f} rows/s at d={d}" for d, k in bill["kernels"].items()),
                  flush=True)
        report["shapes"][name] = entry
        os.makedirs(args.out, exist_ok=True)
        add_plans(report, scale_json)
        _write(report, path)  # after every shape: a long run leaves what it measured
    return 0


def _write(report: dict, path: str) -> int:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    _write_table(report, os.path.join(os.path.dirname(path), "shapes.md"))
    print(f"written {path} and shapes.md")
    return 0


def _write_table(report: dict, path: str) -> None:
    lines = [f"Shapes on {report['rows']:,} x {report['dim']}-d {report['data']} rows, device {report['device']}", "",
             "| shape | fit s (faiss s) | MSE (faiss) | peak / (sample + books) | encode rows/s/core | x GEMM "
             "| x faiss | core-h / 10^9 |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in report["shapes"].items():
        fit, enc = entry.get("fit", {}), entry["encode"]
        cell = (lambda key, fmt: format(fit[key], fmt) if key in fit else "-")
        lines.append(f"| {name} | {cell('ours_seconds', '.1f')} ({cell('faiss_seconds', '.1f')}) | "
                     f"{cell('ours_mse', '.5f')} ({cell('faiss_mse', '.5f')}) | "
                     f"{cell('peak_over_sample_and_codebooks', '.2f')} | {enc['rows_per_s_core']:,.0f} | "
                     f"{enc['ratio_to_gemm']:.3f} | {enc.get('faster_than_faiss', float('nan')):.2f} | "
                     f"{enc['core_hours_per_billion']:.2f} |")
    planned = [(name, entry) for name, entry in report["shapes"].items() if "plan" in entry]
    if planned:
        job = report["job"]
        lines += ["", f"At 10^9 items (the advisor's prediction for each fitted model; core-hours from the job's per-item "
                  f"costs measured by semid bench --scale at {job['n']:,} rows, d={job['dim']}, {job['shape']}, "
                  f"{job['date']}, re-based to each shape and d):", "",
                  "| shape | counter share | largest bucket | d | encode core-h | relocation core-h | rest of the job "
                  "core-h | first run core-h | +0.1% daily core-h |", "|---|---|---|---|---|---|---|---|---|"]
        for name, entry in planned:
            bill = entry["billion"]
            for d, p in entry["plan"].items():
                lines.append(f"| {name} | {bill['counter_share']:.4f} | {bill['largest_bucket']:,.0f} | {d} | "
                             f"{p['encode_core_hours']:.2f} | {p['relocation_core_hours']:.2f} | {p['job_core_hours']:.2f} "
                             f"| {p['first_run_core_hours']:.2f} | {p['daily_core_hours']:.3f} |")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
