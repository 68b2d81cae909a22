"""Deterministic synthetic catalogs for the demo, tests and benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np


def generated_catalog(n_items: int, dim: int, n_topics: int, seed: int) -> np.ndarray:
    """(n_items, dim) float32 embeddings drawn around n_topics topic centers (a Gaussian mixture).

    Row i depends only on (i, dim, n_topics, seed)'s generator stream, so the first n rows of
    a larger catalog equal a smaller one's: a grown catalog keeps its old items.
    """
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((n_topics, dim)).astype(np.float32)
    out = np.empty((n_items, dim), dtype=np.float32)
    block = 65_536
    for start in range(0, n_items, block):
        n = min(block, n_items - start)
        topic_rng = np.random.default_rng([seed, start // block, 0])  # one stream for topics, one for noise,
        noise_rng = np.random.default_rng([seed, start // block, 1])  # so a shorter block is a prefix of a longer
        out[start:start + n] = topics[topic_rng.integers(0, n_topics, n)] + 0.3 * noise_rng.standard_normal((n, dim)).astype(np.float32)
    return out
