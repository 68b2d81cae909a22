"""semid_spark: semantic IDs for billion-item catalogs on Apache Spark."""

from semid_spark.core import BaseSemanticEncoder, codes_to_ids
from semid_spark.exceptions import NotFittedError, SemanticIdError, ShapeMismatchError

__version__ = "0.1.0"
__all__ = ["BaseSemanticEncoder", "codes_to_ids", "NotFittedError", "SemanticIdError", "ShapeMismatchError", "__version__"]
