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
    return decided_codes(scores, residual, codebook, code_sq_norms, offsets)


def decided_codes(scores: np.ndarray, residual: np.ndarray, codebook: np.ndarray, code_sq_norms: np.ndarray,
                  offsets: np.ndarray | None = None) -> np.ndarray:  # (n, k) float32 scores -> codes (n,) int64
    """Each row's code from its float32 scores by the contract: the lowest score, unless another is within
    the margin; such rows are decided in float64 over their near candidates. *scores* are left as given."""
    all_rows = np.arange(len(scores))
    codes = scores.argmin(axis=1)
    best = scores[all_rows, codes]
    scores[all_rows, codes] = np.inf  # the runner-up decides whether the row is ambiguous
    runner_up = scores[all_rows, scores.argmin(axis=1)]  # = min(axis=1); numpy's row argmin is ~2x faster
    scores[all_rows, codes] = best
    row_sq = np.einsum("nd,nd->n", residual, residual)
    limit = best + tie_margin(residual.shape[1], row_sq, float(np.abs(code_sq_norms).max()))
    ambiguous = np.flatnonzero(runner_up <= limit)
    if len(ambiguous):
        rows, cols = np.nonzero(scores[ambiguous] <= limit[ambiguous, None])
        codes[ambiguous] = exact_nearest(residual[ambiguous], codebook, rows, cols, offsets)
    return codes


def augmented_weights(codebook: np.ndarray, code_sq_norms: np.ndarray) -> np.ndarray:  # -> (d + 1, k) float32
    """``scaled_transpose(codebook)`` with a last row of the norms: a row with a last column of 1 times this
    is the contract's score ``||c||^2 + p - 2 r.c`` in one GEMM (the norms join the float32 sum as its
    (d + 1)-th term, inside the margin's (d + 8) terms), where adding them after is one more pass over the
    (n, k) scores: 11% of an encode at K = 4096, d = 128."""
    weights = np.empty((codebook.shape[1] + 1, len(codebook)), dtype=np.float32)
    weights[:-1] = scaled_transpose(codebook)
    weights[-1] = code_sq_norms
    return weights


def encode_residual(
    x: np.ndarray, codebooks: list[np.ndarray], *, chunk: int = ENCODE_CHUNK, offsets: list | None = None,
) -> np.ndarray:  # (n, d), L x (k_l, d), optional L x (k_l,) -> (n, L) int32
    """Greedy residual encoding: at each level the nearest centroid (less its offset), then subtract it."""
    return _encode_residual(x, codebooks, chunk=chunk, offsets=offsets, n_candidates=0)[0]


def encode_residual_with_candidates(
    x: np.ndarray, codebooks: list[np.ndarray], n_candidates: int, *, chunk: int = ENCODE_CHUNK,
    offsets: list | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # -> codes (n, L) int32, candidates (n, T) int32, (n, T) float32
    """``encode_residual``, and each row's last-level candidates as ``exact_candidates`` gives them
    (T = min(n_candidates, K)), found among the encode pass's own last-level scores.

    The float32 scores only *select*: the T - 1 lowest of the other codes, where the next one is
    more than ``selection_margin`` above the last of them (no code outside can then be exactly
    nearer than one inside). Their distances are computed again in float64 from the float64
    residual, so the result does not depend on the BLAS; rows whose selection is that close (float32
    near-ties at its edge, rare) get ``exact_candidates`` over every code."""
    return _encode_residual(x, codebooks, chunk=chunk, offsets=offsets, n_candidates=n_candidates)


def _encode_residual(x: np.ndarray, codebooks: list[np.ndarray], *, chunk: int, offsets: list | None,
                     n_candidates: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    n_levels = len(codebooks)
    offsets = offsets or [None] * n_levels
    norms = [level_norms(c, o) for c, o in zip(codebooks, offsets)]
    weights = [augmented_weights(c, nrm) for c, nrm in zip(codebooks, norms)]
    codes = np.empty((len(x), n_levels), dtype=np.int32)
    cand = dist = last = None
    if n_candidates:
        last = _LastLevel(codebooks, offsets[-1])
        t = min(n_candidates, last.k)
        cand, dist = np.empty((len(x), t), dtype=np.int32), np.empty((len(x), t), dtype=np.float32)
    rows = min(chunk, len(x))
    augmented = np.ones((rows, x.shape[1] + 1), dtype=np.float32)  # [residual | 1], one per call
    score_buffer = np.empty(rows * max(len(c) for c in codebooks), dtype=np.float32)
    for start in range(0, len(x), chunk):
        block = slice(start, start + chunk)
        n = len(x[block])
        residual = augmented[:n, :-1]  # a view: the GEMM below reads it with its column of ones
        residual[...] = x[block]
        for level, codebook in enumerate(codebooks):
            scores = np.matmul(augmented[:n], weights[level],
                               out=score_buffer[: n * len(codebook)].reshape(n, len(codebook)))
            level_codes = decided_codes(scores, residual, codebook, norms[level], offsets[level])
            if n_candidates and level == n_levels - 1:
                cand[block], dist[block] = last.candidates(x[block], codes[block, :-1], level_codes, scores,
                                                           residual, cand.shape[1])
            codes[block, level] = level_codes
            residual -= codebook[level_codes]
    return codes, cand, dist


def exact_candidates(residual: np.ndarray, codebook: np.ndarray, own: np.ndarray, n_candidates: int
                     ) -> tuple[np.ndarray, np.ndarray]:  # (n, e) float64, (k, e), (n,) -> (n, T) int32, (n, T) float32
    """The relocation candidates of rows whose last-level residual is *residual* (float64) and whose
    own last-level code is *own*: column 0 the own code, then the T - 1 nearest other codes by (float64
    squared distance, code), T = min(n_candidates, k); distances ``sq_distances``, rounded to float32."""
    book = np.asarray(codebook, dtype=np.float64)
    k = len(book)
    t = min(n_candidates, k)
    book_sq = np.einsum("kd,kd->k", book, book)
    d = np.einsum("nd,nd->n", residual, residual)[:, None] - 2.0 * (residual @ book.T) + book_sq  # selects
    rows = np.arange(len(residual))
    own = np.asarray(own, dtype=np.int64)
    d[rows, own] = np.inf
    others = np.argpartition(d, t - 2, axis=1)[:, : t - 1] if t < k else np.argsort(d, axis=1)[:, : t - 1]
    return _ordered(own, sq_distances(residual, book, own[:, None])[:, 0], others, sq_distances(residual, book, others))


def sq_distances(residual: np.ndarray, book: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n, e) float64, (k, e) float64, (n, m) -> (n, m) float64 ||r - c||^2 of each row's *cols*: the
    difference first, so that a row at (or near) a code gets its small distance to full precision."""
    out = np.empty(cols.shape, dtype=np.float64)
    for j in range(cols.shape[1]):  # a column at a time: the (n, e) differences stay in cache
        diff = residual - book[cols[:, j]]
        out[:, j] = np.einsum("nd,nd->n", diff, diff)
    return out


def _ordered(own: np.ndarray, own_d: np.ndarray, others: np.ndarray, other_d: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:  # (n,), (n,), (n, t-1), (n, t-1) float64 -> (n, t) int32, float32
    order = np.lexsort((others, other_d), axis=1)  # by distance, then code
    cand = np.empty((len(own), others.shape[1] + 1), dtype=np.int32)
    dist = np.empty(cand.shape, dtype=np.float32)
    cand[:, 0], dist[:, 0] = own, own_d
    cand[:, 1:] = np.take_along_axis(others, order, axis=1)
    dist[:, 1:] = np.take_along_axis(other_d, order, axis=1)
    return cand, dist


SELECT_WIDTH = 4  # lowest_scores keeps rows whose threshold admits at most this many times the codes asked for


def lowest_scores(scores: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of *scores* (n, k) float32, the columns (n, m) of its m lowest values (any order), the
    m-th lowest value and the (m+1)-th, for m + 1 <= k. Rows where the m-th ties with the (m+1)-th, or
    whose threshold below admits over SELECT_WIDTH * (m + 1) columns, get -1 columns, and the values
    are only those of the other rows (the caller decides these rows another way).

    No per-row selection over k: the columns fall in groups (column j in group j mod g, g about
    k / sqrt(k / m)); the (m+1)-th lowest of the group minima bounds the (m+1)-th lowest score (m + 1
    groups each hold one at most that low), so one comparison with it keeps all m + 1 lowest and
    few others, which a sort of those few orders (numpy's row sort is vectorised; its argpartition
    is not, and cost several times the GEMM)."""
    n, k = scores.shape
    want = m + 1
    per_group = max(1, int(np.sqrt(k / want)))
    g = k // per_group
    group_min = scores[:, : g * per_group].reshape(n, per_group, g).min(axis=1)
    if g * per_group < k:
        group_min = np.concatenate([group_min, scores[:, g * per_group:]], axis=1)
    bound = np.sort(group_min, axis=1)[:, want - 1]
    flat = np.flatnonzero((scores <= bound[:, None]).ravel())
    row = flat // k
    counts = np.bincount(row, minlength=n)
    width = min(int(counts.max()), SELECT_WIDTH * want)
    position = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    fits = position < width
    values = np.full((n, width), np.inf, dtype=np.float32)
    columns = np.full((n, width), -1, dtype=np.int64)
    values[row[fits], position[fits]] = scores.ravel()[flat[fits]]
    columns[row[fits], position[fits]] = flat[fits] % k
    ordered = np.sort(values, axis=1)
    last, after = ordered[:, m - 1], ordered[:, m]
    taken = (values <= last[:, None]) & (counts <= width)[:, None]
    lowest = np.full((n, m), -1, dtype=np.int64)
    exact = taken.sum(axis=1) == m  # not so where the m-th value ties with the next
    lowest[exact] = columns[exact][taken[exact]].reshape(-1, m)
    return lowest, last, after


class _LastLevel:
    """The last level's codebook in float64, and what ``encode_residual_with_candidates`` needs of the
    levels before it (their float64 residual, its error bound)."""

    def __init__(self, codebooks: list[np.ndarray], offsets: np.ndarray | None) -> None:
        self.codebooks = codebooks
        self.book = codebooks[-1].astype(np.float64)
        self.k = len(self.book)
        self.book_sq = np.einsum("kd,kd->k", self.book, self.book)
        self.offsets = offsets
        self.max_book_sq = float(self.book_sq.max())
        self.max_norm_sum = float(sum(np.sqrt(np.einsum("kd,kd->k", c, c, dtype=np.float64).max()) for c in codebooks[:-1]))
        self.max_offset = float(np.abs(offsets).max()) if offsets is not None else 0.0

    def residual64(self, x: np.ndarray, head_codes: np.ndarray) -> np.ndarray:  # (n, d), (n, L-1) -> (n, d) float64
        r = x.astype(np.float64)
        for level in range(head_codes.shape[1]):
            r -= self.codebooks[level][head_codes[:, level]]
        return r

    def selection_margin(self, x: np.ndarray, residual: np.ndarray) -> np.ndarray:  # -> (n,) float32
        """Twice a bound on |float32 score - exact ||c||^2 - 2 r.c| for every code (a code outside the
        selection, over it by more, cannot be exactly nearer than one inside): the GEMM's rounding
        (``tie_margin``, itself about twice the worst case), the float32 residual's distance from the
        float64 one (each of the L - 1 subtractions rounds), and the offsets' removal."""
        row_sq = np.einsum("nd,nd->n", residual, residual)
        n_prior = len(self.codebooks) - 1
        x_norm = np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64))
        drift = 2.0 * n_prior * F32_EPS * (x_norm + self.max_norm_sum) * np.sqrt(self.max_book_sq)
        offsets = 4.0 * F32_EPS * (row_sq + self.max_book_sq + self.max_offset) if self.offsets is not None else 0.0
        bound = tie_margin(residual.shape[1], row_sq, self.max_book_sq + self.max_offset) + drift + offsets
        return (2.0 * bound).astype(np.float32)

    def candidates(self, x: np.ndarray, head_codes: np.ndarray, own: np.ndarray, scores: np.ndarray,
                   residual: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        """One block's (n, t) candidates and distances from its last-level *scores* (n, k), which it overwrites."""
        r = self.residual64(x, head_codes)
        n = len(r)
        if t + 1 >= self.k:  # few codes: every one is a candidate anyway
            return exact_candidates(r, self.book, own, t)
        if self.offsets is not None:
            scores -= self.offsets
        rows = np.arange(n)
        scores[rows, own] = np.inf
        others, last, after = lowest_scores(scores, t - 1)  # others (n, t-1), -1 where a row is not decided
        wide = (others[:, 0] < 0) | (after <= last + self.selection_margin(x, residual))
        sure = np.flatnonzero(~wide)
        cand = np.empty((n, t), dtype=np.int32)
        dist = np.empty((n, t), dtype=np.float32)
        if len(sure):
            others = others[sure]
            rs, own_s = r[sure], own[sure]
            cand[sure], dist[sure] = _ordered(own_s, sq_distances(rs, self.book, own_s[:, None])[:, 0], others,
                                              sq_distances(rs, self.book, others))
        if wide.any():
            cand[wide], dist[wide] = exact_candidates(r[wide], self.book, own[wide], t)
        return cand, dist


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
