"""implementation="constrained": per-centroid offsets keep encoding balanced, on every backend, through save/load."""

import json

import numpy as np
import pytest

from semid_spark.algorithms import _ops
from semid_spark.algorithms.rq_kmeans import RQKMeans

SIZES = [16, 8]


def skewed(n: int, seed: int) -> np.ndarray:
    """Topics with power-law weights: plain nearest-centroid encoding leaves clusters near empty."""
    rng = np.random.default_rng(0)
    topics = rng.standard_normal((12, 8))
    weights = 1.0 / np.arange(1, 13) ** 1.5
    draw = np.random.default_rng(seed)
    return (topics[draw.choice(12, n, p=weights / weights.sum())] + 0.4 * draw.standard_normal((n, 8))).astype(np.float32)


@pytest.fixture(scope="module")
def balanced():
    x = skewed(6000, seed=1)
    return RQKMeans(len(SIZES), SIZES, implementation="constrained", random_state=0).fit(x), x


def spread(codes: np.ndarray, level: int, k: int) -> float:
    """Largest relative deviation of a level's cluster sizes from N/K."""
    counts = np.bincount(codes[:, level], minlength=k)
    return float(np.abs(counts / (len(codes) / k) - 1.0).max())


def test_encoding_the_training_data_is_balanced_and_new_data_nearly(balanced):
    model, x = balanced
    plain = RQKMeans(len(SIZES), SIZES, random_state=0).fit(x)
    assert spread(plain.encode(x), 0, SIZES[0]) > 0.5  # the data is skewed
    codes = model.encode(x)
    for level, k in enumerate(SIZES):
        assert spread(codes, level, k) <= 0.03  # the fit balances to 2%; the goal is 10%
    fresh = model.encode(skewed(24_000, seed=2))
    for level, k in enumerate(SIZES):
        assert spread(fresh, level, k) <= 0.20


def test_offsets_are_learnt_per_level_and_plain_models_have_none(balanced):
    model, x = balanced
    assert [o.shape for o in model.offsets_] == [(k,) for k in SIZES] and all(o.dtype == np.float32 for o in model.offsets_)
    assert RQKMeans(2, 4, random_state=0).fit(x[:500]).offsets_ is None


def test_numpy_and_torch_give_the_same_balanced_codes(balanced):
    torch = pytest.importorskip("torch")
    from semid_spark.algorithms import _torch_ops

    model, x = balanced
    fresh = skewed(3000, seed=3)
    for rows in (x, fresh):
        numpy_codes = _ops.encode_residual(rows, model.codebooks_, offsets=model.offsets_)
        torch_codes = _torch_ops.encode_residual(rows, model.codebooks_, torch.device("cpu"), offsets=model.offsets_)
        assert np.array_equal(numpy_codes, torch_codes)
        assert np.array_equal(numpy_codes, model.encode(rows))


def test_a_row_code_does_not_depend_on_its_batch(balanced):
    model, x = balanced
    assert np.array_equal(np.concatenate([model.encode(x[i:i + 7]) for i in range(0, 70, 7)]), model.encode(x[:70]))


def test_offsets_are_saved_and_loaded_and_change_the_digest(balanced, tmp_path):
    model, x = balanced
    model.save(str(tmp_path / "balanced"))
    loaded = RQKMeans.load(str(tmp_path / "balanced"))
    assert all(np.array_equal(a, b) for a, b in zip(loaded.offsets_, model.offsets_))
    assert loaded.sha256 == model.sha256 and np.array_equal(loaded.encode(x), model.encode(x))
    meta = json.loads((tmp_path / "balanced" / "metadata.json").read_text())
    assert meta["format_version"] == 2
    bare = RQKMeans(len(SIZES), SIZES)
    bare._set_codebooks(model.codebooks_)
    assert bare.sha256 != model.sha256


def test_a_version_1_file_without_offsets_still_loads(tmp_path):
    x = skewed(800, seed=4)
    model = RQKMeans(2, 4, random_state=0).fit(x)
    model.save(str(tmp_path / "old"))
    path = tmp_path / "old" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["format_version"] = 1
    path.write_text(json.dumps(meta))
    loaded = RQKMeans.load(str(tmp_path / "old"))
    assert loaded.offsets_ is None and np.array_equal(loaded.encode(x), model.encode(x))
