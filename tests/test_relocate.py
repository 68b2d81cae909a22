"""relocate_codes and RelocatingResolver: errors that name the problem, the engine, torch input."""

import numpy as np
import pytest

from semid_spark.engine import SemanticIdEngine
from semid_spark.exceptions import ConfigError, InvalidInputError
from semid_spark.uniqueness.relocate import place_items, relocate_codes
from semid_spark.uniqueness.resolver import RelocatingResolver


def test_bad_arguments_are_named(fitted, X):
    with pytest.raises(InvalidInputError, match="keys holds 1 duplicates among 3 items"):
        relocate_codes(fitted, X[:3], keys=["a", "b", "a"])
    with pytest.raises(InvalidInputError, match="keys has 2 entries for 3 embeddings"):
        relocate_codes(fitted, X[:3], keys=["a", "b"])
    with pytest.raises(InvalidInputError, match=r"held has shape \(4,\); expected \(M, 3\)"):
        relocate_codes(fitted, X[:3], held=np.zeros(4))
    with pytest.raises(InvalidInputError, match="2 code rows for 3 embeddings"):
        relocate_codes(fitted, X[:3], codes=fitted.encode(X[:2]))
    with pytest.raises(ConfigError, match="n_candidates=1"):
        relocate_codes(fitted, X[:3], n_candidates=1)
    with pytest.raises(ConfigError, match="requires 'embeddings' and 'model'"):
        RelocatingResolver().assign(["1-2-3"])


def test_place_items_places_as_many_as_it_can_then_the_cheapest():
    # item 0 is nearest to 7 but can take 8; item 1 has only 7: both placed beats item 0 alone on 7
    assert place_items(2, np.array([0, 0, 1]), np.array([7, 8, 7]), np.array([0.1, 0.15, 0.2])).tolist() == [8, 7]
    # two codes, three items: the two placed are the cheapest pair
    given = place_items(3, np.array([0, 1, 1, 2]), np.array([7, 7, 8, 8]), np.array([0.1, 0.2, 0.9, 0.5]))
    assert given.tolist() == [7, -1, 8]
    assert place_items(2, np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.array([])).tolist() == [-1, -1]


def test_the_engine_passes_the_model_and_the_ids_are_unique(fitted, X):
    engine = SemanticIdEngine(fitted, RelocatingResolver())
    ids = engine.unique_ids(X, keys=[f"item{i}" for i in range(len(X))])
    assert len(set(ids)) == len(ids)
    plain = SemanticIdEngine(fitted).unique_ids(X)
    with_counter = lambda out: sum(i.count("-") == 3 for i in out)  # noqa: E731
    assert with_counter(ids) < with_counter(plain)


def test_torch_tensors_are_taken(fitted, X):
    torch = pytest.importorskip("torch")
    assert np.array_equal(relocate_codes(fitted, torch.from_numpy(X[:200])).codes, relocate_codes(fitted, X[:200]).codes)
