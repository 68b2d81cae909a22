"""semid_spark: semantic IDs for billion-item catalogs on Apache Spark.

The top level mirrors semantic-id 0.2.5's, so ``import semid_spark as semantic_id`` works.
"""

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.algorithms.rq_vae import RQVAE
from semid_spark.core import BaseSemanticEncoder, codes_to_ids
from semid_spark.engine import SemanticIdEngine
from semid_spark.exceptions import NotFittedError, SemanticIdError, ShapeMismatchError
from semid_spark.uniqueness.resolver import SinkhornResolver, UniqueIdResolver
from semid_spark.uniqueness.stores import InMemoryCollisionStore, SQLiteCollisionStore
from semid_spark.utils.metrics import evaluate, find_similar, hierarchical_distance, ndcg_at_k

__version__ = "0.1.0"
__all__ = [
    "__version__", "RQKMeans", "RQVAE", "SemanticIdEngine", "UniqueIdResolver", "SinkhornResolver",
    "InMemoryCollisionStore", "SQLiteCollisionStore", "SemanticIdError", "NotFittedError", "ShapeMismatchError",
    "evaluate", "find_similar", "hierarchical_distance", "ndcg_at_k", "BaseSemanticEncoder", "codes_to_ids",
]
