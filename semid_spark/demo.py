"""`make demo`: fit RQ-KMeans on a generated catalog and print sample semantic IDs.

Until the Spark job lands this runs the algorithm path end to end on one machine.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Sequence

import numpy as np

from semid_spark.algorithms.rq_kmeans import RQKMeans


def generated_catalog(n_items: int, dim: int, n_topics: int, seed: int) -> np.ndarray:
    """(n_items, dim) float32 embeddings drawn around n_topics topic centers."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((n_topics, dim)).astype(np.float32)
    return topics[rng.integers(0, n_topics, n_items)] + 0.3 * rng.standard_normal((n_items, dim)).astype(np.float32)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--out", default="artifacts/demo_model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    x = generated_catalog(args.items, args.dim, n_topics=50, seed=0)
    start = time.perf_counter()
    model = RQKMeans(n_levels=3, n_clusters=64, random_state=42).fit(x)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    codes = model.encode(x)
    encode_s = time.perf_counter() - start
    ids = model.semantic_id(codes)
    model.save(args.out)
    reloaded = RQKMeans.load(args.out)
    assert np.array_equal(reloaded.encode(x[:1000]), codes[:1000])
    print(f"fit {args.items}x{args.dim} in {fit_s:.2f}s, encode in {encode_s:.3f}s; model {args.out} sha256 {model.sha256[:12]}")
    print(f"distinct IDs: {len(set(ids))} of {len(ids)}")
    for i in range(5):
        print(f"  item {i}: {ids[i]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
