"""Quality metrics of semantic IDs, with semantic-id 0.2.5's names, definitions and seeds.

Same inputs and seeds give the same numbers as the original, but every metric is
vectorised: the code-space neighbour search computes the hierarchical distance of a block
of queries to all items with array operations (the original calls a Python function per
pair), and the embedding-space ground truth is a chunked float64 GEMM. Neighbour ties are
broken exactly as scikit-learn's brute-force search breaks them (``argpartition`` then
``argsort`` of the same distance rows), so the chosen neighbours, and the scores, match.
Needs numpy only (no scikit-learn or scipy).
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

Metric = Literal["hierarchical", "hamming"]
_QUERY_BLOCK = 32  # queries per block: a (block, N) float64 distance matrix at a time (small: fresh
#                   multi-100-MB blocks cost more in page faults than the arithmetic; 32 ran 2x faster than 256 cold)


def hierarchical_distance(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """L minus the length of the common prefix; broadcasts over leading axes.

    Examples
    --------
    >>> hierarchical_distance(np.array([3, 9, 1]), np.array([3, 2, 1]))
    array(2)
    """
    a, b = np.asarray(codes_a), np.asarray(codes_b)
    n_levels = a.shape[-1]
    still_equal = np.ones(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]), dtype=bool)
    prefix = np.zeros(still_equal.shape, dtype=np.int64)
    for level in range(n_levels):
        still_equal &= a[..., level] == b[..., level]
        prefix += still_equal
    return np.asarray(n_levels - prefix)


def _code_distances(queries: np.ndarray, codes: np.ndarray, metric: Metric) -> np.ndarray:
    """(q, L), (N, L) -> (q, N) float64, as scikit-learn computes them for the original."""
    if metric == "hamming":
        differ = np.zeros((len(queries), len(codes)), dtype=np.float64)
        for level in range(codes.shape[1]):
            differ += queries[:, level, None] != codes[None, :, level]
        return differ / codes.shape[1]
    packed = _packed_prefixes(queries, codes)
    if packed is None:
        return hierarchical_distance(queries[:, None, :], codes[None, :, :]).astype(np.float64)
    (q_keys, keys), bits = packed
    differ = q_keys[:, None] ^ keys[None, :]  # highest set bit: the first level that differs
    out = (differ != 0).astype(np.float64)
    for level in range(1, codes.shape[1]):
        out += differ >= (1 << (bits * level))
    return out


def _packed_prefixes(queries: np.ndarray, codes: np.ndarray):
    """Each code row as one integer, level 0 in the highest bits (None when they do not fit
    in 63 bits or codes are negative): the common prefix length of two rows is then read off
    the highest set bit of their XOR."""
    n_levels = codes.shape[1]
    top = int(max(codes.max(initial=0), queries.max(initial=0)))
    bits = max(1, top.bit_length())
    if bits * n_levels > 63 or min(codes.min(initial=0), queries.min(initial=0)) < 0:
        return None
    dtype = np.int32 if bits * n_levels <= 31 else np.int64
    weights = (1 << (bits * np.arange(n_levels - 1, -1, -1))).astype(dtype)
    return (queries.astype(dtype) @ weights, codes.astype(dtype) @ weights), bits


def _nearest(dist: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Row-wise n nearest (scikit-learn's brute-force reduction, so ties fall the same way)."""
    rows = np.arange(dist.shape[0])[:, None]
    idx = np.argpartition(dist, n_neighbors - 1, axis=1)[:, :n_neighbors]
    return idx[rows, np.argsort(dist[rows, idx])]


def _code_neighbors(codes: np.ndarray, query_idx: np.ndarray, n_neighbors: int, metric: Metric) -> np.ndarray:
    out = np.empty((len(query_idx), n_neighbors), dtype=np.int64)
    for s in range(0, len(query_idx), _QUERY_BLOCK):
        block = query_idx[s:s + _QUERY_BLOCK]
        out[s:s + len(block)] = _nearest(_code_distances(codes[block], codes, metric), n_neighbors)
    return out


def _embedding_neighbors(x: np.ndarray, query_idx: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Exact Euclidean neighbours in float64 (the ground truth)."""
    x64 = np.asarray(x, dtype=np.float64)
    x64_t = np.ascontiguousarray(x64.T)
    sq = np.einsum("nd,nd->n", x64, x64)
    out = np.empty((len(query_idx), n_neighbors), dtype=np.int64)
    for s in range(0, len(query_idx), _QUERY_BLOCK):
        block = query_idx[s:s + _QUERY_BLOCK]
        dist = x64[block] @ x64_t  # ||y||^2 - 2 q.y: the squared distance less a per-row constant
        dist *= -2.0
        dist += sq[None, :]
        out[s:s + len(block)] = _nearest(dist, n_neighbors)
    return out


def _queries(n: int, k: int, sample_size: int, seed: int) -> np.ndarray:
    if k >= n:
        raise ValueError(f"k={k} must be less than N={n} (need at least k+1 samples)")
    return np.random.RandomState(seed).choice(n, min(n, sample_size), replace=False)


def _both_neighbors(X, codes, k, sample_size, seed, metric):
    X, codes = np.asarray(X), np.asarray(codes)
    query_idx = _queries(len(X), k, sample_size, seed)
    truth = _embedding_neighbors(X, query_idx, k + 1)[:, 1:]  # drop the first: the query itself
    found = _code_neighbors(codes, query_idx, k + 1, metric)[:, 1:]
    return truth, found


def recall_at_k(X: np.ndarray, codes: np.ndarray, k: int = 10, sample_size: int = 1000, seed: int = 42,
                metric: Metric = "hierarchical") -> float:
    """Mean share of each sampled query's k true neighbours among its k nearest by code."""
    truth, found = _both_neighbors(X, codes, k, sample_size, seed, metric)
    hits = (truth[:, :, None] == found[:, None, :]).any(axis=2).sum(axis=1)
    return float(np.mean(hits / k))


def ndcg_at_k(X: np.ndarray, codes: np.ndarray, k: int = 10, sample_size: int = 1000, seed: int = 42,
              metric: Metric = "hierarchical") -> float:
    """NDCG@k of the code ranking, relevance k - (rank among the true neighbours)."""
    truth, found = _both_neighbors(X, codes, k, sample_size, seed, metric)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    match = truth[:, None, :] == found[:, :, None]  # (q, predicted rank, true rank)
    relevance = (match * (k - np.arange(k))[None, None, :]).sum(axis=2)
    idcg = float(((k - np.arange(k)) * discount).sum())
    return float(np.mean((relevance * discount).sum(axis=1) / idcg))


def _rank_average(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    new_group = np.r_[True, sorted_vals[1:] != sorted_vals[:-1]]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends + 1) / 2.0)[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = _rank_average(np.asarray(a, dtype=np.float64)), _rank_average(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def distance_correlation(X: np.ndarray, codes: np.ndarray, sample_size: int = 1000, n_pairs: int = 2000,
                         seed: int = 42, metric: Metric = "hierarchical") -> float:
    """Spearman correlation of Euclidean and code distances over seeded random pairs.

    ``sample_size`` is unused, as in the original (kept for its signature).
    """
    X, codes = np.asarray(X), np.asarray(codes)
    rng = np.random.RandomState(seed)
    i, j = rng.randint(0, len(X), n_pairs), rng.randint(0, len(X), n_pairs)
    d_x = np.linalg.norm(X[i] - X[j], axis=1)
    if metric == "hamming":
        d_c = np.sum(codes[i] != codes[j], axis=1).astype(float)
    else:
        d_c = hierarchical_distance(codes[i], codes[j]).astype(float)
    return spearman(d_x, d_c)


def find_similar(codes: np.ndarray, query: int | np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The k items nearest to *query* (an index, excluded from the answer, or a code row)
    by hierarchical distance: (indices, distances), nearest first."""
    codes = np.asarray(codes)
    if isinstance(query, (int, np.integer)):
        query_idx, query_code = int(query), codes[int(query)]
    else:
        query_idx, query_code = None, np.asarray(query)
    dists = hierarchical_distance(query_code[np.newaxis, :], codes).ravel()
    if query_idx is not None:
        dists[query_idx] = np.iinfo(dists.dtype).max
        k = min(k, len(codes) - 1)
    else:
        k = min(k, len(codes))
    top = np.argsort(dists)[:k]
    return top, dists[top]


def _unique_rows(codes: np.ndarray, depth: int) -> int:
    prefix = np.ascontiguousarray(codes[:, :depth])
    return len(np.unique(prefix.view(np.dtype((np.void, prefix.dtype.itemsize * depth)))))


def collision_rate_per_level(codes: np.ndarray) -> list[float]:
    """1 - distinct prefixes / N, for prefixes of depth 1..L."""
    codes = np.asarray(codes)
    return [1.0 - _unique_rows(codes, depth) / len(codes) for depth in range(1, codes.shape[1] + 1)]


def collision_share(codes: np.ndarray) -> float:
    """Share of the rows whose full code another row also has (0 for no rows)."""
    codes = np.asarray(codes)
    if not len(codes):
        return 0.0
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return float(counts[counts > 1].sum() / len(codes))


def code_utilization_per_level(codes: np.ndarray, n_clusters: int | Sequence[int] | None = None) -> list[float]:
    """Share of each level's codebook in use (sizes default to max code + 1)."""
    codes = np.asarray(codes)
    n_levels = codes.shape[1]
    if n_clusters is None:
        sizes = [int(codes[:, lv].max()) + 1 for lv in range(n_levels)]
    elif isinstance(n_clusters, (int, np.integer)):
        sizes = [int(n_clusters)] * n_levels
    else:
        sizes = list(n_clusters)
    return [len(np.unique(codes[:, lv])) / sizes[lv] for lv in range(n_levels)]


def code_entropy_per_level(codes: np.ndarray) -> list[float]:
    """Shannon entropy (nats) of each level's code distribution."""
    codes = np.asarray(codes)
    out = []
    for lv in range(codes.shape[1]):
        _, counts = np.unique(codes[:, lv], return_counts=True)
        p = counts / counts.sum()
        out.append(-float(np.sum(p * np.log(p + 1e-12))))
    return out


def evaluate(X: np.ndarray, codes: np.ndarray, encoder=None, k: int = 10, n_pairs: int = 2000, seed: int = 42) -> dict:
    """All metrics, in the original's order: n_samples, n_unique_codes, collision_rate,
    collision_rate_per_level, recall_at_{k} and ndcg_at_{k} (when k < N),
    distance_correlation, code_utilization_per_level, code_entropy_per_level and, with an
    encoder that decodes, quantization_mse."""
    X, codes = np.asarray(X), np.asarray(codes)
    n = len(X)
    n_unique = _unique_rows(codes, codes.shape[1])
    results: dict = {"n_samples": n, "n_unique_codes": n_unique, "collision_rate": 1.0 - n_unique / n,
                     "collision_rate_per_level": collision_rate_per_level(codes)}
    if k < n:
        results[f"recall_at_{k}"] = recall_at_k(X, codes, k=k, seed=seed)
        results[f"ndcg_at_{k}"] = ndcg_at_k(X, codes, k=k, seed=seed)
    results["distance_correlation"] = distance_correlation(X, codes, n_pairs=n_pairs, seed=seed)
    sizes = None
    if encoder is not None:  # ours, or another library's with codebooks_ (NotFittedError is an AttributeError)
        books = getattr(encoder, "codebooks_", None)
        sizes = [len(c) for c in books] if books else None
    results["code_utilization_per_level"] = code_utilization_per_level(codes, n_clusters=sizes)
    results["code_entropy_per_level"] = code_entropy_per_level(codes)
    if encoder is not None:
        try:
            results["quantization_mse"] = float(np.mean((X - encoder.decode(codes)) ** 2))
        except NotImplementedError:
            pass
    return results


evaluate_quality = evaluate
