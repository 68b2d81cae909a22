"""The uniqueness seam: the config's names are the registry's, and each strategy keeps its protocol."""

import pytest

from semid_spark.config import STRATEGY_NAMES, UniquenessConfig
from semid_spark.delta.schema import CODES, COUNTER, RELOCATED
from semid_spark.spark.ranking import CODE_KEY, code_stats, with_code_key
from semid_spark.spark.strategies import STRATEGIES, strategy_for


def test_the_config_accepts_exactly_the_registered_strategies():
    assert set(STRATEGY_NAMES) == set(STRATEGIES)
    for name in STRATEGIES:
        strategy = strategy_for(UniquenessConfig(strategy=name, relocate_candidates=5))
        assert strategy.name == name
    assert strategy_for(UniquenessConfig(strategy="relocate", relocate_candidates=5)).candidates == 5
    assert strategy_for(UniquenessConfig(strategy="suffix")).candidates == 0


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_gives_unique_ids_and_counts_its_counters(spark, name):
    sizes = [2, 4]
    # six items on two codes; candidates: the own last-level code first, then the others by distance
    rows = [(f"k{i}", [0, i % 2], [i % 2, 2, 3, 1 - i % 2], [0.1, 0.2, 0.3, 0.4]) for i in range(6)]
    encoded = with_code_key(spark.createDataFrame(
        rows, "item_id string, codes array<int>, _candidates array<int>, _distances array<float>"), sizes).cache()
    strategy = strategy_for(UniquenessConfig(strategy=name, relocate_candidates=4))
    if not strategy.candidates:
        encoded = encoded.drop("_candidates", "_distances")
    stats = code_stats(encoded, 1_000_000)
    ranked = strategy.ranked_rows(encoded, None, sizes, key_col="item_id", n_new=6, hot=stats.hot)
    assert {"item_id", CODES, CODE_KEY, COUNTER, RELOCATED} <= set(ranked.columns)
    got = [(tuple(r[CODES]), r[COUNTER]) for r in ranked.collect()]
    assert len(got) == 6 and len(set(got)) == 6  # every ID unique
    n_counters = sum(counter > 0 for _, counter in got)
    assert strategy.n_counters(encoded, None, sizes, stats, key_col="item_id") == n_counters
    # relocation moves four of them to the two free codes of their prefix; suffix counts 1, 2 on each code
    assert n_counters == {"relocate": 2, "suffix": 4}[name]
