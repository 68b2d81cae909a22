"""Encoders (numpy/torch, never pyspark): RQ-KMeans, RQ-VAE, and their model files."""

from __future__ import annotations


def encoder_from_bytes(data: bytes):
    """Rebuild an encoder from ``encoder.to_bytes()`` (numpy only; the digest is checked)."""
    from semid_spark.algorithms import io
    from semid_spark.exceptions import ModelFormatError

    meta, arrays = io.loads_model(data)
    if meta.get("type") == "RQKMeans":
        from semid_spark.algorithms.rq_kmeans import RQKMeans

        return RQKMeans._from_parts(meta, arrays, "<bytes>")
    if meta.get("type") == "RQVAE":
        from semid_spark.algorithms.rq_vae import RQVAE

        return RQVAE._from_parts(meta, arrays, "<bytes>")
    raise ModelFormatError(f"model bytes hold an unknown model type {meta.get('type')!r}")
