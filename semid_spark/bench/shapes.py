"""`semid bench --shapes`: large codebook shapes fitted and encoded beside faiss and the machine's GEMM.

Run: ``make bench-shapes`` (the ``compare`` extra brings faiss). On the same rows, for each shape
(``3x256`` ... ``3x8192``, or sizes per level such as ``2048/1024/512/256``):

- **fit**: ``RQKMeans`` with the job's defaults against faiss's ``Kmeans`` run greedily level by
  level (25 iterations, at most 256 rows per centroid: faiss's defaults) on the same rows; seconds
  and reconstruction error, alternating ours and faiss's ``--repeats`` times (the median is quoted),
  and the fit's peak memory beside the sample's bytes (numpy's allocations, by ``tracemalloc``;
  torch's allocator peak on cuda);
- **encode**: rows/s on one core (one BLAS thread), and that rate's share of the float32 GEMM rate
  of the same products measured in the same run (each level's ``(rows, d) @ (d, K)`` into a
  preallocated output, at the best of 256, 1024 and 4096 rows); faiss's greedy
  ``ResidualQuantizer.compute_codes`` (beam 1) with our codebooks copied in, and whether its codes
  equal ours; on ``--device cuda`` the same with torch on the GPU, its codes against numpy's.
- **plan**: encode core-hours for 10^9 items at the measured rate (the encode kernel alone: Spark's
  transfer, measured by ``semid bench``, comes on top).

Figures go to ``<out>/shapes.json`` and ``shapes.md``. ``--data synthetic`` (default) draws a
topic mixture of ``--rows`` x ``--dim``; ``--data sentences`` or ``words`` takes the real text of
``make bench-quality`` (WordLlama, 256-d: docstring sentences, wordfreq's words; at most ``--rows``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
import tracemalloc
from typing import Callable

import numpy as np

from semid_spark.advise import parse_shape, shape_name
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.utils.timing import best_of, one_blas_thread

DEFAULT_SHAPES = ("3x256", "3x1024", "3x4096")


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
def fit_ours(x: np.ndarray, sizes: list[int], device: str, seed: int) -> dict:
    """Seconds, error and peak memory of the default fit (the job's model parameters)."""
    model = RQKMeans(len(sizes), sizes, random_state=seed, device=device)
    if device == "cpu":
        tracemalloc.start()
        _, seconds = _seconds(lambda: model.fit(x))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _, seconds = _seconds(lambda: model.fit(x))
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return {"seconds": seconds, "mse": _error(x, model.decode(model.encode(x))), "peak_bytes": int(peak),
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


def fit_figures(x: np.ndarray, sizes: list[int], *, device: str, repeats: int, faiss_too: bool) -> tuple[dict, RQKMeans]:
    ours, theirs, model = [], [], None
    for repeat in range(repeats):  # alternating, in one process: the machine's noise falls on both
        run = fit_ours(x, sizes, device, seed=repeat)
        model = model or run["model"]
        ours.append({key: value for key, value in run.items() if key != "model"})
        if faiss_too:
            theirs.append(fit_faiss(x, sizes, seed=repeat))
    sample_bytes, book_bytes = x.nbytes, 4 * x.shape[1] * sum(sizes)
    out = {
        "ours_seconds": statistics.median(r["seconds"] for r in ours),
        "ours_mse": statistics.median(r["mse"] for r in ours),
        "ours_peak_bytes": max(r["peak_bytes"] for r in ours),
        "peak_over_sample_and_codebooks": max(r["peak_bytes"] for r in ours) / (sample_bytes + book_bytes),
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
    parser.add_argument("--rows", type=int, default=500_000, help="rows fitted and encoded (sentences: at most)")
    parser.add_argument("--dim", type=int, default=128, help="synthetic only")
    parser.add_argument("--topics", type=int, default=1000, help="synthetic only: topics of the mixture")
    parser.add_argument("--encode-rows", type=int, default=65_536, help="rows encoded on one core")
    parser.add_argument("--repeats", type=int, default=1, help="alternating fits of ours and faiss's (median)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: fit and encode there too")
    parser.add_argument("--no-faiss", dest="faiss", action="store_false", help="without the faiss baselines")
    parser.add_argument("--no-fit", dest="fit", action="store_false", help="encode only (random codebooks)")
    parser.add_argument("--out", default="artifacts/bench")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shapes = [list(parse_shape(s)) for s in args.shapes.split(",")]
    x = load_rows(args)
    print(f"{len(x):,} rows x {x.shape[1]}-d ({args.data}), shapes {[shape_name(s) for s in shapes]}, "
          f"device {args.device}", flush=True)
    report = {"data": args.data, "rows": len(x), "dim": int(x.shape[1]), "device": args.device, "shapes": {}}
    for sizes in shapes:
        name, entry = shape_name(sizes), {}
        if args.fit:
            entry["fit"], model = fit_figures(x, sizes, device=args.device, repeats=args.repeats,
                                              faiss_too=args.faiss and args.device == "cpu")
            fit = entry["fit"]
            print(f"{name} fit: ours {fit['ours_seconds']:.1f} s MSE {fit['ours_mse']:.5f} "
                  f"(iterations {fit['ours_runs'][0]['lloyd_iterations']}, passes {fit['ours_runs'][0]['joint_passes']}),"
                  f" peak {fit['ours_peak_bytes'] / 2**20:.0f} MiB = {fit['peak_over_sample_and_codebooks']:.2f} x "
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
        report["shapes"][name] = entry
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "shapes.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    _write_table(report, os.path.join(args.out, "shapes.md"))
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
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
