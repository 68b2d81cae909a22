"""One BLAS thread for a measurement per core (the executors' Python workers run one each)."""

from __future__ import annotations

from contextlib import AbstractContextManager


def one_blas_thread() -> AbstractContextManager:
    """A context in which numpy's BLAS runs one thread; the caller's pools come back when it exits."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)
