"""Model files: plain arrays in an ``.npz`` (``codebooks.npz``, ``weights.npz``) beside ``metadata.json``.

Never a pickle: arrays are read with ``allow_pickle=False``. Files we write also carry a
format version and the sha256 of the arrays, checked on load, so a damaged or edited file
is refused; files written by semantic-id 0.2.5 (no digest) load as they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from semid_spark.exceptions import ModelFormatError

METADATA_FILE = "metadata.json"
ARRAYS_FILE = "codebooks.npz"
FORMAT_VERSION = 1


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """Digest of named arrays: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _atomic_write(path: str, write: Any, suffix: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_model(
    path: str, metadata: dict[str, Any], arrays: dict[str, np.ndarray], *, arrays_file: str = ARRAYS_FILE
) -> str:
    """Write *arrays* and *metadata* (plus format version and sha256) into directory *path*.

    Each file is written to a temporary name and renamed, so a crash never leaves a
    half-written file under the final name. Returns the sha256.
    """
    os.makedirs(path, exist_ok=True)
    sha = arrays_sha256(arrays)
    meta = {**metadata, "format_version": FORMAT_VERSION, "sha256": sha}
    _atomic_write(os.path.join(path, arrays_file), lambda fh: np.savez(fh, **arrays), ".npz")
    text = json.dumps(meta, indent=2, sort_keys=True).encode()
    _atomic_write(os.path.join(path, METADATA_FILE), lambda fh: fh.write(text), ".json")
    return sha


def load_model(
    path: str, *, expected_type: str, arrays_file: str = ARRAYS_FILE
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a model directory; verify type, format version and digest.

    Raises
    ------
    ModelFormatError
        For a missing or unreadable file, another model type, a newer format, an array
        that needs pickle, or a digest that does not match the arrays.
    """
    meta_path, arrays_path = os.path.join(path, METADATA_FILE), os.path.join(path, arrays_file)
    for required in (meta_path, arrays_path):
        if not os.path.isfile(required):
            raise ModelFormatError(f"model file {required!r} is missing; is {path!r} a saved model?")
    try:
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{meta_path!r} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("type") != expected_type:
        found = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
        raise ModelFormatError(f"{path!r} holds a model of type {found!r}, expected {expected_type!r}")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{path!r} has format_version={version!r}; this semid_spark reads up to {FORMAT_VERSION}"
        )
    if not zipfile.is_zipfile(arrays_path):
        raise ModelFormatError(f"{arrays_path!r} is damaged or not an .npz file")
    try:
        with np.load(arrays_path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except ValueError as exc:  # object arrays would need pickle: refused
        raise ModelFormatError(f"{arrays_path!r} holds arrays that need pickle; refused: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelFormatError(f"{arrays_path!r} is damaged or not an .npz file: {exc}") from None
    if "sha256" in meta and arrays_sha256(arrays) != meta["sha256"]:
        raise ModelFormatError(
            f"{arrays_path!r} does not match the sha256 in {meta_path!r}: the file is damaged or was edited"
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
