"""Relocation: items that share a full code move to free last-level codes of their own prefix.

Counters (``3-9-1-4``) carry no meaning. Most colliding items have free codes close by in their
own prefix (the prefix holds at most K items at the last level, and few prefixes are full), so
instead, among the items that share a full code (or whose code an earlier item holds), all but
one move to distinct *free* last-level codes of their prefix: codes no item holds, written before
or in this batch. Which item goes where follows the squared distances of the items' last-level residuals to the free
codes, per prefix: nearest first (greedy), or as a minimum-cost assignment (exact); only the items
left when a prefix has no free code near them get counters. The prefix, and so every coarser level of the ID, never
changes, and an item already written never moves.

The rule, shared by the Spark job (``semid_spark.spark.strategies.relocate``) and the single-machine
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
5. *Assignment* per prefix, by the ``solver``: ``"greedy"`` (the default, ``greedy_edges``) takes the
   edges in (distance, key, code) order, each while its item and its code are both free; ``"exact"``
   (``place_edges``) places as many participants as possible, then at the least total distance. Both
   are defined by the items' keys and codes alone, so the answer is the same on every machine and for
   every partitioning; the pruning of step 4 holds for both (a pruned edge's code would need K + 1
   codes in its prefix).
6. Participants left without a code keep their own and get counters after the placed items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np

from semid_spark.algorithms._ops import exact_candidates
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
    t = check_n_candidates(n_candidates)
    cand = np.empty((len(x), min(t, len(encoder.codebooks_[-1]))), dtype=np.int32)
    dist = np.empty(cand.shape, dtype=np.float32)
    for start in range(0, len(x), _CHUNK):
        block_codes = np.asarray(codes[start:start + _CHUNK])
        r = encoder.latent_residuals(x[start:start + _CHUNK], block_codes)  # (n, e) float64
        cand[start:start + _CHUNK], dist[start:start + _CHUNK] = exact_candidates(
            r, encoder.codebooks_[-1], block_codes[:, -1], t)
    return cand, dist


def encode_with_candidates(encoder: Any, x: np.ndarray, n_candidates: int = N_CANDIDATES, *, device: str = "cpu"
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, d) validated embeddings -> their codes and ``last_level_candidates``. An RQ-KMeans model on
    the cpu finds the candidates in its encode pass (``RQKMeans.encode_with_candidates``: the last
    level's scores select them, float64 decides); other models and devices encode, then compute them."""
    t = check_n_candidates(n_candidates)
    if device == "cpu" and hasattr(encoder, "encode_with_candidates"):
        return encoder.encode_with_candidates(x, t)
    codes = encoder.encode(x, device=device)
    return (codes, *last_level_candidates(encoder, x, codes, t))


SOLVERS = ("greedy", "exact")  # uniqueness.relocate_solver's values


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ConfigError(f"relocate solver {solver!r}; expected " + " or ".join(repr(name) for name in SOLVERS))
    return solver


PLACE_CHUNK = 128  # prefixes per call of the matching solver (block-diagonal; its cost grows with the square of a call's size)


def place_items(n_items: int, item: np.ndarray, code: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """One prefix's assignment: items 0..n_items-1 (in key order), edges (item, code, cost) -> the code
    given to each item (-1: none). As many items as possible get a distinct code; among those
    assignments, the one of least total cost (see ``place_edges``, which solves many prefixes)."""
    out = np.full(n_items, -1, dtype=np.int64)
    ranks, given = place_edges(np.zeros(len(item), dtype=np.int64), np.asarray(item, dtype=np.int64), code, cost)[1:]
    out[ranks] = given
    return out


def place_edges(prefix: np.ndarray, rank: np.ndarray, code: np.ndarray, cost: np.ndarray,
                chunk: int = PLACE_CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every prefix's assignment at once. Edges (e,): the item's *prefix* and its *rank* (the item's
    position in key order; any ints that order a prefix's items), a last-level *code* and its *cost*.
    Returns one row per distinct (prefix, rank), sorted by both: (prefix, rank, code given or -1).

    Per prefix, as many items as possible get a distinct code; among those assignments, the one of
    least total cost: scipy's LAPJVsp on the prefix's edges, weighted 1 + cost / its largest cost (in
    [1, 2]: no zero, which is an absent entry, and no scale effects), plus one dummy code per item
    whose weight outweighs every real edge together (fewer dummies always wins). Items, then codes,
    enter in key and code order: the solver's answer among equal-cost ones depends on its input order.

    *chunk* prefixes (``PLACE_CHUNK``) go to the solver as one block-diagonal problem, each block laid out as
    that prefix alone would be: the solver's augmenting paths never leave a block, so each prefix
    gets the answer it would get alone (tests/test_relocate.py holds the two equal on inputs full of
    ties), at 20 us a prefix where a call per prefix cost 0.4-0.8 ms.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    if len(prefix) == 0:
        none = np.zeros(0, dtype=np.int64)
        return none, none, none
    order = np.lexsort((code, rank, prefix))
    prefix, rank = np.asarray(prefix, dtype=np.int64)[order], np.asarray(rank, dtype=np.int64)[order]
    code, cost = np.asarray(code, dtype=np.int64)[order], np.asarray(cost, dtype=np.float64)[order]
    new_prefix = np.r_[True, prefix[1:] != prefix[:-1]]
    new_item = new_prefix | np.r_[True, rank[1:] != rank[:-1]]
    group = np.cumsum(new_prefix) - 1  # (e,) the edge's prefix, 0..G-1
    item = np.cumsum(new_item) - 1  # (e,) the edge's item, 0..I-1, in (prefix, rank) order
    first_item = item[new_prefix]  # (G,) each prefix's first item
    n_items = np.diff(np.r_[first_item, item[-1] + 1])  # (G,)
    given = np.full(item[-1] + 1, -1, dtype=np.int64)
    edge_start = np.r_[np.flatnonzero(new_prefix), len(prefix)]  # (G + 1,)
    for g0 in range(0, len(n_items), chunk):
        g1 = min(g0 + chunk, len(n_items))
        lo, hi = edge_start[g0], edge_start[g1]
        i0 = first_item[g0]
        rows, cols = _block_diagonal(group[lo:hi] - g0, item[lo:hi] - i0, code[lo:hi], n_items[g0:g1])
        top = np.maximum.reduceat(cost[lo:hi], edge_start[g0:g1] - lo)[group[lo:hi] - g0]  # per prefix
        weight = 1.0 + np.where(top > 0, cost[lo:hi] / np.where(top > 0, top, 1.0), cost[lo:hi])
        dummy = np.repeat(2.0 * n_items[g0:g1] + 1.0, n_items[g0:g1])
        n_rows = int(n_items[g0:g1].sum())
        graph = csr_matrix((np.r_[weight, dummy], (rows, cols.index)), shape=(n_rows, cols.n_columns))
        matched_rows, matched_cols = min_weight_full_bipartite_matching(graph)
        real = cols.code_of[matched_cols] >= 0
        given[i0 + matched_rows[real]] = cols.code_of[matched_cols[real]]
    return prefix[new_item], rank[new_item], given


def greedy_edges(prefix: np.ndarray, rank: np.ndarray, code: np.ndarray, cost: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``place_edges``'s input and output, by the greedy rule: a prefix's edges are taken in (cost, rank,
    code) order, each while its item has no code yet and no item has taken its code.

    Computed in rounds over every prefix at once, not edge by edge: in each round, every edge that is
    the first remaining one of both its item and its code is taken (with a strict order on the edges
    those are exactly the edges the sequential rule takes next, Preis's locally dominant edges), and the
    edges of the items and codes taken leave. The cheapest remaining edge is always taken, so rounds
    end; their number follows the longest chain of items that want one another's codes, not the items.
    """
    if len(prefix) == 0:
        none = np.zeros(0, dtype=np.int64)
        return none, none, none
    prefix, rank = np.asarray(prefix, dtype=np.int64), np.asarray(rank, dtype=np.int64)
    code, cost = np.asarray(code, dtype=np.int64), np.asarray(cost)
    item, items = _numbered(prefix, rank)
    code_id, _ = _numbered(prefix, code)
    order = np.lexsort((code, rank, cost))  # within a prefix a strict order: an item has a code once
    item, code_id, last = item[order], code_id[order], code[order]
    given = np.full(len(items), -1, dtype=np.int64)
    while len(item):
        position = np.arange(len(item))
        first_of_item = np.full(len(given), len(item))
        np.minimum.at(first_of_item, item, position)
        first_of_code = np.full(int(code_id.max()) + 1, len(item))
        np.minimum.at(first_of_code, code_id, position)
        taken = (first_of_item[item] == position) & (first_of_code[code_id] == position)
        given[item[taken]] = last[taken]
        item_done = np.zeros(len(given), dtype=bool)
        item_done[item[taken]] = True
        code_done = np.zeros(len(first_of_code), dtype=bool)
        code_done[code_id[taken]] = True
        left = ~(item_done[item] | code_done[code_id])
        item, code_id, last = item[left], code_id[left], last[left]
    return prefix[items], rank[items], given


def _numbered(prefix: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each (prefix, value) pair's number, 0.. in (prefix, value) order, and the first position of each."""
    order = np.lexsort((value, prefix))
    p, v = prefix[order], value[order]
    new = np.r_[True, (p[1:] != p[:-1]) | (v[1:] != v[:-1])]
    number = np.empty(len(order), dtype=np.int64)
    number[order] = np.cumsum(new) - 1
    return number, order[new]


def place(prefix: np.ndarray, rank: np.ndarray, code: np.ndarray, cost: np.ndarray, solver: str = "greedy"
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``greedy_edges`` or ``place_edges`` (exact), by *solver*."""
    return (greedy_edges if check_solver(solver) == "greedy" else place_edges)(prefix, rank, code, cost)


@dataclass(frozen=True)
class _Columns:
    index: np.ndarray  # (e + I,) the column of each edge, then of each item's dummy
    code_of: np.ndarray  # (columns,) the code a column stands for; -1 for a dummy
    n_columns: int


def _block_diagonal(group: np.ndarray, item: np.ndarray, code: np.ndarray, n_items: np.ndarray
                    ) -> tuple[np.ndarray, _Columns]:
    """Rows and columns of a chunk's matching problem: edges sorted by (group, item, code), items
    numbered 0..I-1 across the chunk's groups. Group g's columns are its distinct codes, ascending,
    then one dummy per item: the layout of g's problem alone, shifted."""
    span = int(code.max()) + 1 if len(code) else 1
    distinct, column = np.unique(group * span + code, return_inverse=True)
    n_codes = np.bincount(distinct // span, minlength=len(n_items))
    code_start = np.r_[0, np.cumsum(n_codes)][:-1]
    item_start = np.r_[0, np.cumsum(n_items)][:-1]
    block_start = code_start + item_start  # group g's first column
    item_group = np.repeat(np.arange(len(n_items)), n_items)
    n_columns = int(n_codes.sum() + n_items.sum())
    code_of = np.full(n_columns, -1, dtype=np.int64)
    code_col = block_start[distinct // span] + np.arange(len(distinct)) - code_start[distinct // span]
    code_of[code_col] = distinct % span
    edge_col = code_col[column.ravel()]
    dummy_col = block_start[item_group] + n_codes[item_group] + np.arange(len(item_group)) - item_start[item_group]
    rows = np.r_[item, np.arange(len(item_group))]
    return rows, _Columns(np.r_[edge_col, dummy_col], code_of, n_columns)


def place_participants(prefix: np.ndarray, rank: np.ndarray, own_written: np.ndarray, cand: np.ndarray,
                       dist: np.ndarray, taken: np.ndarray, k: int, solver: str = "greedy"
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 3-5 of the rule for participants (p,) of any prefixes: their *prefix* (ints), *rank* in key
    order, whether a written item holds their own code, their candidates and distances (p, T); *taken*:
    the full codes (prefix * k + last-level code) that any item, new or written, holds. Returns
    ``place``'s (prefix, rank, code given or -1), one row per participant with an edge."""
    p, t = cand.shape
    rows = np.repeat(np.arange(p), t)
    position = np.tile(np.arange(t), p)
    target = prefix[rows] * k + cand.ravel()
    keep = np.where(position == 0, ~own_written[rows], ~np.isin(target, taken))
    rows, target, cost = rows[keep], target[keep], dist.ravel()[keep]
    keep = dominated_edges_dropped(rows, target, cost)  # a second pass (more codes uncontested) gained nothing at 4M
    rows, target, cost = rows[keep], target[keep], cost[keep]
    if len(rows) and np.unique(prefix, return_counts=True)[1].max() > k:  # a code may have more than k edges
        pruned = prune_edges(target, cost, rank[rows], k)
        rows, target, cost = rows[pruned], target[pruned], cost[pruned]
    return place(prefix[rows], rank[rows], target % k, cost, solver)


def dominated_edges_dropped(rows: np.ndarray, target: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Mask of the edges (item *rows*, ascending; full code *target*; *cost*) either solver needs. A
    code no other item can take is the item's own to keep: an item matched to a costlier code can move
    to its cheapest such code without taking one from anyone, so every edge after that code in (cost,
    code) order can go; the most items placed at the least total cost stays what it was (exact), and
    greedy, which meets an item's edges in that order and takes an uncontested code when it meets it,
    never reaches them (the same assignment). Most
    colliding items keep two or three edges of their T (their shared code, the nearest free code
    nobody else wants, and any cheaper contested one), which is what the matching's time follows."""
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    _, at, count = np.unique(target, return_inverse=True, return_counts=True)
    private = count[at.ravel()] == 1
    starts = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1]
    span = np.diff(np.r_[starts, len(rows)])
    bound = np.repeat(np.minimum.reduceat(np.where(private, cost, np.inf), starts), span)  # per item with edges
    # at that cost, its lowest such code: greedy meets an item's edges in (cost, code) order
    first = np.repeat(np.minimum.reduceat(np.where(private & (cost == bound), target, np.iinfo(np.int64).max),
                                          starts), span)
    return (cost < bound) | ((cost == bound) & (target <= first))


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
                   n_candidates: int = N_CANDIDATES, device: str | None = None, solver: str = "greedy") -> Relocation:
    """The codes a fitted RQKMeans or RQVAE gives *embeddings* (N, D) once colliding items have moved
    to free last-level codes of their prefix (the module's rule, as the Spark job applies it).

    *keys*: item keys, which order ties (default: the row positions). *codes*: the items' nearest
    codes, when already encoded. *held*: (M, L) codes that earlier items hold (they count as taken).
    *solver*: ``"greedy"`` or ``"exact"`` (the job's ``uniqueness.relocate_solver``).
    """
    check_solver(solver)
    x = check_embeddings(embeddings, dim=model.n_features_in_)
    if codes is None:
        codes, cand, dist = encode_with_candidates(model, x, n_candidates, device=device or model.device)
    else:
        codes = np.asarray(codes)
        if codes.shape[0] != len(x):
            raise InvalidInputError(f"{len(codes)} code rows for {len(x)} embeddings; expected one each")
        cand, dist = last_level_candidates(model, x, codes, n_candidates)
    codes = np.asarray(codes, dtype=np.int64)
    key_rank = key_ranks(keys, len(x))
    held = np.empty((0, codes.shape[1]), dtype=np.int64) if held is None else np.asarray(held, dtype=np.int64)
    if held.ndim != 2 or held.shape[1] != codes.shape[1]:
        raise InvalidInputError(f"held has shape {held.shape}; expected (M, {codes.shape[1]}) codes")
    new_last, unplaced = assign_last_level(codes, cand, dist, key_rank, held, len(model.codebooks_[-1]), solver)
    out = codes.copy()
    out[:, -1] = new_last
    relocated = new_last != codes[:, -1]
    assigned_d = dist[np.arange(len(x)), np.argmax(cand == new_last[:, None], axis=1)]  # the own code is column 0
    return Relocation(out.astype(np.int32), relocated, unplaced, float(dist[:, 0].astype(np.float64).sum()),
                      float(assigned_d.astype(np.float64).sum()))


def assign_last_level(codes: np.ndarray, cand: np.ndarray, dist: np.ndarray, key_rank: np.ndarray,
                      held: np.ndarray, k: int, solver: str = "greedy") -> tuple[np.ndarray, np.ndarray]:
    """(new last-level code per item, unplaced flag per item) by the module's rule, for items of codes
    (n, L), candidates and distances (n, T), key ranks (n,), codes *held* by earlier items (m, L)."""
    n, t = cand.shape
    everything = np.concatenate([codes[:, :-1], held[:, :-1]])
    _, prefix = np.unique(everything, axis=0, return_inverse=True)
    prefix = prefix.ravel().astype(np.int64)
    full = prefix[:n] * k + codes[:, -1]
    held_full = prefix[n:] * k + held[:, -1]
    _, inverse, counts = np.unique(full, return_inverse=True, return_counts=True)
    own_written = np.isin(full, held_full)
    participant = (counts[inverse.ravel()] > 1) | own_written
    who = np.flatnonzero(participant)
    _, item_rank, given = place_participants(prefix[who], key_rank[who], own_written[who], cand[who], dist[who],
                                             np.concatenate([full, held_full]), k, solver)
    new_last = codes[:, -1].copy()
    placed = np.zeros(n, dtype=bool)
    members = np.argsort(key_rank)[item_rank[given >= 0]]  # key ranks are 0..n-1, one per item
    new_last[members] = given[given >= 0]
    placed[members] = True
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

