"""What a uniqueness strategy is to the job: the protocol the pipeline calls, never asking which one it holds.

A strategy turns the new items' codes (encoded on executors, cached, with their code key) into
rows whose IDs are unique among themselves and after the written ones: it says how many
last-level candidates encode must keep per item, ranks the items, counts the counters it would
give (the ``quality.max_counter_share`` gate, before anything is written), and reads its figures
from the rows a run inserted. Every method is lazy but the counts: the written codes are read when
the MERGE runs, so a commit that lands before it is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from pyspark.sql import DataFrame

from semid_spark.spark.ranking import CodeStats
from semid_spark.spark.session import Seconds


@dataclass(frozen=True)
class StrategyFigures:
    """What a strategy reports of a run's inserted items, beside the counts every run has."""

    counter_share: float  # share of them whose ID got a counter
    moved_share: float | None = None  # share moved off their nearest code (relocate)
    error_ratio: float | None = None  # reconstruction error of the assigned codes / of the nearest ones


class Strategy(Protocol):
    name: str
    stage: str | None  # the report's name for the seconds of the strategy's own work (None: it has none)
    candidates: int  # last-level candidates encode keeps per item (0: none), ``CANDIDATES``/``DISTANCES``

    def ranked_rows(self, encoded: DataFrame, written: DataFrame | None, sizes: Sequence[int], *, key_col: str,
                    n_new: int, hot: list, salts: int = 0, seconds: Seconds | None = None) -> DataFrame:
        """encoded (key, codes, code key[, candidates, distances]) + the written rows (codes, counter; None:
        an empty table) -> (key, codes, code key, counter, relocated), each (codes, counter) unique and
        free. *n_new*: the rows of *encoded*; *hot*: its codes over ``hot_code_rows`` rows. *salts* > 0:
        planned only (no job), each code's rows ranked in that many key-hash buckets. *seconds*: where the
        jobs it runs before the MERGE (where *n_new* is known) are timed, under ``stage``."""

    def n_counters(self, encoded: DataFrame, written: DataFrame | None, sizes: Sequence[int], stats: CodeStats, *,
                   key_col: str) -> int:
        """How many of the new items would get a counter (runs jobs: the counter gate only)."""

    def figures(self, inserted: Callable[[], DataFrame], encoded: DataFrame, *, key_col: str, n_levels: int
                ) -> StrategyFigures | None:
        """The strategy's figures from the rows a run inserted (read when *inserted* is called) and its
        encoded rows; None: it has none to say (and reads nothing)."""
