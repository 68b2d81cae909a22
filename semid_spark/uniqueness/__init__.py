"""Unique IDs: the collision resolver and its stores (single machine; the Spark job ranks in a window)."""

from semid_spark.uniqueness.resolver import BaseResolver, UniqueIdResolver
from semid_spark.uniqueness.stores import CollisionStore, InMemoryCollisionStore, SQLiteCollisionStore

__all__ = ["BaseResolver", "UniqueIdResolver", "CollisionStore", "InMemoryCollisionStore", "SQLiteCollisionStore"]
