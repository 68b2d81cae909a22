"""The errors semid_spark raises on purpose.

``SemanticIdError`` is the root of every error raised deliberately, so callers
can catch ours without catching everything. Each subclass also derives from the
builtin a caller would naturally catch (``ValueError``, ``AttributeError``), and
keeps the names of semantic-id 0.2.5 so code written against it still catches
what it expects.
"""

from __future__ import annotations


class SemanticIdError(Exception):
    """Root of all errors raised on purpose by semid_spark."""


class ConfigError(SemanticIdError, ValueError):
    """Raised for a parameter or configuration value outside its valid range."""


class InvalidInputError(SemanticIdError, ValueError):
    """Raised for input data that cannot be used: NaN/Inf rows, out-of-range codes, bad keys."""


class ShapeMismatchError(InvalidInputError):
    """Raised for input that is not 2-D, is empty, or has the wrong dimension."""


class NotFittedError(SemanticIdError, AttributeError):
    """Raised when a method that needs a fitted model is called before ``fit``."""


class ModelFormatError(SemanticIdError, ValueError):
    """Raised when saved model files are missing, damaged, or of an unknown format."""


class EmptyClusterWarning(UserWarning):
    """Warned when k-means leaves clusters empty after re-seeding (too few distinct points)."""


class DuplicateIdError(InvalidInputError):
    """Raised for duplicate item keys in one call, or IDs that were already issued to other items."""


class CounterOverflowError(InvalidInputError):
    """Raised when more items share one code than the fixed-length counter level can number."""


class ModelMismatchError(SemanticIdError, ValueError):
    """Raised when a store or table holds the IDs of another model than the one in use."""


class StoreError(SemanticIdError):
    """Raised when a collision store cannot be opened or written, or has an unknown schema."""


class ConcurrentRunError(SemanticIdError, RuntimeError):
    """Raised when other runs kept committing to the output table while this one merged, past ``output.max_retries``."""


class QualityGateError(SemanticIdError):
    """Raised before anything is written when a run's IDs fall short of a ``quality`` threshold."""


class MissingExtraError(SemanticIdError, ImportError):
    """Raised when a feature needs an optional package that is not installed (torch for RQ-VAE and
    cuda/mps); the message names the extra to install."""


# The exit status of the `semid` command for each kind of failure: a scheduler can tell a bad input
# (fix the data) from a concurrent run (retry) from a quality gate (look at the model).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT, EXIT_CONCURRENT, EXIT_QUALITY = 0, 1, 2, 3, 4, 5
EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_FAILED: "anything else (a bug, the cluster, the storage): the traceback is printed",
    EXIT_USAGE: "usage or config: a flag, a config key or value, a model path, a missing extra",
    EXIT_INPUT: "bad input: rows (NaN/inf, wrong length, null or duplicate keys), an unreadable input, "
                "a model or table that does not match the input",
    EXIT_CONCURRENT: "another run kept committing to the output table (run again: it inserts what is missing)",
    EXIT_QUALITY: "a quality gate refused the run (quality.*): no ID written (a refused refit writes its churn report only); "
                  "semid advise: no shape tried meets --max-counter-share",
}


def exit_code(exc: BaseException) -> int:
    """The ``semid`` exit status for *exc*."""
    if isinstance(exc, (ConfigError, MissingExtraError, ModelFormatError)):
        return EXIT_USAGE
    if isinstance(exc, (InvalidInputError, ModelMismatchError)):
        return EXIT_INPUT
    if isinstance(exc, ConcurrentRunError):
        return EXIT_CONCURRENT
    if isinstance(exc, QualityGateError):
        return EXIT_QUALITY
    return EXIT_FAILED
