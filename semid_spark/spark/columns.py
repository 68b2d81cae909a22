"""Column names of the job.

The output table holds: the item key (its input type), semantic_id, codes (array<int>),
counter, relocated, model_sha256, run_id and assigned_at.
"""

from __future__ import annotations

from pyspark.sql import types as T

CODES, COUNTER, SEMANTIC_ID = "codes", "counter", "semantic_id"
MODEL_SHA, RUN_ID, ASSIGNED_AT, REASON = "model_sha256", "run_id", "assigned_at", "reject_reason"
RELOCATED = "relocated"  # the item moved to a free last-level code of its prefix (uniqueness.strategy: relocate)
CANDIDATES, DISTANCES = "_candidates", "_distances"  # encode's last-level candidates for relocation
PROBLEM = "_problem"  # encode's flag for a row it could not encode (0: encoded)
KEY_TYPES = (T.StringType, T.LongType, T.IntegerType)

