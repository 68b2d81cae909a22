"""semantic-id 0.2.5 is the spec: same IDs from the same codes, and saved engines cross over."""

import pytest

from semid_spark.engine import SemanticIdEngine
from semid_spark.uniqueness.resolver import UniqueIdResolver
from semid_spark.uniqueness.stores import SQLiteCollisionStore

pytest.importorskip("semantic_id", reason="needs the optional `compare` extra")
pytestmark = pytest.mark.compare


def test_same_unique_ids_as_the_original(X, fitted):
    from semantic_id.uniqueness.resolver import UniqueIdResolver as Original

    bases = fitted.semantic_id(fitted.encode(X))
    for kwargs in ({}, {"sep": "_"}, {"item_ids": [f"sku{i}" for i in range(len(X))]}):
        assert UniqueIdResolver().assign(bases, **kwargs) == Original().assign(bases, **kwargs)


def test_engines_saved_by_either_library_load_in_the_other(tmp_path, X, fitted):
    from semantic_id.algorithms.rq_kmeans import RQKMeans as OriginalRQKMeans
    from semantic_id.engine import SemanticIdEngine as OriginalEngine
    from semantic_id.uniqueness.resolver import UniqueIdResolver as OriginalResolver
    from semantic_id.uniqueness.stores import SQLiteCollisionStore as OriginalStore

    ours = SemanticIdEngine(fitted, UniqueIdResolver(SQLiteCollisionStore(tmp_path / "ours.db")))
    first = ours.unique_ids(X[:300])
    ours.save(tmp_path / "ours")
    theirs = OriginalEngine.load(str(tmp_path / "ours"))
    assert theirs.unique_ids(X[:300]) == ours.unique_ids(X[:300])  # same codes, same counters

    original = OriginalEngine(OriginalRQKMeans(n_levels=3, n_clusters=10, random_state=0).fit(X),
                              OriginalResolver(OriginalStore(str(tmp_path / "orig.db"))))
    original.unique_ids(X[:300])
    original.save(str(tmp_path / "orig"))
    loaded = SemanticIdEngine.load(tmp_path / "orig")
    assert loaded.unique_ids(X[:300]) == original.unique_ids(X[:300])
    assert len(set(first)) == 300
