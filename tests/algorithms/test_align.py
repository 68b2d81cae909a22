"""Model versions: level-by-level alignment of a refit's code labels, warm starts, churn."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semid_spark.algorithms.align import align, churn, level_permutation, permute_model
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.algorithms.rq_vae import RQVAE
from semid_spark.exceptions import ConfigError
from semid_spark.synthetic import drifted_items, generated_catalog
from semid_spark.utils.metrics import collision_share
from semid_spark.versions import compare_versions


@pytest.fixture(scope="module")
def versions():
    current = generated_catalog(4000, 16, 60, seed=2)
    grown = np.concatenate([current, drifted_items(1200, 16, 60, seed=2, drift=1.0)])
    old = RQKMeans(3, 16, random_state=0).fit(current)
    new = RQKMeans(3, 16, random_state=1).fit(grown)
    return current, grown, old, new


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 20), st.integers(1, 300), st.integers(0, 10_000))
def test_level_permutation_is_a_permutation_keeping_the_most_items(k, n, seed):
    rng = np.random.default_rng(seed)
    old = rng.integers(0, k, n)
    hidden = rng.permutation(k)  # the new model relabelled the old codes, and some items moved
    new = np.where(rng.random(n) < 0.8, hidden[old], rng.integers(0, k, n))
    labels = level_permutation(old, new, k, k)
    assert sorted(labels) == list(range(k))
    kept = int((labels[new] == old).sum())
    assert kept >= int((np.argsort(hidden)[new] == old).sum())  # at least as many as undoing the relabelling
    assert kept >= int((new == old).sum())  # and as the identity


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 200), st.integers(0, 10_000))
def test_level_permutation_of_codebooks_of_other_sizes(n_old, n_new, n, seed):
    rng = np.random.default_rng(seed)
    old, new = rng.integers(0, n_old, n), rng.integers(0, n_new, n)
    labels = level_permutation(old, new, n_old, n_new, rng.standard_normal((n_old, 3)), rng.standard_normal((n_new, 3)))
    assert sorted(labels) == list(range(n_new))  # a smaller new codebook never takes a label it has no codeword for


def test_alignment_is_a_permutation_per_level_and_decodes_the_same(versions):
    current, grown, old, new = versions
    result = align(old, new, current)
    for level, labels in enumerate(result.labels):
        assert sorted(labels) == list(range(16))
        assert np.array_equal(result.model.codebooks_[level][labels], new.codebooks_[level])
    assert np.array_equal(result.model.decode(result.aligned_codes), new.decode(result.new_codes))
    assert np.array_equal(result.model.encode(grown), np.stack(
        [result.labels[level][new.encode(grown)[:, level]] for level in range(3)], axis=1))
    assert churn(result.old_codes, result.aligned_codes)[0] < churn(result.old_codes, result.new_codes)[0]
    again = align(old, new, current)  # same inputs, same aligned model
    assert again.model.sha256 == result.model.sha256


def test_rq_vae_codebooks_permute_with_the_same_decode():
    x = generated_catalog(800, 12, 20, seed=3)
    model = RQVAE(in_dim=12, num_emb_list=[8, 8], e_dim=12, layers=[16], epochs=3, batch_size=256,
                  random_state=0).fit(x)
    rng = np.random.default_rng(0)
    labels = [rng.permutation(8), rng.permutation(8)]
    moved = permute_model(model, labels)
    codes = model.encode(x)
    relabelled = np.stack([labels[level][codes[:, level]] for level in range(2)], axis=1)
    assert np.array_equal(moved.encode(x), relabelled)
    assert np.allclose(moved.decode(relabelled), model.decode(codes))
    assert moved.sha256 != model.sha256 and model.encode(x).tolist() == codes.tolist()  # the original untouched


def test_balanced_offsets_follow_their_codewords():
    x = generated_catalog(3000, 8, 12, seed=5)
    model = RQKMeans(2, 8, implementation="constrained", random_state=0).fit(x)
    labels = [np.roll(np.arange(8), 3), np.arange(8)[::-1].copy()]
    moved = permute_model(model, labels)
    codes = model.encode(x)
    assert np.array_equal(moved.encode(x), np.stack([labels[0][codes[:, 0]], labels[1][codes[:, 1]]], axis=1))


def test_a_warm_started_refit_keeps_most_ids_and_fits_the_grown_catalog_better(versions):
    current, grown, old, _ = versions
    cold = RQKMeans(3, 16, random_state=0).fit(grown)
    warm = RQKMeans(3, 16, random_state=0).fit(grown, init=old)

    def error(model):
        return float(((grown - model.decode(model.encode(grown))) ** 2).sum(1).mean())

    cold_churn = churn(old.encode(current), align(old, cold, current).aligned_codes)
    warm_churn = churn(old.encode(current), align(old, warm, current).aligned_codes)
    assert warm_churn[0] <= cold_churn[0] / 3 and warm_churn[-1] <= 0.5 * churn(old.encode(current), cold.encode(current))[-1]
    assert error(warm) < error(old)  # the refit still adapts to the drift
    with pytest.raises(ConfigError, match="init has codebooks"):
        RQKMeans(3, 8).fit(grown, init=old)


def test_churn_counts_changed_prefixes():
    old = np.array([[1, 2, 3], [1, 2, 3], [4, 5, 6], [7, 8, 9]])
    new = np.array([[1, 2, 3], [1, 2, 0], [4, 0, 6], [0, 8, 9]])
    assert churn(old, new) == [0.25, 0.5, 0.75]


def test_compare_versions_reports_both_churns_error_and_collisions(versions):
    current, grown, old, new = versions
    comparison, alignment = compare_versions(old, new, current, reference=new)
    assert comparison.n_items == len(current) and comparison.new_model_sha256 == alignment.model.sha256
    assert comparison.churn_unaligned == churn(old.encode(current), new.encode(current)) == comparison.churn_reference
    assert comparison.churn_aligned == churn(old.encode(current), alignment.model.encode(current))
    assert comparison.churn_aligned[0] < comparison.churn_unaligned[0]
    recon = old.decode(old.encode(current)).astype(np.float64)
    assert comparison.error_old == pytest.approx(((current - recon) ** 2).sum(axis=1).mean())
    assert comparison.error_new == pytest.approx(  # a relabelling changes no decoded vector
        ((current - alignment.model.decode(alignment.model.encode(current))) ** 2).sum(axis=1).mean())
    assert comparison.collision_old == collision_share(old.encode(current))
    table = comparison.markdown()
    assert "| aligned | " in table and "| a cold refit (plain `semid fit`), unaligned | " in table
    stored = old.encode(current)
    stored[:10, -1] = (stored[:10, -1] + 1) % 16  # the table's codes, some relocated
    assert compare_versions(old, new, current, old_codes=stored)[0].churn_unaligned == churn(stored, new.encode(current))


def test_collision_share_counts_rows_sharing_a_full_code():
    assert collision_share(np.array([[0, 1], [0, 1], [0, 2], [1, 1]])) == 0.5
    assert collision_share(np.zeros((0, 3), dtype=int)) == 0.0
