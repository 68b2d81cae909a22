"""Metrics: each definition on hand-computable cases, and agreement with semantic-id 0.2.5."""

import math

import numpy as np
import pytest

import semid_spark
from semid_spark.utils import metrics
from tests.conftest import make_catalog


def test_hierarchical_distance_counts_levels_after_the_common_prefix():
    a = np.array([[3, 9, 1], [3, 9, 1], [3, 9, 1], [4, 9, 1]])
    b = np.array([[3, 9, 1], [3, 9, 2], [3, 2, 1], [3, 9, 1]])
    assert metrics.hierarchical_distance(a, b).tolist() == [0, 1, 2, 3]


def test_code_space_diagnostics_by_hand():
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 0]])
    assert metrics.collision_rate_per_level(codes) == [0.5, 0.25]
    assert metrics.code_utilization_per_level(codes, n_clusters=4) == [0.5, 0.5]
    assert metrics.code_utilization_per_level(codes) == [1.0, 1.0]
    assert metrics.code_entropy_per_level(codes)[0] == pytest.approx(math.log(2))
    idx, dist = metrics.find_similar(codes, 2, k=2)
    assert idx.tolist() == [3, 0] and dist.tolist() == [0, 2]
    idx, dist = metrics.find_similar(codes, np.array([0, 1]), k=1)
    assert idx.tolist() == [1] and dist.tolist() == [0]


def test_spearman_with_ties_and_constants():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks with ties: [1.5, 1.5, 3, 4] vs [1, 2, 3, 4]
    assert metrics.spearman([5, 5, 6, 7], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1])
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


def test_recall_and_ndcg_are_one_when_codes_rank_like_the_embeddings():
    # 32 pairs of close points far from each other; each pair shares its first level
    x = np.repeat(np.arange(32, dtype=np.float64) * 10, 2)[:, None] + np.tile([0.0, 0.1], 32)[:, None]
    codes = np.stack([np.arange(64) // 2, np.arange(64) % 2], axis=1)
    assert metrics.recall_at_k(x, codes, k=1, sample_size=64) == 1.0
    assert metrics.ndcg_at_k(x, codes, k=1, sample_size=64) == 1.0
    shuffled = codes[np.random.default_rng(0).permutation(64)]  # codes that say nothing about x
    assert metrics.recall_at_k(x, shuffled, k=1, sample_size=64) < 0.2
    with pytest.raises(ValueError, match="k=64 must be less than N=64"):
        metrics.ndcg_at_k(x, codes, k=64)


def test_evaluate_keys_in_order(fitted, X):
    result = semid_spark.evaluate(X, fitted.encode(X), fitted, k=5)
    assert list(result) == ["n_samples", "n_unique_codes", "collision_rate", "collision_rate_per_level", "recall_at_5",
                            "ndcg_at_5", "distance_correlation", "code_utilization_per_level",
                            "code_entropy_per_level", "quantization_mse"]
    assert metrics.evaluate_quality is metrics.evaluate


@pytest.mark.compare
@pytest.mark.parametrize("seed", [0, 1])
def test_same_numbers_as_the_original(seed):
    original = pytest.importorskip("semantic_id.utils.metrics", reason="needs the `compare` extra")
    from semid_spark.algorithms.rq_kmeans import RQKMeans

    x = make_catalog(n=2000, seed=seed)
    model = RQKMeans(3, 8, random_state=seed).fit(x)
    codes = model.encode(x)
    ours, theirs = metrics.evaluate(x, codes, model, seed=seed), original.evaluate(x, codes, model, seed=seed)
    assert list(ours) == list(theirs)
    for key in theirs:
        assert np.allclose(ours[key], theirs[key], rtol=0, atol=1e-9), key
    assert metrics.distance_correlation(x, codes, metric="hamming") == pytest.approx(
        original.distance_correlation(x, codes, metric="hamming"), abs=1e-9)


@pytest.mark.parametrize("high, n_levels", [(2, 1), (4, 3), (256, 3), (1 << 20, 4), (1 << 30, 3)])
def test_packed_code_distances_equal_the_definition(high, n_levels):
    rng = np.random.default_rng(high + n_levels)
    codes = rng.integers(0, high, (300, n_levels))
    codes[150:] = codes[:150]  # shared prefixes of every depth
    codes[200:250, -1] = rng.integers(0, high, 50)
    queries = codes[rng.choice(300, 40)]
    want = metrics.hierarchical_distance(queries[:, None, :], codes[None, :, :]).astype(np.float64)
    np.testing.assert_array_equal(metrics._code_distances(queries, codes, "hierarchical"), want)
