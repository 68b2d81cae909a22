"""Models wherever a cluster keeps files: a local S3-compatible server, file:// URLs, and the errors
for a model that is missing or half-written."""

import json

import numpy as np
import pytest

from semid_spark import storage
from semid_spark.algorithms import load_encoder
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.algorithms.rq_vae import RQVAE
from semid_spark.engine import SemanticIdEngine
from semid_spark.exceptions import ModelFormatError
from semid_spark.uniqueness.resolver import UniqueIdResolver
from semid_spark.uniqueness.stores import SQLiteCollisionStore
from tests.s3server import new_bucket, s3_server


@pytest.fixture(scope="module")
def s3():
    with s3_server() as endpoint:
        yield endpoint


def s3_files(url):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(url))


def test_rq_kmeans_round_trip_through_s3(s3, fitted, X):
    url = new_bucket() + "/models/rqk"
    fitted.save(url)
    assert s3_files(url) == ["codebooks.npz", "metadata.json"]
    loaded = RQKMeans.load(url)
    assert loaded.sha256 == fitted.sha256
    assert np.array_equal(loaded.encode(X), fitted.encode(X))
    assert load_encoder(url).sha256 == fitted.sha256  # the registry reads the type from the manifest


@pytest.mark.torch
def test_rq_vae_round_trip_through_s3(s3, X):
    model = RQVAE(in_dim=X.shape[1], num_emb_list=[8, 8], e_dim=8, layers=[16], epochs=2, random_state=0).fit(X)
    url = new_bucket() + "/vae"
    model.save(url)
    loaded = load_encoder(url)
    assert type(loaded) is RQVAE and loaded.sha256 == model.sha256
    assert np.array_equal(loaded.encode(X), model.encode(X))


def test_engine_with_sqlite_store_round_trip_through_s3(s3, fitted, X, tmp_path):
    engine = SemanticIdEngine(fitted, UniqueIdResolver(SQLiteCollisionStore(str(tmp_path / "c.db"))))
    keys = [f"k{i}" for i in range(len(X))]
    first = engine.unique_ids(X[:1000], keys=keys[:1000])
    url = new_bucket() + "/engine"
    engine.save(url)
    assert "engine_meta.json" in s3_files(url) and "collisions.db" in s3_files(url)
    loaded = SemanticIdEngine.load(url)
    # the loaded store carries on: old keys get their IDs back, new ones never take an issued ID
    again = loaded.unique_ids(X, keys=keys)
    assert again[:1000] == first and len(set(again)) == len(X)


def test_file_url_writes_into_the_directory(tmp_path, fitted):
    fitted.save(f"file://{tmp_path}/m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["codebooks.npz", "metadata.json"]
    assert RQKMeans.load(str(tmp_path / "m")).sha256 == fitted.sha256
    assert not (tmp_path / "file:").exists()


def test_a_missing_model_is_named(s3, tmp_path):
    for path in (new_bucket() + "/nothing", str(tmp_path / "nothing")):
        with pytest.raises(ModelFormatError, match=r"no model at .*nothing.*metadata\.json is missing"):
            RQKMeans.load(path)


def test_a_half_written_model_is_refused(s3, fitted, X):
    """Arrays first, manifest last: a save cut short leaves no manifest (no model), and arrays of a save cut
    short while overwriting fail the old manifest's digest."""
    url = new_bucket() + "/half"
    storage.write_bytes(storage.join(url, "codebooks.npz"), b"only the arrays arrived")
    with pytest.raises(ModelFormatError, match="no model at"):
        RQKMeans.load(url)
    fitted.save(url)
    other = RQKMeans(n_levels=3, n_clusters=10, random_state=7).fit(X)
    import io as _io

    buffer = _io.BytesIO()
    np.savez(buffer, **other._arrays())
    storage.write_bytes(storage.join(url, "codebooks.npz"), buffer.getvalue())  # the new arrays, the old manifest
    with pytest.raises(ModelFormatError, match="does not match the sha256"):
        RQKMeans.load(url)


def test_databricks_paths_map_to_their_fuse_mounts():
    assert storage.local_path("dbfs:/Volumes/main/default/models/m") == "/Volumes/main/default/models/m"
    assert storage.local_path("dbfs:/FileStore/m") == "/dbfs/FileStore/m"
    assert storage.local_path("file:///abs/dir") == "/abs/dir"
    assert storage.local_path("relative/dir") == "relative/dir"
    assert storage.local_path("s3://b/m") is None and storage.join("s3://b/m/", "x") == "s3://b/m/x"


def test_an_unknown_scheme_says_what_to_install():
    with pytest.raises(ValueError, match=r"cannot open 'nosuchfs://b/m/metadata\.json'"):
        storage.read_bytes("nosuchfs://b/m/metadata.json")


def test_manifest_is_written_after_the_arrays(tmp_path, fitted, monkeypatch):
    order = []
    real = storage.write_bytes
    monkeypatch.setattr(storage, "write_bytes", lambda path, data: (order.append(path.rsplit("/", 1)[-1]), real(path, data)))
    fitted.save(str(tmp_path / "m"))
    assert order == ["codebooks.npz", "metadata.json"]
    assert json.loads((tmp_path / "m" / "metadata.json").read_text())["sha256"] == fitted.sha256


def test_a_job_config_is_read_from_a_url(s3, tmp_path, monkeypatch):
    from semid_spark.config import JobConfig
    from semid_spark.exceptions import ConfigError

    url = new_bucket() + "/conf/job.yaml"
    storage.write_bytes(url, b"input: {table: catalog.items}\nmodel: {n_clusters: 64}\n")
    monkeypatch.chdir(tmp_path)
    cfg = JobConfig.from_yaml(url, ["model.seed=3"])
    assert (cfg.input.table, cfg.model.n_clusters, cfg.model.seed) == ("catalog.items", 64, 3)
    with pytest.raises(ConfigError, match=r"cannot read config 's3://.*/conf/nothing.yaml'"):
        JobConfig.from_yaml(url.replace("job.yaml", "nothing.yaml"))
    assert list(tmp_path.iterdir()) == []  # nothing local was made on the way


def test_report_files_reach_a_url_and_no_local_folder_is_named_after_it(s3, tmp_path, monkeypatch):
    url = new_bucket() + "/reports/today"
    monkeypatch.chdir(tmp_path)
    with storage.writable_dir(url) as staged:
        (tmp_path / "marker").write_text("")  # the staging folder is elsewhere
        with open(f"{staged}/report.md", "w") as fh:
            fh.write("# report")
        paths = {"markdown": storage.final_path(url, staged, f"{staged}/report.md")}
    assert paths == {"markdown": url + "/report.md"} and s3_files(url) == ["report.md"]
    assert storage.read_bytes(paths["markdown"]) == b"# report"
    assert [p.name for p in tmp_path.rglob("*")] == ["marker"]
    with pytest.raises(RuntimeError), storage.writable_dir(new_bucket() + "/failed") as staged:
        raise RuntimeError("the report failed half-way")  # nothing is uploaded
    local = tmp_path / "local-out"
    with storage.writable_dir(str(local)) as staged:
        assert staged == str(local) and local.is_dir()
