"""What an incremental run reads of the written table: costs that grow with the new rows, not the catalog.

- **New rows.** Only keys ever meet the written table: when the input is small (a day's changes) its
  keys are broadcast and the written keys streamed past them; when it is a whole snapshot, a
  key-only anti-join finds the new keys and a broadcast semi-join brings their rows back. Either way
  no embedding crosses a shuffle, and no embedding of a written item is read twice.
- **Next counters.** The written table's codes are filtered by the new items' bases (broadcast)
  before they are aggregated, so the counter shuffle carries at most one row per new base.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from semid_spark.spark.columns import BASE_ID, COUNTER
from semid_spark.spark.ranking import base_id

log = logging.getLogger(__name__)

BROADCAST_KEYS = 2_000_000  # keys (or bases) sent to every executor at most: ~100 MB of 50-byte keys


@contextlib.contextmanager
def unwritten_rows(df: DataFrame, written: DataFrame, key_col: str, *, n_input: int,
                   broadcast_keys: int | None = None) -> Iterator[DataFrame]:
    """Rows of *df* whose key *written* does not hold, for use inside the block (a key-only cache is
    released after it). *n_input*: df's row count (already known)."""
    broadcast_keys = BROADCAST_KEYS if broadcast_keys is None else broadcast_keys
    if n_input <= broadcast_keys:  # a day's changes: nothing of the catalog's size is shuffled
        present = written.select(key_col).join(F.broadcast(df.select(key_col)), key_col, "left_semi")
        yield df.join(F.broadcast(present), key_col, "left_anti")
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


def next_counters(written: DataFrame, new_items: DataFrame, sep: str, *, n_new: int,
                  broadcast_keys: int | None = None) -> DataFrame:
    """(base_id, next): per base of *new_items* that *written* holds, its largest counter + 1. Lazy: read
    when the MERGE runs, so a commit that lands before it is counted."""
    bases = written.select(base_id(sep).alias(BASE_ID), COUNTER)
    if n_new <= (BROADCAST_KEYS if broadcast_keys is None else broadcast_keys):
        bases = bases.join(F.broadcast(new_items.select(BASE_ID).distinct()), BASE_ID, "left_semi")
    return bases.groupBy(BASE_ID).agg((F.max(COUNTER) + 1).alias("next"))
