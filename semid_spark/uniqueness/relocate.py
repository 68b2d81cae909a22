"""Relocation: items that share a full code move to free last-level codes of their own prefix.

Counters (``3-9-1-4``) carry no meaning. Most colliding items have free codes close by in their
own prefix (the prefix holds at most K items at the last level, and few prefixes are full), so
instead, among the items that share a full code (or whose code an earlier item holds), all but
one move to distinct *free* last-level codes of their prefix: codes no item holds, written before
or in this batch. Which item goes where is a minimum-cost assignment per prefix over the squared
distances of the items' last-level residuals to the free codes; only the items left when a prefix
has no free code near them get counters. The prefix, and so every coarser level of the ID, never
changes, and an item already written never moves.

The rule, shared by the Spark job (``semid_spark.spark.relocate``) and the single-machine
``relocate_codes`` / ``RelocatingResolver``, so that both give the same codes:

1. *Candidates*: each item's own last-level code and its ``n_candidates - 1`` next-nearest ones,
   with float32 squared distances rounded from float64 (``last_level_candidates``).
2. *Participants*: items whose full code another new item shares, or a written item holds.
3. *Edges*: a participant's own code when no written item holds it (one of its group keeps it);
   any other candidate that no item holds.
4. *Pruning*: each code keeps its K nearest edges by (distance, key), K the last level's size. A
   prefix has at most K codes, so an optimal assignment never uses a pruned edge (if K items are
   nearer to a code than the one given it, one of them is free to take it at a lower cost); the
   pruning only bounds the work of a prefix, whatever its size.
5. *Assignment* per prefix (``place_items``): as many participants as possible get a code, then
   the least total distance; items in key order, codes in code order, so the answer is the same on
   every machine and for every partitioning.
6. Participants left without a code keep their own and get counters after the placed items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np

from semid_spark.core import check_embeddings
from semid_spark.exceptions import ConfigError, InvalidInputError

N_CANDIDATES = 16  # last-level codes per item an item may move to (its own included)
_CHUNK = 1024


def check_n_candidates(n_candidates: int) -> int:
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, (int, np.integer)) or n_candidates < 2:
        raise ConfigError(f"n_candidates={n_candidates!r}; expected an int >= 2 (the own code and at least one other)")
    return int(n_candidates)


def last_level_candidates(encoder: Any, x: np.ndarray, codes: np.ndarray, n_candidates: int = N_CANDIDATES
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) validated embeddings and their (n, L) codes -> candidates (n, T) int32 and their squared
    distances (n, T) float32, T = min(n_candidates, K): column 0 is the item's own last-level code,
    then the nearest other codes by (distance, code). Distances are those of the residual the last
    level quantises (``encoder.latent_residuals``), computed in float64 and rounded to float32."""
    book = np.asarray(encoder.codebooks_[-1], dtype=np.float64)
    k = len(book)
    t = min(check_n_candidates(n_candidates), k)
    book_sq = np.einsum("kd,kd->k", book, book)
    cand = np.empty((len(x), t), dtype=np.int32)
    dist = np.empty((len(x), t), dtype=np.float32)
    for start in range(0, len(x), _CHUNK):
        block_codes = np.asarray(codes[start:start + _CHUNK])
        r = encoder.latent_residuals(x[start:start + _CHUNK], block_codes)  # (n, e) float64
        d = np.maximum(np.einsum("nd,nd->n", r, r)[:, None] - 2.0 * (r @ book.T) + book_sq, 0.0)
        rows = np.arange(len(r))
        own = block_codes[:, -1].astype(np.int64)
        own_d = d[rows, own].copy()
        d[rows, own] = np.inf
        others = np.argpartition(d, t - 2, axis=1)[:, : t - 1] if t < k else np.argsort(d, axis=1)[:, : t - 1]
        other_d = np.take_along_axis(d, others, axis=1)
        order = np.lexsort((others, other_d), axis=1)  # by distance, then code
        cand[start:start + _CHUNK, 0] = own
        cand[start:start + _CHUNK, 1:] = np.take_along_axis(others, order, axis=1)
        dist[start:start + _CHUNK, 0] = own_d
        dist[start:start + _CHUNK, 1:] = np.take_along_axis(other_d, order, axis=1)
    return cand, dist


def place_items(n_items: int, item: np.ndarray, code: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """One prefix's assignment: items 0..n_items-1 (in key order), edges (item, code, cost) -> the code
    given to each item (-1: none). As many items as possible get a distinct code; among those
    assignments, the one of least total cost (scipy's LAPJVsp on the edges plus one dummy code per
    item whose cost outweighs every real edge together)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    out = np.full(n_items, -1, dtype=np.int64)
    if len(item) == 0:
        return out
    order = np.lexsort((code, item))  # a canonical input: the solver's answer depends on its order
    item, code, cost = item[order], code[order], cost[order].astype(np.float64)
    codes, column = np.unique(code, return_inverse=True)
    top = float(cost.max())
    weight = 1.0 + (cost / top if top > 0 else cost)  # in [1, 2]: no zero (an absent entry), no scale effects
    dummy = 2.0 * n_items + 1.0  # > any sum of real weights: fewer dummies always wins
    rows = np.concatenate([item, np.arange(n_items)])
    cols = np.concatenate([column, len(codes) + np.arange(n_items)])
    weights = np.concatenate([weight, np.full(n_items, dummy)])
    graph = csr_matrix((weights, (rows, cols)), shape=(n_items, len(codes) + n_items))
    matched_rows, matched_cols = min_weight_full_bipartite_matching(graph)
    real = matched_cols < len(codes)
    out[matched_rows[real]] = codes[matched_cols[real]]
    return out


def prune_edges(target: np.ndarray, cost: np.ndarray, key_rank: np.ndarray, keep: int) -> np.ndarray:
    """Mask of the edges kept: per *target* (a full code), its *keep* first by (cost, key rank)."""
    order = np.lexsort((key_rank, cost, target))
    sorted_target = target[order]
    first = np.r_[0, np.flatnonzero(sorted_target[1:] != sorted_target[:-1]) + 1]
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    mask = np.zeros(len(order), dtype=bool)
    mask[order[rank < keep]] = True
    return mask


@dataclass(frozen=True)
class Relocation:
    """What ``relocate_codes`` returns, one row per item in input order."""

    codes: np.ndarray  # (n, L) int32: the assigned codes (the nearest ones but for moved items' last level)
    relocated: np.ndarray  # (n,) bool: the item moved to another last-level code
    unplaced: np.ndarray  # (n,) bool: the item shares its code and found no free one (it gets a counter)
    nearest_sq_error: float  # sum of the items' squared residual distances at their nearest codes
    assigned_sq_error: float  # the same at the assigned codes

    @property
    def moved_share(self) -> float:
        return float(self.relocated.mean()) if len(self.relocated) else 0.0

    @property
    def error_ratio(self) -> float:
        """Reconstruction error of the assigned codes over that of the nearest ones (RQ-KMeans: the
        squared reconstruction error; RQ-VAE: the last level's latent residual)."""
        return self.assigned_sq_error / self.nearest_sq_error if self.nearest_sq_error > 0 else 1.0


def relocate_codes(model: Any, embeddings: Any, *, keys: Sequence[Hashable] | None = None,
                   codes: np.ndarray | None = None, held: np.ndarray | None = None,
                   n_candidates: int = N_CANDIDATES, device: str | None = None) -> Relocation:
    """The codes a fitted RQKMeans or RQVAE gives *embeddings* (N, D) once colliding items have moved
    to free last-level codes of their prefix (the module's rule, as the Spark job applies it).

    *keys*: item keys, which order ties (default: the row positions). *codes*: the items' nearest
    codes, when already encoded. *held*: (M, L) codes that earlier items hold (they count as taken).
    """
    x = check_embeddings(embeddings, dim=model.n_features_in_)
    if codes is None:
        codes = model.encode(x, device=device)
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape[0] != len(x):
        raise InvalidInputError(f"{len(codes)} code rows for {len(x)} embeddings; expected one each")
    cand, dist = last_level_candidates(model, x, codes, n_candidates)
    key_rank = key_ranks(keys, len(x))
    held = np.empty((0, codes.shape[1]), dtype=np.int64) if held is None else np.asarray(held, dtype=np.int64)
    if held.ndim != 2 or held.shape[1] != codes.shape[1]:
        raise InvalidInputError(f"held has shape {held.shape}; expected (M, {codes.shape[1]}) codes")
    new_last, unplaced = _assign(codes, cand, dist, key_rank, held, len(model.codebooks_[-1]))
    out = codes.copy()
    out[:, -1] = new_last
    relocated = new_last != codes[:, -1]
    assigned_d = dist[np.arange(len(x)), np.argmax(cand == new_last[:, None], axis=1)]  # the own code is column 0
    return Relocation(out.astype(np.int32), relocated, unplaced, float(dist[:, 0].astype(np.float64).sum()),
                      float(assigned_d.astype(np.float64).sum()))


def _assign(codes: np.ndarray, cand: np.ndarray, dist: np.ndarray, key_rank: np.ndarray, held: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """(new last-level code per item, unplaced flag per item) by the module's rule."""
    n, t = cand.shape
    everything = np.concatenate([codes[:, :-1], held[:, :-1]])
    _, prefix = np.unique(everything, axis=0, return_inverse=True)
    prefix = prefix.ravel().astype(np.int64)
    full = prefix[:n] * k + codes[:, -1]
    held_full = prefix[n:] * k + held[:, -1]
    _, inverse, counts = np.unique(full, return_inverse=True, return_counts=True)
    own_written = np.isin(full, held_full)
    participant = (counts[inverse.ravel()] > 1) | own_written
    rows = np.repeat(np.flatnonzero(participant), t)
    position = np.tile(np.arange(t), int(participant.sum()))
    target = prefix[rows] * k + cand[rows, position]
    taken = np.isin(target, np.concatenate([full, held_full]))
    keep = np.where(position == 0, ~own_written[rows], ~taken)
    rows, target, cost = rows[keep], target[keep], dist[rows[keep], position[keep]]
    pruned = prune_edges(target, cost, key_rank[rows], k)
    rows, target, cost = rows[pruned], target[pruned], cost[pruned]
    new_last = codes[:, -1].copy()
    placed = np.zeros(n, dtype=bool)
    order = np.argsort(prefix[rows], kind="stable")
    rows, target, cost = rows[order], target[order], cost[order]
    edge_prefix = prefix[rows]
    starts = np.r_[0, np.flatnonzero(np.diff(edge_prefix)) + 1, len(rows)]
    for lo, hi in zip(starts[:-1], starts[1:]):  # one prefix's edges
        ranks, item = np.unique(key_rank[rows[lo:hi]], return_inverse=True)  # its items in key order
        members = rows[lo:hi][np.unique(item.ravel(), return_index=True)[1]]
        given = place_items(len(ranks), item.ravel(), target[lo:hi] % k, cost[lo:hi])
        ok = given >= 0
        new_last[members[ok]] = given[ok]
        placed[members[ok]] = True
    return new_last, participant & ~placed


def key_ranks(keys: Sequence[Hashable] | None, n: int) -> np.ndarray:
    """Each item's position in key order (row order without keys); duplicate keys are an error."""
    if keys is None:
        return np.arange(n)
    keys = np.asarray(list(keys))
    if len(keys) != n:
        raise InvalidInputError(f"keys has {len(keys)} entries for {n} embeddings; expected one per item")
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if len(first) != n:
        raise InvalidInputError(f"keys holds {n - len(first)} duplicates among {n} items; each item key must appear once")
    return inverse.ravel()

