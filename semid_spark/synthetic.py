"""Deterministic synthetic catalogs for the demo, tests and benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np


def generated_catalog(n_items: int, dim: int, n_topics: int, seed: int) -> np.ndarray:
    """(n_items, dim) float32 embeddings drawn around n_topics topic centers (a Gaussian mixture).

    Row i depends only on (i, dim, n_topics, seed)'s generator stream, so the first n rows of
    a larger catalog equal a smaller one's: a grown catalog keeps its old items.
    """
    topics = _topics(n_topics, dim, seed)
    out = np.empty((n_items, dim), dtype=np.float32)
    block = 65_536
    for start in range(0, n_items, block):
        n = min(block, n_items - start)
        topic_rng = np.random.default_rng([seed, start // block, 0])  # one stream for topics, one for noise,
        noise_rng = np.random.default_rng([seed, start // block, 1])  # so a shorter block is a prefix of a longer
        out[start:start + n] = topics[topic_rng.integers(0, n_topics, n)] + 0.3 * noise_rng.standard_normal((n, dim)).astype(np.float32)
    return out


def drifted_items(n_items: int, dim: int, n_topics: int, seed: int, *, drift: float = 1.0,
                  stream: int = 1) -> np.ndarray:
    """(n_items, dim) float32 new items around the same topic centers as ``generated_catalog(…, seed)``,
    with shifted topic weights: topic t is drawn with probability proportional to exp(drift * z_t),
    z_t ~ N(0, 1) (drift=1: the most popular topics several times as likely as before, some topics
    nearly gone). *stream* picks another draw of items (and of the weights) from the same topics.
    """
    topics = _topics(n_topics, dim, seed)
    rng = np.random.default_rng([seed, 1_000_003, stream])
    weights = np.exp(drift * rng.standard_normal(n_topics))
    picks = rng.choice(n_topics, n_items, p=weights / weights.sum())
    return topics[picks] + 0.3 * rng.standard_normal((n_items, dim)).astype(np.float32)


def _topics(n_topics: int, dim: int, seed: int) -> np.ndarray:
    """The topic centers (n_topics, dim) float32 of the catalogs of *seed*."""
    return np.random.default_rng(seed).standard_normal((n_topics, dim)).astype(np.float32)
