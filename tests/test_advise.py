"""Codebook-size advice: the predicted figures, checked against what a larger catalog really gets."""

import numpy as np
import pytest

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.synthetic import generated_catalog
from semid_spark.uniqueness.relocate import relocate_codes
from semid_spark.advise import (
    advise, code_distribution, parse_choice, predicted_figures, recommend, relocated_counter_share,
)
from semid_spark.utils.metrics import collision_share


def test_predicted_figures_follow_the_occupancy_formulas():
    k, n = 100, 250  # uniform over k codes: E[distinct] = k (1 - (1 - 1/k)^n)
    collision, counter, largest = predicted_figures(np.full(k, 1 / k), n)
    assert counter == pytest.approx(1 - k * (1 - (1 - 1 / k) ** n) / n)
    assert collision == pytest.approx(1 - (1 - 1 / k) ** (n - 1))
    assert largest == pytest.approx(n / k)
    assert predicted_figures(np.array([1.0]), 10) == pytest.approx((1.0, 0.9, 10.0))  # one code holds everything
    assert predicted_figures(np.array([0.75, 0, 0.25]), 1)[:2] == pytest.approx((0.0, 0.0))  # one item shares nothing


def test_unseen_codes_get_the_good_turing_mass_over_a_chao1_count():
    counts = np.array([1, 1, 1, 1, 2, 2, 5])  # n=13, f1=4, f2=2: 4*3/(2*3) = 2 unseen codes
    p = code_distribution(counts, n_codes=100)
    assert len(p) == 9 and p.sum() == pytest.approx(1.0)
    assert p[-2:] == pytest.approx([4 / 13 / 2] * 2) and p[0] == pytest.approx(1 / 13 * (1 - 4 / 13))
    assert len(code_distribution(counts, n_codes=8)) == 8  # no more codes than exist
    assert code_distribution(np.array([3, 2, 0]), n_codes=50) == pytest.approx([0.6, 0.4])  # no singleton: no mass


@pytest.mark.parametrize("levels, codes", [(2, 64), (3, 64)])
def test_predictions_from_a_sample_match_a_catalog_four_times_larger(levels, codes):
    x = generated_catalog(8000, 16, 40, 3)
    sample = x[:2000]
    (pred,) = advise(sample, len(x), [(levels, codes)], random_state=0, strategy="suffix")
    model = RQKMeans(levels, codes, random_state=0, max_samples_per_cluster=256).fit(sample)
    real = model.encode(x)  # the same model on all 8,000 items
    assert pred.counter_share == pred.suffix_counter_share
    assert pred.counter_share == pytest.approx(1 - len(np.unique(real, axis=0)) / len(x), abs=0.03)
    assert pred.collision_share == pytest.approx(collision_share(real), abs=0.03)
    assert pred.collision_share > pred.sample_collision_share  # more items, more collisions


def test_the_recommendation_is_the_shortest_id_meeting_the_goal():
    x = generated_catalog(3000, 16, 30, 1)
    predictions = advise(x, 1_000_000, [(1, 64), (2, 64), (3, 64)], random_state=0)
    by = {p.choice: p for p in predictions}
    assert by["1x64"].counter_share > by["2x64"].counter_share >= by["3x64"].counter_share
    assert recommend(predictions, max_counter_share=1.0).choice == "1x64"
    assert recommend(predictions, max_counter_share=0.0).choice == min(
        predictions, key=lambda p: p.counter_share).choice  # none meets it: the fewest counters
    with pytest.raises(ValueError, match="expected LEVELSxCODES"):
        parse_choice("3-256")


@pytest.mark.parametrize("levels, codes", [(2, 64), (2, 128), (3, 32)])
def test_counters_after_relocation_are_predicted_as_the_job_relocates(levels, codes):
    x = generated_catalog(8000, 16, 40, 3)
    (pred,) = advise(x[:2000], len(x), [(levels, codes)], random_state=0)  # the job's default strategy
    model = RQKMeans(levels, codes, random_state=0, max_samples_per_cluster=256, inertia_tol=0.0,
                     refine_passes=0).fit(x[:2000])
    real = relocate_codes(model, x).unplaced.mean()  # items left sharing a code: they get counters
    assert pred.strategy == "relocate" and pred.counter_share == pytest.approx(real, abs=0.03)
    assert pred.counter_share < pred.suffix_counter_share


def test_relocated_counters_follow_the_poisson_excess():
    assert relocated_counter_share(np.array([1.0]), 10, 4) == pytest.approx(0.6, abs=0.005)  # one prefix: ~10 - 4
    assert relocated_counter_share(np.full(1000, 1e-3), 1000, 8) < 1e-5  # ~1 item a prefix of 8 codes
