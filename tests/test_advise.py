"""Codebook-size advice: the predicted figures, checked against what a larger catalog really gets."""

import os

import numpy as np
import pytest

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.synthetic import generated_catalog
from semid_spark.uniqueness.relocate import relocate_codes
from semid_spark.advise import (
    DEFAULT_SHAPES, Prediction, advice_model, advise, choose_shape, code_distribution, largest_bucket, parse_shape, predicted_figures,
    recommend, relocated_counter_share, render,
)
from semid_spark.utils.metrics import collision_share


def test_predicted_figures_follow_the_occupancy_formulas():
    k, n = 100, 250  # uniform over k codes: E[distinct] = k (1 - (1 - 1/k)^n)
    collision, counter, largest = predicted_figures(np.full(k, 1 / k), n)
    assert counter == pytest.approx(1 - k * (1 - (1 - 1 / k) ** n) / n)
    assert collision == pytest.approx(1 - (1 - 1 / k) ** (n - 1))
    assert largest == 7  # the likeliest largest of 100 Poisson(2.5) counts, not n / k
    assert largest_bucket(np.full(10**6, 1e-6), 10**9) == pytest.approx(1000 + 5 * 1000**0.5, rel=0.05)
    assert predicted_figures(np.array([1.0]), 10) == pytest.approx((1.0, 0.9, 10.0))  # one code holds everything
    assert predicted_figures(np.array([0.75, 0, 0.25]), 1)[:2] == pytest.approx((0.0, 0.0))  # one item shares nothing


def test_unseen_codes_get_the_good_turing_mass_over_a_chao1_count():
    counts = np.array([1, 1, 1, 1, 2, 2, 5])  # n=13, f1=4, f2=2: 4*3/(2*3) = 2 unseen codes
    p = code_distribution(counts, n_codes=100)
    assert len(p.seen) == 7 and p.unseen == 2 and p.total == pytest.approx(1.0)
    assert p.unseen_p == pytest.approx(4 / 13 / 2) and p.seen[0] == pytest.approx(1 / 13 * (1 - 4 / 13))
    assert code_distribution(counts, n_codes=8).unseen == 1  # no more codes than exist
    assert code_distribution(np.array([3, 2, 0]), n_codes=50).seen == pytest.approx([0.6, 0.4])  # no singleton: no mass
    assert code_distribution(np.array([3, 2, 0]), n_codes=50).unseen == 0


def test_seen_codes_share_the_rest_by_good_turing_adjusted_counts():
    counts = np.array([1] * 20 + [2] * 12 + [3] * 5 + [30])  # n=89; f2 >= 10 adjusts r=1 only, f3 < 10 stops
    p = code_distribution(counts, n_codes=10_000)
    unseen = 20 * 19 // (2 * 13)  # Chao1: 14
    assert len(p.seen) == 38 and p.unseen == unseen and p.total == pytest.approx(1.0)
    seen_mass = 1 - 20 / 89
    adjusted_total = 20 * (2 * 12 / 20) + 12 * 2 + 5 * 3 + 30
    assert p.seen[0] == pytest.approx(1.2 / adjusted_total * seen_mass) and p.seen[0] < 1 / 89  # rarer than 1/n
    assert p.seen[37] / p.seen[20] == pytest.approx(15)  # above the adjusted counts, raw proportions
    assert p.unseen_p == pytest.approx(20 / 89 / unseen)


def test_the_unseen_codes_of_a_huge_shape_cost_no_memory():
    """A 200,000-row sample of 3x4096 codes sees almost every code once: Chao1 counts ~10^10 unseen codes,
    which an array of one float each (80 GB) could not hold. One count stands for them all."""
    counts = np.ones(200_000)
    p = code_distribution(counts, n_codes=4096**3)
    assert p.unseen == 200_000 * 199_999 // 2 and p.total == pytest.approx(1.0)
    collision, counter, largest = predicted_figures(p, 10**9)
    spread = code_distribution(np.ones(20), 10**12)  # the same, small enough to write out code by code
    flat = np.append(spread.seen, np.full(spread.unseen, spread.unseen_p))
    assert predicted_figures(spread, 10**4) == pytest.approx(predicted_figures(flat, 10**4))
    assert collision == pytest.approx(-np.expm1(-1e9 / p.unseen), rel=1e-3)  # 10^9 items over 2 x 10^10 codes
    assert 0 < counter < collision and largest >= 2
    prefixes = code_distribution(np.ones(200_000), n_codes=4096**2)
    assert relocated_counter_share(prefixes, 10**9, 4096) < 1e-6


@pytest.mark.parametrize("levels, codes", [(2, 64), (3, 64)])
def test_predictions_from_a_sample_match_a_catalog_four_times_larger(levels, codes):
    x = generated_catalog(8000, 16, 40, 3)
    sample = x[:2000]
    (pred,) = advise(sample, len(x), [f"{levels}x{codes}"], random_state=0, strategy="suffix")
    model = RQKMeans(levels, codes, random_state=0, max_samples_per_cluster=256).fit(sample)
    real = model.encode(x)  # the same model on all 8,000 items
    assert pred.counter_share == pred.suffix_counter_share
    assert pred.counter_share == pytest.approx(1 - len(np.unique(real, axis=0)) / len(x), abs=0.03)
    assert pred.collision_share == pytest.approx(collision_share(real), abs=0.03)
    assert pred.collision_share > pred.sample_collision_share  # more items, more collisions


def test_shapes_are_tried_cheapest_first_and_priced_as_measured():
    x = generated_catalog(3000, 16, 30, 1)
    predictions = advise(x, 100_000, ["3x64", "1x64", "2x64"], random_state=0)
    assert [p.choice for p in predictions] == ["1x64", "2x64", "3x64"]  # fewest codewords a row meets first
    by = {p.choice: p for p in predictions}
    assert by["1x64"].counter_share > by["2x64"].counter_share >= by["3x64"].counter_share
    with pytest.raises(ValueError, match="expected LEVELSxCODES"):
        parse_shape("3-256")
    for p in predictions:
        assert p.encode_rows_per_core_s > 0 and p.encode_core_hours == pytest.approx(1e5 / p.encode_rows_per_core_s / 3600)
        assert p.relocation_core_hours > 0  # candidates in the encode pass, and the colliding items' assignment
        assert p.core_hours == pytest.approx(p.fit_s * (os.cpu_count() or 1) / 3600 + p.encode_core_hours
                                             + p.relocation_core_hours)


def _priced(choice: str, counter_share: float, core_hours: float) -> Prediction:
    return Prediction(parse_shape(choice), 10**6, 1000, 0.0, counter_share, counter_share, 1.0, 0.0,
                      encode_rows_per_core_s=1e5, encode_core_hours=core_hours, relocation_core_hours=0.0)


def test_the_recommendation_is_the_cheapest_shape_meeting_the_goal():
    shapes = [_priced("3x256", 0.2, 1.0), _priced("4x256", 0.0005, 1.4), _priced("3x1024", 0.0001, 3.0),
              _priced("2048/1024/512/256", 0.0002, 1.3)]
    best = recommend(shapes, 0.001)
    assert best.choice == "2048/1024/512/256"  # cheaper than 4x256 and 3x1024, though longer than 3x1024's IDs
    assert recommend(shapes[:3], 0.001).choice == "4x256"
    assert recommend([_priced("4x256", 0.0, 1.0), _priced("3x1024", 0.0, 1.0)], 0.001).choice == "3x1024"  # tie: shorter
    assert recommend(shapes, 0.00001).choice == "3x1024"  # none meets it: the fewest counters
    text = render(shapes, best, 0.001)
    assert "2048/1024/512/256 **recommended**" in text and "cheaper but short of it: 3x256 (0.2000)" in text
    closest = render(shapes, recommend(shapes, 0.00001), 0.00001)
    assert "3x1024 **closest**" in closest and "No shape tried meets the goal: 3x1024 comes closest" in closest


@pytest.mark.parametrize("levels, codes", [(2, 64), (2, 128), (3, 32)])
def test_counters_after_relocation_are_predicted_as_the_job_relocates(levels, codes):
    x = generated_catalog(8000, 16, 40, 3)
    (pred,) = advise(x[:2000], len(x), [f"{levels}x{codes}"], random_state=0)  # the job's default strategy
    model = advice_model((codes,) * levels, 0).fit(x[:2000])
    real = relocate_codes(model, x).unplaced.mean()  # items left sharing a code: they get counters
    assert pred.strategy == "relocate" and pred.counter_share == pytest.approx(real, abs=0.03)
    assert pred.counter_share < pred.suffix_counter_share


def test_relocated_counters_follow_the_poisson_excess():
    assert relocated_counter_share(np.array([1.0]), 10, 4) == pytest.approx(0.6, abs=0.005)  # one prefix: ~10 - 4
    assert relocated_counter_share(np.full(1000, 1e-3), 1000, 8) < 1e-5  # ~1 item a prefix of 8 codes


def test_the_search_goes_cheapest_first_and_stops_at_the_first_shape_meeting_the_goal():
    x = generated_catalog(3000, 16, 30, 1)
    advice = choose_shape(x, 200_000, shapes=None, max_counter_share=0.01)
    tried = [p.choice for p in advice.predictions]
    assert tried == list(DEFAULT_SHAPES[: len(tried)])  # listed cheapest first
    small = advice.predictions[0]  # 2x256: 65,536 full codes for 200,000 items, never fitted
    assert not small.fitted and small.counter_share == pytest.approx(1 - 65536 / 200_000) and small.fit_s == 0
    best = advice.recommended
    assert best is advice.predictions[-1] and best.fitted and best.counter_share <= 0.01
    assert set(advice.not_tried) == set(DEFAULT_SHAPES) - set(tried) and "Not tried" in advice.markdown
    record = advice.record()
    assert record["chosen"] == best.choice and record["tried"][small.choice] is None
    assert record["target_rows"] == 200_000 and record["max_counter_share"] == 0.01


def test_given_shapes_are_all_tried_and_levels_restrict_the_defaults():
    x = generated_catalog(3000, 16, 30, 1)
    advice = choose_shape(x, 10_000, shapes=["2x64", "3x32"], max_counter_share=1.0)
    assert [p.choice for p in advice.predictions] == ["3x32", "2x64"] and not advice.not_tried  # 96 < 128 codewords
    levels = choose_shape(x, 10_000, n_levels=4, max_counter_share=1.0)
    assert all(len(s) == 4 for s in map(parse_shape, (*[p.choice for p in levels.predictions], *levels.not_tried)))


@pytest.mark.parametrize("shape", ["64/16/4", "128/32/8", "256/64"])
def test_a_shrinking_shape_relocates_into_its_last_level(shape):
    x = generated_catalog(8000, 16, 40, 3)
    (pred,) = advise(x[:2000], len(x), [shape], random_state=0)
    sizes = [int(k) for k in shape.split("/")]
    model = advice_model(sizes, 0).fit(x[:2000])
    real = relocate_codes(model, x).unplaced.mean()  # into the last level's codes of each prefix
    # 64/16/4: 0.508 predicted, 0.541 real with the advice fit's 20 Lloyd iterations (within 0.03 with 100)
    assert pred.choice == shape and pred.counter_share == pytest.approx(real, abs=0.04)
    assert pred.counter_share < pred.suffix_counter_share


def test_without_threadpoolctl_rates_are_measured_with_a_warning_not_an_error(monkeypatch, caplog):
    import sys

    from semid_spark.utils.timing import one_blas_thread

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # a node given the wheel alone
    with caplog.at_level("WARNING", logger="semid_spark"), one_blas_thread():
        pass
    assert "threadpoolctl is not installed" in caplog.text
    x = generated_catalog(600, 8, 4, 0)
    (pred,) = advise(x, 1000, ["2x8"], random_state=0)
    assert pred.encode_rows_per_core_s > 0
