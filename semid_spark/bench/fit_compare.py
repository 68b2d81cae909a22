"""Fit and encode timings of our RQKMeans beside semantic-id 0.2.5 on the same data.

Run: ``make bench-fit`` (needs the `compare` extra). Prints seconds, rows/s and the
reconstruction MSE of each, and the ratios ours / original measured in this run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.synthetic import generated_catalog


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _recon_mse(model, x: np.ndarray, codes: np.ndarray) -> float:
    return float(((x - model.decode(codes)) ** 2).sum(1).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--original-n-init", type=int, default=10, help="the original's default is 10")
    args = parser.parse_args()
    x = generated_catalog(args.items, args.dim, n_topics=1000, seed=0)
    rows = {}
    ours = RQKMeans(n_levels=args.levels, n_clusters=args.clusters, random_state=0)
    _, fit_s = _timed(lambda: ours.fit(x))
    codes, enc_s = _timed(lambda: ours.encode(x))
    rows["semid_spark"] = (fit_s, enc_s, _recon_mse(ours, x, codes))
    from semantic_id.algorithms.rq_kmeans import RQKMeans as Original

    original = Original(n_levels=args.levels, n_clusters=args.clusters, random_state=0, n_init=args.original_n_init)
    _, fit_s = _timed(lambda: original.fit(x))
    codes, enc_s = _timed(lambda: original.encode(x))
    rows[f"semantic-id 0.2.5 (n_init={args.original_n_init})"] = (fit_s, enc_s, _recon_mse(original, x, codes))
    print(f"{args.items}x{args.dim}, {args.levels} levels x {args.clusters}")
    print(f"{'':34s} {'fit s':>8s} {'encode s':>9s} {'encode rows/s':>14s} {'recon MSE':>10s}")
    for name, (f, e, m) in rows.items():
        print(f"{name:34s} {f:8.2f} {e:9.3f} {args.items / e:14,.0f} {m:10.4f}")
    (of, oe, om), (rf, re, rm) = rows.values()
    print(f"ratios ours/original: fit time {of / rf:.3f}, encode time {oe / re:.3f}, MSE {om / rm:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
