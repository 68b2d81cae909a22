"""Executors decode and encode a model on numpy alone: torch is never imported on that path."""

import subprocess
import sys

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.algorithms.rq_vae import RQVAE


def test_models_from_bytes_encode_without_importing_torch(X, tmp_path):
    for i, model in enumerate([RQKMeans(2, 8, random_state=0).fit(X),
                               RQVAE(in_dim=16, num_emb_list=[8, 8], e_dim=8, layers=[16], epochs=1, bn=True).fit(X)]):
        (tmp_path / f"m{i}.bin").write_bytes(model.to_bytes())
    np_path = tmp_path / "x.npy"
    __import__("numpy").save(np_path, X)
    code = f"""
import sys, numpy as np
from semid_spark.algorithms import encoder_from_bytes
x = np.load({str(np_path)!r})
for i in range(2):
    model = encoder_from_bytes(open({str(tmp_path)!r} + f"/m{{i}}.bin", "rb").read())
    model.decode(model.encode(x))
assert "torch" not in sys.modules, "torch was imported"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
