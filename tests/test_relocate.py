"""relocate_codes and RelocatingResolver: errors that name the problem, the engine, torch input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from semid_spark.engine import SemanticIdEngine
from semid_spark.exceptions import ConfigError, InvalidInputError
from semid_spark.config import RELOCATE_SOLVERS
from semid_spark.uniqueness.relocate import SOLVERS, greedy_edges, place_edges, place_items, relocate_codes
from semid_spark.uniqueness.resolver import RelocatingResolver


def test_bad_arguments_are_named(fitted, X):
    with pytest.raises(InvalidInputError, match="keys holds 1 duplicates among 3 items"):
        relocate_codes(fitted, X[:3], keys=["a", "b", "a"])
    with pytest.raises(InvalidInputError, match="keys has 2 entries for 3 embeddings"):
        relocate_codes(fitted, X[:3], keys=["a", "b"])
    with pytest.raises(InvalidInputError, match=r"held has shape \(4,\); expected \(M, 3\)"):
        relocate_codes(fitted, X[:3], held=np.zeros(4))
    with pytest.raises(InvalidInputError, match="2 code rows for 3 embeddings"):
        relocate_codes(fitted, X[:3], codes=fitted.encode(X[:2]))
    with pytest.raises(ConfigError, match="n_candidates=1"):
        relocate_codes(fitted, X[:3], n_candidates=1)
    with pytest.raises(ConfigError, match="requires 'embeddings' and 'model'"):
        RelocatingResolver().assign(["1-2-3"])
    with pytest.raises(ConfigError, match="relocate solver 'hungarian'; expected 'greedy' or 'exact'"):
        relocate_codes(fitted, X[:3], solver="hungarian")
    with pytest.raises(ConfigError, match="relocate solver 'optimal'"):
        RelocatingResolver(solver="optimal")
    assert RELOCATE_SOLVERS == SOLVERS  # the job's config names them without importing numpy's rule


def test_place_items_places_as_many_as_it_can_then_the_cheapest():
    # item 0 is nearest to 7 but can take 8; item 1 has only 7: both placed beats item 0 alone on 7
    assert place_items(2, np.array([0, 0, 1]), np.array([7, 8, 7]), np.array([0.1, 0.15, 0.2])).tolist() == [8, 7]
    # two codes, three items: the two placed are the cheapest pair
    given = place_items(3, np.array([0, 1, 1, 2]), np.array([7, 7, 8, 8]), np.array([0.1, 0.2, 0.9, 0.5]))
    assert given.tolist() == [7, -1, 8]
    assert place_items(2, np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.array([])).tolist() == [-1, -1]


def one_prefix_alone(n_items, item, code, cost):
    """The rule as the job solved it before prefixes were batched: one solver call for one prefix."""
    out = np.full(n_items, -1, dtype=np.int64)
    order = np.lexsort((code, item))
    item, code, cost = item[order], code[order], cost[order].astype(np.float64)
    codes, column = np.unique(code, return_inverse=True)
    top = float(cost.max())
    weight = 1.0 + (cost / top if top > 0 else cost)
    rows, cols = np.r_[item, np.arange(n_items)], np.r_[column, len(codes) + np.arange(n_items)]
    graph = csr_matrix((np.r_[weight, np.full(n_items, 2.0 * n_items + 1.0)], (rows, cols)),
                       shape=(n_items, len(codes) + n_items))
    matched_rows, matched_cols = min_weight_full_bipartite_matching(graph)
    real = matched_cols < len(codes)
    out[matched_rows[real]] = codes[matched_cols[real]]
    return out


@st.composite
def prefixes(draw):
    """Edges (prefix, rank, code, cost) of 1-40 prefixes in any order: each prefix holds 1-6 items of
    sparse ranks, each item 1-6 distinct codes of 8 at costs of 0-2 (ties everywhere). Drawn from a
    seed: hypothesis picks the sizes and the seed, numpy the edges (thousands of draws otherwise)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    edges = []
    for prefix in rng.permutation(draw(st.integers(1, 40))) * 3:
        for rank in rng.choice(50, size=rng.integers(1, 7), replace=False):
            for code in rng.choice(8, size=rng.integers(1, 7), replace=False):
                edges.append((prefix, rank, code, rng.integers(0, 3)))
    return np.array(edges, dtype=np.int64)[rng.permutation(len(edges))]


@settings(max_examples=60, deadline=None)
@given(prefixes(), st.integers(1, 9))
def test_prefixes_solved_together_get_what_each_gets_alone(edges, chunk):
    prefix, rank, code, cost = edges.T
    got_prefix, got_rank, given = place_edges(prefix, rank, code, cost.astype(np.float32), chunk=chunk)
    assert np.array_equal(got_prefix, np.sort(got_prefix))
    for p in np.unique(prefix):
        mine = prefix == p
        ranks, item = np.unique(rank[mine], return_inverse=True)
        alone = one_prefix_alone(len(ranks), item, code[mine], cost[mine])
        assert np.array_equal(got_rank[got_prefix == p], ranks)
        assert np.array_equal(given[got_prefix == p], alone)


def test_the_engine_passes_the_model_and_the_ids_are_unique(fitted, X):
    engine = SemanticIdEngine(fitted, RelocatingResolver())
    ids = engine.unique_ids(X, keys=[f"item{i}" for i in range(len(X))])
    assert len(set(ids)) == len(ids)
    plain = SemanticIdEngine(fitted).unique_ids(X)
    with_counter = lambda out: sum(i.count("-") == 3 for i in out)  # noqa: E731
    assert with_counter(ids) < with_counter(plain)


def test_torch_tensors_are_taken(fitted, X):
    torch = pytest.importorskip("torch")
    assert np.array_equal(relocate_codes(fitted, torch.from_numpy(X[:200])).codes, relocate_codes(fitted, X[:200]).codes)


def _model_with(codebooks: list[np.ndarray]):
    from semid_spark.algorithms.rq_kmeans import RQKMeans

    model = RQKMeans(n_levels=len(codebooks), n_clusters=[len(c) for c in codebooks])
    model.codebooks_, model.D_ = [np.ascontiguousarray(c, dtype=np.float32) for c in codebooks], codebooks[0].shape[1]
    return model


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([[8, 40], [16, 64, 100], [5, 7, 33], [64, 18]]),
       st.sampled_from([2, 3, 16]), st.booleans())
def test_candidates_found_while_encoding_are_those_computed_after(seed, sizes, n_candidates, ties):
    """encode_with_candidates (the last level's float32 scores select, float64 decides) gives exactly
    encode + last_level_candidates (float64 over every code), rows sitting on a code, equal codes
    in a codebook (exact ties) and few codes (every one a candidate) included."""
    from semid_spark.uniqueness.relocate import encode_with_candidates, last_level_candidates

    rng = np.random.default_rng(seed)
    dim = 12
    books = [rng.standard_normal((k, dim)).astype(np.float32) * 0.5 ** level for level, k in enumerate(sizes)]
    if ties:
        books[-1][1::3] = books[-1][::3][: len(books[-1][1::3])]  # every third code twice
    model = _model_with(books)
    x = rng.standard_normal((700, dim)).astype(np.float32)
    x[:50] = books[0][rng.integers(0, sizes[0], 50)] + books[-1][rng.integers(0, sizes[-1], 50)]
    codes, cand, dist = encode_with_candidates(model, x, n_candidates)
    assert (codes == model.encode(x)).all()
    ref_cand, ref_dist = last_level_candidates(model, x, codes, n_candidates)
    assert (cand == ref_cand).all() and (dist == ref_dist).all()
    assert (cand[:, 0] == codes[:, -1]).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([20, 64, 99, 256]), st.integers(1, 18), st.booleans())
def test_lowest_scores_are_the_lowest(seed, k, m, integral):
    from semid_spark.algorithms._ops import lowest_scores

    m = min(m, k - 1)
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((200, k)).astype(np.float32)
    if integral:  # many ties
        scores = np.round(scores * 3).astype(np.float32)
    columns, last, after = lowest_scores(scores.copy(), m)
    ordered = np.sort(scores, axis=1)
    decided = columns[:, 0] >= 0
    assert (last[decided] == ordered[decided, m - 1]).all() and (after[decided] == ordered[decided, m]).all()
    tied = ordered[:, m - 1] == ordered[:, m]
    assert not decided[tied].any()  # the m-th lowest ties with the next: no set of m is *the* lowest
    if not integral:  # else a row may also be left to the caller when too many scores tie under its bound
        assert decided[~tied].all()
    for row in np.flatnonzero(decided):
        assert sorted(scores[row, columns[row]]) == list(ordered[row, :m])
        assert len(set(columns[row])) == m


@pytest.mark.parametrize("solver", ["greedy", "exact"])
@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.sampled_from([4, 8, 16]), st.integers(1, 6), st.booleans())
def test_dropping_dominated_edges_keeps_the_optimum(solver, seed, n, k, t, integral):
    """place_participants drops the edges after an item's cheapest uncontested code: as many items
    placed, at the same total cost, as the solver gives on every edge (costs full of ties when integral);
    greedy gives the very same codes."""
    from semid_spark.uniqueness import relocate

    rng = np.random.default_rng(seed)
    t = min(t, k)
    prefix = rng.integers(0, 3, n)
    cand = np.stack([rng.choice(k, t, replace=False) for _ in range(n)])
    dist = rng.integers(0, 4, (n, t)).astype(np.float32) if integral else rng.random((n, t), dtype=np.float32)
    dist = np.sort(dist, axis=1)  # the own code first, nearest
    own_written = rng.random(n) < 0.2
    taken = rng.choice(3 * k, rng.integers(0, k), replace=False)
    rank = rng.permutation(n)

    def placed(prune: bool):
        drop = relocate.dominated_edges_dropped
        relocate.dominated_edges_dropped = drop if prune else (lambda rows, target, cost: np.ones(len(rows), bool))
        try:
            prefixes, ranks, given = relocate.place_participants(prefix, rank, own_written, cand, dist, taken, k,
                                                                 solver)
        finally:
            relocate.dominated_edges_dropped = drop
        item = {(p, r): i for i, (p, r) in enumerate(zip(prefix, rank))}
        total = 0.0
        for p, r, g in zip(prefixes, ranks, given):
            if g >= 0:
                i = item[(p, r)]
                total += float(dist[i][list(cand[i]).index(g)])
        codes = [(p, g) for p, g in zip(prefixes, given) if g >= 0]
        assert len(codes) == len(set(codes))  # each code once per prefix
        return int((given >= 0).sum()), total, {(p, r): g for p, r, g in zip(prefixes, ranks, given) if g >= 0}

    pruned, full = placed(True), placed(False)
    assert pruned[0] == full[0] and pruned[1] == pytest.approx(full[1], abs=1e-4)
    if solver == "greedy":  # the same item gets the same code (an item left without edges is just not listed)
        assert pruned[2] == full[2]


def greedy_one_edge_at_a_time(prefix, rank, code, cost):
    """The greedy rule as it reads: edges by (cost, rank, code), each taken while its item and its code
    (within its prefix) are free."""
    items, codes, given = set(), set(), {}
    for e in np.lexsort((code, rank, cost)):
        item, full = (prefix[e], rank[e]), (prefix[e], code[e])
        if item not in items and full not in codes:
            items.add(item)
            codes.add(full)
            given[item] = code[e]
    return given


@settings(max_examples=80, deadline=None)
@given(prefixes())
def test_greedy_rounds_take_what_the_sequential_rule_takes(edges):
    """greedy_edges takes every locally first edge per round: the assignment of the one-edge-at-a-time
    rule, one row per item in (prefix, rank) order; an item without a code has every code it could
    take taken (the assignment is maximal)."""
    prefix, rank, code, cost = edges.T
    got_prefix, got_rank, given = greedy_edges(prefix, rank, code, cost.astype(np.float32))
    expected = greedy_one_edge_at_a_time(prefix, rank, code, cost)
    items = sorted(set(zip(prefix.tolist(), rank.tolist())))
    assert list(zip(got_prefix.tolist(), got_rank.tolist())) == items
    assert {i: g for i, g in zip(items, given.tolist()) if g >= 0} == expected
    taken = set(zip(got_prefix[given >= 0].tolist(), given[given >= 0].tolist()))
    for p, r in (i for i, g in zip(items, given.tolist()) if g < 0):
        mine = (prefix == p) & (rank == r)
        assert all((p, c) in taken for c in code[mine].tolist())


def test_greedy_gives_the_nearest_free_code_first_where_exact_places_more():
    """Two items, codes 7 and 8: item 0 is nearest to 7 and could take 8; item 1 has only 7. Greedy
    gives 7 to the nearer item 0 and leaves item 1 a counter; exact places both. The case that the
    README's greedy-versus-exact figures count."""
    args = np.zeros(3, dtype=np.int64), np.array([0, 0, 1]), np.array([7, 8, 7]), np.array([0.1, 0.15, 0.2])
    assert greedy_edges(*args)[2].tolist() == [7, -1]
    assert place_edges(*args)[2].tolist() == [8, 7]


@pytest.mark.parametrize("solver", ["greedy", "exact"])
def test_both_solvers_keep_the_prefixes_and_give_unique_codes(fitted, X, solver):
    keys = [f"k{i:04d}" for i in range(len(X))]
    relocation = relocate_codes(fitted, X, keys=keys, solver=solver)
    nearest = fitted.encode(X)
    assert np.array_equal(relocation.codes[:, :-1], nearest[:, :-1])
    placed = relocation.codes[~relocation.unplaced]
    assert len(np.unique(placed, axis=0)) == len(placed)
    assert np.array_equal(relocation.relocated, (relocation.codes != nearest).any(axis=1))
