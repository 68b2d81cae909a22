import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from semid_spark.algorithms import _ops, _torch_ops
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.exceptions import (
    ConfigError, InvalidInputError, ModelFormatError, NotFittedError, SemanticIdError, ShapeMismatchError,
)
from tests.conftest import make_catalog


def brute_force_codes(x, codebooks):  # independent reference: float64, full distance matrix
    residual = x.astype(np.float64)
    codes = []
    for cb in codebooks:
        d = ((residual[:, None, :] - cb[None].astype(np.float64)) ** 2).sum(-1)
        codes.append(d.argmin(1))
        residual = residual - cb[codes[-1]].astype(np.float64)
    return np.stack(codes, 1)


def test_original_snippet_runs(X, tmp_path):
    model = RQKMeans(n_levels=3, n_clusters=10, random_state=42)
    assert model.fit(X.tolist()) is model
    codes = model.encode(X)
    assert codes.shape == (len(X), 3) and codes.dtype == np.int32
    sids = model.semantic_id(codes)
    assert sids[0] == "-".join(str(c) for c in codes[0])
    model.save(str(tmp_path / "m"))
    assert np.array_equal(RQKMeans.load(str(tmp_path / "m")).encode(X), codes)


def test_codes_match_float64_brute_force(fitted, X):
    assert np.array_equal(fitted.encode(X), brute_force_codes(X, fitted.codebooks_))


def test_numpy_and_torch_cpu_codes_identical(fitted, X):
    torch_codes = _torch_ops.encode_residual(X, fitted.codebooks_, torch.device("cpu"), chunk=333)
    assert np.array_equal(torch_codes, fitted.encode(X))


def test_exact_ties_go_to_lowest_index():
    codebook = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    x = np.array([[0.0, 0.0], [0.5, 0.5], [2.0, 0.0]], dtype=np.float32)  # equidistant cases
    want = np.array([0, 0, 0])
    assert np.array_equal(_ops.nearest_codes(x, codebook, _ops.sq_norms(codebook)), want)
    got = _torch_ops.nearest_codes(torch.from_numpy(x), torch.from_numpy(codebook), _torch_ops.sq_norms(torch.from_numpy(codebook)))
    assert np.array_equal(got.numpy(), want)


def test_near_ties_decided_exactly():
    # two centroids one float32 ulp apart in distance: the float64 winner must be chosen
    rng = np.random.default_rng(3)
    c0 = rng.standard_normal(64).astype(np.float32) * 100
    c1 = c0.copy(); c1[0] = np.nextafter(c1[0], np.float32(np.inf))
    codebook = np.stack([c1, c0]).astype(np.float32)
    x = (c0 - np.float32(1e-3) * np.sign(c1 - c0)).astype(np.float32)[None]
    want = brute_force_codes(x, [codebook])[:, 0]
    assert np.array_equal(_ops.nearest_codes(x, codebook, _ops.sq_norms(codebook)), want)


def test_same_seed_same_codebooks_and_no_global_rng_effect(X):
    np.random.seed(1); torch.manual_seed(1)
    before = (np.random.random(), torch.rand(1).item())
    np.random.seed(1); torch.manual_seed(1)
    a = RQKMeans(n_levels=2, n_clusters=8, random_state=7).fit(X)
    after = (np.random.random(), torch.rand(1).item())
    b = RQKMeans(n_levels=2, n_clusters=8, random_state=7).fit(X)
    assert before == after
    assert all(np.array_equal(p, q) for p, q in zip(a.codebooks_, b.codebooks_))
    assert a.sha256 == b.sha256


def test_reconstruction_error_falls_with_levels(X):
    model = RQKMeans(n_levels=4, n_clusters=16, random_state=0).fit(X)
    codes = model.encode(X)
    errors = [float(((X - model.decode(codes[:, : l + 1])) ** 2).sum(1).mean()) for l in range(4)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[0] < float(((X - X.mean(0)) ** 2).sum(1).mean())


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (12, 16), elements=st.floats(-10, 10, width=32)), st.integers(1, 12))
def test_code_does_not_depend_on_batch(fitted, x, batch):
    codes = fitted.encode(x)
    assert np.array_equal(fitted.encode(x, batch_size=batch), codes)
    assert all(np.array_equal(fitted.encode(x[i : i + 1])[0], codes[i]) for i in range(len(x)))


def test_per_level_cluster_sizes_and_list_storage():
    model = RQKMeans(n_levels=3, n_clusters=[8, 4, 2], random_state=0).fit(make_catalog(400))
    assert model.n_clusters == [8, 4, 2]
    assert [cb.shape for cb in model.codebooks_] == [(8, 16), (4, 16), (2, 16)]
    with pytest.raises(ConfigError, match="must match n_levels"):  # checked by fit, as scikit-learn does
        RQKMeans(n_levels=3, n_clusters=[8, 4]).fit(make_catalog(400))


def test_constrained_sizes_within_bounds():
    x = make_catalog(1003, n_topics=5)
    model = RQKMeans(n_levels=2, n_clusters=10, implementation="constrained", random_state=0).fit(x)
    from semid_spark.algorithms._torch_ops import balanced_assign
    labels = balanced_assign(torch.from_numpy(x), torch.from_numpy(model.codebooks_[0])).numpy()
    sizes = np.bincount(labels, minlength=10)
    assert sizes.sum() == 1003 and sizes.min() >= 100 and sizes.max() <= 101


@settings(max_examples=20, deadline=None)
@given(st.integers(20, 300), st.integers(2, 12), st.integers(0, 10_000))
def test_balanced_assignment_sizes_property(n, k, seed):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy((rng.standard_normal((n, 4)) * rng.uniform(0.1, 5, (n, 1))).astype(np.float32))
    centers = x[torch.from_numpy(rng.choice(n, k, replace=False))]
    sizes = np.bincount(_torch_ops.balanced_assign(x, centers).numpy(), minlength=k)
    assert sizes.sum() == n and sizes.min() >= n // k and sizes.max() <= n // k + 1


def test_save_load_digest_and_damage(fitted, X, tmp_path):
    path = str(tmp_path / "m")
    fitted.save(path)
    meta = json.load(open(os.path.join(path, "metadata.json")))
    assert meta["sha256"] == fitted.sha256 and meta["format_version"] == 2
    loaded = RQKMeans.load(path)
    assert np.array_equal(loaded.encode(X), fitted.encode(X)) and loaded.sha256 == fitted.sha256
    books = {f"codebook_{i}": cb.copy() for i, cb in enumerate(fitted.codebooks_)}
    books["codebook_1"][0, 0] += 1.0
    np.savez(os.path.join(path, "codebooks.npz"), **books)
    with pytest.raises(ModelFormatError, match="does not match the sha256"):
        RQKMeans.load(path)
    open(os.path.join(path, "codebooks.npz"), "wb").write(b"not a zip")
    with pytest.raises(ModelFormatError, match="damaged"):
        RQKMeans.load(path)
    with pytest.raises(ModelFormatError, match="missing"):
        RQKMeans.load(str(tmp_path / "nowhere"))


def test_pickled_arrays_refused(tmp_path):
    path = tmp_path / "m"; path.mkdir()
    json.dump({"type": "RQKMeans", "n_levels": 1, "n_clusters": [2], "D": 2}, open(path / "metadata.json", "w"))
    np.savez(path / "codebooks.npz", codebook_0=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ModelFormatError, match="pickle"):
        RQKMeans.load(str(path))


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (np.zeros(5, np.float32), ShapeMismatchError, "2-D"),
        (np.zeros((0, 16), np.float32), ShapeMismatchError, "at least one sample"),
        (np.zeros((4, 3), np.float32), ShapeMismatchError, "Expected D=16, got D=3"),
        ([[1.0, 2.0], [3.0]], ShapeMismatchError, "2-D"),
    ],
)
def test_bad_input_shapes(fitted, bad, error, message):
    with pytest.raises(error, match=message):
        fitted.encode(bad)


def test_nan_inf_rows_counted(fitted, X):
    x = X[:10].copy(); x[2, 0] = np.nan; x[5, 3] = np.inf
    with pytest.raises(ValueError, match=r"NaN or Inf values in 2 of 10 rows \(first at row 2\)"):
        fitted.encode(x)
    with pytest.raises(InvalidInputError):
        RQKMeans(n_levels=1, n_clusters=2).fit(x)


def test_other_errors(X):
    with pytest.raises(NotFittedError, match="not fitted"):
        RQKMeans().encode(X)
    with pytest.raises(NotFittedError):
        RQKMeans().decode(np.zeros((1, 4), int))
    with pytest.raises(InvalidInputError, match="n_samples=5 should be >= n_clusters=10"):
        RQKMeans(n_levels=1, n_clusters=10).fit(X[:5])
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        RQKMeans(n_levels=1, n_clusters=2).fit(X, device="tpu")
    with pytest.raises(ConfigError, match="unknown implementation"):
        RQKMeans(implementation="fancy").fit(X)
    with pytest.raises(ConfigError, match="n_levels"):
        RQKMeans(n_levels=0).fit(X)
    with pytest.raises(NotImplementedError, match="Cosine metric is not yet implemented"):  # semantic-id's words
        RQKMeans(metric="cosine").fit(X)
    assert issubclass(ShapeMismatchError, (SemanticIdError, ValueError))


def test_decode_rejects_out_of_range_codes(fitted):
    with pytest.raises(InvalidInputError, match=r"outside \[0, 10\)"):
        fitted.decode(np.array([[3, 10, 1]]))
    with pytest.raises(InvalidInputError, match="outside"):
        fitted.decode(np.array([[-1, 0, 0]]))
    with pytest.raises(InvalidInputError, match="4 levels"):
        fitted.decode(np.zeros((1, 4), int))


def test_lloyd_on_a_capped_sample_per_cluster(X, tmp_path):
    full = RQKMeans(n_levels=3, n_clusters=10, random_state=0).fit(X)
    capped = RQKMeans(n_levels=3, n_clusters=10, random_state=0, max_samples_per_cluster=30).fit(X)
    again = RQKMeans(n_levels=3, n_clusters=10, random_state=0, max_samples_per_cluster=30).fit(X)
    assert capped.sha256 == again.sha256 != full.sha256

    def mse(m):
        return float(((X - m.decode(m.encode(X))) ** 2).sum(1).mean())

    assert mse(capped) < 1.2 * mse(full)  # 300 of 1500 points per level still fit well
    capped.save(str(tmp_path / "m"))
    assert RQKMeans.load(str(tmp_path / "m")).max_samples_per_cluster == 30
    with pytest.raises(ConfigError, match="max_samples_per_cluster=0"):
        RQKMeans(max_samples_per_cluster=0).fit(X)
