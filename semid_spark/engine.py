"""SemanticIdEngine: an encoder plus a collision resolver, saved and loaded together.

The API is semantic-id 0.2.5's (``fit``, ``unique_ids``, ``save``, ``load``), plus ``keys=``
for IDs that stay with their items, and a check that the store belongs to the encoder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from typing import Callable, Hashable, Literal, Sequence

import numpy as np

from semid_spark import storage
from semid_spark.algorithms import encoder_class
from semid_spark.core import ArrayLike, BaseSemanticEncoder
from semid_spark.exceptions import ConfigError, ModelFormatError, ModelMismatchError
from semid_spark.uniqueness.resolver import BaseResolver, UniqueIdResolver
from semid_spark.uniqueness.stores import (
    CollisionStore, InMemoryCollisionStore, SQLiteCollisionStore, write_json_state,
)

log = logging.getLogger(__name__)

ENGINE_FORMAT_VERSION = 1
_META, _ENCODER_DIR, _RESOLVER_DIR = "engine_meta.json", "encoder", "resolver"
_SQLITE_FILE, _MEMORY_FILE = "collisions.db", "in_memory_store.json"


def _model_sha256(encoder: BaseSemanticEncoder) -> str | None:
    """The encoder's identity, when it has one (custom encoders may not)."""
    return getattr(encoder, "sha256", None)


class SemanticIdEngine:
    """Encode embeddings, format them as IDs, and make the IDs unique.

    Parameters
    ----------
    encoder : a fitted or unfitted encoder (``RQKMeans``, ``RQVAE`` or your own
        ``BaseSemanticEncoder``)
    unique_resolver : default ``UniqueIdResolver`` with an ``InMemoryCollisionStore``

    Examples
    --------
    >>> engine = SemanticIdEngine(RQKMeans(n_levels=3, n_clusters=10, random_state=0))
    >>> ids = engine.fit(X).unique_ids(X, keys=item_keys)   # doctest: +SKIP
    """

    def __init__(self, encoder: BaseSemanticEncoder, unique_resolver: BaseResolver | None = None) -> None:
        self.encoder = encoder
        self.unique_resolver: BaseResolver = UniqueIdResolver() if unique_resolver is None else unique_resolver

    def fit(self, X: ArrayLike, *, device: str = "cpu") -> "SemanticIdEngine":
        """Train the encoder on embeddings of shape (N, D); return ``self``."""
        self.encoder.fit(X, device=device)
        return self

    def unique_ids(
        self,
        X: ArrayLike,
        *,
        device: str = "cpu",
        batch_size: int | None = None,
        sep: str = "-",
        fmt: Literal["plain", "token"] = "plain",
        formatter: Callable[[np.ndarray], str] | None = None,
        item_ids: Sequence[Hashable] | None = None,
        keys: Sequence[Hashable] | None = None,
    ) -> list[str]:
        """Encode X (N, D), format the codes, and return N unique IDs in input order.

        ``item_ids`` replaces the collision counter with the item's own identifier;
        ``keys`` are stable item identities: an item seen before gets its ID back and
        takes no counter (see :meth:`UniqueIdResolver.assign`). The store is bound to
        the encoder's sha256 on first use and refuses another model afterwards.
        """
        codes = self.encoder.encode(X, device=device, batch_size=batch_size)
        bases = self.encoder.semantic_id(codes, sep=sep, fmt=fmt, formatter=formatter)
        context = {}
        if getattr(self.unique_resolver, "needs_model", False):  # it re-assigns codes: it needs the model and data
            context = {"codes": codes, "embeddings": X, "encoder": self.encoder, "formatter": formatter}
        return self.unique_resolver.assign(
            bases, sep=sep, fmt=fmt, item_ids=item_ids, keys=keys, model_sha256=_model_sha256(self.encoder), **context,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str) -> None:
        """Write the engine into directory *path*, replacing what was there only once complete.

        Layout (readable by semantic-id 0.2.5 too)::

            path/engine_meta.json     encoder_type, store_type, store_config, resolver settings
            path/encoder/             the encoder's own files
            path/resolver/            collisions.db (SQLite store, a consistent backup) or
                                      in_memory_store.json (the in-memory counters, so a
                                      loaded engine carries on where this one stopped)
        """
        path = os.fspath(path)
        if storage.local_path(path) is None:  # an object store: build it here, upload engine_meta.json last
            with tempfile.TemporaryDirectory(prefix="semid-engine-") as local:
                self.save(os.path.join(local, "engine"))
                storage.upload_dir(os.path.join(local, "engine"), path, last=_META)
            return
        path = storage.local_path(path).rstrip(os.sep) or os.sep
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, _RESOLVER_DIR))
        store = getattr(self.unique_resolver, "store", None)
        sqlite_store = store if isinstance(store, SQLiteCollisionStore) else None
        # no batch may land in the store between its backup and the swap of directories
        with sqlite_store._lock if sqlite_store else contextlib.nullcontext():
            try:
                self.encoder.save(os.path.join(tmp, _ENCODER_DIR))
                meta = {
                    "format_version": ENGINE_FORMAT_VERSION,
                    "encoder_type": type(self.encoder).__name__,
                    "encoder_sha256": _model_sha256(self.encoder),
                    **self._save_resolver(os.path.join(tmp, _RESOLVER_DIR)),
                }
                with open(os.path.join(tmp, _META), "w", encoding="utf-8") as fh:
                    json.dump(meta, fh, indent=2)
                _replace_dir(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if sqlite_store:  # it may live inside the replaced directory: reopen by path when next used
                sqlite_store.close()

    def _save_resolver(self, resolver_dir: str) -> dict:
        resolver = self.unique_resolver
        if not isinstance(resolver, UniqueIdResolver):
            warnings.warn(f"{type(resolver).__name__} is not saved; pass it to SemanticIdEngine.load", stacklevel=3)
            return {"store_type": "none", "store_config": {}, "resolver_type": type(resolver).__name__}
        settings = {"resolver_type": "UniqueIdResolver", "fixed_length": resolver.fixed_length,
                    "counter_size": resolver.counter_size}
        store = resolver.store
        if isinstance(store, SQLiteCollisionStore):
            store.backup(os.path.join(resolver_dir, _SQLITE_FILE))
            return {"store_type": "sqlite", "store_config": {"db_path": _SQLITE_FILE}, **settings}
        if isinstance(store, InMemoryCollisionStore):
            write_json_state(os.path.join(resolver_dir, _MEMORY_FILE), store.to_json())
            return {"store_type": "in_memory", "store_config": {"state_path": _MEMORY_FILE}, **settings}
        warnings.warn(
            f"the counters of {type(store).__name__} are not saved; pass its resolver to SemanticIdEngine.load",
            stacklevel=3,
        )
        return {"store_type": "custom", "store_config": {}, **settings}

    @classmethod
    def load(
        cls, path: str, *, device: str = "cpu", unique_resolver: BaseResolver | None = None
    ) -> "SemanticIdEngine":
        """Read an engine written by :meth:`save` (or by semantic-id 0.2.5).

        A SQLite store is reopened in place (``path/resolver/collisions.db``) and carries on
        counting there. Pass *unique_resolver* to use another resolver or store instead;
        it is required when the saved store was a custom one.

        Raises
        ------
        ModelFormatError
            Missing or unreadable ``engine_meta.json``, unknown encoder or store type.
        ModelMismatchError
            The saved store holds the IDs of another model than the saved encoder.
        """
        path = os.fspath(path)
        if storage.local_path(path) is None:  # an object store: work on a local copy (the SQLite store needs one)
            if not storage.exists(storage.join(path, _META)):
                raise ModelFormatError(f"no saved engine at {path!r}: {_META} is missing")
            local = tempfile.mkdtemp(prefix="semid-engine-")
            storage.download_dir(path, local)
            log.info("engine %s copied to %s; save() again to keep its counters there", path, local)
            path = local
        path = storage.local_path(path)
        meta_path = os.path.join(path, _META)
        try:
            with open(meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
            encoder_cls = encoder_class(meta["encoder_type"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFormatError(f"{meta_path!r} does not describe a saved engine: {exc!r}") from None
        version = meta.get("format_version", ENGINE_FORMAT_VERSION)
        if version != ENGINE_FORMAT_VERSION:
            raise ModelFormatError(f"{meta_path!r} has format_version {version}; this version reads "
                                   f"{ENGINE_FORMAT_VERSION}")
        encoder = encoder_cls.load(os.path.join(path, _ENCODER_DIR), device=device)
        resolver = unique_resolver if unique_resolver is not None else _load_resolver(path, meta)
        if isinstance(resolver, UniqueIdResolver) and (sha := _model_sha256(encoder)) is not None:
            stored = getattr(resolver.store, "model_sha256", None)
            if stored is not None and stored != sha:
                raise ModelMismatchError(
                    f"the collision store loaded for {path!r} holds IDs of model {stored[:12]}…, but the "
                    f"encoder is model {sha[:12]}…"
                )
        return cls(encoder=encoder, unique_resolver=resolver)


def _load_resolver(path: str, meta: dict) -> BaseResolver:
    store_type = meta.get("store_type", "in_memory")
    config = meta.get("store_config") or {}
    resolver_dir = os.path.join(path, _RESOLVER_DIR)
    store: CollisionStore
    if store_type == "sqlite":
        store = SQLiteCollisionStore(os.path.join(resolver_dir, config.get("db_path", _SQLITE_FILE)))
    elif store_type == "in_memory":
        state_path = os.path.join(resolver_dir, config.get("state_path", _MEMORY_FILE))
        if os.path.exists(state_path):
            with open(state_path, encoding="utf-8") as fh:
                store = InMemoryCollisionStore.from_json(json.load(fh))
        else:  # saved by semantic-id 0.2.5, which keeps no in-memory counters
            store = InMemoryCollisionStore()
    else:
        raise ConfigError(
            f"{path!r} was saved with a {store_type!r} store whose state is not in the files; "
            "pass unique_resolver= to SemanticIdEngine.load"
        )
    return UniqueIdResolver(
        store, fixed_length=bool(meta.get("fixed_length", False)), counter_size=int(meta.get("counter_size", 256))
    )


def _replace_dir(src: str, dest: str) -> None:
    """Move the finished directory *src* to *dest*; an old *dest* is removed only afterwards."""
    old = f"{dest}.old-{os.getpid()}"
    if os.path.exists(dest):
        os.rename(dest, old)
    os.rename(src, dest)
    shutil.rmtree(old, ignore_errors=True)
