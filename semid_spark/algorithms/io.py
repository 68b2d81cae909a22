"""Model files: plain arrays in an ``.npz`` (``codebooks.npz``, ``weights.npz``) beside ``metadata.json``.

Never a pickle: arrays are read with ``allow_pickle=False``. Files we write also carry a
format version and the sha256 of the arrays, checked on load, so a damaged or edited file
is refused; files written by semantic-id 0.2.5 (no digest) load as they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any

import numpy as np

from semid_spark import storage
from semid_spark.exceptions import ModelFormatError

METADATA_FILE = "metadata.json"
ARRAYS_FILE = "codebooks.npz"
FORMAT_VERSION = 2  # 2: RQ-KMeans may hold per-centroid offsets (offsets_<level>); 1 still loads


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """Digest of named arrays: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def save_model(
    path: str, metadata: dict[str, Any], arrays: dict[str, np.ndarray], *, arrays_file: str = ARRAYS_FILE
) -> str:
    """Write *arrays* and *metadata* (plus format version and sha256) into directory *path*.

    *path* is a local directory or any fsspec URL (``s3://``, ``gs://``, ``file://``...; see
    :mod:`semid_spark.storage`). The arrays go first and the metadata, which holds their digest,
    last: a directory without ``metadata.json`` holds no model, and a reader that finds arrays
    of another save (a crash mid-overwrite) refuses them by their digest. No file is ever seen
    half-written under its final name. Returns the sha256.
    """
    sha = arrays_sha256(arrays)
    meta = {**metadata, "format_version": FORMAT_VERSION, "sha256": sha}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    storage.write_bytes(storage.join(path, arrays_file), buffer.getvalue())
    storage.write_bytes(storage.join(path, METADATA_FILE), json.dumps(meta, indent=2, sort_keys=True).encode())
    return sha


def read_metadata(path: str) -> dict[str, Any]:
    """The ``metadata.json`` of the model directory *path* (local or URL).

    Raises
    ------
    ModelFormatError
        When there is none (no model saved there, or a save that never finished) or it is not JSON.
    """
    meta_path = storage.join(path, METADATA_FILE)
    try:
        meta = json.loads(storage.read_bytes(meta_path))
    except FileNotFoundError:
        raise ModelFormatError(f"no model at {path!r}: {METADATA_FILE} is missing (nothing was saved there, "
                               "or a save did not finish)") from None
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{meta_path!r} is not readable JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{meta_path!r} holds a {type(meta).__name__}, not a model's metadata")
    return meta


def load_model(
    path: str, *, expected_type: str, arrays_file: str = ARRAYS_FILE
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a model directory (local or URL); verify type, format version and digest.

    Raises
    ------
    ModelFormatError
        For a missing or unreadable file, another model type, a newer format, an array
        that needs pickle, or a digest that does not match the arrays.
    """
    meta = read_metadata(path)
    meta_path, arrays_path = storage.join(path, METADATA_FILE), storage.join(path, arrays_file)
    if meta.get("type") != expected_type:
        raise ModelFormatError(f"{path!r} holds a model of type {meta.get('type')!r}, expected {expected_type!r}")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{path!r} has format_version={version!r}; this semid_spark reads up to {FORMAT_VERSION}"
        )
    try:
        data = storage.read_bytes(arrays_path)
    except FileNotFoundError:
        raise ModelFormatError(f"model file {arrays_path!r} is missing; is {path!r} a saved model?") from None
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelFormatError(f"{arrays_path!r} is damaged or not an .npz file")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as exc:  # object arrays would need pickle: refused
        raise ModelFormatError(f"{arrays_path!r} holds arrays that need pickle; refused: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelFormatError(f"{arrays_path!r} is damaged or not an .npz file: {exc}") from None
    if "sha256" in meta and arrays_sha256(arrays) != meta["sha256"]:
        raise ModelFormatError(
            f"{arrays_path!r} does not match the sha256 in {meta_path!r}: the file is damaged, was edited, "
            "or another save is under way"
        )
    return meta, arrays


_META_KEY = "__metadata__"


def dumps_model(metadata: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """One model as bytes (an .npz holding the arrays and the JSON metadata with its sha256):
    what the Spark job ships to executors."""
    meta = {**metadata, "format_version": FORMAT_VERSION, "sha256": arrays_sha256(arrays)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{_META_KEY: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)})
    return buffer.getvalue()


def loads_model(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The reverse of :func:`dumps_model`; the digest is verified."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop(_META_KEY).tobytes())
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise ModelFormatError(f"model bytes are damaged or not a model: {exc!r}") from None
    if arrays_sha256(arrays) != meta.get("sha256"):
        raise ModelFormatError("model bytes do not match their sha256")
    return meta, arrays
