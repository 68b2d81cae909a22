"""One BLAS thread for a measurement per core (the executors' Python workers run one each)."""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager

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
