"""UniqueIdResolver and its stores: the original's suffix rule, keys=, fixed length, bad input."""

import sqlite3

import pytest

from semid_spark.exceptions import (
    ConfigError, CounterOverflowError, DuplicateIdError, InvalidInputError, ModelMismatchError, StoreError,
)
from semid_spark.uniqueness.resolver import UniqueIdResolver
from semid_spark.uniqueness.stores import CollisionStore, InMemoryCollisionStore, SQLiteCollisionStore


@pytest.fixture(params=["memory", "sqlite"])
def new_store(request, tmp_path):
    """A factory of empty stores of each kind."""
    paths = iter(tmp_path / f"s{i}.db" for i in range(100))
    if request.param == "memory":
        return InMemoryCollisionStore
    return lambda: SQLiteCollisionStore(next(paths))


def counts(store) -> dict[str, int]:
    return store.counts() if isinstance(store, SQLiteCollisionStore) else dict(store._counts)


# ------------------------------------------------------------------ the original's examples
def test_suffix_rule_examples(new_store):
    assert UniqueIdResolver(new_store()).assign(["a", "b", "a", "c", "a", "b"]) == ["a", "b", "a-1", "c", "a-2", "b-1"]
    assert UniqueIdResolver(new_store()).assign(
        ["3-9-1", "3-9-1", "5-0-2"], item_ids=["SKU100", "SKU200", "SKU300"]
    ) == ["3-9-1", "3-9-1-SKU200", "5-0-2"]
    assert UniqueIdResolver(new_store()).assign([]) == []
    assert UniqueIdResolver().assign(["a", "a"], sep="_") == ["a", "a_1"]


def test_item_ids_still_advance_the_counter(new_store):
    resolver = UniqueIdResolver(new_store())
    assert resolver.assign(["a", "a"], item_ids=["x", "y"]) == ["a", "a-y"]
    assert resolver.assign(["a"]) == ["a-2"]


def test_counters_persist_across_calls(new_store):
    resolver = UniqueIdResolver(new_store())
    assert resolver.assign(["x", "x"]) == ["x", "x-1"]
    assert resolver.assign(["y", "x"]) == ["y", "x-2"]


def test_sqlite_counters_persist_across_reopening(tmp_path):
    db = tmp_path / "c.db"
    assert UniqueIdResolver(SQLiteCollisionStore(db)).assign(["x", "x", "y", "x"]) == ["x", "x-1", "y", "x-2"]
    assert UniqueIdResolver(SQLiteCollisionStore(db)).assign(["x"]) == ["x-3"]
    store = SQLiteCollisionStore(db)
    assert store.counts() == {"x": 4, "y": 1} and len(store) == 5


def test_next_suffix_is_the_extension_point(new_store):
    store = new_store()
    assert [store.next_suffix("k") for _ in range(3)] == [0, 1, 2]
    assert UniqueIdResolver(store).assign(["k"]) == ["k-3"]


class DictStore(CollisionStore):
    """A user's store that implements only the original's abstract method."""

    def __init__(self):
        self.seen = {}

    def next_suffix(self, key):
        self.seen[key] = self.seen.get(key, 0) + 1
        return self.seen[key] - 1


def test_custom_store_with_only_next_suffix_works_per_id():
    store = DictStore()
    assert UniqueIdResolver(store).assign(["a", "a", "b"]) == ["a", "a-1", "b"]
    assert store.seen == {"a": 2, "b": 1}
    with pytest.raises(ConfigError, match="only implements next_suffix"):
        UniqueIdResolver(store).assign(["a"], keys=["k1"])


def test_original_sqlite_file_carries_on(tmp_path):
    original = pytest.importorskip("semantic_id.uniqueness.stores", reason="needs the `compare` extra")
    db = str(tmp_path / "orig.db")
    assert [original.SQLiteCollisionStore(db).next_suffix("x") for _ in range(2)] == [0, 1]
    assert UniqueIdResolver(SQLiteCollisionStore(db)).assign(["x", "y"]) == ["x-2", "y"]
    assert original.SQLiteCollisionStore(db).next_suffix("x") == 3  # and back again


# ------------------------------------------------------------------ keys: items keep their IDs
def test_known_keys_get_their_ids_back_and_take_no_counter(new_store):
    store = new_store()
    resolver = UniqueIdResolver(store)
    first = resolver.assign(["a", "b", "a"], keys=["i1", "i2", "i3"])
    assert first == ["a", "b", "a-1"]
    before = counts(store)
    assert resolver.assign(["a", "b", "a"], keys=["i1", "i2", "i3"]) == first
    assert counts(store) == before
    # i3's embedding moved to code "b": it keeps its ID; only the new item takes a counter
    assert resolver.assign(["b", "a", "a"], keys=["i3", "i4", "i1"]) == ["a-1", "a-2", "a"]
    assert resolver.assign([5 and "c"], keys=[7]) == ["c"]
    assert resolver.assign(["zzz"], keys=["7"]) == ["c"]  # keys are compared as strings


def test_duplicate_keys_are_refused_and_nothing_is_written(new_store):
    store = new_store()
    with pytest.raises(DuplicateIdError, match=r"keys holds 1 duplicates among 3 items \(first 'k1'\)"):
        UniqueIdResolver(store).assign(["a", "b", "c"], keys=["k1", "k2", "k1"])
    assert counts(store) == {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keys": ["k1"]}, r"keys has 1 entries for 2 semantic_ids"),
        ({"keys": ["k1", None]}, r"keys holds 1 null values of 2 \(first at position 1\)"),
        ({"item_ids": ["x", "y", "z"]}, r"item_ids has 3 entries for 2 semantic_ids"),
        ({"item_ids": [None, "y"]}, r"item_ids holds 1 null values"),
    ],
)
def test_bad_keys_and_item_ids_are_named(new_store, kwargs, message):
    store = new_store()
    with pytest.raises(InvalidInputError, match=message):
        UniqueIdResolver(store).assign(["a", "a"], **kwargs)
    assert counts(store) == {}


def test_non_string_ids_are_refused():
    with pytest.raises(InvalidInputError, match=r"semantic_ids\[1\] is 3; expected a string"):
        UniqueIdResolver().assign(["a", 3])


def test_duplicate_item_ids_in_one_batch_are_refused(new_store):
    store = new_store()
    with pytest.raises(DuplicateIdError, match="'a-x' would be given to two items"):
        UniqueIdResolver(store).assign(["a", "a", "a"], item_ids=["w", "x", "x"])
    assert counts(store) == {}


def test_rerun_with_item_ids_but_no_keys_is_refused_not_duplicated(new_store):
    store = new_store()
    resolver = UniqueIdResolver(store)
    assert resolver.assign(["a", "a"], item_ids=["x", "y"]) == ["a", "a-y"]
    # the original hands out "a-x" and "a-y" again here: "a-y" twice
    with pytest.raises(DuplicateIdError, match=r"1 of 2 new IDs were already issued .*'a-y'.*pass keys="):
        resolver.assign(["a", "a"], item_ids=["x", "y"])
    assert counts(store) == {"a": 2} and len(store) == 2


def test_formatter_collisions_with_suffixed_ids_are_refused(new_store):
    resolver = UniqueIdResolver(new_store())
    assert resolver.assign(["a", "a"]) == ["a", "a-1"]
    with pytest.raises(DuplicateIdError, match="'a-1'"):
        resolver.assign(["a-1"])  # a formatter whose base equals an issued suffixed ID


# ------------------------------------------------------------------ fixed-length form
def test_fixed_length_always_has_the_counter_level(new_store):
    resolver = UniqueIdResolver(new_store(), fixed_length=True)
    assert resolver.assign(["3-9-1", "3-9-1", "5-0-2"]) == ["3-9-1-0", "3-9-1-1", "5-0-2-0"]
    tokens = resolver.assign(["<a_3><b_9><c_1>", "<a_3><b_9><c_1>"], fmt="token")
    assert tokens == ["<a_3><b_9><c_1><d_0>", "<a_3><b_9><c_1><d_1>"]


def test_fixed_length_counter_overflow_is_refused_and_nothing_is_written(new_store):
    store = new_store()
    resolver = UniqueIdResolver(store, fixed_length=True, counter_size=3)
    assert resolver.assign(["a", "a"]) == ["a-0", "a-1"]
    with pytest.raises(CounterOverflowError, match=r"'a' is shared by 4 items, more than counter_size=3"):
        resolver.assign(["b", "a", "a"])
    assert counts(store) == {"a": 2}
    assert resolver.assign(["a", "b"]) == ["a-2", "b-0"]


def test_fixed_length_refuses_item_ids_and_bad_settings():
    with pytest.raises(ConfigError, match="fixed_length"):
        UniqueIdResolver(fixed_length=True).assign(["a"], item_ids=["x"])
    with pytest.raises(ConfigError, match="counter_size=0"):
        UniqueIdResolver(fixed_length=True, counter_size=0)
    with pytest.raises(ConfigError, match="must be a CollisionStore"):
        UniqueIdResolver(store="collisions.db")


# ------------------------------------------------------------------ model binding
def test_store_refuses_another_model(new_store):
    store = new_store()
    resolver = UniqueIdResolver(store)
    resolver.assign(["a"], model_sha256="a" * 64)
    with pytest.raises(ModelMismatchError, match="model sha256=aaaaaaaaaaaa"):
        resolver.assign(["a"], model_sha256="b" * 64)
    assert counts(store) == {"a": 1}
    assert store.model_sha256 == "a" * 64


def test_sqlite_model_binding_survives_reopening(tmp_path):
    UniqueIdResolver(SQLiteCollisionStore(tmp_path / "m.db")).assign(["a"], model_sha256="a" * 64)
    with pytest.raises(ModelMismatchError):
        UniqueIdResolver(SQLiteCollisionStore(tmp_path / "m.db")).assign(["a"], model_sha256="c" * 64)


# ------------------------------------------------------------------ files that cannot be used
def test_store_of_another_schema_is_refused(tmp_path):
    db = tmp_path / "new.db"
    SQLiteCollisionStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE semid_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(StoreError, match="store schema 99; this version of semid_spark reads schema 1"):
        SQLiteCollisionStore(db)


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    (tmp_path / "notes.db").write_text("not a database, " * 100)
    with pytest.raises(StoreError, match="notes.db.*cannot be used"):
        SQLiteCollisionStore(tmp_path / "notes.db")
    assert (tmp_path / "notes.db").read_text().startswith("not a database")


@pytest.mark.parametrize("where", ["parent_is_a_file", "path_is_a_directory", "missing_directory"])
def test_unwritable_paths_are_refused(tmp_path, where):
    (tmp_path / "file").write_text("x")
    path = {"parent_is_a_file": tmp_path / "file" / "c.db", "path_is_a_directory": tmp_path,
            "missing_directory": tmp_path / "no" / "such" / "c.db"}[where]
    with pytest.raises(StoreError, match="cannot be used"):
        SQLiteCollisionStore(path)


def test_read_only_database_is_refused(tmp_path):
    db = tmp_path / "ro.db"
    UniqueIdResolver(SQLiteCollisionStore(db)).assign(["a"])
    with pytest.raises(StoreError, match="ro.db.*cannot be used.*readonly"):
        SQLiteCollisionStore(f"file:{db}?mode=ro")  # as on a read-only mount (tests run as root)
    assert SQLiteCollisionStore(db).counts() == {"a": 1}
