"""Every name semantic-id 0.2.5 exports exists at the same module path here, and works as its README uses it."""

import importlib

import numpy as np
import pytest
import torch

from semid_spark.algorithms import (RQKMeans, RQKMeansTorch, RQVAE, RQVAEModule, ResidualEncoderWrapper,
                                    apply_rqkmeans_plus_strategy)
from semid_spark.engine import SemanticIdEngine
from semid_spark.exceptions import ConfigError
from semid_spark.uniqueness.resolver import SinkhornResolver

SMALL = dict(in_dim=16, num_emb_list=[16, 16, 16], e_dim=16, layers=[32])


@pytest.mark.compare
@pytest.mark.parametrize("package", ["semantic_id", "semantic_id.algorithms"])
def test_every_exported_name_is_at_the_peers_module_path(package):
    peer = pytest.importorskip(package, reason="needs the optional `compare` extra")
    names = [n for n in peer.__all__ if n != "__version__"]
    ours = importlib.import_module(package.replace("semantic_id", "semid_spark", 1))
    assert set(names) <= set(ours.__all__)
    for name in names:
        where = getattr(peer, name).__module__  # e.g. semantic_id.algorithms.rq_kmeans_torch
        module = importlib.import_module(where.replace("semantic_id", "semid_spark", 1))
        assert getattr(module, name) is getattr(ours, name), (name, where)


def test_rq_kmeans_torch_takes_the_peers_constructor_and_tensors(X):
    model = RQKMeansTorch(3, 10, "l2", "kmeans", 100, 1e-4, 42, False, "cpu")  # every argument, as there
    codes = model.fit(torch.from_numpy(X)).encode(torch.from_numpy(X), 256)
    same = RQKMeans(n_levels=3, n_clusters=10, random_state=42).fit(X)
    assert codes.dtype == np.int32 and np.array_equal(codes, same.encode(X))
    assert model.get_params()["device"] == "cpu" and model.n_features_in_ == X.shape[1]
    # it is an RQKMeans: numpy codebooks (semantic-id's are tensors on the device), save/load, decode
    assert isinstance(model, RQKMeans) and isinstance(model.codebooks_[0], np.ndarray)
    with pytest.raises(TypeError):
        RQKMeansTorch(3, 10)  # as there, the arguments are required
    # a refit's warm start reaches RQKMeans.fit
    warm = RQKMeansTorch(3, 10, "l2", "kmeans", 100, 1e-4, 7, False, "cpu").fit(torch.from_numpy(X), init=same)
    assert all(np.array_equal(a, b) for a, b in zip(warm.codebooks_, RQKMeans(3, 10, random_state=7).fit(X, init=same)
                                                    .codebooks_))
    with pytest.raises(ConfigError, match="init has codebooks"):
        RQKMeansTorch(3, 12, "l2", "kmeans", 100, 1e-4, 7, False, "cpu").fit(X, init=same)


def test_rq_vae_module_is_the_network_a_user_calls(X):
    torch.manual_seed(0)
    module = RQVAEModule(**SMALL, sk_epsilons=[0.0, 0.0, 0.003])
    x = torch.from_numpy(X[:64])
    out, quant_loss, codes = module(x)
    assert out.shape == x.shape and codes.shape == (64, 3) and quant_loss.ndim == 0
    total, recon = module.compute_loss(out, quant_loss, x)
    assert torch.isclose(total, recon + quant_loss) and torch.isclose(recon, ((out - x) ** 2).mean())
    total.backward()  # it trains
    assert {"encoder.layers.0.linear.weight", "quantizer.codebooks.0"} <= set(module.state_dict())  # our names
    assert module.encoder.layers[0].linear.weight.grad is not None
    # a fitted RQVAE's module gives the estimator's codes; its weights make an RQVAE again
    vae = RQVAE(**SMALL, epochs=2, batch_size=256, random_state=0).fit(X)
    assert isinstance(vae.module, RQVAEModule)
    assert np.array_equal(vae.module.get_indices(torch.from_numpy(X)).numpy(), vae.encode(X))
    again = RQVAE.from_module(vae.module)
    assert again.sha256 == vae.sha256 and np.array_equal(again.encode(X), vae.encode(X))


def test_apply_rqkmeans_plus_strategy_makes_the_module_encode_like_its_rq_kmeans(X, tmp_path):
    km = RQKMeans(n_levels=3, n_clusters=16, random_state=0).fit(X)
    km.save(str(tmp_path / "km"))
    module = apply_rqkmeans_plus_strategy(RQVAEModule(**SMALL), str(tmp_path / "km" / "codebooks.npz"), "cpu")
    assert np.array_equal(module.get_indices(torch.from_numpy(X)).numpy(), km.encode(X))
    assert module.residual_encoder and not isinstance(module.encoder, ResidualEncoderWrapper)  # a flag, not a wrapper
    with pytest.raises(ConfigError, match="num_emb_list and e_dim must match"):  # semantic-id logs and goes on
        apply_rqkmeans_plus_strategy(RQVAEModule(**{**SMALL, "num_emb_list": [8, 8, 8]}), str(tmp_path / "km"), "cpu")
    with pytest.raises(ConfigError, match="needs an RQVAEModule"):
        apply_rqkmeans_plus_strategy(torch.nn.Linear(16, 16), str(tmp_path / "km"), "cpu")


def test_residual_encoder_wrapper_adds_the_input():
    mlp = torch.nn.Linear(8, 8)
    x = torch.randn(5, 8)
    wrapped = ResidualEncoderWrapper(mlp)
    assert wrapped.mlp is mlp and torch.allclose(wrapped(x), x + mlp(x))


def test_sinkhorn_takes_the_peers_keywords(X):
    vae = RQVAE(**SMALL, epochs=2, batch_size=256, random_state=0).fit(X)
    ids = vae.semantic_id(vae.encode(X))
    assert len(set(ids)) < len(ids)  # collisions to resolve
    resolver = SinkhornResolver(fallback_suffix=True)
    by_engine = SemanticIdEngine(vae, SinkhornResolver(fallback_suffix=True)).unique_ids(X)
    for model in (vae, vae.module):  # a fitted RQVAE, or its module, as semantic-id's model=
        got = resolver.assign(ids, embeddings=torch.from_numpy(X), model=model, device="cpu")
        assert got == by_engine and len(set(got)) == len(X)
