"""RQVAE: the original's snippet, numpy == torch codes, determinism, schedules, dead-code reset,
RQ-KMeans+, Sinkhorn resolution, model files."""

import json

import numpy as np
import pytest
import torch

from semid_spark.algorithms import _torch_ops
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.algorithms.rq_vae import RQVAE
from semid_spark.synthetic import generated_catalog
from semid_spark.engine import SemanticIdEngine
from semid_spark.exceptions import (
    ConfigError, InvalidInputError, ModelFormatError, NotFittedError, ShapeMismatchError,
)
from semid_spark.uniqueness.resolver import SinkhornResolver, UniqueIdResolver

SMALL = dict(in_dim=16, num_emb_list=[32, 32, 32], e_dim=16, layers=[32, 16])


@pytest.fixture(scope="module")
def vae(X):
    return RQVAE(**SMALL, epochs=30, lr=1e-3, batch_size=256, random_state=0).fit(X)


def test_original_snippet_runs_unchanged(X, tmp_path):
    model = RQVAE(in_dim=16, num_emb_list=[32, 32, 32], e_dim=16, layers=[32, 16], device="cpu")
    model.fit(X)
    ids = model.semantic_id(model.encode(X))
    model.save(str(tmp_path / "my_vae"))
    loaded = RQVAE.load(str(tmp_path / "my_vae"))
    assert len(ids) == len(X) and ids[0].count("-") == 2
    assert np.array_equal(loaded.encode(X), model.encode(X))
    assert loaded.sha256 == model.sha256
    assert set(model.history_) >= {"loss", "recon_loss", "collision_rate", "lr"}
    assert all(len(v) == 100 for v in model.history_.values())


def test_numpy_and_torch_encode_agree_on_random_rows(vae):
    rows = np.random.default_rng(1).standard_normal((10_000, 16)).astype(np.float32) * 2
    enc_w, enc_b, residual, books, _, _ = vae.frozen()
    torch_codes = _torch_ops.encode_latent(rows, enc_w, enc_b, residual, books, torch.device("cpu"))
    assert np.array_equal(vae.encode(rows), torch_codes)


def test_batchnorm_is_folded_exactly_enough(X):
    model = RQVAE(**SMALL, bn=True, dropout_prob=0.1, epochs=5, lr=1e-3, batch_size=256, random_state=0).fit(X)
    with torch.no_grad():
        _, _, module_codes = model.module(torch.from_numpy(X), use_sk=False)
    assert (module_codes.numpy() == model.encode(X)).all(axis=1).mean() > 0.99
    out = model.module.decoder(torch.from_numpy(model.decode(model.encode(X[:5])) * 0))  # decoder runs
    assert out.shape == (5, 16)


def test_same_seed_same_model_and_global_rng_untouched(X):
    before = torch.get_rng_state()
    a = RQVAE(**SMALL, epochs=4, batch_size=256, random_state=3).fit(X)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.are_deterministic_algorithms_enabled()
    b = RQVAE(**SMALL, epochs=4, batch_size=256, random_state=3).fit(X)
    c = RQVAE(**SMALL, epochs=4, batch_size=256, random_state=4).fit(X)
    assert a.sha256 == b.sha256 != c.sha256
    assert a.history_ == b.history_


@pytest.mark.parametrize(
    "scheduler, check",
    [
        ("cosine", lambda lr: lr[0] < lr[1] > lr[4] > lr[-1] and lr[-1] < 1e-6),  # warmup, then decay to 0
        # 2 epochs = 4 steps per decay; each value is the lr after the epoch's last step
        ("step", lambda lr: lr[:3] == pytest.approx([1e-3, 5e-4, 5e-4]) and lr[3] == pytest.approx(2.5e-4)),
        ("constant_with_warmup", lambda lr: lr[0] < lr[1] == lr[-1] == pytest.approx(1e-3)),
        (None, lambda lr: lr == [1e-3] * 8),
    ],
)
def test_lr_schedules_step_per_batch(X, scheduler, check):
    model = RQVAE(**SMALL, epochs=8, lr=1e-3, batch_size=500, lr_scheduler=scheduler, warmup_epochs=2,
                  lr_step_size=2, lr_gamma=0.5, random_state=0)
    model.fit(X[:1000])  # 2 batches an epoch: history holds the lr after each epoch's last step
    lr = model.history_["lr"]
    assert len(lr) == 8 and check(lr), lr
    if scheduler == "constant_with_warmup":
        assert lr[0] == pytest.approx(0.5e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_emb_list": []}, "num_emb_list"),
        ({"num_emb_list": [32, 0]}, "num_emb_list"),
        ({"sk_epsilons": [0.1]}, "sk_epsilons"),
        ({"loss_type": "huber"}, "loss_type"),
        ({"lr_scheduler": "linear"}, "lr_scheduler"),
        ({"layers": [32, 0]}, "layers"),
    ],
)
def test_bad_parameters_are_refused(X, kwargs, match):
    model = RQVAE(**{**SMALL, **kwargs})  # scikit-learn's contract: the constructor only stores
    with pytest.raises(ConfigError, match=match):
        model.fit(X)


def test_bad_input_is_refused(X, vae):
    with pytest.raises(NotFittedError):
        RQVAE(**SMALL).encode(X)
    bad = X[:20].copy()
    bad[4, 0] = np.inf
    with pytest.raises(InvalidInputError, match=r"1 of 20 rows \(first at row 4\)"):
        vae.encode(bad)
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        RQVAE(**SMALL, epochs=1).fit(bad)
    with pytest.raises(ShapeMismatchError, match="Expected D=16, got D=8"):
        vae.encode(X[:, :8])
    with pytest.raises(ShapeMismatchError, match="at least one sample"):
        RQVAE(**SMALL).fit(X[:0])
    with pytest.raises(InvalidInputError, match="outside"):
        vae.decode(np.array([[0, 0, 99]]))
    assert vae.decode(vae.encode(X[:7])).shape == (7, 16)


def test_model_files_are_arrays_with_a_digest(vae, tmp_path):
    vae.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["type"] == "RQVAE" and meta["sha256"] == vae.sha256 and not (tmp_path / "m" / "model.pt").exists()
    data = np.load(tmp_path / "m" / "weights.npz", allow_pickle=False)
    assert data["quantizer.codebooks.0"].shape == (32, 16)
    meta["e_dim"] = 8
    (tmp_path / "m" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="expected shape"):
        RQVAE.load(tmp_path / "m")


def test_pickled_code_in_model_pt_is_refused(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"type": "RQVAE", **SMALL}))
    torch.save({"payload": np.random.default_rng(0)}, tmp_path / "model.pt")  # needs unpickling code
    with pytest.raises(ModelFormatError, match="not a loadable"):
        RQVAE.load(tmp_path)


# ------------------------------------------------------------------ codebook use, Sinkhorn
@pytest.fixture(scope="module")
def mixture():
    return generated_catalog(20_000, 64, 50, 0)


@pytest.fixture(scope="module")
def mixture_vae(mixture):
    return RQVAE(in_dim=64, num_emb_list=[64] * 3, e_dim=32, layers=[128, 64], epochs=20, lr=1e-3,
                 batch_size=1024, random_state=0).fit(mixture)


def utilization(model, x):
    codes = model.encode(x)
    return [len(np.unique(codes[:, level])) / 64 for level in range(codes.shape[1])]


def test_dead_code_reset_keeps_codebooks_used(mixture, mixture_vae):
    with_reset = utilization(mixture_vae, mixture)
    without = RQVAE(in_dim=64, num_emb_list=[64] * 3, e_dim=32, layers=[128, 64], epochs=20, lr=1e-3,
                    batch_size=1024, random_state=0, reset_dead_codes=False).fit(mixture)
    assert min(with_reset) >= 0.9, with_reset
    assert max(utilization(without, mixture)) < 0.8 and sum(mixture_vae.history_["n_reset"]) > 0
    assert mixture_vae.history_["collision_rate"][mixture_vae.best_epoch_] == min(mixture_vae.history_["collision_rate"])


def test_sinkhorn_resolution_leaves_no_collisions(mixture, mixture_vae):
    codes = mixture_vae.encode(mixture)
    assert len(np.unique(codes, axis=0)) < len(mixture)  # there are collisions to resolve
    engine = SemanticIdEngine(mixture_vae, SinkhornResolver(fallback_suffix=False))
    ids = engine.unique_ids(mixture, fmt="token")
    assert len(set(ids)) == len(np.unique(mixture, axis=0)) == len(mixture)
    assert all(uid.count("<") == 3 for uid in ids)  # the requested format, no suffix
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    alone = counts[inverse.ravel()] == 1
    before = mixture_vae.semantic_id(codes, fmt="token")
    assert all(ids[i] == before[i] for i in np.flatnonzero(alone))  # only colliding items move


def test_sinkhorn_resolver_says_what_it_needs():
    with pytest.raises(ConfigError, match="requires 'embeddings' and 'model'"):  # semantic-id's words
        SinkhornResolver().assign(["1-2", "1-2"])
    with pytest.raises(ValueError, match="requires 'embeddings' and 'model'"):  # a ValueError, as there
        SinkhornResolver().assign(["1-2", "1-2"], embeddings=np.zeros((2, 16)), model=object())


def test_sinkhorn_works_with_rq_kmeans_too(X):
    model = RQKMeans(n_levels=3, n_clusters=16, random_state=0).fit(X)
    assert len(np.unique(model.encode(X), axis=0)) < len(X)
    ids = SemanticIdEngine(model, SinkhornResolver(fallback_suffix=False)).unique_ids(X)
    assert len(set(ids)) == len(X) and all(uid.count("-") == 2 for uid in ids)


def test_sinkhorn_fallback_keeps_the_format_and_fixed_length(X):
    """Prefixes with more colliding items than free last-level codes fall back to counters, written as
    UniqueIdResolver writes them for the same fmt and fixed_length (a token, not '-1', in token form)."""
    model = RQKMeans(n_levels=2, n_clusters=2, random_state=0).fit(X)  # 4 codes for 1500 items: many fall back
    ids = SemanticIdEngine(model, SinkhornResolver(fixed_length=True, counter_size=2000)).unique_ids(X, fmt="token")
    assert len(set(ids)) == len(X)
    assert all(uid.count("<") == 3 and "-" not in uid for uid in ids), ids[:5]
    plain = SemanticIdEngine(model, SinkhornResolver(fixed_length=True, counter_size=2000)).unique_ids(X, sep=".")
    assert len(set(plain)) == len(X) and all(uid.count(".") == 2 for uid in plain)


def test_misspelt_resolver_keywords_are_errors(X):
    with pytest.raises(TypeError, match="sepp"):
        UniqueIdResolver().assign(["1-2", "1-2"], sepp=".")
    model = RQKMeans(n_levels=2, n_clusters=4, random_state=0).fit(X)
    with pytest.raises(TypeError, match="embedding"):
        SinkhornResolver().assign(["1-2"], embedding=X[:1], encoder=model)


# ------------------------------------------------------------------ RQ-KMeans+
def test_rq_kmeans_plus_starts_as_its_rq_kmeans(X, tmp_path):
    km = RQKMeans(n_levels=3, n_clusters=[32, 32, 32], random_state=0).fit(X)
    km.save(tmp_path / "km")
    plus = RQVAE(**SMALL, epochs=0, kmeans_init=True).fit(X, pretrained_codebook_path=str(tmp_path / "km" / "codebooks.npz"))
    assert plus.residual_encoder_
    assert np.array_equal(plus.encode(X), km.encode(X))  # kmeans_init did not overwrite the warm start
    trained = RQVAE(**SMALL, epochs=5, lr=1e-3, batch_size=256, random_state=0).fit(X, pretrained_codebook_path=tmp_path / "km")
    trained.save(tmp_path / "plus")
    loaded = RQVAE.load(tmp_path / "plus")
    assert loaded.residual_encoder_ and np.array_equal(loaded.encode(X), trained.encode(X))
    with pytest.raises(ConfigError, match="e_dim == in_dim"):
        RQVAE(**{**SMALL, "e_dim": 8}, epochs=0).fit(X, pretrained_codebook_path=tmp_path / "km")


def test_engine_saves_and_loads_an_rq_vae(vae, X, tmp_path):
    engine = SemanticIdEngine(vae, UniqueIdResolver())
    first = engine.unique_ids(X[:100])
    engine.save(tmp_path / "e")
    loaded = SemanticIdEngine.load(tmp_path / "e")
    assert isinstance(loaded.encoder, RQVAE) and loaded.unique_ids(X[:100]) == engine.unique_ids(X[:100])
    assert len(set(first)) == 100


def test_a_warm_start_begins_at_the_given_model_and_keeps_its_codes(vae, X, tmp_path):
    vae.save(str(tmp_path / "current"))
    current = RQVAE.load(str(tmp_path / "current"))
    same = RQVAE(**SMALL, epochs=0, random_state=1).fit(X, init=current)  # no training: the weights as given
    assert same.sha256 == current.sha256 and np.array_equal(same.encode(X), current.encode(X))

    drifted = X + np.random.default_rng(3).normal(0, 0.05, X.shape).astype(np.float32)
    warm = RQVAE(**SMALL, epochs=5, lr=1e-3, batch_size=256, random_state=1).fit(drifted, init=current)
    cold = RQVAE(**SMALL, epochs=5, lr=1e-3, batch_size=256, random_state=1).fit(drifted)
    old = current.encode(drifted)
    kept_warm, kept_cold = ((m.encode(drifted)[:, 0] == old[:, 0]).mean() for m in (warm, cold))
    assert kept_warm > 0.5 > kept_cold  # a cold fit numbers its codes anew

    with pytest.raises(ConfigError, match=r"init has the architecture .* this RQVAE's is"):
        RQVAE(**{**SMALL, "layers": [16]}, epochs=1).fit(X, init=current)
