"""Torch kernels: the encode path for cuda/mps (same codes as ``_ops``) and the k-means fit.

Imported lazily, only when a torch device is asked for or a model is fitted, so that a
Spark executor encoding on numpy never needs torch.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import torch

from semid_spark.algorithms import _ops
from semid_spark.algorithms._fit_ops import (  # noqa: F401 (the fit's constants, shared by both backends)
    BALANCE_TOL, FIT_CHUNK, LLOYD_BALANCE_TOL, OFFSET_PRICE_STEPS, PRICE_ROWS_PER_CLUSTER,
)



@contextlib.contextmanager
def full_fp32_matmul() -> Iterator[None]:
    """Run float32 matmuls in full precision (no TF32), restoring the caller's setting after.

    The tie margin of the code contract assumes true float32 products.
    """
    saved = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cuda.matmul.allow_tf32 = saved[1]


def sq_norms(codebook: torch.Tensor) -> torch.Tensor:  # (k, d) -> (k,) float32
    """Centroid norms computed by numpy, so both backends score with identical norms."""
    return torch.from_numpy(_ops.sq_norms(codebook.cpu().numpy())).to(codebook.device)


def level_norms(codebook: torch.Tensor, offsets: np.ndarray | None) -> torch.Tensor:  # (k, d), (k,) -> (k,)
    """``_ops.level_norms`` (computed by numpy, so both backends add identical float32 values)."""
    return torch.from_numpy(_ops.level_norms(codebook.cpu().numpy(), offsets)).to(codebook.device)


def nearest_codes(
    residual: torch.Tensor, codebook: torch.Tensor, code_sq_norms: torch.Tensor, offsets: np.ndarray | None = None,
) -> torch.Tensor:  # (n, d), (k, d), (k,) -> (n,) int64, identical to _ops.nearest_codes
    scores = torch.addmm(code_sq_norms, residual, codebook.T, alpha=-2.0)  # (n, k)
    all_rows = torch.arange(len(scores), device=scores.device)
    best, codes = scores.min(dim=1)
    scores[all_rows, codes] = torch.inf  # the runner-up decides whether the row is ambiguous
    runner_up = scores.min(dim=1).values
    row_sq = (residual * residual).sum(dim=1)
    limit = best + _ops.tie_margin(residual.shape[1], row_sq, float(code_sq_norms.abs().max()))
    ambiguous = torch.nonzero(runner_up <= limit).flatten()
    if len(ambiguous):
        scores[ambiguous, codes[ambiguous]] = best[ambiguous]
        near = scores[ambiguous] <= limit[ambiguous, None]
        rows, cols = np.nonzero(near.cpu().numpy())
        exact = _ops.exact_nearest(
            residual[ambiguous].cpu().numpy(), codebook.cpu().numpy(), rows, cols, offsets
        )
        codes[ambiguous] = torch.from_numpy(exact).to(codes.device)
    return codes


def encode_residual(
    x: np.ndarray, codebooks: list[np.ndarray], device: torch.device, *, chunk: int = 65536,
    offsets: list | None = None,
) -> np.ndarray:  # (n, d), L x (k_l, d), optional L x (k_l,) -> (n, L) int32
    books = [torch.from_numpy(c).to(device) for c in codebooks]
    offsets = offsets or [None] * len(books)
    norms = [level_norms(c, o) for c, o in zip(books, offsets)]
    codes = np.empty((len(x), len(books)), dtype=np.int32)
    with full_fp32_matmul(), torch.no_grad():
        for start in range(0, len(x), chunk):
            residual = torch.from_numpy(x[start : start + chunk]).to(device)
            for level, codebook in enumerate(books):
                level_codes = nearest_codes(residual, codebook, norms[level], offsets[level])
                codes[start : start + chunk, level] = level_codes.cpu().numpy()
                residual = residual - codebook[level_codes]
    return codes


# ------------------------------------------------------------------- arrays (the backend's own)
# The fit's array plumbing, by the names ``_fit_ops`` (numpy, device="cpu") gives it: RQKMeans.fit is
# written once against either module.
def rows_on(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(x).to(device)


def take(a: torch.Tensor, index: np.ndarray) -> torch.Tensor:  # rows (or entries) at a numpy index
    return a[torch.from_numpy(index).to(a.device)]


def copy_into(out: torch.Tensor, a: torch.Tensor) -> torch.Tensor:  # out[...] = a, no new array
    return out.copy_(a)


def copy(a: torch.Tensor) -> torch.Tensor:
    return a.clone()


def to_numpy(a: torch.Tensor) -> np.ndarray:
    return a.cpu().numpy()


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors)


def counts(labels: torch.Tensor, k: int) -> torch.Tensor:  # (n,) -> (k,) int64
    return torch.bincount(labels, minlength=k)


def mean_sq_norm(x: torch.Tensor) -> float:
    return float((x * x).sum(dim=1).mean())


def mean_feature_variance(x: torch.Tensor) -> float:
    """Mean over the features of their variance, in one pass and without an (n, d) temporary."""
    return float((x * x).sum(dim=1).mean() - (x.mean(dim=0) ** 2).sum()) / x.shape[1]


@contextlib.contextmanager
def fit_context() -> Iterator[None]:
    with full_fp32_matmul(), torch.no_grad():
        yield


# ---------------------------------------------------------------------------- k-means fit


def assign(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest center by the float32 formula: (n, d), (k, d) -> labels (n,), sq dist (n,)."""
    c_norms = (centers * centers).sum(dim=1)
    labels = torch.empty(len(x), dtype=torch.int64, device=x.device)
    dists = torch.empty(len(x), dtype=torch.float32, device=x.device)
    for start in range(0, len(x), FIT_CHUNK):
        block = x[start : start + FIT_CHUNK]
        scores = torch.addmm(c_norms, block, centers.T, alpha=-2.0)
        best, labels[start : start + FIT_CHUNK] = scores.min(dim=1)
        dists[start : start + FIT_CHUNK] = (best + (block * block).sum(dim=1)).clamp_(min=0.0)
    return labels, dists


def center_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums (k, d) and counts (k,), deterministic on every device."""
    counts = torch.bincount(labels, minlength=k)
    if x.device.type == "cpu":  # index_add_ is sequential and fast on cpu
        return torch.zeros(k, x.shape[1], device=x.device).index_add_(0, labels, x), counts
    sums = torch.zeros(k, x.shape[1], device=x.device)  # atomics on gpu: use a one-hot GEMM
    for start in range(0, len(x), FIT_CHUNK):
        block_labels = labels[start : start + FIT_CHUNK]
        one_hot = torch.zeros(len(block_labels), k, device=x.device)
        one_hot[torch.arange(len(block_labels), device=x.device), block_labels] = 1.0
        sums += one_hot.T @ x[start : start + FIT_CHUNK]
    return sums, counts


def mean_rows(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cluster's mean row (zeros for an empty one) and the counts."""
    sums, counts = center_sums(x, labels, k)
    return sums / counts.clamp(min=1)[:, None].to(sums.dtype), counts


def _means(x: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of each cluster's rows (an empty cluster keeps its center), and the counts."""
    new_centers, counts = mean_rows(x, labels, len(centers))
    empty = counts == 0
    new_centers[empty] = centers[empty]
    return new_centers, counts


def kmeans_plus_plus(x: torch.Tensor, k: int, rng: np.random.Generator, weights: np.ndarray | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding (2 + ln k trials per center): (n, d) -> (k, d) initial centers.
    *weights* (n,) float64: each row counts as that many points (k-means||'s candidates)."""
    n = len(x)
    n_trials = 2 + int(math.log(k))
    x_sq = (x * x).sum(dim=1)
    w = None if weights is None else torch.from_numpy(weights).to(x.device)
    first = int(rng.integers(n)) if weights is None else int(np.searchsorted(np.cumsum(weights), rng.random() * weights.sum()))
    chosen = [min(first, n - 1)]
    closest = (x_sq - 2 * x @ x[chosen[0]] + x_sq[chosen[0]]).clamp_(min=0.0)
    for _ in range(1, k):
        cumulative = torch.cumsum(closest if w is None else closest * w, dim=0, dtype=torch.float64)
        targets = torch.from_numpy(rng.random(n_trials) * float(cumulative[-1])).to(x.device)
        candidates = torch.searchsorted(cumulative, targets).clamp_(max=n - 1)
        # (n, n_trials): each point's squared distance to each candidate, or its current one where
        # that is smaller; one GEMM with the points as the long left operand (twice as fast on cpu
        # as the transpose), float32 in place; a sum over the points in float64 decides
        merged = torch.addmm(x_sq[candidates], x, x[candidates].T, alpha=-2.0)
        merged.add_(x_sq[:, None]).clamp_(min=0.0)
        torch.minimum(merged, closest[:, None], out=merged)
        potential = merged.sum(dim=0, dtype=torch.float64) if w is None else w @ merged.double()
        best = int(potential.argmin())
        chosen.append(int(candidates[best]))
        closest = merged[:, best].contiguous()
    return x[torch.tensor(chosen, device=x.device)].clone()


def reseed_empty(
    centers: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, dists: torch.Tensor
) -> int:
    """Move empty centers onto the points farthest from their centers; returns how many moved."""
    empty = torch.nonzero(counts == 0).flatten()
    if not len(empty):
        return 0
    far = torch.sort(dists, descending=True, stable=True).indices[: len(empty)]
    centers[empty] = x[far]
    return len(empty)


def lloyd(
    x: torch.Tensor,
    centers: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    inertia_tol: float = 0.0,
    rows: np.ndarray | None = None,
) -> tuple[torch.Tensor, int]:
    """Lloyd iterations from *centers*; returns the final centers and the iterations run.

    Stops when the summed squared center shift falls to *tol* (absolute), or when an assignment
    lowers the inertia by less than the fraction *inertia_tol* of the one before (the centers of
    that assignment are still updated: the update never raises the inertia). *rows* (sorted
    indices): Lloyd on x[rows], gathered here once (numpy's reads them a block at a time).
    """
    if rows is not None:
        x = take(x, rows)
    n_iter = 0
    previous = math.inf
    for n_iter in range(1, max_iter + 1):
        labels, dists = assign(x, centers)
        inertia = float(dists.double().sum())
        gained_little = inertia > (1.0 - inertia_tol) * previous  # one last update, then stop
        previous = inertia
        new_centers, counts = _means(x, labels, centers)
        reseed_empty(new_centers, counts, x, dists)
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if shift <= tol or gained_little:
            break
    return centers, n_iter


def residual_pass(
    x: torch.Tensor, codebooks: list[torch.Tensor], out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Greedy residual encoding for training: codes (L, n) int64, the final residual (n, d) (written
    into *out* when given) and its summed squared norm.

    Blocks of FIT_CHUNK rows go through every level while they are in cache. Plain float32
    argmin, not the exact rule of ``nearest_codes``: a near tie costs the fit nothing.
    """
    norms = [(c * c).sum(dim=1) for c in codebooks]
    codes = torch.empty(len(codebooks), len(x), dtype=torch.int64, device=x.device)
    residual = torch.empty_like(x) if out is None else out
    error = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, len(x), FIT_CHUNK):
        block = residual[start : start + FIT_CHUNK]
        block.copy_(x[start : start + FIT_CHUNK])
        for level, (codebook, norm) in enumerate(zip(codebooks, norms)):
            labels = torch.addmm(norm, block, codebook.T, alpha=-2.0).argmin(dim=1)
            codes[level, start : start + FIT_CHUNK] = labels
            block -= codebook[labels]
        error += (block * block).sum(dim=1).sum(dtype=torch.float64)
    return codes, residual, float(error)


def subtract_codewords_(residual: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """residual -= codebook[codes], in place and by blocks of FIT_CHUNK rows (no (n, d) temporary)."""
    for start in range(0, len(residual), FIT_CHUNK):
        residual[start : start + FIT_CHUNK] -= codebook[codes[start : start + FIT_CHUNK]]
    return residual


def squared_error(residual: torch.Tensor) -> float:
    """Summed squared norm of the rows, accumulated as ``residual_pass`` does (float64 over blocks)."""
    error = torch.zeros((), dtype=torch.float64, device=residual.device)
    for start in range(0, len(residual), FIT_CHUNK):
        block = residual[start : start + FIT_CHUNK]
        error += (block * block).sum(dim=1).sum(dtype=torch.float64)
    return float(error)


# ---------------------------------------------------------------------- balanced clusters



def balancing_prices(
    dist: torch.Tensor, prices: torch.Tensor | None = None, *, tol: float = BALANCE_TOL, max_iter: int = 300,
) -> tuple[torch.Tensor, float]:
    """Per-column prices that balance ``argmin(dist + prices)``: (n, k) -> prices (k,) >= 0, spread.

    Every column should receive n/k rows, within the fraction *tol*. Each step raises the price of
    an over-full column and lowers an under-full one's, by its own step times the log of its size
    over n/k; a column's step grows while its excess keeps its sign and halves when it flips (so a
    price homes in on its boundary without a global step size). Starts from *prices* (a warm
    start) or zeros. Returns the best prices seen (minimum 0) and the largest |size / (n/k) - 1| they
    give: <= tol when the loop reaches it, otherwise the least it reached. The loop can oscillate
    without reaching tol (a column's step halves at every flip, and rows that must cross between
    topics move in bursts), so the last prices may be far worse than the best: returning the last
    left 1,003 rows in 10 clusters up to 14.7% off N/K on 1 fit in 15, returning the best at most 2.7%.
    """
    n, k = dist.shape
    target = n / k
    prices = torch.zeros(k, dtype=dist.dtype, device=dist.device) if prices is None else prices - prices.min()
    rows = dist[:: max(1, n // 4096)]
    two = torch.topk(rows, min(2, k), dim=1, largest=False).values
    scale = float((two[:, -1] - two[:, 0]).median()) or 1e-6  # a typical margin between choices
    step = torch.full((k,), 0.5 * scale, dtype=dist.dtype, device=dist.device)
    last = torch.zeros(k, dtype=dist.dtype, device=dist.device)
    scores = torch.empty_like(dist)
    best_spread, best_prices = math.inf, prices
    for n_iter in range(max_iter + 1):
        counts = torch.bincount(torch.add(dist, prices, out=scores).argmin(dim=1), minlength=k).to(dist.dtype)
        spread = float(((counts - target).abs() / target).max())
        if spread < best_spread:
            best_spread, best_prices = spread, prices.clone()
        if spread <= tol or n_iter == max_iter:
            break
        excess = torch.log(counts.clamp(min=0.5) / target)
        sign = torch.sign(excess)
        step = torch.where(sign * last < 0, step * 0.5, torch.clamp(step * 1.1, max=50 * scale))
        prices += step * excess.clamp(-3.0, 3.0)
        prices -= prices.min()  # only differences matter; the rows are scored with the prices returned
        last = sign
    return best_prices, best_spread


def squared_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:  # (n, d), (k, d) -> (n, k)
    dist = torch.addmm((centers * centers).sum(dim=1), x, centers.T, alpha=-2.0)
    return dist.add_((x * x).sum(dim=1, keepdim=True)).clamp_(min=0.0)


def balanced_lloyd(
    x: torch.Tensor, centers: torch.Tensor, *, max_iter: int, tol: float, inertia_tol: float,
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Lloyd with balanced assignments: each step assigns a row to the center of least squared
    distance plus that center's price, with prices (warm-started from the step before) that give
    every cluster n/k rows within 5%; then moves each center to the mean of its rows.

    Stops after *max_iter* steps, when the centers move less than *tol* (summed squared shift), or
    when a step lowers the inertia by less than the fraction *inertia_tol*. Memory O(n x k).
    Returns the centers, the steps run and the last prices.
    """
    prices, previous, n_iter = None, math.inf, 0
    for n_iter in range(1, max_iter + 1):
        dist = squared_distances(x, centers)
        prices, _ = balancing_prices(dist, prices, tol=LLOYD_BALANCE_TOL)
        labels = torch.add(dist, prices).argmin(dim=1)
        inertia = float(dist.gather(1, labels[:, None]).double().sum())
        new_centers, counts = _means(x, labels, centers)
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if shift <= tol or inertia > (1.0 - inertia_tol) * previous:
            break
        previous = inertia
    return centers, n_iter, prices


# ---------------------------------------------------------------------------- RQ-VAE encode
def encode_latent(
    x: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray], residual: bool,
    codebooks: list[np.ndarray], device: torch.device, *, chunk: int = 65536,
) -> np.ndarray:  # (n, d_in) -> (n, L) int32, identical to _ops.encode_latent
    ws = [torch.from_numpy(w).to(device) for w in weights]
    bs = [torch.from_numpy(b).to(device) for b in biases]
    books = [torch.from_numpy(c).to(device) for c in codebooks]
    norms = [sq_norms(c) for c in books]
    codes = np.empty((len(x), len(books)), dtype=np.int32)
    with full_fp32_matmul(), torch.no_grad():
        for start in range(0, len(x), chunk):
            block = torch.from_numpy(x[start : start + chunk]).to(device)
            h = block
            for i, (w, b) in enumerate(zip(ws, bs)):
                h = torch.addmm(b, h, w.T)
                if i < len(ws) - 1:
                    h = torch.relu(h)
            r = block + h if residual else h
            unsure = torch.zeros(len(r), dtype=torch.bool, device=device)
            level_codes = []
            rows = torch.arange(len(r), device=device)
            for codebook, norm in zip(books, norms):
                scores = torch.addmm(norm, r, codebook.T, alpha=-2.0)
                best, idx = scores.min(dim=1)
                scores[rows, idx] = torch.inf
                gap = scores.min(dim=1).values - best
                unsure |= gap <= _ops.LATENT_SLACK * ((r * r).sum(dim=1) + float(norm.max()))
                level_codes.append(idx)
                r = r - codebook[idx]
            block_codes = torch.stack(level_codes, dim=1).int().cpu().numpy()
            unsure_np = unsure.cpu().numpy()
            if unsure_np.any():
                block_codes[unsure_np] = _ops.exact_latent_codes(
                    x[start : start + chunk][unsure_np], weights, biases, residual, codebooks
                )
            codes[start : start + chunk] = block_codes
    return codes
