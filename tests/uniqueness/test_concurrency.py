"""Several processes (and threads) assigning into one store; a process killed mid-batch."""

import multiprocessing as mp
import os
import signal
import threading
from collections import defaultdict

import numpy as np
import pytest

from semid_spark.uniqueness import stores
from semid_spark.uniqueness.resolver import UniqueIdResolver
from semid_spark.uniqueness.stores import InMemoryCollisionStore, SQLiteCollisionStore

N_BASES = 50  # few distinct codes: almost every ID is a collision


def _bases(seed: int, n: int) -> list[str]:
    return [f"{c}-{c % 7}" for c in np.random.default_rng(seed).integers(0, N_BASES, n)]


def _assign_in_process(db_path, worker, n_items, batch, barrier, out_path):
    resolver = UniqueIdResolver(SQLiteCollisionStore(db_path))
    bases = _bases(worker, n_items)
    keys = [f"w{worker}-{i}" for i in range(n_items)]
    barrier.wait()
    ids = []
    for s in range(0, n_items, batch):
        ids += resolver.assign(bases[s:s + batch], keys=keys[s:s + batch], model_sha256="f" * 64)
    with open(out_path, "w") as fh:
        fh.write("\n".join(ids))


def check_counts_match_ids(counts: dict[str, int], ids: list[str], bases: list[str]) -> None:
    """Each base with count c was handed out exactly as base, base-1, ..., base-(c-1)."""
    by_base = defaultdict(set)
    for uid, base in zip(ids, bases):
        by_base[base].add(uid)
    for base, count in counts.items():
        assert by_base[base] == {base} | {f"{base}-{n}" for n in range(1, count)}


def test_two_processes_share_one_sqlite_store(tmp_path):
    db, n_items = str(tmp_path / "shared.db"), 10_000
    SQLiteCollisionStore(db).close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_assign_in_process, args=(db, w, n_items, 100, barrier, str(tmp_path / f"{w}.txt")))
             for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    ids = [line for w in range(2) for line in (tmp_path / f"{w}.txt").read_text().split("\n")]
    bases = _bases(0, n_items) + _bases(1, n_items)
    assert len(ids) == 20_000 and len(set(ids)) == 20_000
    store = SQLiteCollisionStore(db)
    assert sum(store.counts().values()) == 20_000 and len(store) == 20_000  # no lost counts
    check_counts_match_ids(store.counts(), ids, bases)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_threads_share_one_store(tmp_path, kind):
    store = InMemoryCollisionStore() if kind == "memory" else SQLiteCollisionStore(tmp_path / "t.db")
    resolver, results = UniqueIdResolver(store), {}

    def work(w):
        bases = _bases(w, 2000)
        results[w] = [uid for s in range(0, 2000, 50) for uid in resolver.assign(bases[s:s + 50])]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [uid for w in range(4) for uid in results[w]]
    assert len(set(ids)) == 8000
    counts = store.counts() if kind == "sqlite" else dict(store._counts)
    check_counts_match_ids(counts, ids, [b for w in range(4) for b in _bases(w, 2000)])


def _die_inside_second_batch(db_path):
    resolver = UniqueIdResolver(SQLiteCollisionStore(db_path))
    resolver.assign(["a", "b", "a"], keys=["k1", "k2", "k3"])
    record = stores._SQLiteTransaction.record

    def record_then_die(self, ids, keys):
        record(self, ids, keys)  # counters and IDs are written inside the open transaction ...
        os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before COMMIT

    stores._SQLiteTransaction.record = record_then_die
    resolver.assign(["a", "c", "a"], keys=["k4", "k5", "k6"])


def test_process_killed_mid_batch_leaves_no_partial_counts(tmp_path):
    db = str(tmp_path / "k.db")
    proc = mp.get_context("spawn").Process(target=_die_inside_second_batch, args=(db,))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == -signal.SIGKILL
    store = SQLiteCollisionStore(db)
    assert store.counts() == {"a": 2, "b": 1} and len(store) == 3
    resolver = UniqueIdResolver(store)  # the file is not locked: work carries on
    assert resolver.assign(["a", "c", "a"], keys=["k4", "k5", "k1"]) == ["a-2", "c", "a"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_batch_that_raises_part_way_changes_nothing(tmp_path, kind, monkeypatch):
    store = InMemoryCollisionStore() if kind == "memory" else SQLiteCollisionStore(tmp_path / "r.db")
    resolver = UniqueIdResolver(store)
    resolver.assign(["a", "b"], keys=["k1", "k2"])
    txn_class = stores._MemoryTransaction if kind == "memory" else stores._SQLiteTransaction
    record = txn_class.record

    def record_then_interrupt(self, ids, keys):
        record(self, ids, keys)
        raise KeyboardInterrupt

    monkeypatch.setattr(txn_class, "record", record_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        resolver.assign(["a", "c"], keys=["k3", "k4"])
    monkeypatch.undo()
    assert resolver.assign(["a", "c", "a"], keys=["k3", "k4", "k1"]) == ["a-1", "c", "a"]
    assert len(store) == 4
