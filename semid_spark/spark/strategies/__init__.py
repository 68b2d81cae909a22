"""The job's uniqueness strategies: a name of ``uniqueness.strategy`` -> its implementation of ``base.Strategy``.

Adding one: a module here with a class that takes the ``UniquenessConfig``, and a line below (the
config accepts the names of ``config.STRATEGY_NAMES``, which a test holds equal to these).
"""

from __future__ import annotations

from semid_spark.config import UniquenessConfig
from semid_spark.spark.strategies.base import Strategy, StrategyFigures
from semid_spark.spark.strategies.relocate import RelocateStrategy
from semid_spark.spark.strategies.suffix import SuffixStrategy

STRATEGIES: dict[str, type] = {
    "relocate": RelocateStrategy,
    "suffix": SuffixStrategy,
}

__all__ = ["STRATEGIES", "Strategy", "StrategyFigures", "strategy_for"]


def strategy_for(ids: UniquenessConfig) -> Strategy:
    """The strategy ``uniqueness.strategy`` names, with its settings."""
    return STRATEGIES[ids.strategy](ids)
