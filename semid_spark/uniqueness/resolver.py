"""Collision resolution: make every semantic ID unique, the way semantic-id 0.2.5 does.

In input order, the first holder of a base ID keeps it bare; each later holder gets
``base + sep + n``, where n counts the earlier holders (or ``base + sep + item_id`` when
``item_ids`` are given; the counter still advances). Counters live in a
:class:`~semid_spark.uniqueness.stores.CollisionStore`, so they carry on across calls.

What we add: a whole batch is assigned in one store transaction (fast, and all or
nothing); ``keys=`` gives each item its earlier ID back, so re-runs change nothing; every
output is checked unique against the batch and against all IDs issued before; and the
fixed-length form (``fixed_length=True``) where the counter is always present as one more
level: ``3-9-1-0``, ``3-9-1-1``, or ``<a_3><b_9><c_1><d_0>`` in token form.
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from typing import Any, Hashable, Literal, Sequence

from semid_spark.exceptions import ConfigError, CounterOverflowError, DuplicateIdError, InvalidInputError
from semid_spark.uniqueness.stores import CollisionStore, InMemoryCollisionStore

_TOKEN_LETTERS = string.ascii_lowercase


class BaseResolver(ABC):
    """A policy that turns raw semantic IDs into unique ones."""

    @abstractmethod
    def assign(self, semantic_ids: Sequence[str], **kwargs: Any) -> list[str]:
        """Return one unique ID per input ID, in input order."""


def _check_ids(semantic_ids: Sequence[str]) -> list[str]:
    ids = list(semantic_ids)
    if set(map(type, ids)) - {str}:
        i = next(i for i, s in enumerate(ids) if not isinstance(s, str))
        raise InvalidInputError(f"semantic_ids[{i}] is {ids[i]!r}; expected a string")
    return ids


def _check_column(values: Sequence[Hashable] | None, n: int, name: str) -> list[str] | None:
    """*values* as strings, one per ID, none null."""
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise InvalidInputError(f"{name} has {len(values)} entries for {n} semantic_ids; expected one per ID")
    if n_null := sum(v is None for v in values):
        first = next(i for i, v in enumerate(values) if v is None)
        raise InvalidInputError(f"{name} holds {n_null} null values of {n} (first at position {first})")
    return [v if type(v) is str else str(v) for v in values]


def check_keys(keys: Sequence[Hashable] | None, n: int) -> list[str] | None:
    """Item keys as strings (``5`` and ``"5"`` are one key); raise on nulls or duplicates."""
    keys = _check_column(keys, n, "keys")
    if keys is not None and len(set(keys)) != n:
        seen: set[str] = set()
        dupes = [k for k in keys if k in seen or seen.add(k)]
        raise DuplicateIdError(
            f"keys holds {len(dupes)} duplicates among {n} items (first {dupes[0]!r}); "
            "each item key must appear once per call"
        )
    return keys


class UniqueIdResolver(BaseResolver):
    """Resolve collisions with a counter per base ID, kept in a collision store.

    Parameters
    ----------
    store : CollisionStore, default a new ``InMemoryCollisionStore``
    fixed_length : when True every ID gets the counter as one more level, starting at 0,
        so all IDs have n_levels + 1 parts (the form generative retrieval trains on)
    counter_size : with ``fixed_length``, the number of values the counter level can
        take; a base shared by more items raises ``CounterOverflowError``

    Examples
    --------
    >>> UniqueIdResolver().assign(["a", "b", "a", "c", "a", "b"])
    ['a', 'b', 'a-1', 'c', 'a-2', 'b-1']
    >>> UniqueIdResolver(fixed_length=True).assign(["3-9-1", "3-9-1"])
    ['3-9-1-0', '3-9-1-1']
    """

    def __init__(
        self, store: CollisionStore | None = None, *, fixed_length: bool = False, counter_size: int = 256
    ) -> None:
        if store is not None and not isinstance(store, CollisionStore):
            raise ConfigError(f"store must be a CollisionStore, got {type(store).__name__}")
        if isinstance(counter_size, bool) or not isinstance(counter_size, int) or counter_size < 1:
            raise ConfigError(f"counter_size={counter_size!r}; expected an int >= 1")
        self.store: CollisionStore = InMemoryCollisionStore() if store is None else store
        self.fixed_length = fixed_length
        self.counter_size = counter_size

    def assign(
        self,
        semantic_ids: Sequence[str],
        *,
        item_ids: Sequence[Hashable] | None = None,
        sep: str = "-",
        keys: Sequence[Hashable] | None = None,
        fmt: Literal["plain", "token"] = "plain",
        model_sha256: str | None = None,
        **_ignored: Any,
    ) -> list[str]:
        """Return a unique ID for each of *semantic_ids*, in input order.

        Parameters
        ----------
        semantic_ids : base IDs (strings), one per item
        item_ids : optional suffixes used instead of the counter (``"3-9-1-SKU200"``)
        sep : separator between the base and its suffix
        keys : optional stable item identities: an item whose key the store has seen gets
            its earlier ID back and takes no counter; new keys are remembered
        fmt : with ``fixed_length`` and ``"token"``, the counter is written as one more
            token (``<d_0>``) instead of ``sep + n``
        model_sha256 : the model the IDs come from; the store refuses another model's

        Raises
        ------
        InvalidInputError
            Lengths that differ, null keys or item_ids.
        DuplicateIdError
            Duplicate keys, or an output ID already issued (in this batch or before).
        CounterOverflowError
            With ``fixed_length``, a base shared by more than ``counter_size`` items.
        ModelMismatchError
            The store holds IDs of another model.

        Nothing is written when an error is raised.
        """
        bases = _check_ids(semantic_ids)
        n = len(bases)
        item_ids = _check_column(item_ids, n, "item_ids")
        keys = check_keys(keys, n)
        if self.fixed_length and item_ids is not None:
            raise ConfigError("item_ids suffixes cannot be used with fixed_length=True (the counter is a level)")
        if fmt not in ("plain", "token"):
            raise ConfigError(f"unknown fmt {fmt!r}; expected 'plain' or 'token'")
        if n == 0:
            return []

        with self.store.transaction() as txn:
            if model_sha256 is not None:
                txn.bind_model(model_sha256)
            known = txn.known_ids(keys) if keys is not None else {}
            if known:
                new = [i for i in range(n) if keys[i] not in known]
                new_ids = self._render([bases[i] for i in new], txn.next_suffixes([bases[i] for i in new]),
                                       None if item_ids is None else [item_ids[i] for i in new], sep, fmt)
                ids = [known.get(k, "") for k in keys]
                for i, new_id in zip(new, new_ids):
                    ids[i] = new_id
            else:
                new = range(n)
                ids = self._render(bases, txn.next_suffixes(bases), item_ids, sep, fmt)
            if len(set(ids)) != n:
                raise self._duplicates_in_batch(ids, bases)
            txn.record([ids[i] for i in new], [keys[i] for i in new] if keys is not None else None)
        return ids

    def _render(
        self, bases: list[str], counts: list[int], item_ids: list[str] | None, sep: str, fmt: str
    ) -> list[str]:
        """The unique ID of each base given its counter (and its item_id suffix, if any)."""
        if not self.fixed_length:
            if item_ids is None:
                return [b if c == 0 else f"{b}{sep}{c}" for b, c in zip(bases, counts)]
            return [b if c == 0 else f"{b}{sep}{s}" for b, c, s in zip(bases, counts, item_ids)]
        if counts and (top := max(counts)) >= self.counter_size:
            base = bases[counts.index(top)]
            raise CounterOverflowError(
                f"base ID {base!r} is shared by {top + 1} items, more than counter_size={self.counter_size} "
                "values of its counter level can number; nothing was written. Raise counter_size, or "
                "fit more levels or clusters so fewer items share codes."
            )
        if fmt == "token":
            letters = _TOKEN_LETTERS
            return [f"{b}<{letters[b.count('<') % len(letters)]}_{c}>" for b, c in zip(bases, counts)]
        return [f"{b}{sep}{c}" for b, c in zip(bases, counts)]

    @staticmethod
    def _duplicates_in_batch(ids: list[str], bases: list[str]) -> DuplicateIdError:
        seen: set[str] = set()
        first = next(i for i, x in enumerate(ids) if x in seen or seen.add(x))
        return DuplicateIdError(
            f"the ID {ids[first]!r} would be given to two items of this batch (the second at position "
            f"{first}, base {bases[first]!r}); nothing was written. With item_ids, each suffix must be "
            "unique among the items sharing a base; with a custom formatter or sep, a suffixed ID "
            "must never equal another item's base ID."
        )
