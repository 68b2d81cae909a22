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

FIT_CHUNK = 4096  # rows per GEMM block in fitting: memory O(FIT_CHUNK x K), never O(N x K)


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


def kmeans_plus_plus(x: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (2 + ln k trials per center): (n, d) -> (k, d) initial centers."""
    n = len(x)
    n_trials = 2 + int(math.log(k))
    x_sq = (x * x).sum(dim=1)
    first = int(rng.integers(n))
    chosen = [first]
    closest = (x_sq - 2 * x @ x[first] + x_sq[first]).clamp_(min=0.0).double()
    for _ in range(1, k):
        cumulative = torch.cumsum(closest, dim=0)
        targets = torch.from_numpy(rng.random(n_trials) * float(cumulative[-1])).to(x.device)
        candidates = torch.searchsorted(cumulative, targets).clamp_(max=n - 1)
        cand_dist = (x_sq[None, :] - 2 * x[candidates] @ x.T + x_sq[candidates][:, None]).clamp_(min=0.0)
        merged = torch.minimum(closest[None, :], cand_dist.double())  # (n_trials, n)
        best = int(merged.sum(dim=1).argmin())
        chosen.append(int(candidates[best]))
        closest = merged[best]
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
    balanced: bool,
) -> tuple[torch.Tensor, int]:
    """Lloyd iterations from *centers*; returns the final centers and the iterations run.

    Stops when the summed squared center shift falls to *tol* (absolute). With *balanced*,
    the assignment step is :func:`balanced_assign`, so every cluster holds N//K or N//K+1 points.
    """
    k = len(centers)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        if balanced:
            labels = balanced_assign(x, centers)
            dists = None
        else:
            labels, dists = assign(x, centers)
        sums, counts = center_sums(x, labels, k)
        new_centers = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
        keep = counts == 0
        new_centers[keep] = centers[keep]
        if dists is not None:
            reseed_empty(new_centers, counts, x, dists)
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if shift <= tol:
            break
    return centers, n_iter


# ---------------------------------------------------------------------- balanced assignment

N_CANDIDATES = 8  # nearest centers kept per point for the balanced assignment
MAX_SWAP_PASSES = 20


def _top_candidates(x: torch.Tensor, centers: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The m nearest centers of each point: costs (n, m) float32 (squared distance), ids (n, m)."""
    c_norms = (centers * centers).sum(dim=1)
    costs = torch.empty(len(x), m, dtype=torch.float32, device=x.device)
    ids = torch.empty(len(x), m, dtype=torch.int64, device=x.device)
    for start in range(0, len(x), FIT_CHUNK):
        block = x[start : start + FIT_CHUNK]
        scores = torch.addmm(c_norms, block, centers.T, alpha=-2.0)
        top = torch.topk(scores, m, dim=1, largest=False, sorted=True)
        costs[start : start + FIT_CHUNK] = top.values + (block * block).sum(dim=1, keepdim=True)
        ids[start : start + FIT_CHUNK] = top.indices
    return costs, ids


def _deferred_acceptance(
    cost: torch.Tensor,
    ids: torch.Tensor,
    labels: torch.Tensor,
    size: torch.Tensor,
    has_extra: torch.Tensor,
    base: int,
    extras_left: int,
) -> int:
    """Rounds of proposals along each unlabelled point's preference list (ids, best first).

    Each cluster holds ``base`` points, or ``base + 1`` if it takes one of the ``extras_left``
    shared extra slots. Per round, every pending point proposes to its next cluster that is
    still open; a cluster accepts the cheapest proposals up to its room, and the cheapest
    proposal just past its room competes for an extra slot. Updates ``labels``, ``size`` and
    ``has_extra`` in place; returns the extra slots left.
    """
    n, m = ids.shape
    pointer = torch.zeros(n, dtype=torch.int64, device=ids.device)
    pending = torch.nonzero(labels < 0).flatten()
    while len(pending):
        pending = pending[pointer[pending] < m]
        if not len(pending):
            break
        target = ids[pending, pointer[pending]]
        closed = torch.where(has_extra, size >= base + 1, (size >= base) & (extras_left == 0))
        skip = closed[target]
        skipped = pending[skip]
        pointer[skipped] += 1
        pending, target = pending[~skip], target[~skip]
        here = pointer[pending]
        # regret: what moving on to the next choice would cost; the largest regrets go first
        after = cost[pending, (here + 1).clamp(max=m - 1)]
        c = torch.where(here + 1 < m, cost[pending, here] - after, cost[pending, here] - 1e30)
        order = torch.argsort(c, stable=True)
        order = order[torch.argsort(target[order], stable=True)]  # by cluster, then by cost
        pending, target, c = pending[order], target[order], c[order]
        rank = torch.arange(len(target), device=ids.device) - torch.searchsorted(target, target)
        room = (base - size[target]).clamp(min=0)
        accept = rank < room
        extra = torch.nonzero((rank == room) & ~has_extra[target]).flatten()
        if len(extra) and extras_left > 0:
            extra = extra[torch.argsort(c[extra], stable=True)][:extras_left]
            accept[extra] = True
            has_extra[target[extra]] = True
            extras_left -= len(extra)
        labels[pending[accept]] = target[accept]
        size += torch.bincount(target[accept], minlength=len(size))
        pointer[pending[~accept]] += 1
        pending = torch.sort(torch.cat([skipped, pending[~accept]])).values
    return extras_left


def _improve_by_swaps(
    x: torch.Tensor, centers: torch.Tensor, costs: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor
) -> int:
    """Exchange pairs of points between clusters while that lowers the total cost.

    Each point names its best other candidate cluster; points of A that want B are paired,
    most eager first, with points of B that want A, and each pair whose exchange lowers the
    summed squared distance swaps. Cluster sizes never change. Returns the swaps made.
    """
    n, k = len(labels), len(centers)
    total = 0
    for _ in range(MAX_SWAP_PASSES):
        current = ((x - centers[labels]) ** 2).sum(dim=1)  # (n,)
        delta = torch.where(ids == labels[:, None], torch.inf, costs - current[:, None])
        gain, col = delta.min(dim=1)  # cost of moving each point to its best other candidate
        movable = torch.nonzero(torch.isfinite(gain)).flatten()
        src, dst, gain = labels[movable], ids[movable, col[movable]], gain[movable]
        group = src * k + dst
        order = torch.argsort(gain, stable=True)
        order = order[torch.argsort(group[order], stable=True)]  # by (src, dst), then eagerness
        movable, src, dst, gain, group = movable[order], src[order], dst[order], gain[order], group[order]
        rank = torch.arange(len(group), device=x.device) - torch.searchsorted(group, group)
        lo, hi = torch.minimum(src, dst), torch.maximum(src, dst)
        key = (lo * k + hi) * n + rank
        order = torch.argsort((key * 2 + (src > dst).long()), stable=True)
        key, movable, dst, gain = key[order], movable[order], dst[order], gain[order]
        paired = torch.nonzero((key[1:] == key[:-1]) & (gain[1:] + gain[:-1] < 0)).flatten()
        if not len(paired):
            break
        labels[movable[paired]] = dst[paired]
        labels[movable[paired + 1]] = dst[paired + 1]
        total += len(paired)
    return total


def balanced_assign(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Assign n points to k centers so that every cluster holds exactly n//k or n//k+1 points.

    A deferred-acceptance pass over each point's 8 nearest centers fills the clusters, those
    with most to lose from their next choice first; points whose lists run out choose among all
    clusters that still have room; then pairwise swaps lower the cost at fixed sizes.
    Returns labels (n,).
    """
    n, k = len(x), len(centers)
    base, n_extra = divmod(n, k)
    costs, ids = _top_candidates(x, centers, min(N_CANDIDATES, k))
    costs64 = costs.double()
    labels = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    size = torch.zeros(k, dtype=torch.int64, device=x.device)
    has_extra = torch.zeros(k, dtype=torch.bool, device=x.device)
    extras_left = _deferred_acceptance(costs64, ids, labels, size, has_extra, base, n_extra)
    left = torch.nonzero(labels < 0).flatten()
    if len(left):  # preference lists exhausted: rank every cluster for the few points left
        c_norms = (centers * centers).sum(dim=1)
        full_cost = torch.addmm(c_norms, x[left], centers.T, alpha=-2.0).double()
        full_ids = torch.argsort(full_cost, dim=1, stable=True)
        sub_labels = torch.full((len(left),), -1, dtype=torch.int64, device=x.device)
        _deferred_acceptance(
            full_cost.gather(1, full_ids), full_ids, sub_labels, size, has_extra, base, extras_left
        )
        labels[left] = sub_labels
    _improve_by_swaps(x, centers, costs, ids, labels)
    return labels


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
