"""Numpy kernels of the k-means fit: what ``RQKMeans.fit`` runs on ``device="cpu"``, with no torch.

The same functions, by name and meaning, as the fit section of ``_torch_ops`` (which serves
cuda and mps): ``RQKMeans.fit`` is written once against either module, as faiss's k-means is
against its ``DatasetAssign`` backends. Arrays are float32 (n, d) rows and (k, d) centers;
every sum that decides something (inertia, k-means++ trials, errors) is taken in float64.
Memory stays O(FIT_CHUNK x K) beside the data, never O(N x K), except where a docstring says.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
from scipy import sparse

from semid_spark.algorithms import _ops

FIT_CHUNK = 4096  # rows per GEMM block in fitting...
SCORE_BLOCK = FIT_CHUNK * 1024  # ...fewer above K = 1024, so that a block's (rows, K) scores stay 16 MiB

BALANCE_TOL = 0.02  # a balanced fit's clusters hold within 2% of N/K rows (when encoding its training data)
LLOYD_BALANCE_TOL = 0.05  # during balanced Lloyd the prices need only be this close; the offsets get BALANCE_TOL
PRICE_ROWS_PER_CLUSTER = 1024  # prices are solved on at most this many rows per cluster (memory O(rows x K))
# Steps for a level's final offsets (once per level; the loop ends when BALANCE_TOL is met): 300 steps
# left 1,003 rows in 10 clusters (5 tight topics) 3.7-7.7% off N/K on four seeds, where the rounding of
# the CPU decided how far they got; 3,000 met 2% on all four in 0.1 s
OFFSET_PRICE_STEPS = 3000


def block_rows(k: int) -> int:  # rows per block against a codebook of k codes
    return min(FIT_CHUNK, max(256, SCORE_BLOCK // k))


# ------------------------------------------------------------------- arrays (the backend's own)
def rows_on(x: np.ndarray, device=None) -> np.ndarray:  # (n, d) float32, C-contiguous: used as it is
    return x


def take(a: np.ndarray, index: np.ndarray) -> np.ndarray:  # rows (or entries) at a numpy index
    return a[index]


def copy_into(out: np.ndarray, a: np.ndarray) -> np.ndarray:  # out[...] = a, no new array
    np.copyto(out, a)
    return out


def copy(a: np.ndarray) -> np.ndarray:
    return a.copy()


def to_numpy(a: np.ndarray) -> np.ndarray:
    return a


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrays)


def counts(labels: np.ndarray, k: int) -> np.ndarray:  # (n,) -> (k,) int64
    return np.bincount(labels, minlength=k)


def mean_sq_norm(x: np.ndarray) -> float:
    return float(np.einsum("nd,nd->n", x, x).mean(dtype=np.float64))


def mean_feature_variance(x: np.ndarray) -> float:
    """Mean over the features of their variance, in one pass and without an (n, d) temporary."""
    mean = x.mean(axis=0, dtype=np.float64)
    return (mean_sq_norm(x) - float(mean @ mean)) / x.shape[1]


@contextlib.contextmanager
def fit_context() -> Iterator[None]:  # numpy needs no precision or autograd switches
    yield


# ---------------------------------------------------------------------------- k-means fit
class _Scorer:
    """``||c||^2 - 2 x.c`` for blocks of rows against one codebook, in float32, as one GEMM into one
    reused buffer: each row gets a last column of 1 and the scaled, transposed codebook (by -2, exact) a
    last row of the norms, so the product adds the norms itself (a separate pass over the (block, k)
    scores cost 15% of an assignment at K = 4096; a fresh array per call would page-fault its memory in
    every time). *like*: another scorer of the same d whose row and score buffers this one shares (one
    pass's levels score one after the other: one 16 MiB buffer, not one per level). The fit needs no exact
    ties (see ``residual_pass``), so the norms' rounding inside the sum is of no matter here; encoding
    follows the code contract of ``_ops`` instead."""

    def __init__(self, centers: np.ndarray, rows: int = FIT_CHUNK, like: "_Scorer | None" = None):
        dim = centers.shape[1]
        self.weights = np.empty((dim + 1, len(centers)), dtype=np.float32)
        self.weights[:dim] = _ops.scaled_transpose(centers)
        self.weights[dim] = np.einsum("kd,kd->k", centers, centers)
        if like is not None and len(like.rows) >= rows and len(like.buffer) >= rows * len(centers):
            self.rows, self.buffer = like.rows, like.buffer
        else:
            self.rows = np.ones((rows, dim + 1), dtype=np.float32)
            self.buffer = np.empty(rows * len(centers), dtype=np.float32)

    def __call__(self, block: np.ndarray) -> np.ndarray:  # (b, d) -> (b, k), valid until the next call
        self.rows[: len(block), :-1] = block
        return self._scores(len(block))

    def gathered(self, x: np.ndarray, index: np.ndarray) -> np.ndarray:  # ``self(x[index])``, no (b, d) copy
        np.take(x, index, axis=0, out=self.rows[: len(index), :-1], mode="clip")  # "clip": unbuffered (valid index)
        return self._scores(len(index))

    def _scores(self, n: int) -> np.ndarray:  # the first n rows' scores, from the row buffer
        out = self.buffer[: n * self.weights.shape[1]].reshape(n, -1)
        return np.matmul(self.rows[:n], self.weights, out=out)


def assign(x: np.ndarray, centers: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest center by the float32 formula: (n, d), (k, d) -> labels (n,) int32, sq dist (n,) float32.
    *rows*: score only x[rows] (labels and distances in their order), gathered a block at a time."""
    n = len(x) if rows is None else len(rows)
    step = block_rows(len(centers))
    scorer = _Scorer(centers, min(step, n))
    labels = np.empty(n, dtype=np.int32)  # the fit holds a level's codes per row: half of int64's memory
    dists = np.empty(n, dtype=np.float32)
    for start in range(0, n, step):
        if rows is None:
            block = x[start : start + step]
            scores = scorer(block)
        else:
            scores = scorer.gathered(x, rows[start : start + step])
            block = scorer.rows[: len(scores), :-1]
        block_labels = scores.argmin(axis=1)
        labels[start : start + step] = block_labels
        best = scores[np.arange(len(block)), block_labels] + np.einsum("nd,nd->n", block, block)
        dists[start : start + step] = np.maximum(best, 0.0)
    return labels, dists


def center_sums(x: np.ndarray, labels: np.ndarray, k: int,
                rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums (k, d) float32 and counts (k,): the product of the transposed one-hot (n, k)
    matrix with x, which scipy runs as one sequential pass over the rows adding each into its cluster's
    sum (torch's ``index_add_``; the (k, n) product reads the rows cluster by cluster, 3x slower on 169k x
    256, and ``np.add.at`` 20x). *rows* (sorted): only x[rows] count, *labels* in their order; the
    one-hot matrix then has an empty row for every other row of x, which the pass skips unread."""
    n = len(labels)
    if rows is None:
        indptr = np.arange(n + 1)
    else:
        indptr = np.zeros(len(x) + 1, dtype=np.int64)
        indptr[rows + 1] = 1
        np.cumsum(indptr, out=indptr)
    one_hot = sparse.csr_matrix((np.ones(n, dtype=np.float32), labels, indptr), shape=(len(indptr) - 1, k))
    return np.asarray(one_hot.T @ x, dtype=np.float32), np.bincount(labels, minlength=k)


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
    """Greedy k-means++ seeding (2 + ln k trials per center): (n, d) -> (k, d) initial centers.
    *weights* (n,) float64: each row counts as that many points (k-means||'s candidates)."""
    n = len(x)
    n_trials = 2 + int(math.log(k))
    x_sq = np.einsum("nd,nd->n", x, x)
    first = int(rng.integers(n)) if weights is None else int(np.searchsorted(np.cumsum(weights), rng.random() * weights.sum()))
    chosen = [min(first, n - 1)]
    closest = np.maximum(x_sq - 2 * (x @ x[chosen[0]]) + x_sq[chosen[0]], 0.0)
    merged = np.empty((n, n_trials), dtype=np.float32)  # reused: one buffer, not one allocation per center
    cumulative = np.empty(n, dtype=np.float64)
    for _ in range(1, k):
        np.cumsum(closest if weights is None else closest * weights, dtype=np.float64, out=cumulative)
        targets = rng.random(n_trials) * float(cumulative[-1])
        candidates = np.minimum(np.searchsorted(cumulative, targets), n - 1)
        # (n, n_trials): each point's squared distance to each candidate, or its current one where
        # that is smaller; one GEMM with the points as the long operand, a float64 sum decides
        np.matmul(x, _ops.scaled_transpose(x[candidates]), out=merged)
        merged += x_sq[candidates]
        merged += x_sq[:, None]
        np.maximum(merged, 0.0, out=merged)
        np.minimum(merged, closest[:, None], out=merged)
        potential = merged.sum(axis=0, dtype=np.float64) if weights is None else weights @ merged
        best = int(potential.argmin())
        chosen.append(int(candidates[best]))
        closest = merged[:, best].copy()
    return x[np.array(chosen)].copy()


def reseed_empty(centers: np.ndarray, cluster_counts: np.ndarray, x: np.ndarray, dists: np.ndarray,
                 rows: np.ndarray | None = None) -> int:
    """Move empty centers onto the points farthest from their centers (of x[rows], where given);
    returns how many moved."""
    empty = np.flatnonzero(cluster_counts == 0)
    if not len(empty):
        return 0
    far = np.argsort(-dists, kind="stable")[: len(empty)]
    centers[empty] = x[far if rows is None else rows[far]]
    return len(empty)


def mean_rows(x: np.ndarray, labels: np.ndarray, k: int,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each cluster's mean row (zeros for an empty one) and the counts (of x[rows], where given)."""
    sums, cluster_counts = center_sums(x, labels, k, rows)
    return sums / np.maximum(cluster_counts, 1)[:, None].astype(np.float32), cluster_counts


def _means(x: np.ndarray, labels: np.ndarray, centers: np.ndarray,
           rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The mean of each cluster's rows (an empty cluster keeps its center), and the counts."""
    new_centers, cluster_counts = mean_rows(x, labels, len(centers), rows)
    empty = cluster_counts == 0
    new_centers[empty] = centers[empty]
    return new_centers, cluster_counts


def lloyd(
    x: np.ndarray, centers: np.ndarray, *, max_iter: int, tol: float, inertia_tol: float = 0.0,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Lloyd iterations from *centers*; returns the final centers and the iterations run.

    Stops when the summed squared center shift falls to *tol* (absolute), or when an assignment
    lowers the inertia by less than the fraction *inertia_tol* of the one before (the centers of
    that assignment are still updated: the update never raises the inertia). *rows* (sorted
    indices): Lloyd on x[rows], read a block at a time (the same centers as on the copy, without it).
    """
    n_iter, previous = 0, math.inf
    for n_iter in range(1, max_iter + 1):
        labels, dists = assign(x, centers, rows)
        inertia = float(dists.sum(dtype=np.float64))
        gained_little = inertia > (1.0 - inertia_tol) * previous  # one last update, then stop
        previous = inertia
        new_centers, cluster_counts = _means(x, labels, centers, rows)
        reseed_empty(new_centers, cluster_counts, x, dists, rows)
        shift = float(((new_centers - centers) ** 2).sum(dtype=np.float64))
        centers = new_centers
        if shift <= tol or gained_little:
            break
    return centers, n_iter


def residual_pass(
    x: np.ndarray, codebooks: list[np.ndarray], out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Greedy residual encoding for training: codes (L, n) int32, the final residual (n, d) (written
    into *out* when given) and its summed squared norm (``squared_error``'s sum). Blocks of rows (FIT_CHUNK,
    fewer at large K) go through every level while they are in cache; plain float32 argmin (a near tie costs
    the fit nothing)."""
    step = min(FIT_CHUNK, len(x), *(block_rows(len(c)) for c in codebooks))
    largest = max(codebooks, key=len)
    shared = _Scorer(largest, step)  # its buffers serve every level
    scorers = [shared if c is largest else _Scorer(c, step, like=shared) for c in codebooks]
    codes = np.empty((len(codebooks), len(x)), dtype=np.int32)
    residual = np.empty_like(x) if out is None else out
    chosen = np.empty((step, x.shape[1]), dtype=np.float32)
    for start in range(0, len(x), step):
        block = residual[start : start + step]
        block[...] = x[start : start + step]
        for level, (codebook, scorer) in enumerate(zip(codebooks, scorers)):
            labels = scorer(block).argmin(axis=1)
            codes[level, start : start + step] = labels
            block -= np.take(codebook, labels, axis=0, out=chosen[: len(block)])
    return codes, residual, squared_error(residual)


def subtract_codewords_(residual: np.ndarray, codebook: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """residual -= codebook[codes], in place and by blocks of FIT_CHUNK rows (no (n, d) temporary)."""
    chosen = np.empty((min(FIT_CHUNK, len(residual)), residual.shape[1]), dtype=np.float32)
    for start in range(0, len(residual), FIT_CHUNK):
        block = residual[start : start + FIT_CHUNK]
        block -= np.take(codebook, codes[start : start + FIT_CHUNK], axis=0, out=chosen[: len(block)])
    return residual


def squared_error(residual: np.ndarray) -> float:
    """Summed squared norm of the rows, accumulated as ``residual_pass`` does (float64 over blocks)."""
    return sum(float(np.einsum("nd,nd->n", block, block).sum(dtype=np.float64))
               for block in (residual[s : s + FIT_CHUNK] for s in range(0, len(residual), FIT_CHUNK)))


# ---------------------------------------------------------------------- balanced clusters
def balancing_prices(
    dist: np.ndarray, prices: np.ndarray | None = None, *, tol: float = BALANCE_TOL, max_iter: int = 300,
) -> tuple[np.ndarray, float]:
    """Per-column prices that balance ``argmin(dist + prices)``: (n, k) -> prices (k,) >= 0, spread;
    see ``_torch_ops.balancing_prices`` (the same rule)."""
    n, k = dist.shape
    target = n / k
    prices = np.zeros(k, dtype=dist.dtype) if prices is None else prices - prices.min()
    rows = dist[:: max(1, n // 4096)]
    two = np.sort(np.partition(rows, 1, axis=1)[:, :2], axis=1) if k > 1 else rows[:, :1]
    scale = float(np.median(two[:, -1] - two[:, 0])) or 1e-6  # a typical margin between choices
    step = np.full(k, 0.5 * scale, dtype=dist.dtype)
    last = np.zeros(k, dtype=dist.dtype)
    scores = np.empty_like(dist)
    best_spread, best_prices = math.inf, prices
    for n_iter in range(max_iter + 1):
        sizes = np.bincount(np.add(dist, prices, out=scores).argmin(axis=1), minlength=k).astype(dist.dtype)
        spread = float((np.abs(sizes - target) / target).max())
        if spread < best_spread:
            best_spread, best_prices = spread, prices.copy()
        if spread <= tol or n_iter == max_iter:
            break
        excess = np.log(np.maximum(sizes, 0.5) / target)
        sign = np.sign(excess)
        step = np.where(sign * last < 0, step * 0.5, np.minimum(step * 1.1, 50 * scale)).astype(dist.dtype)
        prices += step * np.clip(excess, -3.0, 3.0)
        prices -= prices.min()  # only differences matter; the rows are scored with the prices returned
        last = sign
    return best_prices, best_spread


def squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:  # (n, d), (k, d) -> (n, k)
    dist = _Scorer(centers, len(x))(x)
    dist += np.einsum("nd,nd->n", x, x)[:, None]
    return np.maximum(dist, 0.0, out=dist)


def balanced_lloyd(
    x: np.ndarray, centers: np.ndarray, *, max_iter: int, tol: float, inertia_tol: float,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Lloyd with balanced assignments; see ``_torch_ops.balanced_lloyd`` (the same rule). Memory O(n x k)."""
    prices, previous, n_iter = None, math.inf, 0
    for n_iter in range(1, max_iter + 1):
        dist = squared_distances(x, centers)
        prices, _ = balancing_prices(dist, prices, tol=LLOYD_BALANCE_TOL)
        labels = np.add(dist, prices).argmin(axis=1)
        inertia = float(dist[np.arange(len(dist)), labels].sum(dtype=np.float64))
        new_centers, _ = _means(x, labels, centers)
        shift = float(((new_centers - centers) ** 2).sum(dtype=np.float64))
        centers = new_centers
        if shift <= tol or inertia > (1.0 - inertia_tol) * previous:
            break
        previous = inertia
    return centers, n_iter, prices


def level_norms(codebook: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:  # (k, d), (k,) -> (k,)
    return _ops.level_norms(codebook, offsets)


def nearest_codes(residual: np.ndarray, codebook: np.ndarray, code_sq_norms: np.ndarray,
                  offsets: np.ndarray | None = None) -> np.ndarray:  # (n, d) -> (n,) int64, the code contract's
    minus_2_codebook_t = _ops.scaled_transpose(codebook)
    return np.concatenate([
        _ops.nearest_codes(residual[s : s + FIT_CHUNK], codebook, code_sq_norms, minus_2_codebook_t, offsets=offsets)
        for s in range(0, len(residual), FIT_CHUNK)])
