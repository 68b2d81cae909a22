"""Progress bars for the driver-side loops people wait on (fitting, evaluation), with tqdm.

Shown when stderr is a terminal or a notebook (Databricks, Jupyter), hidden in scheduled logs;
``set_progress(True/False)`` (the CLI's ``--verbose`` / ``--quiet``) overrides that.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_forced: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """True: always show bars; False: never; None: when stderr is a terminal or a notebook."""
    global _forced
    _forced = enabled


def progress_enabled() -> bool:
    if _forced is not None:
        return _forced
    if "ipykernel" in sys.modules or "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """*iterable* wrapped in a tqdm bar when progress is on (the bar has ``set_postfix``), else as it is."""
    if not progress_enabled():
        return _Plain(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)


class _Plain:
    """The iterable, with a no-op ``set_postfix`` so callers need not check."""

    def __init__(self, iterable: Iterable[T]) -> None:
        self._it = iterable

    def __iter__(self) -> Iterator[T]:
        return iter(self._it)

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_description(self, *args, **kwargs) -> None:
        pass


class Steps:
    """A bar over the named steps of one task: ``step("sample")`` marks the previous step done."""

    def __init__(self, desc: str, total: int) -> None:
        self._bar, self._desc, self._started = None, desc, False
        if progress_enabled():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)

    def __call__(self, name: str) -> None:
        if self._bar is None:
            return
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_description(f"{self._desc}: {name}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._bar.total - self._bar.n)
            self._bar.close()
