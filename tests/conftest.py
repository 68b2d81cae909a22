import importlib.util

import numpy as np
import pytest

from semid_spark.algorithms.rq_kmeans import RQKMeans


def make_catalog(n: int = 1500, dim: int = 16, n_topics: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((n_topics, dim)).astype(np.float32)
    return topics[rng.integers(0, n_topics, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)


@pytest.fixture(scope="session")
def X() -> np.ndarray:
    return make_catalog()


@pytest.fixture(scope="session")
def fitted(X) -> RQKMeans:
    return RQKMeans(n_levels=3, n_clusters=10, random_state=42).fit(X)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local SparkSession with Delta for the whole test run (started only if a test asks)."""
    from semid_spark.config import SparkConfig
    from semid_spark.spark.session import get_session

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = get_session(SparkConfig(master="local[2]", shuffle_partitions=4, warehouse_dir=str(warehouse)))
    yield session
    session.stop()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``torch`` (RQ-VAE training) are skipped where torch is not installed: the light
    install of `make test-matrix`'s Spark versions."""
    if importlib.util.find_spec("torch") is not None:
        return
    skip = pytest.mark.skip(reason="torch is not installed (the `torch` extra)")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)
