"""Encoders (numpy/torch, never pyspark): RQ-KMeans, RQ-VAE, and their model files."""

from __future__ import annotations


def input_dim(encoder) -> int | None:
    """The embedding length an encoder takes (RQ-KMeans ``D_``, RQ-VAE ``in_dim``); None if it does not say."""
    dim = getattr(encoder, "D_", None) or getattr(encoder, "in_dim", None)
    return None if dim is None else int(dim)


def codebook_sizes(encoder) -> list[int] | None:
    """Codes per level (RQ-KMeans ``n_clusters``, RQ-VAE ``num_emb_list``); None if it does not say."""
    sizes = getattr(encoder, "n_clusters", None) or getattr(encoder, "num_emb_list", None)
    return None if sizes is None else [int(s) for s in sizes]


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
