"""SemanticIdEngine: the original's snippet, keys=, save/load with either store, bad input."""

import json

import numpy as np
import pytest

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.engine import SemanticIdEngine
from semid_spark.exceptions import (
    InvalidInputError, ModelFormatError, ModelMismatchError, ShapeMismatchError,
)
from semid_spark.uniqueness.resolver import UniqueIdResolver
from semid_spark.uniqueness.stores import InMemoryCollisionStore, SQLiteCollisionStore
from tests.conftest import make_catalog


def suffix_rule(bases):
    """The original's rule, item by item: first holder bare, then -1, -2, ..."""
    seen, out = {}, []
    for base in bases:
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}-{n}")
    return out


def test_original_snippet_runs_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = make_catalog(n=80, dim=16, n_topics=5, seed=3)
    X = np.vstack([base, base[:20]])  # 20 repeated items: collisions whatever seed the snippet's fit draws

    encoder = RQKMeans(n_levels=3, n_clusters=10)
    store = SQLiteCollisionStore("collisions.db")
    resolver = UniqueIdResolver(store=store)
    engine = SemanticIdEngine(encoder=encoder, unique_resolver=resolver)
    engine.fit(X)
    unique_ids = engine.unique_ids(X)
    engine.save("my_engine")
    loaded = SemanticIdEngine.load("my_engine")

    assert len(unique_ids) == 100 and len(set(unique_ids)) == 100
    bases = encoder.semantic_id(encoder.encode(X))
    assert unique_ids == suffix_rule(bases)
    assert len(set(bases)) < 100  # the example does exercise collisions
    assert loaded.unique_ids(X[:3]) == suffix_rule(bases + bases[:3])[100:]
    assert np.array_equal(loaded.encoder.encode(X), encoder.encode(X))


def test_keys_make_reruns_change_nothing(X, fitted):
    engine = SemanticIdEngine(fitted)
    keys = [f"sku{i}" for i in range(len(X))]
    first = engine.unique_ids(X, keys=keys)
    assert engine.unique_ids(X, keys=keys) == first
    extra = make_catalog(n=20, dim=X.shape[1], seed=9)
    both = engine.unique_ids(np.vstack([X, extra]), keys=keys + [f"new{i}" for i in range(20)])
    assert both[: len(X)] == first and len(set(both)) == len(X) + 20


def test_fixed_length_token_ids(X, fitted):
    engine = SemanticIdEngine(fitted, UniqueIdResolver(fixed_length=True))
    ids = engine.unique_ids(X[:50], fmt="token")
    codes = fitted.encode(X[:50])
    assert all(uid.startswith(base) and uid.count("<d_") == 1 for uid, base in zip(ids, fitted.semantic_id(codes, fmt="token")))
    assert ids[0] == "".join(f"<{c}_{v}>" for c, v in zip("abc", codes[0])) + "<d_0>"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_save_load_carries_on_counting(tmp_path, X, fitted, kind):
    store = InMemoryCollisionStore() if kind == "memory" else SQLiteCollisionStore(tmp_path / "live.db")
    engine = SemanticIdEngine(fitted, UniqueIdResolver(store))
    first = engine.unique_ids(X[:200], keys=range(200))
    engine.save(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "engine_meta.json").read_text())
    assert meta["store_type"] == {"memory": "in_memory", "sqlite": "sqlite"}[kind]
    assert meta["encoder_type"] == "RQKMeans" and meta["encoder_sha256"] == fitted.sha256

    loaded = SemanticIdEngine.load(tmp_path / "saved")
    assert loaded.unique_ids(X[:200], keys=range(200)) == first  # known items, from the saved counters
    assert loaded.unique_ids(X[:200]) == engine.unique_ids(X[:200])  # both carry on from the same state


def test_saving_over_the_engine_it_was_loaded_from_keeps_counting(tmp_path, X, fitted):
    SemanticIdEngine(fitted, UniqueIdResolver(SQLiteCollisionStore(tmp_path / "a.db"))).save(tmp_path / "e")
    engine = SemanticIdEngine.load(tmp_path / "e")  # its store lives inside tmp_path/e
    first = engine.unique_ids(X[:100])
    engine.save(tmp_path / "e")
    second = engine.unique_ids(X[:100])  # written into the new directory's database
    assert set(first).isdisjoint(second)
    again = SemanticIdEngine.load(tmp_path / "e").unique_ids(X[:100])
    assert len(set(first) | set(second) | set(again)) == 300


def test_store_of_another_model_is_refused(tmp_path, X, fitted):
    store = SQLiteCollisionStore(tmp_path / "c.db")
    SemanticIdEngine(fitted, UniqueIdResolver(store)).unique_ids(X[:10])
    other = RQKMeans(n_levels=3, n_clusters=10, random_state=7).fit(X)
    with pytest.raises(ModelMismatchError, match="holds the IDs of model sha256="):
        SemanticIdEngine(other, UniqueIdResolver(store)).unique_ids(X[:10])
    SemanticIdEngine(fitted, UniqueIdResolver(store)).save(tmp_path / "e")
    other.save(tmp_path / "e" / "encoder")  # someone swapped the model
    with pytest.raises(ModelMismatchError, match="holds IDs of model"):
        SemanticIdEngine.load(tmp_path / "e")


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ("nan", InvalidInputError, r"NaN or Inf values in 1 of 50 rows \(first at row 7\)"),
        ("dim", ShapeMismatchError, r"Expected D=16, got D=8"),
        ("empty", ShapeMismatchError, r"at least one sample"),
    ],
)
def test_bad_embeddings_are_refused_and_the_store_is_untouched(X, fitted, bad, error, message):
    x = X[:50].copy()
    x = {"nan": x, "dim": x[:, :8], "empty": x[:0]}[bad]
    if bad == "nan":
        x[7, 3] = np.nan
    store = InMemoryCollisionStore()
    with pytest.raises(error, match=message):
        SemanticIdEngine(fitted, UniqueIdResolver(store)).unique_ids(x)
    assert len(store) == 0 and store._counts == {} and store.model_sha256 is None


def test_load_refuses_what_is_not_an_engine(tmp_path):
    with pytest.raises(ModelFormatError, match="does not describe a saved engine"):
        SemanticIdEngine.load(tmp_path)
    (tmp_path / "engine_meta.json").write_text(json.dumps({"encoder_type": "Word2Vec"}))
    with pytest.raises(ModelFormatError, match="unknown model type 'Word2Vec'"):
        SemanticIdEngine.load(tmp_path)


def test_failed_save_keeps_the_previous_engine(tmp_path, X, fitted, monkeypatch):
    engine = SemanticIdEngine(fitted)
    engine.unique_ids(X[:10])
    engine.save(tmp_path / "e")
    before = sorted(p.name for p in (tmp_path / "e").rglob("*"))
    monkeypatch.setattr(InMemoryCollisionStore, "to_json", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        engine.save(tmp_path / "e")
    assert sorted(p.name for p in (tmp_path / "e").rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["e"]
    SemanticIdEngine.load(tmp_path / "e")
