"""A light install (no torch) fits, encodes, decodes and relocates with RQ-KMeans, with the very codebooks
and codes of an install that has torch; RQ-VAE and the GPU devices say which extra to install.

The torch-less interpreter is this one with ``torch`` blocked (``sys.modules["torch"] = None`` makes
every ``import torch`` fail as on a machine without it); `make test-heavy` also runs the job from a
real virtualenv that holds only the wheel (tests/test_light_install.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from semid_spark.algorithms import _fit_ops, _torch_ops, rq_kmeans
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.uniqueness.relocate import relocate_codes
from tests.conftest import make_catalog

WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # every `import torch` now fails, as where it is not installed
import json, numpy as np
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.uniqueness.relocate import relocate_codes
x = np.load(sys.argv[1])
out = {}
for name, params in (("default", {}), ("constrained", {"implementation": "constrained"})):
    model = RQKMeans(3, 12, random_state=7, **params).fit(x)
    codes = model.encode(x)
    model.save(sys.argv[2] + "/" + name)
    out[name] = {"sha256": model.sha256, "codes": codes.tolist(), "decoded": float(model.decode(codes).sum()),
                 "relocated": relocate_codes(model, x, keys=list(range(len(x)))).codes.tolist()}
for what, call in (("vae", lambda: __import__("semid_spark.algorithms.rq_vae", fromlist=["RQVAE"]).RQVAE(
                        in_dim=x.shape[1], num_emb_list=[8, 8], epochs=1).fit(x)),
                   ("cuda", lambda: RQKMeans(2, 8).fit(x, device="cuda"))):
    try:
        call()
    except ImportError as exc:
        out[what] = f"{type(exc).__name__}: {exc}"
assert "torch" not in {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
print(json.dumps(out))
"""


def test_rq_kmeans_without_torch_gives_the_codes_of_an_install_with_it(tmp_path):
    x = make_catalog(3000, n_topics=30, seed=5)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(tmp_path / "x.npy"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    light = json.loads(done.stdout.strip().splitlines()[-1])
    for name, params in (("default", {}), ("constrained", {"implementation": "constrained"})):
        model = RQKMeans(3, 12, random_state=7, **params).fit(x)  # here torch is installed (and imported)
        codes = model.encode(x)
        assert light[name]["sha256"] == model.sha256 == RQKMeans.load(str(tmp_path / name)).sha256
        assert light[name]["codes"] == codes.tolist()
        assert light[name]["decoded"] == float(model.decode(codes).sum())
        assert light[name]["relocated"] == relocate_codes(model, x, keys=list(range(len(x)))).codes.tolist()
    for what in ("vae", "cuda"):  # named, with the extra to install
        assert light[what].startswith("MissingExtraError: ") and "pip install 'semid-spark[torch]'" in light[what]
    assert "RQ-VAE training needs torch" in light["vae"] and "device 'cuda' needs torch" in light["cuda"]


def torch_fit(monkeypatch):
    """RQKMeans.fit on torch's kernels (as on cuda and mps), here on the cpu."""
    import torch

    monkeypatch.setattr(rq_kmeans, "_fit_backend", lambda device: (_torch_ops, torch.device("cpu")))


@pytest.mark.parametrize("params", [{}, {"refine_passes": 0, "inertia_tol": 0.0}])
def test_the_torch_fit_kernels_agree_with_numpys(monkeypatch, params):
    """cuda and mps fit with torch's kernels, cpu with numpy's: the same algorithm, so on the same data the
    models match to float32 rounding and give the same codes."""
    x = make_catalog(4000, n_topics=40, seed=11)
    by_numpy = RQKMeans(3, 16, random_state=3, **params).fit(x)
    torch_fit(monkeypatch)
    by_torch = RQKMeans(3, 16, random_state=3, **params).fit(x)
    for a, b in zip(by_numpy.codebooks_, by_torch.codebooks_):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-4)
    agree = (by_numpy.encode(x) == by_torch.encode(x)).all(axis=1).mean()
    assert agree >= 0.995, agree
    assert [s.n_iter for s in by_numpy.level_stats_] == [s.n_iter for s in by_torch.level_stats_]


def test_the_balanced_fit_balances_on_both_backends(monkeypatch):
    """The price steps react to every row that changes sides, so the two backends' rounding leads them to
    other (equally balanced) prices: what must agree is the balance and the error."""
    x = make_catalog(4000, n_topics=40, seed=11)
    models = [RQKMeans(2, 16, random_state=3, implementation="constrained").fit(x)]
    torch_fit(monkeypatch)
    models.append(RQKMeans(2, 16, random_state=3, implementation="constrained").fit(x))
    for model in models:
        codes = model.encode(x)
        for level in range(2):
            sizes = np.bincount(codes[:, level], minlength=16)
            assert np.abs(sizes / (4000 / 16) - 1).max() <= 0.02 + 1e-9, sizes
    errors = [float(((x - m.decode(m.encode(x))) ** 2).sum(1).mean()) for m in models]
    assert abs(errors[0] / errors[1] - 1) < 0.02, errors


def test_center_sums_and_assignments_match_torch():
    import torch

    rng = np.random.default_rng(0)
    x, centers = rng.standard_normal((5000, 24), dtype=np.float32), rng.standard_normal((37, 24), dtype=np.float32)
    labels, dists = _fit_ops.assign(x, centers)
    t_labels, t_dists = _torch_ops.assign(torch.from_numpy(x), torch.from_numpy(centers))
    exact = ((x[:, None, :].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(-1)
    assert (labels == exact.argmin(1)).mean() > 0.999 and (labels == t_labels.numpy()).mean() > 0.999
    np.testing.assert_allclose(dists, exact.min(1), rtol=1e-4, atol=1e-3)
    sums, counts = _fit_ops.center_sums(x, labels, 40)  # three clusters empty
    want = np.zeros((40, 24))
    np.add.at(want, labels, x.astype(np.float64))
    np.testing.assert_allclose(sums, want, rtol=1e-5, atol=1e-4)
    assert counts.tolist() == np.bincount(labels, minlength=40).tolist() and counts[37:].sum() == 0
