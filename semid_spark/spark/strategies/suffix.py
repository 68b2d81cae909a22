"""``uniqueness.strategy: suffix``: every item keeps its nearest code; items sharing one are told apart by
a counter, given in key order after the counters the table holds (semantic-id's ``UniqueIdResolver``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from semid_spark.config import UniquenessConfig
from semid_spark.delta.schema import CODES, RELOCATED
from semid_spark.spark.incremental import next_counters
from semid_spark.spark.ranking import CODE_KEY, CodeStats, assign_counters, with_code_key
from semid_spark.spark.session import Seconds
from semid_spark.spark.strategies.base import StrategyFigures


@dataclass(frozen=True)
class SuffixStrategy:
    ids: UniquenessConfig
    name = "suffix"
    stage = None
    candidates = 0

    def ranked_rows(self, encoded: DataFrame, written: DataFrame | None, sizes: Sequence[int], *, key_col: str,
                    n_new: int, hot: list, salts: int = 0, seconds: Seconds | None = None) -> DataFrame:
        counters = None if written is None else next_counters(written, encoded, sizes, n_new=n_new)
        return assign_counters(encoded, counters, key_col=key_col, hot_code_rows=self.ids.hot_code_rows, hot=hot,
                               salts=salts).withColumn(RELOCATED, F.lit(False))

    def n_counters(self, encoded: DataFrame, written: DataFrame | None, sizes: Sequence[int], stats: CodeStats, *,
                   key_col: str) -> int:
        fresh = stats.n_codes  # each code no written item holds gives one new item its bare code
        if written is not None:
            held = with_code_key(written.select(CODES), sizes).select(CODE_KEY)
            fresh -= encoded.select(CODE_KEY).distinct().join(held, CODE_KEY, "left_semi").count()
        return stats.n_rows - fresh

    def figures(self, inserted: Callable[[], DataFrame], encoded: DataFrame, *, key_col: str, n_levels: int
                ) -> StrategyFigures | None:
        return None  # the counter share, when a gate asks for it, is n_counters'
