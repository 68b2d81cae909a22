"""Where model files live: a local path or any fsspec URL (``s3://``, ``gs://``, ``abfss://``, ``hdfs://``, ``file://``).

A cluster keeps its files on object stores, so a model directory is addressed through fsspec
(the cloud back-ends are optional extras: ``s3fs``, ``gcsfs``, ``adlfs``; HDFS uses pyarrow).
``dbfs:/Volumes/...`` and ``dbfs:/...`` are the Databricks FUSE paths ``/Volumes/...`` and
``/dbfs/...`` that every Databricks driver and executor mounts.

Writes never leave a half-written file under its final name: on a local disk a file is written
to a temporary name and renamed; on an object store one PUT creates the object whole. A model
directory is complete once its manifest exists: callers write the arrays first and the
manifest, which holds their digest, last (``algorithms.io``), and readers verify that digest.

Nothing here imports pyspark or torch.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # fsspec is imported lazily: plain local paths never need it
    from fsspec import AbstractFileSystem

_LOCAL_PROTOCOLS = {"file", "local"}


def is_url(path: str) -> bool:
    """True for ``scheme://...`` and ``dbfs:/...``; False for a plain local path (``C:\\`` included)."""
    path = os.fspath(path)
    return "://" in path or path.startswith("dbfs:/")


def _fuse_path(path: str) -> str | None:
    """The Databricks FUSE path of a ``dbfs:`` URL, or None when *path* is not one."""
    if not path.startswith("dbfs:/"):
        return None
    rest = "/" + path[len("dbfs:"):].lstrip("/")
    return rest if rest.startswith("/Volumes/") or rest == "/Volumes" else "/dbfs" + rest


def local_path(path: str) -> str | None:
    """The local filesystem path that *path* names (plain, ``file://``, ``dbfs:``), or None for a remote URL."""
    path = os.fspath(path)
    if (fuse := _fuse_path(path)) is not None:
        return fuse
    if not is_url(path):
        return path
    if path.startswith("file://"):
        return path[len("file://"):] or "/"
    return None


def filesystem(path: str) -> tuple["AbstractFileSystem", str]:
    """(fsspec filesystem, path inside it) for a remote URL.

    Raises
    ------
    ValueError
        When no fsspec back-end is installed for the URL's scheme; the message says which package.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(path)
    except (ImportError, ValueError) as exc:
        scheme = path.split("://", 1)[0]
        hint = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "abfss": "adlfs",
                "az": "adlfs"}.get(scheme)
        extra = f"; install {hint} (pip install 'semid-spark[{_EXTRA_OF.get(hint, '')}]')" if hint else ""
        raise ValueError(f"cannot open {path!r}: {exc}{extra}") from None


_EXTRA_OF = {"s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure"}


def join(path: str, *names: str) -> str:
    """*path*/name/...: ``os.path.join`` for local paths, '/' for URLs (``s3://b/m`` + ``x`` -> ``s3://b/m/x``)."""
    path = os.fspath(path)
    if not is_url(path):
        return os.path.join(path, *names)
    return posixpath.join(path.rstrip("/") if not path.endswith(":/") else path, *names)


def exists(path: str) -> bool:
    """Whether a file (or directory) exists at *path*."""
    local = local_path(path)
    if local is not None:
        return os.path.exists(local)
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)  # another process may have written it since this one listed the folder
    return fs.exists(inner)


def read_bytes(path: str) -> bytes:
    """The whole file at *path*; ``FileNotFoundError`` when there is none."""
    local = local_path(path)
    if local is not None:
        with open(local, "rb") as fh:
            return fh.read()
    fs, inner = filesystem(path)
    return fs.cat_file(inner)


def write_bytes(path: str, data: bytes) -> None:
    """Write *data* to *path* so that no reader ever sees part of it under that name."""
    local = local_path(path)
    if local is not None:
        directory = os.path.dirname(local) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(local))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, local)
        except BaseException:
            os.unlink(tmp)
            raise
        return
    fs, inner = filesystem(path)
    fs.pipe_file(inner, data)  # one object, created whole (S3, GCS, ADLS), or a file that HDFS closes once


def delete(path: str) -> None:
    """Remove the file at *path*; a file that is not there is no error."""
    local = local_path(path)
    if local is not None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(local)
        return
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)
    if fs.exists(inner):
        fs.rm_file(inner)


def download_dir(path: str, dest: str) -> None:
    """Copy the directory tree at the URL *path* into the local directory *dest*."""
    fs, inner = filesystem(path)
    inner = inner.rstrip("/")
    for remote in fs.find(inner):
        target = os.path.join(dest, os.path.relpath(remote, inner))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(fs.cat_file(remote))


def upload_dir(src: str, path: str, *, last: str | None = None) -> None:
    """Copy the local directory *src* to the URL *path*, writing the relative file *last* after every other one."""
    files = sorted(os.path.relpath(os.path.join(root, name), src)
                   for root, _, names in os.walk(src) for name in names)
    if last is not None and last in files:
        files.remove(last)
        files.append(last)
    for rel in files:
        with open(os.path.join(src, rel), "rb") as fh:
            write_bytes(join(path, *rel.split(os.sep)), fh.read())


@contextlib.contextmanager
def writable_dir(path: str) -> Iterator[str]:
    """A local directory whose files end up at *path* (a local path, ``dbfs:`` or any URL).

    For a local or FUSE path that directory itself (created); for a remote URL a temporary one,
    uploaded to *path* when the block ends without error and then removed. No local folder is
    ever named after a URL (``s3:``). Use :func:`final_path` for the names the files get.
    """
    local = local_path(path)
    if local is not None:
        os.makedirs(local, exist_ok=True)
        yield local
        return
    staging = tempfile.mkdtemp(prefix="semid-out-")
    try:
        yield staging
        upload_dir(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def final_path(path: str, staged_dir: str, staged_file: str) -> str:
    """Where *staged_file*, written under the :func:`writable_dir` *staged_dir* of *path*, ends up."""
    return join(path, *os.path.relpath(staged_file, staged_dir).split(os.sep))
