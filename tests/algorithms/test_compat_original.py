"""semantic-id 0.2.5 is the spec: its saved models load here and encode the same."""

import numpy as np
import pytest

from semid_spark.algorithms.rq_kmeans import RQKMeans

semantic_id = pytest.importorskip("semantic_id", reason="needs the optional `compare` extra")
pytestmark = pytest.mark.compare


def test_model_saved_by_original_loads_and_encodes_identically(X, tmp_path):
    from semantic_id.algorithms.rq_kmeans import RQKMeans as Original

    original = Original(n_levels=3, n_clusters=10, random_state=42, n_init=1).fit(X)
    original.save(str(tmp_path / "orig"))
    ours = RQKMeans.load(str(tmp_path / "orig"))
    assert ours.n_clusters == [10, 10, 10] and ours.D_ == X.shape[1]
    assert np.array_equal(ours.encode(X), original.encode(X))
    assert np.allclose(ours.decode(ours.encode(X)), original.decode(original.encode(X)))
    assert ours.semantic_id(ours.encode(X)) == original.semantic_id(original.encode(X))
    assert ours.semantic_id(ours.encode(X), fmt="token") == original.semantic_id(original.encode(X), fmt="token")


def test_reconstruction_no_worse_than_original(X):
    from semantic_id.algorithms.rq_kmeans import RQKMeans as Original

    def mse(model):
        return float(((X - model.decode(model.encode(X))) ** 2).sum(1).mean())

    ours = RQKMeans(n_levels=3, n_clusters=16, random_state=0).fit(X)
    original = Original(n_levels=3, n_clusters=16, random_state=0).fit(X)  # its default n_init=10
    assert mse(ours) <= 1.05 * mse(original)


@pytest.mark.parametrize("bn", [False, True])
def test_rq_vae_saved_by_original_migrates_with_the_same_codes(X, tmp_path, bn):
    import torch
    from semantic_id.algorithms.rq_vae import RQVAE as Original

    from semid_spark.algorithms.rq_vae import RQVAE

    torch.manual_seed(0)
    original = Original(in_dim=16, num_emb_list=[8, 8], e_dim=8, layers=[32], bn=bn, epochs=3, batch_size=256)
    original.fit(X)
    original.save(str(tmp_path / "orig"))
    ours = RQVAE.load(str(tmp_path / "orig"))  # model.pt read with weights_only, never unpickling code
    assert np.array_equal(ours.encode(X), original.encode(X))
    assert np.allclose(ours.decode(original.encode(X)), original.decode(original.encode(X)), atol=1e-5)
    ours.save(str(tmp_path / "ours"))
    assert np.array_equal(RQVAE.load(str(tmp_path / "ours")).encode(X), original.encode(X))
