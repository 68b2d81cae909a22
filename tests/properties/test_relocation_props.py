"""Relocation's invariants on random catalogs: prefixes kept, no duplicate, held codes untouched, optimal, order-free."""

from functools import lru_cache

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.uniqueness.relocate import last_level_candidates, relocate_codes
from semid_spark.uniqueness.resolver import RelocatingResolver

DIM, SIZES = 6, [3, 6]


@lru_cache(maxsize=None)
def model(seed: int) -> RQKMeans:
    x = np.random.default_rng(seed).standard_normal((300, DIM)).astype(np.float32)
    return RQKMeans(len(SIZES), SIZES, random_state=seed).fit(x)


def items(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4, DIM)).astype(np.float32)
    return (centers[rng.integers(0, 4, n)] + 0.4 * rng.standard_normal((n, DIM))).astype(np.float32)


catalogs = st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(2, 70), st.integers(0, 12),
                     st.sampled_from([2, 3, 6]))


def case(model_seed, data_seed, n, n_held, n_candidates):
    m = model(model_seed)
    x = items(data_seed, n + n_held)
    held = m.encode(x[n:]) if n_held else np.empty((0, len(SIZES)), dtype=np.int32)  # codes written earlier
    keys = [f"k{(i * 7919) % 10007:05d}" for i in range(n)]
    return m, x[:n], held, keys, n_candidates


@settings(max_examples=60, deadline=None)
@given(catalogs)
def test_prefixes_stay_held_codes_stay_taken_and_no_code_is_given_twice(params):
    m, x, held, keys, n_candidates = case(*params)
    nearest = m.encode(x)
    out = relocate_codes(m, x, keys=keys, held=held, n_candidates=n_candidates)
    assert (out.codes[:, :-1] == nearest[:, :-1]).all()  # the prefix never changes
    assert ((out.codes != nearest).any(axis=1) == out.relocated).all()
    held_set = {tuple(c) for c in held.tolist()}
    nearest_set = {tuple(c) for c in nearest.tolist()}
    for code in out.codes[out.relocated].tolist():  # moved to a code nobody holds
        assert tuple(code) not in held_set and tuple(code) not in nearest_set
    placed = [tuple(c) for c in out.codes[~out.unplaced].tolist()]
    assert len(placed) == len(set(placed))  # no two items without a counter share a code
    assert not set(placed) & held_set
    assert (out.codes[out.unplaced] == nearest[out.unplaced]).all()  # left over: keep the nearest code


@settings(max_examples=40, deadline=None)
@given(catalogs, st.randoms(use_true_random=False))
def test_the_result_does_not_depend_on_the_input_order(params, random):
    m, x, held, keys, n_candidates = case(*params)
    order = list(range(len(x)))
    random.shuffle(order)
    a = relocate_codes(m, x, keys=keys, held=held, n_candidates=n_candidates)
    b = relocate_codes(m, x[order], keys=[keys[i] for i in order], held=held[::-1], n_candidates=n_candidates)
    assert (a.codes[order] == b.codes).all() and (a.unplaced[order] == b.unplaced).all()


@settings(max_examples=40, deadline=None)
@given(catalogs)
def test_resolver_ids_are_unique_and_the_placed_item_keeps_the_bare_code(params):
    m, x, held, keys, n_candidates = case(*params)
    resolver = RelocatingResolver(n_candidates=n_candidates)
    ids = resolver.assign(m.semantic_id(m.encode(x)), embeddings=x, model=m, keys=keys)
    assert len(set(ids)) == len(ids)
    relocation = resolver.last_relocation
    bare = [i for i in ids if i.count("-") == len(SIZES) - 1]
    assert len(bare) == len(ids) - int(relocation.unplaced.sum())  # counters only for the items left over


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2), st.integers(0, 10_000), st.integers(2, 40))
def test_with_every_code_a_candidate_the_assignment_is_optimal(model_seed, data_seed, n):
    """The exact solver against a dense Hungarian assignment per prefix over every free code: as many items
    placed, same cost."""
    m, x, _, keys, _ = case(model_seed, data_seed, n, 0, 2)
    k = SIZES[-1]
    out = relocate_codes(m, x, keys=keys, n_candidates=k, solver="exact")
    nearest = m.encode(x)
    cand, dist = last_level_candidates(m, x, nearest, k)
    full = {tuple(c) for c in nearest.tolist()}
    groups = {}
    for i, c in enumerate(nearest.tolist()):
        groups.setdefault(tuple(c), []).append(i)
    participants = [i for members in groups.values() if len(members) > 1 for i in members]
    for prefix in {tuple(nearest[i, :-1]) for i in participants}:
        members = [i for i in participants if tuple(nearest[i, :-1]) == prefix]
        codes = [c for c in range(k) if prefix + (c,) not in full] + sorted({nearest[i, -1] for i in members})
        big = 1e6
        cost = np.full((len(members), len(codes)), big)
        for row, i in enumerate(members):
            for j, c in enumerate(codes):
                if c == nearest[i, -1] or prefix + (c,) not in full:
                    cost[row, j] = dist[i, list(cand[i]).index(c)]
        rows, cols = linear_sum_assignment(cost)
        real = cost[rows, cols] < big
        got = out.codes[members, -1]
        got_placed = ~out.unplaced[members]
        assert got_placed.sum() == real.sum()
        got_cost = sum(dist[i, list(cand[i]).index(c)] for i, c, p in zip(members, got, got_placed) if p)
        assert np.isclose(got_cost, cost[rows, cols][real].sum(), rtol=1e-6, atol=1e-6)
