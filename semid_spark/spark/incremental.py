"""What an incremental run reads of the written table: costs that grow with the new rows, not the catalog.

- **New rows.** Only keys ever meet the written table: when the input is small (a day's changes) its
  keys are broadcast and the written keys in their range streamed past them (Delta skips the files
  whose keys lie outside it); when it is a whole snapshot, a
  key-only anti-join finds the new keys and a broadcast semi-join brings their rows back. Either way
  no embedding crosses a shuffle, and no embedding of a written item is read twice.
- **Next counters.** The written table's codes are filtered by the new items' code keys (broadcast)
  before they are aggregated, so the counter shuffle carries at most one row per new code.
- **The MERGE.** Delta's insert-only MERGE finds new keys with a left anti-join whose small side (the
  new rows) cannot be broadcast, so it would shuffle every key of the table. Instead the rows to
  insert drop the written keys themselves, by a broadcast join read inside the MERGE, and the
  MERGE's condition lets Delta skip every file (``delta.table.merge_new_rows``'s *unread_rows*).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from semid_spark.delta.schema import CODES, COUNTER
from semid_spark.spark.ranking import CODE_KEY, with_code_key

log = logging.getLogger(__name__)

BROADCAST_KEYS = 2_000_000  # keys (or bases) sent to every executor at most: ~100 MB of 50-byte keys


def broadcast_limit(broadcast_keys: int | None = None) -> int:
    """The most keys a join broadcasts: *broadcast_keys*, or ``BROADCAST_KEYS`` (read when called, so tests can lower it)."""
    return BROADCAST_KEYS if broadcast_keys is None else broadcast_keys


@contextlib.contextmanager
def unwritten_rows(df: DataFrame, written: DataFrame, key_col: str, *, n_input: int,
                   broadcast_keys: int | None = None) -> Iterator[DataFrame]:
    """Rows of *df* whose key *written* does not hold, for use inside the block (a key-only cache is
    released after it). *n_input*: df's row count (already known)."""
    broadcast_keys = broadcast_limit(broadcast_keys)
    small = without_written_keys(df, written, key_col, n_new=n_input, broadcast_keys=broadcast_keys)
    if small is not None:  # a day's changes: nothing of the catalog's size is shuffled
        yield small
        return
    new_keys = df.select(key_col).join(written.select(key_col), key_col, "left_anti").cache()  # keys only
    try:
        n_new = new_keys.count()
        if n_new <= broadcast_keys:
            yield df.join(F.broadcast(new_keys), key_col, "left_semi")
        else:
            log.warning("%d new keys are too many to broadcast (%d at most): their rows are joined back by a "
                        "shuffle that carries their embeddings", n_new, broadcast_keys)
            yield df.join(new_keys, key_col, "left_semi")
    finally:
        new_keys.unpersist()


def next_counters(written: DataFrame, new_items: DataFrame, sizes: Sequence[int], *, n_new: int,
                  broadcast_keys: int | None = None) -> DataFrame:
    """(code key, next): per code of *new_items* (which has ``CODE_KEY``) that *written* holds, its largest
    counter + 1. Lazy: read when the MERGE runs, so a commit that lands before it is counted. The written
    rows are matched on their code key, computed from their codes column (no string is built)."""
    codes = with_code_key(written.select(CODES, COUNTER), sizes).select(CODE_KEY, COUNTER)
    if n_new <= broadcast_limit(broadcast_keys):
        codes = codes.join(F.broadcast(new_items.select(CODE_KEY).distinct()), CODE_KEY, "left_semi")
    return codes.groupBy(CODE_KEY).agg((F.max(COUNTER) + 1).alias("next"))


def without_written_keys(new_items: DataFrame, written: DataFrame, key_col: str, *, n_new: int,
                         broadcast_keys: int | None = None) -> DataFrame | None:
    """*new_items* less the keys *written* holds, by a lazy read of *written* that streams its keys past
    the broadcast new keys (no shuffle); None when the new keys are too many to broadcast.

    The read asks only for written keys between the smallest and the largest new key: Delta skips
    every file whose key range (its min/max statistics) lies outside. Catalogs whose keys grow
    (sequence numbers, time-ordered IDs) then read no file of the table here; random keys read all
    of them, as without the bounds."""
    if n_new > broadcast_limit(broadcast_keys):
        return None
    low, high = new_items.agg(F.min(key_col), F.max(key_col)).first()  # the new keys' column only
    if low is None:  # no new key (or only null ones, which the input checks refuse)
        return new_items
    in_range = written.where(F.col(key_col).between(F.lit(low), F.lit(high))).select(key_col)
    present = in_range.join(F.broadcast(new_items.select(key_col)), key_col, "left_semi")
    return new_items.join(F.broadcast(present), key_col, "left_anti")
