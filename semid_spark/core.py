"""Shared pieces of every encoder: input validation, ID formatting, the encoder base class.

Nothing here imports torch or pyspark, so the module is safe to import on a Spark
executor or in a notebook without a GPU.
"""

from __future__ import annotations

import inspect
import string
from abc import ABC, abstractmethod
from typing import Callable, Literal, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from semid_spark.exceptions import InvalidInputError, ShapeMismatchError

ArrayLike = Union[np.ndarray, Sequence[Sequence[float]]]
IdFormat = Literal["plain", "token"]
Formatter = Callable[[np.ndarray], str]

TOKEN_LETTERS = string.ascii_lowercase


CHECK_BLOCK_BYTES = 16 * 1024 * 1024  # check_embeddings looks for NaN/Inf in blocks of this many bytes of rows


def check_embeddings(x: ArrayLike, *, dim: int | None = None, name: str = "X") -> np.ndarray:
    """Return *x* (array-like, or a torch tensor on any device) as a C-contiguous float32 array of
    shape (n_items, dim), or raise.

    Raises
    ------
    ShapeMismatchError
        When *x* is ragged, not 2-D, has no rows, or its width is not *dim*.
    InvalidInputError
        When rows hold NaN or Inf (after conversion to float32, so values beyond
        float32's range count as Inf); the message gives how many rows and the first.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, on any device (torch is not imported here)
        x = x.detach().cpu().float().numpy()
    try:
        with np.errstate(over="ignore"):
            arr = np.ascontiguousarray(x, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise ShapeMismatchError(
            f"{name} must be a 2-D array (N, D) of numbers; could not convert it: {exc}"
        ) from None
    if arr.ndim != 2:
        raise ShapeMismatchError(
            f"Expected 2-D input (N, D) for {name}, got a {arr.ndim}-D array of shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ShapeMismatchError(f"{name} must contain at least one sample (N > 0), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ShapeMismatchError(f"Expected D={dim}, got D={arr.shape[1]} for {name} of shape {arr.shape}")
    # by blocks of rows: np.isfinite(arr) whole is one byte per value (a quarter of the rows' memory)
    step = max(1, CHECK_BLOCK_BYTES // max(1, 4 * arr.shape[1]))
    bad_rows = np.concatenate([~np.isfinite(arr[s : s + step]).all(axis=1) for s in range(0, len(arr), step)])
    if n_bad := int(bad_rows.sum()):
        first = int(np.flatnonzero(bad_rows)[0])
        raise InvalidInputError(
            f"{name} contains NaN or Inf values in {n_bad} of {arr.shape[0]} rows (first at row {first})"
        )
    return arr


def check_codes(codes: ArrayLike, *, name: str = "codes", sizes: Sequence[int] | None = None) -> np.ndarray:
    """Return *codes* as a 2-D int64 array (n_items, n_levels), or raise.

    With *sizes* (the codebook size of each level), codes may use at most ``len(sizes)``
    levels and each must lie in ``[0, sizes[level])``.

    Raises
    ------
    ShapeMismatchError
        When *codes* is not 2-D or has no columns.
    InvalidInputError
        When *codes* holds non-integer values.
    """
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ShapeMismatchError(f"Expected 2-D {name} (N, L), got a {arr.ndim}-D array of shape {arr.shape}")
    if arr.shape[1] == 0 and arr.shape[0] > 0:
        raise ShapeMismatchError(f"{name} must have at least one level, got shape {arr.shape}")
    if arr.dtype.kind not in "iu" and arr.size:
        integral = arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))
        if not integral:
            raise InvalidInputError(f"{name} must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if sizes is not None:
        if arr.shape[1] > len(sizes):
            raise InvalidInputError(f"{name} have {arr.shape[1]} levels; this model has {len(sizes)}")
        for level in range(arr.shape[1]):
            k = sizes[level]
            bad = (arr[:, level] < 0) | (arr[:, level] >= k)
            if n_bad := int(bad.sum()):
                raise InvalidInputError(
                    f"{n_bad} {name} at level {level} are outside [0, {k}) (first at row {int(np.flatnonzero(bad)[0])})"
                )
    return arr


def codes_to_ids(
    codes: ArrayLike,
    *,
    sep: str = "-",
    fmt: IdFormat = "plain",
    formatter: Formatter | None = None,
) -> list[str]:
    """Join each row of per-level codes into one semantic ID string.

    Parameters
    ----------
    codes : array of shape (n_items, n_levels), integer
    sep : separator for ``fmt="plain"``
    fmt : ``"plain"`` gives ``"3-9-1"``; ``"token"`` gives ``"<a_3><b_9><c_1>"``, with one
        letter per level that wraps after ``z``
    formatter : callable taking one row of shape (n_levels,) and returning its ID;
        when given, *sep* and *fmt* are ignored

    Examples
    --------
    >>> codes_to_ids(np.array([[3, 9, 1]]))
    ['3-9-1']
    >>> codes_to_ids(np.array([[3, 9, 1]]), fmt="token")
    ['<a_3><b_9><c_1>']
    """
    arr = check_codes(codes)
    if formatter is not None:
        return [formatter(row) for row in arr]
    if fmt == "plain":
        return [sep.join(row) for row in arr.astype(str).tolist()]
    if fmt == "token":
        n_levels = arr.shape[1]
        prefixes = [f"<{TOKEN_LETTERS[lvl % len(TOKEN_LETTERS)]}_" for lvl in range(n_levels)]
        return ["".join(p + c + ">" for p, c in zip(prefixes, row)) for row in arr.astype(str).tolist()]
    raise ValueError(f"unknown fmt {fmt!r}; expected 'plain' or 'token'")


class BaseSemanticEncoder(ABC):
    """Base class of every encoder: subclass it to plug a custom encoder into the engine.

    A subclass implements ``fit``, ``encode``, ``save`` and ``load``; ``decode`` is optional.
    ``semantic_id`` turns codes into strings the same way for every encoder.

    scikit-learn's estimator contract: ``__init__`` stores its arguments under their own names
    and nothing else (``fit`` validates them), so ``get_params``/``set_params`` and
    ``sklearn.base.clone`` work without scikit-learn being installed; fitted state ends in ``_``.
    """

    @classmethod
    def _param_names(cls) -> list[str]:
        """The constructor's parameter names, in order (scikit-learn's ``_get_param_names``)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments as this instance holds them (*deep*: no nested estimators here)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "BaseSemanticEncoder":
        """Set constructor arguments by name (checked at the next ``fit``); returns ``self``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid parameters: {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        """The class and the arguments that differ from their defaults, as scikit-learn prints them."""
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = []
        for name in self._param_names():
            if not hasattr(self, name):  # a subclass of one's own that stores an argument under another name
                continue
            value, default = getattr(self, name), defaults.get(name, inspect.Parameter.empty)
            if default is inspect.Parameter.empty or not (value is default or _same(value, default)):
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    @property
    def codebook_sizes(self) -> list[int]:
        """Codes per level of the fitted codebooks (``codebooks_``, which a subclass sets in ``fit``)."""
        return [len(books) for books in self.codebooks_]

    @abstractmethod
    def fit(self, X: ArrayLike, *, device: str = "cpu") -> "BaseSemanticEncoder":
        """Learn the codebooks from embeddings of shape (N, D); return ``self``."""

    @abstractmethod
    def encode(self, X: ArrayLike, *, device: str = "cpu", batch_size: int | None = None) -> np.ndarray:
        """Map embeddings of shape (N, D) to int32 codes of shape (N, L)."""

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Approximate the embeddings of shape (N, D) that *codes* stand for."""
        raise NotImplementedError(f"{type(self).__name__} does not implement decode")

    def semantic_id(
        self,
        codes: np.ndarray,
        *,
        sep: str = "-",
        fmt: IdFormat = "plain",
        formatter: Formatter | None = None,
    ) -> list[str]:
        """Format codes of shape (N, L) as ID strings; see :func:`codes_to_ids`."""
        return codes_to_ids(codes, sep=sep, fmt=fmt, formatter=formatter)

    @abstractmethod
    def save(self, path: str) -> None:
        """Write the model to the directory *path* (created if absent)."""

    @classmethod
    @abstractmethod
    def load(cls, path: str, *, device: str = "cpu") -> "BaseSemanticEncoder":
        """Read a model written by ``save``."""


@runtime_checkable
class FittedEncoder(Protocol):
    """What the Spark job needs of a fitted encoder, beyond ``BaseSemanticEncoder``'s fit/encode/save/load:
    its codebooks and their sizes per level, the embedding length it takes, its digest (stamped on
    every row it assigns) and its bytes (shipped to executors). ``RQKMeans`` and ``RQVAE`` are both."""

    codebooks_: list[np.ndarray]  # L arrays of shape (K_l, d_l)
    n_features_in_: int  # D, the embedding length

    @property
    def codebook_sizes(self) -> list[int]: ...

    @property
    def sha256(self) -> str: ...

    def to_bytes(self) -> bytes: ...

    def encode(self, X: ArrayLike, *, device: str = "cpu", batch_size: int | None = None) -> np.ndarray: ...


def _same(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):  # arrays and the like
        return False
