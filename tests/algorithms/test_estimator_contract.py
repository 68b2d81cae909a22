"""scikit-learn's estimator contract for RQKMeans and RQVAE, and semantic-id's n_clusters=1."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.algorithms.rq_vae import RQVAE
from semid_spark.exceptions import ConfigError, NotFittedError

sklearn_base = pytest.importorskip("sklearn.base", reason="needs the optional `compare` extra (scikit-learn)")
VAE = dict(in_dim=16, num_emb_list=[8, 8], e_dim=8, layers=[16], epochs=2, batch_size=256, random_state=0)


@pytest.mark.parametrize("make", [lambda: RQKMeans(n_levels=3, n_clusters=[8, 4, 2], random_state=1, device="cpu"),
                                  lambda: RQVAE(**VAE)], ids=["RQKMeans", "RQVAE"])
def test_clone_round_trips_the_parameters_and_leaves_the_fitted_state_behind(X, make):
    model = make()
    assert not hasattr(model, "codebooks_") and not hasattr(model, "n_features_in_")
    copy = sklearn_base.clone(model)  # checks that __init__ stored every argument unchanged
    assert copy.get_params() == model.get_params() and copy is not model
    model.fit(X)
    assert [len(c) for c in model.codebooks_][-1] in (2, 8) and model.n_features_in_ == X.shape[1]
    refit = sklearn_base.clone(model)
    assert not hasattr(refit, "codebooks_") and refit.get_params() == model.get_params()
    assert np.array_equal(refit.fit(X).encode(X), model.encode(X))  # same params and seed: same model


def test_the_constructor_only_stores_and_fit_checks():
    model = RQKMeans(n_levels=0, n_clusters=[3], metric="manhattan", device="tpu")  # nothing checked yet
    assert model.get_params()["n_clusters"] == [3] and model.n_levels == 0
    with pytest.raises(ConfigError, match="n_levels=0"):
        model.fit(np.ones((10, 4)))
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        RQKMeans(n_levels=1, n_clusters=2, device="tpu").fit(np.eye(4))
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        RQVAE(**{**VAE, "device": "tpu"}).fit(np.eye(16))


def test_set_params_sets_known_names_and_names_the_unknown(X):
    model = RQKMeans(n_levels=2, n_clusters=4, random_state=0)
    assert model.set_params(n_clusters=[5, 3], max_iter=20) is model
    assert [len(c) for c in model.fit(X).codebooks_] == [5, 3]
    with pytest.raises(ValueError, match=r"invalid parameter 'k' for RQKMeans; valid parameters: \['n_levels'"):
        model.set_params(k=3)
    assert repr(RQKMeans(n_levels=3, n_clusters=10)) == "RQKMeans(n_levels=3, n_clusters=10)"
    assert repr(RQVAE(in_dim=16)) == "RQVAE(in_dim=16)"

    class Custom(RQKMeans):  # a user's encoder that keeps an argument under another name still prints
        def __init__(self, width: int = 4, n_levels: int = 2):
            super().__init__(n_levels=n_levels, n_clusters=width)

    assert repr(Custom(width=8, n_levels=3)) == "Custom(n_levels=3)"


def test_device_is_taken_the_same_way_by_both_classes(X):
    for cls in (RQKMeans, RQVAE):
        assert cls().get_params()["device"] == "cpu"
    # the constructor's device is the default of fit and encode; a call's device= overrides it
    model = RQKMeans(n_levels=2, n_clusters=4, random_state=0, device="tpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        model.fit(X)
    codes = model.fit(X, device="cpu").encode(X, device="cpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        model.encode(X)
    assert np.array_equal(model.set_params(device="cpu").encode(X), codes)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_a_level_of_one_cluster_is_one_code(sizes):
    x = np.random.default_rng(len(sizes)).standard_normal((60, 6)).astype(np.float32)
    model = RQKMeans(n_levels=len(sizes), n_clusters=sizes, random_state=0).fit(x)
    codes = model.encode(x)
    assert [len(c) for c in model.codebooks_] == sizes
    for level, k in enumerate(sizes):
        assert set(codes[:, level].tolist()) <= set(range(k))
        if k == 1:  # its one centroid is the mean of what reaches the level
            assert (codes[:, level] == 0).all()
    assert np.isfinite(model.decode(codes)).all()


def test_fitted_attributes_exist_after_load_and_not_before(fitted, tmp_path):
    fitted.save(str(tmp_path / "m"))
    loaded = RQKMeans.load(str(tmp_path / "m"))
    assert loaded.n_features_in_ == loaded.D_ == fitted.D_ and loaded.get_params()["n_clusters"] == [10, 10, 10]
    with pytest.raises(AttributeError):
        RQKMeans().codebooks_  # noqa: B018
    with pytest.raises(NotFittedError):  # an AttributeError too, so hasattr() says False
        RQVAE().codebooks_  # noqa: B018


def test_parameters_are_kept_as_given_and_the_fitted_sizes_are_the_codebooks(X):
    model = RQKMeans(n_levels=3, n_clusters=8)
    assert model.n_clusters == 8  # semantic-id stores [8, 8, 8]; scikit-learn's clone needs it unchanged
    assert [len(c) for c in model.fit(X).codebooks_] == [8, 8, 8]
    vae = RQVAE(in_dim=16)
    assert vae.num_emb_list is None and vae.layers is None and vae.n_levels == 4  # semantic-id's defaults apply


def test_n_init_none_is_one_k_means_plus_plus_start_per_level(X):
    default = RQKMeans(n_levels=2, n_clusters=8, random_state=3).fit(X)
    assert default.n_init is None
    assert default.sha256 == RQKMeans(n_levels=2, n_clusters=8, random_state=3, n_init=1).fit(X).sha256
    three = RQKMeans(n_levels=2, n_clusters=8, random_state=3, n_init=3).fit(X)  # its first start is the default's
    assert three.level_stats_[0].inertia <= default.level_stats_[0].inertia


def test_balanced_fit_needs_no_k_means_constrained():
    import subprocess
    import sys

    code = """
import sys, numpy as np
from semid_spark.algorithms.rq_kmeans import RQKMeans
x = np.random.default_rng(0).standard_normal((400, 8)).astype("float32")
model = RQKMeans(n_levels=2, n_clusters=4, implementation="constrained", random_state=0).fit(x)
assert len(model.codebooks_) == 2
assert "k_means_constrained" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_job_and_the_estimator_share_defaults_that_differ_from_the_classes_on_purpose():
    pytest.importorskip("pyspark")
    from semid_spark.config import RQ_VAE_JOB_PARAMS, ModelConfig
    from semid_spark.spark.ml import SemanticIdEstimator
    from semid_spark.spark.models import new_encoder

    job = ModelConfig()
    estimator = SemanticIdEstimator()
    assert (estimator.getNLevels(), estimator.getNClusters(), estimator.getSampleSize(), estimator.getSeed()) == (
        job.n_levels, job.n_clusters, job.sample_size, job.seed) == (3, 256, 200_000, 0)
    assert RQKMeans().n_levels == 4 and RQVAE().n_levels == 4  # semantic-id's, for a drop-in switch
    vae = new_encoder(ModelConfig(kind="rq_vae"), 16).get_params()
    assert {k: vae[k] for k in RQ_VAE_JOB_PARAMS} == RQ_VAE_JOB_PARAMS == {"e_dim": 32, "kmeans_init": True, "lr": 1e-3}
    assert (RQVAE().e_dim, RQVAE().kmeans_init, RQVAE().lr) == (64, False, 1e-4)
    assert vae["layers"] is None  # RQVAE's own hidden layers
