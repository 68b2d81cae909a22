"""RQ-KMeans fit: time and reconstruction error beside faiss, scikit-learn and semantic-id 0.2.5.

Run: ``make bench-fit`` (installs the ``example`` and ``compare`` extras). On ``--data sentences``
(default: the real text of ``make bench-quality``, ~170k docstring sentences embedded by WordLlama,
256-d), with 3 levels x 256 codes, every fit in the same process and on the same rows:

- faiss's greedy ``ResidualQuantizer`` (the speed goal: its training time);
- scikit-learn ``KMeans(n_init=1)`` per level, run to convergence on the residuals (the error goal);
- ours with default parameters, for ``--seeds`` seeds (every figure, and their mean), and on torch's
  kernels (the cuda/mps code path) on the cpu: numpy's kernels, the cpu path, against them;
- ours as it fitted before the joint passes and the stop rule (greedy, 100 Lloyd iterations a level);
- ours with ``implementation="constrained"`` (balanced; goal: at most 3x faiss's time), with the
  spread of cluster sizes when it encodes its own training data (goal: within 10% of N/K).

``--data synthetic`` fits a generated catalog beside semantic-id 0.2.5 (its default n_init=10).
Figures are printed beside their goals (issue 16, item 5) and written to ``<out>/fit.json``/``fit.md``.
The error is the mean squared distance between a row and the decoding of its code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import asdict

import numpy as np

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.bench.suite import Row


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _error(x: np.ndarray, recon: np.ndarray) -> float:
    return float(((x.astype(np.float64) - recon) ** 2).sum(axis=1).mean())


def faiss_greedy(x: np.ndarray, levels: int, clusters: int) -> tuple[float, float]:
    import faiss

    rq = faiss.ResidualQuantizer(x.shape[1], levels, int(np.log2(clusters)))
    rq.max_beam_size = 1
    _, seconds = _timed(lambda: rq.train(x))
    return seconds, _error(x, rq.decode(rq.compute_codes(x)))


def sklearn_converged(x: np.ndarray, levels: int, clusters: int, seed: int) -> tuple[float, float, list[int]]:
    """Residual k-means with scikit-learn's KMeans (k-means++ on all rows, Lloyd to its tol)."""
    from sklearn.cluster import KMeans

    def fit() -> tuple[np.ndarray, list[int]]:
        residual, n_iter = x.copy(), []
        for level in range(levels):
            km = KMeans(clusters, n_init=1, random_state=seed + level).fit(residual)
            residual -= km.cluster_centers_[km.labels_].astype(np.float32)
            n_iter.append(int(km.n_iter_))
        return residual, n_iter

    (residual, n_iter), seconds = _timed(fit)
    return seconds, float((residual.astype(np.float64) ** 2).sum(axis=1).mean()), n_iter


def ours(x: np.ndarray, levels: int, clusters: int, **params) -> tuple[float, float, RQKMeans]:
    model, seconds = _timed(lambda: RQKMeans(levels, clusters, **params).fit(x))
    return seconds, _error(x, model.decode(model.encode(x))), model


@contextlib.contextmanager
def torch_kernels():
    """RQKMeans.fit on torch's kernels on the cpu (as on cuda and mps) inside the block."""
    import torch

    from semid_spark.algorithms import _torch_ops, rq_kmeans

    backend = rq_kmeans._fit_backend
    rq_kmeans._fit_backend = lambda device: (_torch_ops, torch.device("cpu"))
    try:
        yield
    finally:
        rq_kmeans._fit_backend = backend


def real(args) -> list[Row]:
    __import__("torch")  # imported before the clocks start, as faiss and scikit-learn are

    from semid_spark.bench.quality import real_text

    text, x, digest = real_text("sentences", args.items, args.out)
    print(f"{len(x):,} sentences (sha256 {digest[:12]}) x {x.shape[1]}-d, RQ-KMeans {args.levels} x {args.clusters}",
          flush=True)
    rows: list[Row] = []

    def add(row: Row) -> None:
        shown = "-" if row.value is None else f"{row.value:.4f}"
        print(f"{row.figure}: {shown} (goal {row.goal}) {row.detail}", flush=True)
        rows.append(row)

    faiss_s, faiss_error = faiss_greedy(x, args.levels, args.clusters)
    add(Row("faiss ResidualQuantizer (greedy): train seconds", faiss_s, "(reference)", None,
            f"MSE {faiss_error:.5f}"))
    sk_s, sk_error, sk_iter = sklearn_converged(x, args.levels, args.clusters, 0)
    add(Row("scikit-learn residual KMeans, converged: fit seconds", sk_s, "(reference)", None,
            f"MSE {sk_error:.5f}; Lloyd iterations per level {sk_iter}"))
    times, errors = [], []
    for seed in range(args.seeds):
        seconds, error, model = ours(x, args.levels, args.clusters, random_state=seed)
        times.append(seconds)
        errors.append(error)
        add(Row(f"semid_spark default (random_state={seed}): fit seconds / faiss's", seconds / faiss_s, "<= 1.0",
                seconds <= faiss_s, f"{seconds:.1f} s; MSE {error:.5f} = {error / sk_error:.4f} x scikit-learn's; "
                f"Lloyd iterations {[s.n_iter for s in model.level_stats_]}, joint passes {model.refine_passes_}"))
    mean_s, mean_error = float(np.mean(times)), float(np.mean(errors))
    add(Row(f"semid_spark default, mean of {args.seeds} seeds: fit seconds / faiss's", mean_s / faiss_s, "<= 1.0",
            mean_s <= faiss_s, f"{mean_s:.1f} s vs {faiss_s:.1f} s"))
    add(Row(f"semid_spark default, mean of {args.seeds} seeds: MSE / converged scikit-learn's", mean_error / sk_error,
            "<= 1.0", mean_error <= sk_error, f"{mean_error:.5f} vs {sk_error:.5f} (faiss {faiss_error:.5f}); "
            f"fit {sk_s / mean_s:.1f}x faster than scikit-learn"))
    # the same fit on torch's kernels (what cuda and mps run), here on the cpu: numpy's are the cpu path
    # since torch became an extra, and should cost no more than torch's did
    with torch_kernels():
        torch_s, torch_error, _ = ours(x, args.levels, args.clusters, random_state=0)
    add(Row("semid_spark default (random_state=0): numpy kernels' fit seconds / torch kernels' on cpu",
            times[0] / torch_s, "<= 1.1", times[0] <= 1.1 * torch_s,
            f"numpy {times[0]:.1f} s (MSE {errors[0]:.5f}) vs torch {torch_s:.1f} s (MSE {torch_error:.5f})"))
    # the trade-off: without the joint passes the greedy fit alone, faster than faiss but at a higher error
    seconds, error, _ = ours(x, args.levels, args.clusters, random_state=0, refine_passes=0)
    add(Row("semid_spark refine_passes=0 (greedy only): fit seconds / faiss's", seconds / faiss_s, "(trade-off)", None,
            f"{seconds:.1f} s; MSE {error:.5f} = {error / sk_error:.4f} x scikit-learn's, "
            f"{error / faiss_error:.4f} x faiss's"))
    if args.previous:
        seconds, error, _ = ours(x, args.levels, args.clusters, random_state=0, inertia_tol=0.0, refine_passes=0)
        add(Row("semid_spark before (greedy, Lloyd to tol or 100 iterations): fit seconds / faiss's",
                seconds / faiss_s, "(baseline)", None, f"{seconds:.1f} s; MSE {error:.5f} = "
                f"{error / sk_error:.4f} x scikit-learn's; default now {seconds / mean_s:.1f}x faster"))
    if args.constrained:
        seconds, error, model = ours(x, args.levels, args.clusters, random_state=0, implementation="constrained")
        add(Row("semid_spark constrained: fit seconds / faiss's", seconds / faiss_s, "<= 3.0", seconds <= 3 * faiss_s,
                f"{seconds:.1f} s; MSE {error:.5f}"))
        codes = model.encode(x)
        spread = max(float(np.abs(np.bincount(codes[:, level], minlength=args.clusters) / (len(x) / args.clusters)
                                  - 1).max()) for level in range(args.levels))
        add(Row("semid_spark constrained: largest |cluster size / (N/K) - 1| encoding its training data", spread,
                "<= 0.10", spread <= 0.10, f"over {args.levels} levels"))
    return rows


def synthetic(args) -> list[Row]:
    from semid_spark.synthetic import generated_catalog

    x = generated_catalog(args.items, args.dim, n_topics=1000, seed=0)
    rows = []
    seconds, error, model = ours(x, args.levels, args.clusters, random_state=0)
    encode_s = _timed(lambda: model.encode(x))[1]
    rows.append(Row("semid_spark: fit seconds", seconds, "(info)", None,
                    f"MSE {error:.4f}; encode {len(x) / encode_s:,.0f} rows/s"))
    from semantic_id.algorithms.rq_kmeans import RQKMeans as Original

    original = Original(n_levels=args.levels, n_clusters=args.clusters, random_state=0, n_init=args.original_n_init)
    _, original_s = _timed(lambda: original.fit(x))
    codes, original_encode_s = _timed(lambda: original.encode(x))
    original_error = _error(x, original.decode(codes))
    rows.append(Row(f"semantic-id 0.2.5 (n_init={args.original_n_init}): fit seconds", original_s, "(info)", None,
                    f"MSE {original_error:.4f}; encode {len(x) / original_encode_s:,.0f} rows/s"))
    rows.append(Row("fit time, ours / semantic-id's", seconds / original_s, "(info)", None,
                    f"MSE ours / semantic-id's {error / original_error:.4f}; "
                    f"encode time {encode_s / original_encode_s:.3f}"))
    for row in rows:
        print(f"{row.figure}: {row.value:.4f} {row.detail}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semid_spark.bench.fit_compare", description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["sentences", "synthetic"], default="sentences")
    parser.add_argument("--items", type=int, default=None, help="sentences: at most (all); synthetic: 100,000")
    parser.add_argument("--dim", type=int, default=128, help="synthetic only")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3, help="fits of ours with random_state 0..seeds-1")
    parser.add_argument("--no-previous", dest="previous", action="store_false",
                        help="skip the fit as it was before the joint passes (about a minute)")
    parser.add_argument("--no-constrained", dest="constrained", action="store_false",
                        help="skip the balanced fit (minutes)")
    parser.add_argument("--original-n-init", type=int, default=10, help="synthetic: semantic-id's default is 10")
    parser.add_argument("--out", default="artifacts/bench")
    args = parser.parse_args(argv)
    if args.data == "sentences":
        args.items = args.items or 200_000
        rows = real(args)
    else:
        args.items = args.items or 100_000
        rows = synthetic(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fit.json"), "w", encoding="utf-8") as fh:
        json.dump({"data": args.data, "items": args.items, "levels": args.levels, "clusters": args.clusters,
                   "rows": [asdict(r) for r in rows]}, fh, indent=2)
    table = ["| figure | value | goal | met | detail |", "|---|---|---|---|---|"]
    table += [f"| {r.figure} | {'-' if r.value is None else f'{r.value:.4f}'} | {r.goal} | "
              f"{'' if r.met is None else ('yes' if r.met else 'NO')} | {r.detail} |" for r in rows]
    with open(os.path.join(args.out, "fit.md"), "w", encoding="utf-8") as fh:
        fh.write(f"RQ-KMeans fit, {args.data}, {args.levels} x {args.clusters}\n\n" + "\n".join(table) + "\n")
    print(f"written {os.path.join(args.out, 'fit.json')} and fit.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
