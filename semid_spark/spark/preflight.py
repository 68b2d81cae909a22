"""Checks that cost seconds, made before a job spends minutes (and by ``semid validate``, ``dry_run``).

``check_locations`` runs at the start of every writing verb, before the input is sampled: an output,
model or reject location that cannot be written fails there, with nothing fitted or saved.
"""

from __future__ import annotations

import os
import tempfile
import time

from pyspark.sql import SparkSession

from semid_spark import storage
from semid_spark.config import JobConfig
from semid_spark.exceptions import ConfigError

PROBE_PREFIX = ".semid-write-probe-"


def _writable(location: str, setting: str) -> None:
    """Raise ConfigError naming *setting* when *location* (a directory to be, local or URL) cannot be
    written. A probe file is created and deleted: locally in the nearest folder that exists (no folder is
    created; permission bits say nothing for root or a read-only mount), at a URL under the location
    (only a write shows that the credentials allow it)."""
    local = storage.local_path(location)
    if local is not None:
        folder = os.path.abspath(local)
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder):
            raise ConfigError(f"{setting}={location!r} cannot be written: {folder} is a file, not a folder")
        try:
            handle, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"{setting}={location!r} cannot be written: {exc.strerror or exc} in {folder}") from None
        return
    probe = storage.join(location, f"{PROBE_PREFIX}{os.getpid()}-{time.time_ns()}")
    try:
        storage.write_bytes(probe, b"")
        fs, inner = storage.filesystem(probe)
        fs.rm(inner)
    except Exception as exc:  # no credentials, access denied, no such bucket, an unknown scheme
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConfigError(f"{setting}={location!r} cannot be written: {type(exc).__name__}: {first}") from None


def _table_writable(spark: SparkSession, name: str, setting: str) -> None:
    """A table by name: its schema (database) must exist; the catalog's grants are checked by the write."""
    parts = name.split(".")
    if len(parts) >= 2:
        schema = ".".join(parts[:-1])
        try:
            exists = spark.catalog.databaseExists(schema)
        except Exception:  # a catalog that cannot answer: the write will
            return
        if not exists:
            raise ConfigError(f"{setting}={name!r}: schema {schema!r} does not exist")


def check_locations(spark: SparkSession, cfg: JobConfig, *, model: bool = True, output: bool = True,
                    extra: dict[str, str] | None = None) -> None:
    """Every location the verb will write, checked before it reads a row (ConfigError naming the setting)."""
    if output:
        if cfg.output.table:
            _table_writable(spark, cfg.output.table, "output.table")
        else:
            _writable(cfg.output.path, "output.path")
    if model:
        _writable(cfg.model.path, "model.path")
    if cfg.input.on_invalid == "reject" and cfg.input.reject_path:
        _writable(cfg.input.reject_path, "input.reject_path")
    for setting, location in (extra or {}).items():
        _writable(location, setting)
