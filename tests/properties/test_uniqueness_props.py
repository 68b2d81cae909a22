"""Invariants of the resolver over any sequence of batches, for both stores."""

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from semid_spark.uniqueness.resolver import UniqueIdResolver
from semid_spark.uniqueness.stores import InMemoryCollisionStore, SQLiteCollisionStore

BASES = st.sampled_from(["1-2", "1-3", "2-2", "10-0"])


@st.composite
def batches(draw):
    """A list of batches; each is (bases, keys or None) with keys unique within the batch."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        n = draw(st.integers(0, 12))
        bases = draw(st.lists(BASES, min_size=n, max_size=n))
        keyed = draw(st.booleans())
        keys = draw(st.lists(st.integers(0, 25), min_size=n, max_size=n, unique=True)) if keyed else None
        out.append((bases, None if keys is None else [f"item{k}" for k in keys]))
    return out


class Oracle:
    """The contract, written the simplest way: per-base counters, and per-key memory."""

    def __init__(self, fixed_length=False):
        self.counts, self.by_key, self.fixed_length = {}, {}, fixed_length

    def assign(self, bases, keys):
        ids = []
        for i, base in enumerate(bases):
            key = keys[i] if keys else None
            if key in self.by_key:
                ids.append(self.by_key[key])
                continue
            n = self.counts.get(base, 0)
            self.counts[base] = n + 1
            ids.append(f"{base}-{n}" if self.fixed_length or n else base)
            if key is not None:
                self.by_key[key] = ids[-1]
        return ids


@settings(max_examples=60, deadline=None)
@given(batches(), st.booleans())
def test_stores_agree_with_the_contract(seq, fixed_length):
    with tempfile.TemporaryDirectory() as tmp:
        memory = UniqueIdResolver(InMemoryCollisionStore(), fixed_length=fixed_length)
        sqlite = UniqueIdResolver(SQLiteCollisionStore(Path(tmp) / "p.db"), fixed_length=fixed_length)
        oracle = Oracle(fixed_length)
        owner: dict[str, tuple] = {}  # ID -> the item holding it: its key, or a fresh token
        anonymous = iter(range(10**6))
        first_base: dict[tuple, str] = {}
        for bases, keys in seq:
            expected = oracle.assign(bases, keys)
            assert memory.assign(bases, keys=keys) == expected
            assert sqlite.assign(bases, keys=keys) == expected
            for i, uid in enumerate(expected):
                holder = ("key", keys[i]) if keys else ("anonymous", next(anonymous))
                assert owner.setdefault(uid, holder) == holder, f"{uid} given to two items"
                # an ID's base is the codes of the item when it was first assigned
                base = first_base.setdefault(holder, bases[i])
                assert uid == base or (uid.startswith(base + "-") and uid[len(base) + 1:].isdigit())
            if keys:  # re-assigning known keys changes nothing
                before = dict(sqlite.store.counts())
                assert sqlite.assign(bases, keys=keys) == expected
                assert memory.assign(bases, keys=keys) == expected
                assert sqlite.store.counts() == before == memory.store._counts
        sqlite.store.close()
