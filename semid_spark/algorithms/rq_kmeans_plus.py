"""RQ-KMeans+: an RQ-VAE warm-started from a fitted RQ-KMeans, and migration of old RQ-VAE files.

Warm start (``RQVAE.fit(X, pretrained_codebook_path=...)``): the encoder becomes residual,
``z = x + mlp(x)``, with the MLP's last layer set to zero, and the RQ-KMeans codebooks are
copied into the quantiser. Before any training the model therefore encodes exactly like
the RQ-KMeans it came from; training then learns a correction on top. Needs
``e_dim == in_dim``, and the codebook sizes of the RQ-KMeans.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections import defaultdict
from io import BytesIO

import numpy as np

from semid_spark import storage
from semid_spark.algorithms import io
from semid_spark.exceptions import ConfigError, ModelFormatError


def read_codebooks(path: str) -> list[np.ndarray]:
    """Codebooks ``codebook_0 ...`` from an RQ-KMeans model directory or its ``codebooks.npz``.

    A directory (or an .npz inside one with its ``metadata.json``) is read through the model
    loader, so its digest is checked; a bare .npz is read without pickle.
    """
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path) or (
        os.path.basename(path) == io.ARRAYS_FILE and os.path.isfile(os.path.join(directory, io.METADATA_FILE))
    ):
        _, arrays = io.load_model(directory or ".", expected_type="RQKMeans")
    else:
        if not zipfile.is_zipfile(path):
            raise ModelFormatError(f"pretrained_codebook_path {path!r} is not an .npz file or a model directory")
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    books = []
    while f"codebook_{len(books)}" in arrays:
        books.append(np.ascontiguousarray(arrays[f"codebook_{len(books)}"], dtype=np.float32))
    if not books:
        raise ModelFormatError(f"{path!r} holds no arrays codebook_0, codebook_1, ...")
    return books


def apply_rqkmeans_plus_strategy(model, codebook_path: str, device: str):
    """semantic-id's RQ-KMeans+ call: make *model* (an ``RQVAEModule``) encode like the RQ-KMeans
    at *codebook_path* (its directory or ``codebooks.npz``), on *device*; returns *model*.

    Its encoder becomes residual with a zero last layer and its codebooks take the RQ-KMeans
    centroids (see :func:`warm_start`); ``RQVAE.fit(X, pretrained_codebook_path=...)`` does
    the same before training.
    """
    if not hasattr(model, "quantizer") or not hasattr(model, "residual_encoder"):
        raise ConfigError(f"apply_rqkmeans_plus_strategy needs an RQVAEModule (e.g. RQVAE(...).module); "
                          f"got {type(model).__name__}")
    warm_start(model, codebook_path)
    return model.to(device)


def __getattr__(name: str):
    if name == "ResidualEncoderWrapper":  # a torch module: torch is imported only when it is asked for
        from semid_spark.algorithms._vae_nn import ResidualEncoderWrapper

        return ResidualEncoderWrapper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def warm_start(net, codebook_path: str) -> None:
    """Make *net* (an ``RQVAENet``) encode like the RQ-KMeans at *codebook_path*."""
    import torch

    books = read_codebooks(codebook_path)
    in_dim = net.encoder.layers[0].linear.in_features
    sizes = [tuple(c.shape) for c in net.quantizer.codebooks]
    e_dim = sizes[0][1]
    if e_dim != in_dim:
        raise ConfigError(f"RQ-KMeans+ needs e_dim == in_dim (the latent starts as x itself); got e_dim={e_dim}, in_dim={in_dim}")
    if [c.shape for c in books] != sizes:
        raise ConfigError(
            f"the RQ-KMeans at {codebook_path!r} has codebooks {[c.shape for c in books]}; this RQVAE "
            f"expects {sizes} (num_emb_list and e_dim must match)"
        )
    net.residual_encoder = True
    last = net.encoder.layers[-1].linear
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        for codebook, book in zip(net.quantizer.codebooks, books):
            codebook.copy_(torch.from_numpy(book))


_ORIGINAL_MLP = re.compile(r"^(encoder|decoder)\.(mlp\.)?mlp_layers\.(\d+)\.(\w+)$")
_ORIGINAL_CODEBOOK = re.compile(r"^rq\.vq_layers\.(\d+)\.embedding\.weight$")
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def convert_original_state(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """semantic-id 0.2.5 parameter names -> ours; returns (weights, residual encoder?)."""
    out: dict[str, np.ndarray] = {}
    modules: dict[tuple[str, int], dict[str, np.ndarray]] = defaultdict(dict)
    residual = False
    for name, value in state.items():
        if m := _ORIGINAL_CODEBOOK.match(name):
            out[f"quantizer.codebooks.{m.group(1)}"] = value
        elif m := _ORIGINAL_MLP.match(name):
            residual |= m.group(1) == "encoder" and m.group(2) is not None
            modules[(m.group(1), int(m.group(3)))][m.group(4)] = value
        else:
            raise ModelFormatError(f"unexpected parameter {name!r} in a semantic-id 0.2.5 model.pt")
    layer = {"encoder": -1, "decoder": -1}
    for (part, _), params in sorted(modules.items()):
        if "running_mean" in params:  # BatchNorm after the current Linear
            for field in _BN_FIELDS:
                if field in params:
                    out[f"{part}.layers.{layer[part]}.bn.{field}"] = params[field]
        elif params.get("weight") is not None and params["weight"].ndim == 2:  # a Linear starts a layer
            layer[part] += 1
            out[f"{part}.layers.{layer[part]}.linear.weight"] = params["weight"]
            out[f"{part}.layers.{layer[part]}.linear.bias"] = params["bias"]
    return out, residual


def load_original(cls, path: str, *, device: str = "cpu"):
    """An RQVAE from a semantic-id 0.2.5 directory (``metadata.json`` + ``model.pt``)."""
    import torch

    try:
        meta = json.loads(storage.read_bytes(storage.join(path, io.METADATA_FILE)))
        state = torch.load(BytesIO(storage.read_bytes(storage.join(path, "model.pt"))), map_location="cpu",
                           weights_only=True)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:  # weights_only refuses code
        raise ModelFormatError(f"{path!r} is not a loadable semantic-id 0.2.5 RQVAE: {exc}") from None
    if meta.get("type") != "RQVAE":
        raise ModelFormatError(f"{path!r} holds a model of type {meta.get('type')!r}, expected 'RQVAE'")
    weights, residual = convert_original_state({k: v.cpu().numpy() for k, v in state.items()})
    params = {k: v for k, v in meta.items() if k != "type"}
    try:
        model = cls(**params, device=device)
    except (TypeError, ConfigError) as exc:
        raise ModelFormatError(f"{path!r}: metadata does not describe an RQVAE: {exc}") from None
    model.residual_encoder_ = residual
    model._adopt_weights(weights, path)
    return model
