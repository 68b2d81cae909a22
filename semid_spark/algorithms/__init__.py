"""Encoders (numpy/torch, never pyspark): RQ-KMeans, RQ-VAE, and their model files.

The one registry of model types: a saved model says its ``type`` in ``metadata.json``, and
:func:`encoder_class` maps it to the class that reads it (the engine, the job, the executors and
the CLI all load through here).
"""

from __future__ import annotations

from semid_spark.algorithms import io
from semid_spark.exceptions import MissingExtraError, ModelFormatError

MODEL_TYPES = ("RQKMeans", "RQVAE")

# semantic-id 0.2.5's ``semantic_id.algorithms`` names, imported when first asked for: executors
# import this package to load models, and the torch modules among these must not come with it
_EXPORTS = {
    "RQKMeans": "semid_spark.algorithms.rq_kmeans",
    "RQKMeansTorch": "semid_spark.algorithms.rq_kmeans_torch",
    "RQVAE": "semid_spark.algorithms.rq_vae",
    "RQVAEModule": "semid_spark.algorithms.rq_vae_module",
    "apply_rqkmeans_plus_strategy": "semid_spark.algorithms.rq_kmeans_plus",
    "ResidualEncoderWrapper": "semid_spark.algorithms.rq_kmeans_plus",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


TORCH_INSTALL = ("pip install 'semid-spark[torch]' (on CPU-only machines the smaller CPU build: "
                 "pip install torch --index-url https://download.pytorch.org/whl/cpu)")


def require_torch(purpose: str):
    """The torch module, or MissingExtraError saying that *purpose* needs it and how to install it.

    RQ-KMeans on cpu (fit, encode, decode) and relocation need numpy and scipy only; RQ-VAE and
    the cuda and mps devices need torch, an optional extra."""
    try:
        import torch
    except ImportError:
        raise MissingExtraError(f"{purpose} needs torch, which is not installed: {TORCH_INSTALL}") from None
    return torch


def encoder_class(type_name: str):
    """The encoder class saved under *type_name* (``RQKMeans`` or ``RQVAE``), imported only when asked for."""
    if type_name == "RQKMeans":
        from semid_spark.algorithms.rq_kmeans import RQKMeans

        return RQKMeans
    if type_name == "RQVAE":
        from semid_spark.algorithms.rq_vae import RQVAE

        return RQVAE
    raise ModelFormatError(f"unknown model type {type_name!r}; known types: {list(MODEL_TYPES)}")


def load_encoder(path: str, *, device: str = "cpu"):
    """The model saved at *path* (a local directory or an fsspec URL), whatever its type.

    Raises
    ------
    ModelFormatError
        No model there (no ``metadata.json``), an unknown type, or damaged files.
    """
    return encoder_class(io.read_metadata(path).get("type")).load(path, device=device)


def encoder_from_bytes(data: bytes):
    """Rebuild an encoder from ``encoder.to_bytes()`` (numpy only; the digest is checked)."""
    meta, arrays = io.loads_model(data)
    return encoder_class(meta.get("type"))._from_parts(meta, arrays, "<bytes>")

