"""Numpy kernels of residual quantisation: the encode path executors run without torch.

The code contract, shared with the torch kernels in ``_torch_ops``:

* scores are the float32 formula ``||c||^2 + p_c - 2 r.c`` (``||r||^2`` is constant per row); ``p``
  is a balanced model's per-centroid offset (0 without one), folded into the norms once
  (``level_norms``), so every backend adds the same float32 values;
* a row whose best score is within ``margin`` of another centroid's is *ambiguous*: float32
  rounding (which differs between BLAS libraries, CPUs and GPUs) could decide it. Those rows,
  and only those, are decided again by the float64 squared distance plus offset over the near
  candidates, ties to the lowest index. ``margin`` bounds the float32 error of the formula (Higham's
  gamma_d bound for a length-d dot product), so the exact winner is always among the
  candidates and every backend returns the same code.

Everything here takes already-validated, C-contiguous float32 input.
"""

from __future__ import annotations

import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)
ENCODE_CHUNK = 1024  # rows per GEMM block: keeps the (chunk, K) score block in cache


def sq_norms(codebook: np.ndarray) -> np.ndarray:  # (k, d) -> (k,) float32, summed in float64
    c = codebook.astype(np.float64)
    return np.einsum("kd,kd->k", c, c).astype(np.float32)


def level_norms(codebook: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """(k, d), optional (k,) float32 offsets -> (k,) float32 scores' constant part: ||c||^2 + p."""
    if offsets is None:
        return sq_norms(codebook)
    c = codebook.astype(np.float64)
    return (np.einsum("kd,kd->k", c, c) + offsets.astype(np.float64)).astype(np.float32)


def tie_margin(dim: int, row_sq_norm: np.ndarray, max_code_sq_norm: float) -> np.ndarray:
    """Bound on |float32 score difference - exact difference| for rows with the given norms."""
    return (dim + 8) * F32_EPS * (row_sq_norm + np.float32(max_code_sq_norm))


def exact_nearest(
    residual: np.ndarray, codebook: np.ndarray, rows: np.ndarray, cols: np.ndarray, offsets: np.ndarray | None = None,
) -> np.ndarray:
    """Float64 nearest (squared distance plus offset) among candidate (row, col) pairs, ties to the lowest col.

    ``rows`` must be sorted ascending (as ``np.nonzero`` returns them); returns one code per
    distinct row, in row order.
    """
    diff = residual[rows].astype(np.float64) - codebook[cols].astype(np.float64)
    dist = np.einsum("nd,nd->n", diff, diff)
    if offsets is not None:
        dist += offsets[cols].astype(np.float64)
    order = np.lexsort((cols, dist, rows))
    first = np.ones(len(order), dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    return cols[order][first]


def scaled_transpose(codebook: np.ndarray) -> np.ndarray:  # (k, d) -> (d, k) float32, C-contiguous
    return np.ascontiguousarray(-2.0 * codebook.T, dtype=np.float32)


def nearest_codes(
    residual: np.ndarray, codebook: np.ndarray, code_sq_norms: np.ndarray, minus_2_codebook_t: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
) -> np.ndarray:  # (n, d), (k, d), (k,), optional (d, k), optional (k,) -> (n,) int64
    """Index of the nearest centroid for each row, by the contract in the module docstring.
    With *offsets*, ``code_sq_norms`` must be ``level_norms(codebook, offsets)``.

    ``minus_2_codebook_t`` is ``scaled_transpose(codebook)``, computed here unless the caller
    precomputed it once per model; scaling by a power of two is exact, so the scores are those
    of ``-2 * (residual @ codebook.T)`` without a pass over them.
    """
    if minus_2_codebook_t is None:
        minus_2_codebook_t = scaled_transpose(codebook)
    scores = residual @ minus_2_codebook_t  # (n, k)
    scores += code_sq_norms
    all_rows = np.arange(len(scores))
    codes = scores.argmin(axis=1)
    best = scores[all_rows, codes]
    scores[all_rows, codes] = np.inf  # the runner-up decides whether the row is ambiguous
    runner_up = scores[all_rows, scores.argmin(axis=1)]  # = min(axis=1); numpy's row argmin is ~2x faster
    row_sq = np.einsum("nd,nd->n", residual, residual)
    limit = best + tie_margin(residual.shape[1], row_sq, float(np.abs(code_sq_norms).max()))
    ambiguous = np.flatnonzero(runner_up <= limit)
    if len(ambiguous):
        scores[ambiguous, codes[ambiguous]] = best[ambiguous]
        rows, cols = np.nonzero(scores[ambiguous] <= limit[ambiguous, None])
        codes[ambiguous] = exact_nearest(residual[ambiguous], codebook, rows, cols, offsets)
    return codes


def encode_residual(
    x: np.ndarray, codebooks: list[np.ndarray], *, chunk: int = ENCODE_CHUNK, offsets: list | None = None,
) -> np.ndarray:  # (n, d), L x (k_l, d), optional L x (k_l,) -> (n, L) int32
    """Greedy residual encoding: at each level the nearest centroid (less its offset), then subtract it."""
    n_levels = len(codebooks)
    offsets = offsets or [None] * n_levels
    norms = [level_norms(c, o) for c, o in zip(codebooks, offsets)]
    scaled = [scaled_transpose(c) for c in codebooks]
    codes = np.empty((len(x), n_levels), dtype=np.int32)
    for start in range(0, len(x), chunk):
        residual = x[start : start + chunk].copy()
        for level, codebook in enumerate(codebooks):
            level_codes = nearest_codes(residual, codebook, norms[level], scaled[level], offsets[level])
            codes[start : start + chunk, level] = level_codes
            residual -= codebook[level_codes]
    return codes


def decode_codes(codes: np.ndarray, codebooks: list[np.ndarray], dim: int) -> np.ndarray:
    """Sum of the chosen centroids: (n, L') codes with L' <= L -> (n, dim) float32."""
    out = np.zeros((len(codes), dim), dtype=np.float32)
    for level in range(codes.shape[1]):
        out += codebooks[level][codes[:, level]]
    return out


# ---------------------------------------------------------------------------- RQ-VAE
# An encoder MLP's float32 output differs between BLAS libraries and devices by far more
# than one dot product's rounding, so the contract above is widened for learned latents:
# a row is *unsure* when at some level its runner-up is within LATENT_SLACK * (||r||^2 +
# max ||c||^2) of the best score, and unsure rows are encoded again from the input in float64
# (MLP and distances) by ``exact_latent_codes``, which every backend calls. The slack is ~30x
# the float32 error of a 4-layer MLP of width 512, so sure rows agree everywhere.
LATENT_SLACK = 1e-3


def mlp_forward(
    x: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray], *, residual: bool,
    dtype: type = np.float32,
) -> np.ndarray:  # (n, d_in), weights (d_out, d_in) per layer -> (n, d_out); ReLU between layers
    h = x.astype(dtype, copy=False)
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w.T.astype(dtype, copy=False) + b.astype(dtype, copy=False)
        if i < len(weights) - 1:
            np.maximum(h, 0, out=h)
    return x.astype(dtype, copy=False) + h if residual else h


def codes_with_slack(
    z: np.ndarray, codebooks: list[np.ndarray], norms: list[np.ndarray], slack: float = LATENT_SLACK
) -> tuple[np.ndarray, np.ndarray]:  # (n, e) -> codes (n, L) int32, unsure (n,) bool
    residual, unsure = z.copy(), np.zeros(len(z), dtype=bool)
    codes = np.empty((len(z), len(codebooks)), dtype=np.int32)
    rows = np.arange(len(z))
    for level, (codebook, norm) in enumerate(zip(codebooks, norms)):
        scores = residual @ codebook.T
        scores *= -2.0
        scores += norm
        level_codes = scores.argmin(axis=1)
        best = scores[rows, level_codes]
        scores[rows, level_codes] = np.inf
        gap = scores.min(axis=1) - best
        row_sq = np.einsum("nd,nd->n", residual, residual)
        unsure |= gap <= slack * (row_sq + float(norm.max()))
        codes[:, level] = level_codes
        residual -= codebook[level_codes]
    return codes, unsure


def exact_latent_codes(
    x: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray], residual: bool,
    codebooks: list[np.ndarray],
) -> np.ndarray:  # (n, d_in) -> (n, L) int32, float64 throughout, ties to the lowest index
    r = mlp_forward(x, weights, biases, residual=residual, dtype=np.float64)
    codes = np.empty((len(x), len(codebooks)), dtype=np.int32)
    for level, codebook in enumerate(codebooks):
        c = codebook.astype(np.float64)
        dist = np.einsum("nd,nd->n", r, r)[:, None] - 2.0 * (r @ c.T) + np.einsum("kd,kd->k", c, c)
        codes[:, level] = dist.argmin(axis=1)
        r = r - c[codes[:, level]]
    return codes


def encode_latent(
    x: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray], residual: bool,
    codebooks: list[np.ndarray], *, chunk: int = ENCODE_CHUNK,
) -> np.ndarray:  # (n, d_in) -> (n, L) int32: the encoder MLP, then residual codes
    norms = [sq_norms(c) for c in codebooks]
    codes = np.empty((len(x), len(codebooks)), dtype=np.int32)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk]
        z = mlp_forward(block, weights, biases, residual=residual)
        block_codes, unsure = codes_with_slack(z, codebooks, norms)
        if unsure.any():
            block_codes[unsure] = exact_latent_codes(block[unsure], weights, biases, residual, codebooks)
        codes[start : start + chunk] = block_codes
    return codes
