"""``uniqueness.strategy: relocate`` (the default): the rule of ``uniqueness.relocate``, distributed.

An item whose code another item has moves to a free last-level code of its prefix, among the
``relocate_candidates`` nearest (encode kept them); counters only where none is free near it.

Every step is a join, a group or a pandas call over small rows; no embedding crosses a shuffle
(encode computed the candidates where it read the rows):

1. Participants: the new items whose code key another new item has (a count per code) or a written
   item holds (the table's codes, only for the new items' prefixes).
2. Per bucket of prefixes, one cogrouped pandas call gets the bucket's participants (candidates still
   arrays) and the codes held in their prefixes, and applies the rest of the rule in numpy
   (``uniqueness.relocate.place_participants``: free edges, pruning, assignment). Buckets grow with the
   new items (``PLACE_BUCKET_ITEMS``), so no call holds many.
3. A hot prefix (over ``HOT_PREFIX_FACTOR`` x K new items, so skewed that one call should not hold it)
   has its edges exploded in Spark instead, and each code's K nearest kept by windows that span many
   tasks (per (code, key salt), then per code), before the assignment: after the pruning a prefix
   holds at most K codes x K edges, whatever its number of items.
4. Placed items and items that never collided get counter 0 (their code is theirs alone); the
   items left without a code are ranked by key after the written counters (and after the group's
   placed item), in ``ranking``'s window (a hot code's keys in ranges).

Lazy throughout: the written codes are read when the MERGE runs, as the counters are.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from semid_spark.config import UniquenessConfig
from semid_spark.delta.schema import CANDIDATES, CODES, COUNTER, DISTANCES, RELOCATED
from semid_spark.spark.incremental import broadcast_limit, next_counters
from semid_spark.spark.ranking import CODE_KEY, CodeStats, assign_counters, is_packed, with_code_key
from semid_spark.spark.session import Seconds, stage
from semid_spark.spark.strategies.base import StrategyFigures
from semid_spark.uniqueness.relocate import place, place_participants

_PREFIX, _TARGET, _LAST, _DIST, _POS = "_prefix", "_target", "_last", "_dist", "_pos"
_NEW, _OWN_WRITTEN, _COUNT, _SALT, _RN, _BUCKET = "_new_last", "_own_written", "_n", "_salt", "_rn", "_bucket"
_HELD = "_held"
PRUNE_SALTS = 32  # first-stage tasks per code in the pruning
PLACE_BUCKETS = 64  # groups of prefixes, one pandas call each, for the assignment (at least)
PLACE_BUCKET_ITEMS = 131_072  # new items per such group, at most (more new items: more groups)
HOT_PREFIX_FACTOR = 32  # a prefix of more new items than this x K has its edges pruned in Spark


@dataclass(frozen=True)
class RelocateStrategy:
    ids: UniquenessConfig
    name = "relocate"
    stage = "relocate"

    @property
    def candidates(self) -> int:
        return self.ids.relocate_candidates

    def ranked_rows(self, encoded: DataFrame, written: DataFrame | None, sizes: Sequence[int], *, key_col: str,
                    n_new: int, hot: list, salts: int = 0, seconds: Seconds | None = None) -> DataFrame:
        return relocated_rows(encoded, written, sizes, key_col=key_col, n_new=n_new, hot=hot,
                              hot_code_rows=self.ids.hot_code_rows, salts=salts, solver=self.ids.relocate_solver,
                              timed=(lambda: seconds.timed(self.stage)) if seconds is not None else None)

    def n_counters(self, encoded: DataFrame, written: DataFrame | None, sizes: Sequence[int], stats: CodeStats, *,
                   key_col: str) -> int:  # the relocation itself, which the MERGE then runs again
        rows = self.ranked_rows(encoded, written, sizes, key_col=key_col, n_new=stats.n_rows, hot=stats.hot)
        return rows.where(F.col(COUNTER) > 0).count()

    def figures(self, inserted: Callable[[], DataFrame], encoded: DataFrame, *, key_col: str, n_levels: int
                ) -> StrategyFigures:
        rows = inserted()
        with stage(rows.sparkSession, "semid: relocation figures"):
            return StrategyFigures(**relocation_figures(rows, encoded, key_col=key_col, n_levels=n_levels))


def prefix_of(sizes: Sequence[int]) -> Column:
    """The codes of levels < L as one value, from the code key: div K (packed), else the codes array's head."""
    if is_packed(sizes):
        return F.expr(f"`{CODE_KEY}` div {int(sizes[-1])}")
    return F.slice(F.col(CODE_KEY), 1, len(sizes) - 1)


def full_code(prefix: Column, last: Column, sizes: Sequence[int]) -> Column:
    """The code key of (prefix, last-level code)."""
    if is_packed(sizes):
        return prefix * F.lit(int(sizes[-1])) + last.cast("long")
    return F.concat(prefix, F.array(last.cast("int")))


def relocated_rows(encoded: DataFrame, written: DataFrame | None, sizes: Sequence[int], *, key_col: str,
                   n_new: int, hot: list, hot_code_rows: int, salts: int = 0,
                   timed: Callable[[], ContextManager] | None = None, solver: str = "greedy") -> DataFrame:
    """encoded (key, codes, code key, candidates, distances) [+ the written table] -> (key, codes, code
    key, counter, relocated): the codes after relocation and each row's counter, every one unique.
    *hot*: the codes of *encoded* over *hot_code_rows* rows (``code_stats``); the items left on one keep
    it, so no other code can hold more of them than that. *salts* > 0: the counters are ranked as
    ``assign_counters`` ranks them with *salts* (planned only, no job). *n_new*: encoded's row count where
    known (the job's), 0 where not (Spark ML's transform: then nothing runs until an action). Known, the
    new items' codes are counted in a job of their own (over encoded only; the table stays read inside
    the MERGE) and, up to ``broadcast_limit`` items, go to every task, so no new row is shuffled to
    find the colliding ones. *timed*: a context manager for the jobs run here (the report's
    ``relocate`` seconds). *solver*: the placement's (``uniqueness.relocate_solver``)."""

    k = int(sizes[-1])
    clock = timed or contextlib.nullcontext
    # few new items (n_new 0: unknown, nothing broadcast): their codes go to every task, so no new row is
    # shuffled to split them
    small = 0 < n_new <= broadcast_limit()
    items = encoded.withColumn(_PREFIX, prefix_of(sizes))
    held_written = _written_code_keys(written, items, sizes, n_new=n_new)
    # the new items' codes and how many share each, computed once (a job over the cached codes, never the
    # table, which stays read inside the MERGE): the plan reads them four times, and a shuffle of every new
    # row's code each time was most of the relocation's cost
    per_code = items.groupBy(CODE_KEY, _PREFIX).agg(F.count(F.lit(1)).alias(_COUNT))
    if n_new:
        with clock():
            per_code = per_code.localCheckpoint(eager=True)
    shared = per_code.where(F.col(_COUNT) > 1).select(CODE_KEY, F.lit(False).alias(_OWN_WRITTEN))
    participant_codes = shared
    if held_written is not None:
        taken = per_code.select(CODE_KEY).join(held_written.select(CODE_KEY), CODE_KEY, "left_semi")
        participant_codes = (shared.unionByName(taken.select(CODE_KEY, F.lit(True).alias(_OWN_WRITTEN)))
                             .groupBy(CODE_KEY).agg(F.max(_OWN_WRITTEN).alias(_OWN_WRITTEN)))
    few_participants = small
    if n_new and not small:
        # many new items, few of whose codes collide (a large shape): the colliding codes go to every task,
        # or every new row would cross a shuffle to meet them (a first run at 16M rows, 2048/1024/512/256:
        # 9,303 MB shuffled, 1,739 MB without). Counted on the checkpoint: the shared codes in a first run,
        # all the new codes (a bound on those a written item also holds, without reading the table here)
        # in an increment
        with clock():
            bound = (per_code if written is not None else shared).count()
        few_participants = bound <= broadcast_limit()
    # the items that never collided leave here with counter 0
    flagged = items.join(F.broadcast(participant_codes) if few_participants else participant_codes, CODE_KEY, "left")
    alone = flagged.where(F.col(_OWN_WRITTEN).isNull())
    participants = flagged.where(F.col(_OWN_WRITTEN).isNotNull())
    # every code an item holds, by prefix: the new items' (per_code) and the written ones'
    held = per_code.select(_PREFIX, CODE_KEY)
    if held_written is not None:
        held = held.unionByName(held_written)
    # a prefix of over hot_prefix_items(k) new items is solved apart, its edges pruned in Spark (see
    # _hot_placements); the others' participants and held codes go, by prefix, to one pandas call per bucket
    hot_prefixes = (per_code.groupBy(_PREFIX).agg(F.sum(_COUNT).alias(_COUNT))
                    .where(F.col(_COUNT) > hot_prefix_items(k)).select(_PREFIX))  # few: each holds > 32 K items
    any_hot = n_new == 0 or n_new > hot_prefix_items(k)  # no prefix holds more new items than the run has
    if any_hot and n_new:
        with clock():
            hot_prefixes = hot_prefixes.localCheckpoint(eager=True)
            any_hot = bool(hot_prefixes.take(1))
    usual = participants.join(F.broadcast(hot_prefixes), _PREFIX, "left_anti") if any_hot else participants
    placements = _placements(usual, held, sizes, key_col, n_buckets=max(PLACE_BUCKETS, n_new // PLACE_BUCKET_ITEMS),
                             small=small, solver=solver)
    if any_hot:
        placements = placements.unionByName(
            _hot_placements(participants.join(F.broadcast(hot_prefixes), _PREFIX, "left_semi"), held, sizes, key_col,
                            solver))
    if n_new and written is None:
        # a first run: nothing above reads the table, so the assignment is solved once, here, where the
        # MERGE's plan would solve it twice (the placed and the unplaced rows each read it)
        with clock():
            placements = placements.localCheckpoint(eager=True)
    columns = [c for c in encoded.columns if c not in (CANDIDATES, DISTANCES)]
    decided = participants.select(*columns).join(placements, key_col, "left")  # _NEW null: no free code near
    own_last = F.col(CODES).getItem(len(sizes) - 1)
    moved = F.col(_NEW).isNotNull() & (F.col(_NEW) != own_last)
    decided = (decided.withColumn(RELOCATED, F.coalesce(moved, F.lit(False)))
               .withColumn(CODES, F.when(moved, F.concat(F.slice(F.col(CODES), 1, len(sizes) - 1),
                                                         F.array(F.col(_NEW)))).otherwise(F.col(CODES)))
               .withColumn(CODE_KEY, F.when(moved, full_code(prefix_of(sizes), F.col(_NEW), sizes))
                           .otherwise(F.col(CODE_KEY))))
    placed = decided.where(F.col(_NEW).isNotNull()).select(*columns, RELOCATED)
    rest = decided.where(F.col(_NEW).isNull()).select(*columns, RELOCATED)
    counters = None if written is None else next_counters(written, rest, sizes, n_new=n_new)
    # the group's code is held by a written item (counters follow its) or kept by a placed item (counter 0)
    ranked = assign_counters(rest, counters, key_col=key_col, hot_code_rows=hot_code_rows, hot=hot, start=1,
                             salts=salts)
    out = [*columns, RELOCATED, COUNTER]
    return (alone.select(*columns, F.lit(False).alias(RELOCATED), F.lit(0).alias(COUNTER))
            .unionByName(placed.withColumn(COUNTER, F.lit(0)).select(*out))
            .unionByName(ranked.select(*out)))


def _written_code_keys(written: DataFrame | None, items: DataFrame, sizes: Sequence[int], *, n_new: int
                       ) -> DataFrame | None:
    """(prefix, code key) of the written rows whose prefix is a new item's, distinct."""
    if written is None:
        return None
    codes = with_code_key(written.select(CODES), sizes).withColumn(_PREFIX, prefix_of(sizes))
    prefixes = items.select(F.col(_PREFIX).alias("_of")).distinct()  # renamed: items may stem from the table
    if n_new <= broadcast_limit():
        prefixes = F.broadcast(prefixes)
    return codes.join(prefixes, F.col(_PREFIX) == F.col("_of"), "left_semi").select(_PREFIX, CODE_KEY).distinct()


def hot_prefix_items(k: int) -> int:
    """New items a prefix holds over which its edges are pruned in Spark (``HOT_PREFIX_FACTOR`` x k, read
    when called so tests can lower it): under it, a pandas call takes the whole prefix."""
    return HOT_PREFIX_FACTOR * k


def _last_code(sizes: Sequence[int]) -> Column:
    """The last-level code of a code key."""
    if is_packed(sizes):
        return F.col(CODE_KEY) % F.lit(int(sizes[-1]))
    return F.element_at(F.col(CODE_KEY), -1).cast("long")


def _placements(participants: DataFrame, held: DataFrame, sizes: Sequence[int], key_col: str, *, n_buckets: int,
                small: bool, solver: str) -> DataFrame:
    """(key, new last code) of the placed participants: their rows, candidates as arrays, and the codes
    held in their prefixes (prefix, code key) meet by prefix bucket in one cogrouped pandas call, which
    applies steps 2-5 of the rule in numpy (``place_participants``). No edge is exploded in Spark."""
    bucket = F.pmod(F.xxhash64(_PREFIX), F.lit(n_buckets)).alias(_BUCKET)
    prefixes = participants.select(F.col(_PREFIX).alias("_of")).distinct()  # renamed: both sides stem from items
    held = held.join(F.broadcast(prefixes) if small else prefixes, F.col(_PREFIX) == F.col("_of"), "left_semi")
    rows = participants.select(bucket, _PREFIX, key_col, _OWN_WRITTEN, CANDIDATES, DISTANCES)
    # the prefix computed afresh from the code key: both sides stem from the same rows, and a column of
    # one lineage on both sides of the cogroup is ambiguous to Spark's analyzer in an increment
    codes = (held.select(CODE_KEY, _last_code(sizes).alias(_LAST)).withColumn(_PREFIX, prefix_of(sizes))
             .select(bucket, _PREFIX, _LAST))
    key_type = participants.schema[key_col].dataType
    return rows.groupBy(_BUCKET).cogroup(codes.groupBy(_BUCKET)).applyInPandas(
        _cogrouped_placement(key_col, int(sizes[-1]), solver),
        T.StructType([T.StructField(key_col, key_type), T.StructField(_NEW, T.IntegerType())]))


def _cogrouped_placement(key_col: str, k: int, solver: str):
    def place_bucket(rows: pd.DataFrame, codes: pd.DataFrame) -> pd.DataFrame:
        """A bucket's participants (bucket, prefix, key, own written, candidates, distances) and held codes
        (bucket, prefix, last) -> (key, new last code) of its placed participants."""
        if rows.empty:
            return pd.DataFrame({key_col: rows[key_col], _NEW: np.zeros(0, dtype=np.int32)})
        prefixes = pd.concat([rows[_PREFIX], codes[_PREFIX]], ignore_index=True)
        if prefixes.dtype == object:  # codes arrays (codebooks too large to pack): a tuple per prefix
            prefixes = prefixes.map(tuple)
        group = pd.factorize(prefixes)[0].astype(np.int64)
        mine, theirs = group[: len(rows)], group[len(rows):]
        keys, rank = np.unique(rows[key_col].to_numpy(), return_inverse=True)  # items in key order
        cand = np.stack(rows[CANDIDATES].to_numpy()).astype(np.int64)
        dist = np.stack(rows[DISTANCES].to_numpy()).astype(np.float32)
        taken = theirs * k + codes[_LAST].to_numpy(np.int64)
        _, item_rank, given = place_participants(mine, rank.ravel(), rows[_OWN_WRITTEN].to_numpy(bool), cand, dist,
                                                 taken, k, solver)
        placed = given >= 0
        return pd.DataFrame({key_col: keys[item_rank[placed]], _NEW: given[placed].astype(np.int32)})

    return place_bucket


def _hot_placements(participants: DataFrame, held: DataFrame, sizes: Sequence[int], key_col: str,
                    solver: str) -> DataFrame:
    """``_placements`` for the participants of hot prefixes (over ``hot_prefix_items`` new items): their
    edges exploded, each code's K nearest kept by windows that span many tasks, then per prefix bucket
    the assignment in pandas."""
    k = int(sizes[-1])
    edges = participants.select(key_col, _PREFIX, _OWN_WRITTEN, F.posexplode(
        F.arrays_zip(F.col(CANDIDATES).alias(_LAST), F.col(DISTANCES).alias(_DIST))).alias(_POS, "_edge"))
    edges = edges.select(key_col, _PREFIX, _OWN_WRITTEN, _POS, F.col(f"_edge.{_LAST}").alias(_LAST),
                         F.col(f"_edge.{_DIST}").alias(_DIST))
    edges = edges.withColumn(_TARGET, full_code(F.col(_PREFIX), F.col(_LAST), sizes))
    targets = held.select(F.col(CODE_KEY).alias(_TARGET)).distinct().withColumn(_HELD, F.lit(True))
    marked = edges.join(targets, _TARGET, "left")
    free = F.when(F.col(_POS) == 0, ~F.col(_OWN_WRITTEN)).otherwise(F.col(_HELD).isNull())
    kept = _nearest_per_code(marked.where(free).drop(_HELD), key_col, k, salts=PRUNE_SALTS)
    buckets = kept.select(F.pmod(F.xxhash64(_PREFIX), F.lit(PLACE_BUCKETS)).alias(_BUCKET), _PREFIX, key_col,
                          _LAST, _DIST)
    return buckets.groupBy(_BUCKET).applyInPandas(_placement_function(key_col, solver), T.StructType(
        [T.StructField(key_col, participants.schema[key_col].dataType), T.StructField(_NEW, T.IntegerType())]))


def _nearest_per_code(edges: DataFrame, key_col: str, k: int, *, salts: int) -> DataFrame:
    """The *k* first edges of each target code by (distance, key): per (code, salt) first, then per code."""
    order = [F.col(_DIST), F.col(key_col)]
    salted = edges.withColumn(_SALT, F.pmod(F.xxhash64(F.col(key_col)), F.lit(salts)))
    first = salted.withColumn(_RN, F.row_number().over(Window.partitionBy(_TARGET, _SALT).orderBy(*order)))
    survivors = first.where(F.col(_RN) <= k).drop(_RN, _SALT)
    second = survivors.withColumn(_RN, F.row_number().over(Window.partitionBy(_TARGET).orderBy(*order)))
    return second.where(F.col(_RN) <= k).drop(_RN)


def _placement_function(key_col: str, solver: str):
    def place_bucket(edges: pd.DataFrame) -> pd.DataFrame:
        """Edges (bucket, prefix, key, last, dist) of some prefixes -> (key, new last code) of their placed items."""
        prefixes = edges[_PREFIX]
        if prefixes.dtype == object:  # codes arrays (codebooks too large to pack): a tuple per prefix
            prefixes = prefixes.map(tuple)
        group = pd.factorize(prefixes)[0]
        keys, rank = np.unique(edges[key_col].to_numpy(), return_inverse=True)  # items in key order
        _, item_rank, given = place(group, rank.ravel(), edges[_LAST].to_numpy(np.int64),
                                    edges[_DIST].to_numpy(np.float32), solver)
        placed = given >= 0
        return pd.DataFrame({key_col: keys[item_rank[placed]], _NEW: given[placed].astype(np.int32)})

    return place_bucket


def relocation_figures(inserted: DataFrame, encoded: DataFrame, *, key_col: str, n_levels: int) -> dict:
    """The run's share moved, share with a counter and error ratio, from its inserted rows (key, codes,
    counter, relocated) and its encoded rows (key, candidates, distances). Two scans (the inserted
    rows' flags, the cached codes' nearest distances) and a join of the moved rows only, broadcast
    where they are few: the error of an unmoved item is its nearest distance, already summed."""
    row = inserted.agg(F.count(F.lit(1)).alias("n"), F.sum(F.col(RELOCATED).cast("long")).alias("moved"),
                       F.sum((F.col(COUNTER) > 0).cast("long")).alias("counters")).first()
    n, n_moved = int(row["n"] or 0), int(row["moved"] or 0)
    nearest_sum = F.sum(F.element_at(F.col(DISTANCES), 1).cast("double")).alias("nearest")
    sums = encoded.agg(F.count(F.lit(1)).alias("n"), nearest_sum).first()
    if int(sums["n"] or 0) != n:  # another run inserted some of these keys first: only the inserted ones count
        sums = encoded.join(inserted.select(key_col), key_col, "left_semi").agg(nearest_sum).first()
    nearest, gained = float(sums["nearest"] or 0.0), 0.0
    if n_moved:
        moved = inserted.where(F.col(RELOCATED)).select(key_col, CODES)
        # SQL, as pyspark < 4 takes only a literal value in F.array_position
        at = F.expr(f"array_position(`{CANDIDATES}`, `{CODES}`[{n_levels - 1}])").cast("int")
        gain = F.element_at(F.col(DISTANCES), at) - F.element_at(F.col(DISTANCES), 1)
        gained = float(encoded.select(key_col, CANDIDATES, DISTANCES)
                       .join(F.broadcast(moved) if n_moved <= broadcast_limit() else moved, key_col)
                       .agg(F.sum(gain.cast("double"))).first()[0] or 0.0)
    return {"moved_share": n_moved / max(n, 1), "counter_share": int(row["counters"] or 0) / max(n, 1),
            "error_ratio": (nearest + gained) / nearest if nearest > 0 else 1.0}
