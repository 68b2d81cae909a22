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

from abc import ABC, abstractmethod
from typing import Any, Hashable, Literal, Sequence

import numpy as np

from semid_spark.algorithms.rq_vae import RQVAE
from semid_spark.core import TOKEN_LETTERS, ArrayLike
from semid_spark.exceptions import ConfigError, CounterOverflowError, DuplicateIdError, InvalidInputError
from semid_spark.uniqueness.relocate import check_n_candidates, check_solver, key_ranks, relocate_codes
from semid_spark.uniqueness.stores import CollisionStore, InMemoryCollisionStore



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
            letters = TOKEN_LETTERS
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


class RelocatingResolver(BaseResolver):
    """Resolve collisions as the Spark job does with ``uniqueness.strategy: relocate``.

    Among the items that share a full code, all but one move to distinct free last-level codes of
    their own prefix (the minimum-cost assignment of ``semid_spark.uniqueness.relocate``: nearest
    free codes, ties by key); items left when their prefix has no free code near them keep their
    code and get counters, after the group's placed item, in key order. Prefixes never change.

    Parameters
    ----------
    store : the counters' ``CollisionStore`` (a ``UniqueIdResolver`` over it issues the final IDs, so
        every ID stays unique across calls, and ``keys=`` gives a seen item its ID back)
    n_candidates : last-level codes an item may move to, its own included (the job's
        ``uniqueness.relocate_candidates``)
    solver : ``"greedy"`` (nearest first) or ``"exact"`` (an assignment solver), the job's
        ``uniqueness.relocate_solver``
    fixed_length, counter_size : as ``UniqueIdResolver``'s

    ``assign`` needs the model and the embeddings (a ``SemanticIdEngine`` passes both). A code is
    free when no item of this call holds it; an item whose code an earlier call issued keeps it and
    gets the store's next counter (``relocate_codes(..., held=...)`` relocates around known codes).
    """

    needs_model = True  # the engine passes codes, embeddings and the encoder to assign

    def __init__(self, store: CollisionStore | None = None, *, n_candidates: int = 16, fixed_length: bool = False,
                 counter_size: int = 256, solver: str = "greedy") -> None:
        self.n_candidates = check_n_candidates(n_candidates)
        self.solver = check_solver(solver)
        self.counters = UniqueIdResolver(store, fixed_length=fixed_length, counter_size=counter_size)
        self.last_relocation = None  # the last call's Relocation (moved share, error ratio)

    @property
    def store(self) -> CollisionStore:
        return self.counters.store

    def assign(self, semantic_ids: Sequence[str], *, embeddings: ArrayLike | None = None, encoder: Any = None,
               model: Any = None, device: str | None = None, codes: np.ndarray | None = None,
               keys: Sequence[Hashable] | None = None, sep: str = "-",
               fmt: Literal["plain", "token"] = "plain", formatter: Any = None,
               item_ids: Sequence[Hashable] | None = None, model_sha256: str | None = None) -> list[str]:
        """One unique ID per item, in input order (see the class docstring)."""
        encoder = _fitted_encoder(encoder if encoder is not None else model)
        if embeddings is None or encoder is None:
            raise ConfigError("RelocatingResolver.assign() requires 'embeddings' and 'model' (or encoder=): a fitted "
                              "RQKMeans, RQVAE or RQVAEModule; a SemanticIdEngine passes both")
        n = len(semantic_ids)
        relocation = relocate_codes(encoder, embeddings, keys=keys, codes=codes,
                                    n_candidates=self.n_candidates, device=device, solver=self.solver)
        if len(relocation.codes) != n:
            raise InvalidInputError(f"{n} semantic_ids for {len(relocation.codes)} embeddings; expected one each")
        self.last_relocation = relocation
        bases = encoder.semantic_id(relocation.codes, sep=sep, fmt=fmt, formatter=formatter)
        # the counters go to the items left without a free code, after the group's placed item, by key
        keys = None if keys is None else list(keys)
        item_ids = None if item_ids is None else list(item_ids)
        order = np.lexsort((key_ranks(keys, n), relocation.unplaced))
        ids = self.counters.assign(
            [bases[i] for i in order], keys=None if keys is None else [keys[i] for i in order],
            item_ids=None if item_ids is None else [item_ids[i] for i in order], sep=sep, fmt=fmt,
            model_sha256=model_sha256)
        out = [""] * n
        for position, i in enumerate(order):
            out[i] = ids[position]
        return out


class SinkhornResolver(BaseResolver):
    """Resolve collisions by moving colliding items to free codes of the last level.

    Items whose full codes collide keep their first L-1 codes; within that prefix, they are
    assigned distinct last-level codes not held by any other item, by an entropic
    (Sinkhorn) transport plan over the free codes rounded to a one-to-one assignment, so
    that each item gets a code near its residual. IDs stay semantic (no suffix) and keep
    the requested format. Where a prefix has fewer free codes than colliding items, the
    rest fall back to suffixes (``fallback_suffix=True``, a fresh in-memory counter as in
    semantic-id 0.2.5) or stay duplicated.

    Needs ``embeddings`` and the model in ``assign``: ``encoder=`` (a fitted RQVAE or RQKMeans;
    the ``SemanticIdEngine`` passes both) or semantic-id's ``model=`` (the same, or an
    ``RQVAEModule``). Not persistent: use ``UniqueIdResolver`` with a store for IDs that must
    stay unique across calls.
    """

    needs_model = True  # the engine passes codes, embeddings and the encoder to assign

    def __init__(self, max_iterations: int = 20, sk_epsilon: float | None = None, fallback_suffix: bool = True, *,
                 fixed_length: bool = False, counter_size: int = 256) -> None:
        if max_iterations < 1 or (sk_epsilon is not None and sk_epsilon <= 0):
            raise ConfigError(f"max_iterations={max_iterations}, sk_epsilon={sk_epsilon}; expected >= 1 and > 0")
        self.max_iterations = max_iterations
        self.sk_epsilon = 0.003 if sk_epsilon is None else float(sk_epsilon)
        self.fallback_suffix = fallback_suffix
        self.fixed_length = fixed_length  # the fallback's counters, as UniqueIdResolver(fixed_length=...) writes them
        self.counter_size = counter_size

    def assign(self, semantic_ids: Sequence[str], *, embeddings: ArrayLike | None = None, encoder: Any = None,
               model: Any = None, device: str | None = None, codes: np.ndarray | None = None, sep: str = "-",
               fmt: Literal["plain", "token"] = "plain", formatter: Any = None,
               item_ids: Sequence[Hashable] | None = None, **context: Any) -> list[str]:
        """Re-assign the last level of colliding items; the rest get the fallback's counters.

        *embeddings*: (N, D), an array or a torch tensor. *encoder* or *model*: the fitted model
        (*model* as semantic-id names it; an ``RQVAEModule`` is taken too). *device*: where the
        items are encoded when *codes* are not given (the model's own device by default).
        Takes the keywords the ``SemanticIdEngine`` passes (``keys`` and ``model_sha256`` are
        accepted and unused: this resolver keeps no state); any other keyword is an error.
        """
        if unknown := sorted(set(context) - {"keys", "model_sha256"}):
            raise TypeError(f"SinkhornResolver.assign got unexpected keyword argument(s) {unknown}")
        encoder = _fitted_encoder(encoder if encoder is not None else model)
        if embeddings is None or encoder is None:
            raise ConfigError(
                "SinkhornResolver.assign() requires 'embeddings' and 'model' (or encoder=): a fitted RQVAE, "
                "RQVAEModule or RQKMeans, whose last level it re-assigns; a SemanticIdEngine passes both"
            )
        codes = encoder.encode(embeddings, device=device) if codes is None else np.asarray(codes)
        if len(codes) != len(semantic_ids):
            raise InvalidInputError(f"{len(semantic_ids)} semantic_ids for {len(codes)} embeddings; expected one each")
        codes = self.resolve_codes(codes, encoder.latent_residuals(embeddings, codes), encoder.codebooks_)
        ids = encoder.semantic_id(codes, sep=sep, fmt=fmt, formatter=formatter)
        if not self.fallback_suffix:
            return ids
        fallback = UniqueIdResolver(fixed_length=self.fixed_length, counter_size=self.counter_size)
        return fallback.assign(ids, item_ids=item_ids, sep=sep, fmt=fmt)

    def resolve_codes(self, codes: np.ndarray, residuals: np.ndarray, codebooks: list[np.ndarray]) -> np.ndarray:
        """codes (n, L), last-level residuals (n, e), the L codebooks -> codes with distinct rows.

        First, within each prefix, colliding items share out its free last-level codes (the
        Sinkhorn plan). Items left over (their prefix is full) are re-encoded one at a time from
        the deepest level up: the next-nearest code at level j, greedy codes below it, and the
        nearest free last-level code. Deterministic: groups and items in sorted order.
        """
        codes = self._share_last_level(codes, residuals, codebooks[-1])
        return _place_leftovers(codes, residuals, codebooks)

    def _share_last_level(self, codes: np.ndarray, residuals: np.ndarray, last_codebook: np.ndarray) -> np.ndarray:
        codes = np.array(codes, dtype=np.int64, copy=True)
        book = last_codebook.astype(np.float64)
        for _ in range(self.max_iterations):
            _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
            colliding = counts[inverse.ravel()] > 1
            if not colliding.any():
                break
            moved = 0
            prefixes, prefix_of = np.unique(codes[:, :-1], axis=0, return_inverse=True)
            prefix_of = prefix_of.ravel()
            for p in np.unique(prefix_of[colliding]):
                members = np.flatnonzero(prefix_of == p)
                movers = members[colliding[members]]
                taken = set(codes[members[~colliding[members]], -1].tolist())
                free = np.array([k for k in range(len(book)) if k not in taken])
                new = self._one_to_one(residuals[movers].astype(np.float64), book[free])
                placed = new >= 0
                moved += int((codes[movers[placed], -1] != free[new[placed]]).sum())
                codes[movers[placed], -1] = free[new[placed]]
            if not moved:
                break
        return codes

    def _one_to_one(self, r: np.ndarray, book: np.ndarray) -> np.ndarray:
        """Each row of r (m, e) to a distinct row of book (f, e), or -1 when f < m."""
        cost = np.einsum("md,md->m", r, r)[:, None] - 2 * r @ book.T + np.einsum("fd,fd->f", book, book)
        log_plan = _sinkhorn_log_plan(cost, self.sk_epsilon)
        order = np.argsort(-log_plan, axis=None, kind="stable")  # most confident pairs first
        out = np.full(len(r), -1)
        used = np.zeros(len(book), dtype=bool)
        for flat in order:
            i, j = divmod(int(flat), len(book))
            if out[i] < 0 and not used[j]:
                out[i], used[j] = j, True
                if used.sum() == min(len(r), len(book)):
                    break
        return out


def _place_leftovers(codes: np.ndarray, residuals: np.ndarray, codebooks: list[np.ndarray]) -> np.ndarray:
    """Move each item that still shares its codes to the nearest free code tuple (see resolve_codes)."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    leftovers = np.flatnonzero(counts[inverse.ravel()] > 1)
    if not len(leftovers):
        return codes
    books = [c.astype(np.float64) for c in codebooks]
    n_levels = len(books)
    occupied: dict[tuple, int] = {}
    for row in map(tuple, codes.tolist()):
        occupied[row] = occupied.get(row, 0) + 1
    for i in leftovers:
        old = tuple(codes[i].tolist())
        if occupied[old] == 1:  # the others of its group have moved already
            continue
        for new in _alternatives(codes[i], residuals[i].astype(np.float64), books, n_levels):
            if new not in occupied:
                occupied[old] -= 1
                occupied[new] = 1
                codes[i] = new
                break
    return codes


def _alternatives(row: np.ndarray, last_residual: np.ndarray, books: list[np.ndarray], n_levels: int):
    """Code tuples for one item, nearest first: at level j = L-2 ... 0, each code of level j by
    distance, greedy codes for the levels below, then every last-level code by distance."""
    def by_distance(r, book):
        return np.argsort(np.einsum("kd,kd->k", book - r, book - r), kind="stable")

    for j in range(n_levels - 1, -1, -1):
        r_j = last_residual + sum((books[l][row[l]] for l in range(j, n_levels - 1)), np.zeros_like(last_residual))
        for c in (by_distance(r_j, books[j]) if j < n_levels - 1 else [None]):
            prefix, r = list(row[:j]), r_j
            if c is not None:
                prefix.append(int(c))
                r = r_j - books[j][c]
                for level in range(j + 1, n_levels - 1):
                    nearest = int(by_distance(r, books[level])[0])
                    prefix.append(nearest)
                    r = r - books[level][nearest]
            for last in by_distance(r, books[-1]):
                yield (*map(int, prefix), int(last))


def _sinkhorn_log_plan(cost: np.ndarray, epsilon: float, n_iters: int = 200) -> np.ndarray:
    """Log of the entropic transport plan between m rows (mass 1/m each) and f columns
    (mass 1/f each), costs rescaled to [0, 1]."""
    span = cost.max() - cost.min()
    log_k = -(cost - cost.min()) / (max(span, 1e-12) * epsilon)
    m, f = cost.shape
    u, v = np.zeros(m), np.zeros(f)
    for _ in range(n_iters):
        u = -np.log(m) - _logsumexp(log_k + v[None, :], axis=1)
        v = -np.log(f) - _logsumexp(log_k + u[:, None], axis=0)
    return log_k + u[:, None] + v[None, :]


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _fitted_encoder(model: Any):
    """*model* as an encoder with ``latent_residuals`` (an RQVAE or RQKMeans as it is; an
    ``RQVAEModule``, a torch module, as the RQVAE holding its weights); None when it is not one."""
    if model is None or hasattr(model, "latent_residuals"):
        return model
    if hasattr(model, "quantizer") and hasattr(model, "state_dict"):
        return RQVAE.from_module(model)
    return None
