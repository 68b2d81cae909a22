"""Collision stores: how many times each base ID was handed out, and to which items.

``CollisionStore`` is the extension point of semantic-id 0.2.5: implement
``next_suffix(key)`` and the resolver works, one key at a time, as in the original.

Our two stores also implement ``transaction()``, which the resolver uses to assign a
whole batch at once, atomically:

- ``InMemoryCollisionStore``: dictionaries behind a lock; a failed batch changes nothing.
- ``SQLiteCollisionStore``: one ``BEGIN IMMEDIATE`` transaction per batch on a WAL
  database, so several processes can assign into one file; a batch that fails or is
  killed part-way leaves no partial counts. The ``collisions(key, count)`` table is the
  original's, so files written by either library carry on counting in the other.

Besides the counters, a transaction knows the IDs already issued (so no ID is handed out
twice), the item keys they went to (so an item keeps its ID), and the sha256 of the model
the store serves (so a store cannot silently mix two models' IDs).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from semid_spark.exceptions import ConfigError, DuplicateIdError, ModelMismatchError, StoreError

SCHEMA_VERSION = 1
_SQL_CHUNK = 30_000  # bound parameters per statement (SQLite allows 32766)


class StoreTransaction(ABC):
    """What the resolver needs from a store during one batch; all or nothing."""

    @abstractmethod
    def bind_model(self, sha256: str) -> None:
        """Record the model on first use; raise ``ModelMismatchError`` for any other model."""

    @abstractmethod
    def known_ids(self, keys: Sequence[str]) -> dict[str, str]:
        """The IDs already issued to those of *keys* the store has seen: {key: id}."""

    @abstractmethod
    def next_suffixes(self, bases: Sequence[str]) -> list[int]:
        """Counter of each base, in order, as if ``next_suffix`` were called for each."""

    @abstractmethod
    def record(self, ids: Sequence[str], keys: Sequence[str] | None) -> None:
        """Remember newly issued *ids* (and their item *keys*); raise ``DuplicateIdError``
        if any was issued before."""


class CollisionStore(ABC):
    """Counts how often each base ID was seen. Subclass it for your own storage.

    Only ``next_suffix`` is required. A store that implements only that gets the
    original's behaviour: one call per ID, no ``keys=``, no model check. Override
    ``transaction`` for batches, stable IDs per item and atomicity.
    """

    @abstractmethod
    def next_suffix(self, key: str) -> int:
        """Return how many times *key* was seen before (0 the first time) and count this one."""

    @contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """One batch; the default calls ``next_suffix`` per ID and remembers nothing else."""
        yield _PerKeyTransaction(self)


class _PerKeyTransaction(StoreTransaction):
    def __init__(self, store: CollisionStore) -> None:
        self._store = store

    def bind_model(self, sha256: str) -> None:
        pass  # a store that only counts cannot record the model

    def known_ids(self, keys: Sequence[str]) -> dict[str, str]:
        raise ConfigError(
            f"{type(self._store).__name__} only implements next_suffix, so it cannot remember which "
            "item got which ID; use InMemoryCollisionStore or SQLiteCollisionStore for keys="
        )

    def next_suffixes(self, bases: Sequence[str]) -> list[int]:
        return [self._store.next_suffix(base) for base in bases]

    def record(self, ids: Sequence[str], keys: Sequence[str] | None) -> None:
        pass


def _distinct(bases: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(position -> index into the distinct bases, distinct bases in order of first appearance)."""
    codes, uniques = pd.factorize(np.asarray(bases, dtype=object), sort=False)
    return codes, uniques.tolist()


def _occurrence_counts(codes: np.ndarray, start: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Counter of each position, given each distinct base's count before the batch.

    codes : (n,) index of each position's base; start : (n_distinct,) counts so far.
    Returns the counter of each position (start + earlier positions with the same base)
    and the distinct bases' new totals.
    """
    order = np.argsort(codes, kind="stable")  # positions grouped by base, input order kept
    sizes = np.bincount(codes, minlength=len(start))
    first_of_group = np.repeat(np.cumsum(sizes) - sizes, sizes)
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - first_of_group
    return (start[codes] + rank).tolist(), start + sizes


def _duplicate_error(ids: Sequence[str], n_new: int) -> DuplicateIdError:
    shown = ", ".join(repr(i) for i in list(ids)[:5])
    return DuplicateIdError(
        f"{len(ids)} of {n_new} new IDs were already issued to other items (e.g. {shown}); "
        "nothing was written. Items re-run without keys= get new IDs: pass keys= so that known "
        "items get their ID back, and make sure item_ids suffixes cannot repeat earlier IDs."
    )


def _model_error(where: str, stored: str, given: str) -> ModelMismatchError:
    return ModelMismatchError(
        f"{where} holds the IDs of model sha256={stored[:12]}…, not of this model ({given[:12]}…); "
        "counters of two models must not mix: use a new store for the new model"
    )


# --------------------------------------------------------------------------- in memory
class InMemoryCollisionStore(CollisionStore):
    """Counters in a dictionary; thread-safe; a failed batch leaves it unchanged.

    ``engine.save`` writes its state to JSON (``to_json``/``from_json``), so saved engines
    keep their counters.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._counts: dict[str, int] = {}
        self._issued: dict[str, str | None] = {}  # id -> item key (None when no key was given)
        self._ids_by_key: dict[str, str] = {}
        self.model_sha256: str | None = None

    def next_suffix(self, key: str) -> int:
        with self._lock:
            current = self._counts.get(key, 0)
            self._counts[key] = current + 1
            return current

    @contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        with self._lock:
            txn = _MemoryTransaction(self)
            yield txn
            txn.commit()  # not reached when the batch raised: nothing changes

    def __len__(self) -> int:
        """Number of IDs issued through batches."""
        return len(self._issued)

    def to_json(self) -> dict:
        with self._lock:
            return {
                "schema_version": SCHEMA_VERSION, "model_sha256": self.model_sha256,
                "counts": dict(self._counts), "issued": [[i, k] for i, k in self._issued.items()],
            }

    @classmethod
    def from_json(cls, state: dict) -> "InMemoryCollisionStore":
        if state.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"in-memory store state has schema {state.get('schema_version')!r}; "
                             f"this version reads {SCHEMA_VERSION}")
        store = cls()
        store.model_sha256 = state["model_sha256"]
        store._counts = {str(k): int(v) for k, v in state["counts"].items()}
        for uid, key in state["issued"]:
            store._issued[uid] = key
            if key is not None:
                store._ids_by_key[key] = uid
        return store


class _MemoryTransaction(StoreTransaction):
    """Changes are staged here and applied by ``commit`` only."""

    def __init__(self, store: InMemoryCollisionStore) -> None:
        self._store = store
        self._model: str | None = None
        self._totals: dict[str, int] = {}
        self._new: dict[str, str | None] = {}
        self._has_keys = False

    def bind_model(self, sha256: str) -> None:
        stored = self._store.model_sha256
        if stored is not None and stored != sha256:
            raise _model_error("this InMemoryCollisionStore", stored, sha256)
        self._model = sha256

    def known_ids(self, keys: Sequence[str]) -> dict[str, str]:
        by_key = self._store._ids_by_key
        return {k: by_key[k] for k in keys if k in by_key}

    def next_suffixes(self, bases: Sequence[str]) -> list[int]:
        codes, distinct = _distinct(bases)
        counts, staged = self._store._counts, self._totals
        start = np.fromiter((staged.get(b, counts.get(b, 0)) for b in distinct), np.int64, len(distinct))
        per_item, totals = _occurrence_counts(codes, start)
        staged.update(zip(distinct, totals.tolist()))
        return per_item

    def record(self, ids: Sequence[str], keys: Sequence[str] | None) -> None:
        if taken := self._store._issued.keys() & ids or self._new.keys() & ids:
            raise _duplicate_error(sorted(taken), len(ids))
        self._new.update(zip(ids, keys) if keys is not None else dict.fromkeys(ids))
        self._has_keys |= keys is not None

    def commit(self) -> None:
        store = self._store
        if self._model is not None:
            store.model_sha256 = self._model
        store._counts.update(self._totals)
        store._issued.update(self._new)
        if self._has_keys:
            store._ids_by_key.update((k, i) for i, k in self._new.items() if k is not None)


# --------------------------------------------------------------------------- SQLite
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS semid_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # the original's table, unchanged: key = base ID, count = times handed out
    "CREATE TABLE IF NOT EXISTS collisions (key TEXT PRIMARY KEY, count INTEGER DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS issued (id TEXT PRIMARY KEY) WITHOUT ROWID",  # every ID handed out
    "CREATE TABLE IF NOT EXISTS items (item_key TEXT PRIMARY KEY, id TEXT NOT NULL) WITHOUT ROWID",
)
_CACHE_KIB = 65_536  # page cache per connection: the tables' B-trees stay in memory up to ~10M IDs


class SQLiteCollisionStore(CollisionStore):
    """Counters in a SQLite file, shared safely by threads and processes.

    Parameters
    ----------
    db_path : path of the database file, created with its tables if absent; a ``file:``
        URI is passed to SQLite as one (``file:/data/c.db?mode=ro``)
    timeout : seconds to wait for another process's batch to finish before failing
    durable : ``synchronous=FULL`` (survives power loss) when True, ``NORMAL``
        (survives a crash of the process, the cheaper WAL default) when False

    Raises
    ------
    StoreError
        When the file cannot be opened or written (read-only path, missing directory),
        is not a SQLite database, or was written by a newer schema.
    """

    def __init__(self, db_path: str = "collisions.db", *, timeout: float = 60.0, durable: bool = True) -> None:
        self.db_path = os.fspath(db_path)
        self.timeout = timeout
        self.durable = durable
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        with self._write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            version = conn.execute("SELECT value FROM semid_meta WHERE name = 'schema_version'").fetchone()
            if version is not None and int(version[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.db_path!r} has store schema {version[0]}; this version of semid_spark "
                    f"reads schema {SCHEMA_VERSION}"
                )
            # always a write (new file, a file of semantic-id 0.2.5, or ours), so that a
            # read-only file fails here rather than at the first batch
            conn.execute("INSERT OR REPLACE INTO semid_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # -- connections
    def _connection(self) -> sqlite3.Connection:
        """This process's connection (a forked child opens its own)."""
        if self._conn is None or self._pid != os.getpid():
            try:
                conn = sqlite3.connect(self.db_path, timeout=self.timeout, isolation_level=None,
                                       check_same_thread=False, uri=self.db_path.startswith("file:"))
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
                conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            except sqlite3.Error as exc:
                raise self._store_error(exc) from None
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _store_error(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(
            f"collision store {self.db_path!r} cannot be used: {exc} (is the path writable, its "
            "directory present, and the file a SQLite database?)"
        )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the file's write lock up front."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._store_error(exc) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                    raise self._store_error(exc) from exc
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __getstate__(self) -> dict:
        return {"db_path": self.db_path, "timeout": self.timeout, "durable": self.durable}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["db_path"], timeout=state["timeout"], durable=state["durable"])

    # -- the original's interface
    def next_suffix(self, key: str) -> int:
        with self._write() as conn:
            (count,) = conn.execute(
                "INSERT INTO collisions (key, count) VALUES (?, 1) "
                "ON CONFLICT (key) DO UPDATE SET count = count + 1 RETURNING count - 1",
                (key,),
            ).fetchone()
            return count

    @contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        with self._write() as conn:
            yield _SQLiteTransaction(conn, self.db_path)

    # -- reading
    @property
    def model_sha256(self) -> str | None:
        with self._lock:
            row = self._connection().execute("SELECT value FROM semid_meta WHERE name = 'model_sha256'").fetchone()
        return row[0] if row else None

    def __len__(self) -> int:
        """Number of IDs issued through batches."""
        with self._lock:
            return self._connection().execute("SELECT count(*) FROM issued").fetchone()[0]

    def counts(self) -> dict[str, int]:
        """All counters: {base ID: times handed out}."""
        with self._lock:
            return dict(self._connection().execute("SELECT key, count FROM collisions"))

    def backup(self, dest_path: str) -> None:
        """Copy the database, committed state only, to *dest_path* (safe while others write)."""
        with self._lock:
            dest = sqlite3.connect(dest_path)
            try:
                self._connection().backup(dest)
            finally:
                dest.close()


def _chunks(items: Sequence, size: int = _SQL_CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _SQLiteTransaction(StoreTransaction):
    def __init__(self, conn: sqlite3.Connection, db_path: str) -> None:
        self._conn = conn
        self._db_path = db_path

    def bind_model(self, sha256: str) -> None:
        row = self._conn.execute("SELECT value FROM semid_meta WHERE name = 'model_sha256'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO semid_meta VALUES ('model_sha256', ?)", (sha256,))
        elif row[0] != sha256:
            raise _model_error(f"collision store {self._db_path!r}", row[0], sha256)

    def _select_in(self, sql: str, values: Sequence[str]) -> list[tuple]:
        rows: list[tuple] = []
        for chunk in _chunks(values):
            rows += self._conn.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return rows

    def known_ids(self, keys: Sequence[str]) -> dict[str, str]:
        return dict(self._select_in("SELECT item_key, id FROM items WHERE item_key IN ({})", keys))

    def next_suffixes(self, bases: Sequence[str]) -> list[int]:
        codes, distinct = _distinct(bases)
        stored = dict(self._select_in("SELECT key, count FROM collisions WHERE key IN ({})", distinct))
        start = np.fromiter((stored.get(b, 0) for b in distinct), np.int64, len(distinct))
        per_item, totals = _occurrence_counts(codes, start)
        self._conn.executemany(
            "INSERT INTO collisions (key, count) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET count = excluded.count",
            zip(distinct, totals.tolist()),
        )
        return per_item

    def record(self, ids: Sequence[str], keys: Sequence[str] | None) -> None:
        self._conn.execute("SAVEPOINT record_ids")
        try:
            self._conn.executemany("INSERT INTO issued (id) VALUES (?)", ((i,) for i in ids))
        except sqlite3.IntegrityError:
            self._conn.execute("ROLLBACK TO record_ids")  # so the query below sees earlier IDs only
            taken = [i for (i,) in self._select_in("SELECT id FROM issued WHERE id IN ({})", list(ids))]
            raise _duplicate_error(taken, len(ids)) from None
        self._conn.execute("RELEASE record_ids")
        if keys is not None:  # keys are new (the resolver looked them up) and unique in the batch
            self._conn.executemany("INSERT INTO items (item_key, id) VALUES (?, ?)", zip(keys, ids))


def write_json_state(path: str, state: dict) -> None:
    """Write a store's JSON state atomically (temp file, then rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state, fh)
    os.replace(tmp, path)
