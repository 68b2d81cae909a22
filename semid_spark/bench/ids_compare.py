"""IDs per second of our collision stores beside semantic-id 0.2.5's, on the same base IDs.

Run: ``make bench-ids`` (needs the `compare` extra). The base IDs are 3-level codes drawn
from 64 values per level, so about a third of the items collide with an earlier one.
Each line prints IDs/s; the ratios at the end are ours / the original's, measured in this
run. The original's SQLite store commits once per ID, so it is timed on fewer IDs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from semid_spark.core import codes_to_ids
from semid_spark.uniqueness.resolver import UniqueIdResolver
from semid_spark.uniqueness.stores import InMemoryCollisionStore, SQLiteCollisionStore


def _rate(label: str, n: int, fn) -> float:
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    if out is not None and len(set(out)) != n:
        raise AssertionError(f"{label}: {n - len(set(out))} duplicate IDs")
    rate = n / seconds
    print(f"{label:<58} {n:>9,} IDs {seconds:8.2f} s {rate:>12,.0f} IDs/s", flush=True)
    return rate


def _batched(resolver: UniqueIdResolver, bases: list[str], keys: list[str] | None, batch: int) -> list[str]:
    out: list[str] = []
    for s in range(0, len(bases), batch):
        out += resolver.assign(bases[s:s + batch], keys=None if keys is None else keys[s:s + batch])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--per-key-items", type=int, default=20_000, help="IDs for our per-key SQLite path")
    parser.add_argument("--original-sqlite-items", type=int, default=2_000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    bases = codes_to_ids(rng.integers(0, 64, size=(args.items, 3)))
    keys = [f"item-{i}" for i in range(args.items)]
    n, n_pk, n_os = args.items, args.per_key_items, args.original_sqlite_items
    tmp = tempfile.mkdtemp(prefix="semid-bench-ids-")
    db = lambda name: os.path.join(tmp, name)  # noqa: E731
    print(f"{n:,} base IDs, {len(set(bases)):,} distinct; batches of {args.batch:,}; files in {tmp}")

    ours: dict[str, float] = {}
    ours["mem_batch"] = _rate("ours  in-memory, batch", n, lambda: UniqueIdResolver().assign(bases))
    _rate("ours  in-memory, batch, keys=", n, lambda: UniqueIdResolver().assign(bases, keys=keys))
    ours["mem_per_key"] = _rate("ours  in-memory, per key (store.next_suffix)", n,
                                lambda: _per_key(InMemoryCollisionStore(), bases))
    ours["sqlite_batch"] = _rate(
        "ours  SQLite, batch (durable=True)", n,
        lambda: _batched(UniqueIdResolver(SQLiteCollisionStore(db("a.db"))), bases, None, args.batch))
    sqlite_keyed = UniqueIdResolver(SQLiteCollisionStore(db("b.db")))
    _rate("ours  SQLite, batch, keys=", n, lambda: _batched(sqlite_keyed, bases, keys, args.batch))
    _rate("ours  SQLite, batch, keys= all known (re-run)", n, lambda: _batched(sqlite_keyed, bases, keys, args.batch))
    ours["sqlite_per_key"] = _rate("ours  SQLite, per key (store.next_suffix, durable=True)", n_pk,
                                   lambda: _per_key(SQLiteCollisionStore(db("c.db")), bases[:n_pk]))
    _rate("ours  SQLite, per key (durable=False)", n_pk,
          lambda: _per_key(SQLiteCollisionStore(db("d.db"), durable=False), bases[:n_pk]))

    try:
        from semantic_id.uniqueness.resolver import UniqueIdResolver as OriginalResolver
        from semantic_id.uniqueness.stores import InMemoryCollisionStore as OriginalMemory
        from semantic_id.uniqueness.stores import SQLiteCollisionStore as OriginalSQLite
    except ImportError:
        print("semantic-id 0.2.5 is not installed (pip install -e '.[compare]'); no ratios")
        return 0
    orig_mem = _rate("semantic-id 0.2.5 in-memory", n, lambda: OriginalResolver(OriginalMemory()).assign(bases))
    orig_sqlite = _rate("semantic-id 0.2.5 SQLite", n_os,
                        lambda: OriginalResolver(OriginalSQLite(db("orig.db"))).assign(bases[:n_os]))
    print(f"ratio ours/original, in-memory batch:   {ours['mem_batch'] / orig_mem:8.2f}x")
    print(f"ratio ours/original, in-memory per key: {ours['mem_per_key'] / orig_mem:8.2f}x")
    print(f"ratio ours/original, SQLite batch:      {ours['sqlite_batch'] / orig_sqlite:8.0f}x")
    print(f"ratio ours/original, SQLite per key:    {ours['sqlite_per_key'] / orig_sqlite:8.1f}x")
    return 0


def _per_key(store, bases: list[str]) -> None:
    for base in bases:
        store.next_suffix(base)


if __name__ == "__main__":
    raise SystemExit(main())
