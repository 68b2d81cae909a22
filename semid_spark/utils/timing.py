"""Measurements per core: one BLAS thread (the executors' Python workers run one each), best of a few runs."""

from __future__ import annotations

import contextlib
import logging
import time
from contextlib import AbstractContextManager
from typing import Callable

log = logging.getLogger(__name__)


def one_blas_thread() -> AbstractContextManager:
    """A context in which numpy's BLAS runs one thread; the caller's pools come back when it exits.
    Without threadpoolctl (a node given the wheel alone) BLAS keeps its threads, and rates measured
    inside count every core's work as one's: said in a warning, never an ImportError."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("threadpoolctl is not installed: per-core rates are measured with every BLAS thread "
                    "(pip install threadpoolctl)")
        return contextlib.nullcontext()
    return threadpool_limits(1)


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Smallest wall time of *repeat* calls (the machine is shared and noisy)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
