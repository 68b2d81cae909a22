"""The quality report's figures, from code counts and a sample of (embedding, codes); numpy only.

Counts (collisions, buckets, code use) come in as small tables of counts, so the same
functions serve a catalog held in memory and one counted exactly by Spark; the neighbour
figures take a sample of rows. Definitions follow :mod:`semid_spark.utils.metrics`
(entropy in nats with its ``+1e-12``, utilisation against the codebook size).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from semid_spark.utils.metrics import _embedding_neighbors


@dataclass(frozen=True)
class DepthCounts:
    """Bucket counts of the prefixes of one depth: how many items share each prefix."""

    depth: int
    n_prefixes: int  # distinct prefixes of this depth
    largest: int  # items in the largest bucket
    sum_pairs: float  # sum over buckets of n_b * (n_b - 1): ordered pairs sharing the prefix


@dataclass
class CodeCounts:
    """Everything the count-based figures need; exact however large the catalog."""

    n_items: int
    depths: list[DepthCounts]  # depth 1..L
    level_counts: list[np.ndarray]  # per level: items per code in use (any order)
    bucket_sizes: dict[int, int]  # full codes: bucket size -> number of buckets of that size
    largest_bucket: str = ""  # the codes of the largest full bucket, joined by "-"

    @classmethod
    def from_codes(cls, codes: np.ndarray) -> "CodeCounts":
        """Counts of an in-memory (N, L) code matrix (the reference the Spark counts are tested against)."""
        codes = np.asarray(codes)
        depths, largest_bucket = [], ""
        for depth in range(1, codes.shape[1] + 1):
            prefixes, counts = np.unique(codes[:, :depth], axis=0, return_counts=True)
            depths.append(DepthCounts(depth, len(counts), int(counts.max()), float((counts * (counts - 1.0)).sum())))
            if depth == codes.shape[1]:
                sizes, n_buckets = np.unique(counts, return_counts=True)
                largest_bucket = "-".join(map(str, prefixes[int(np.argmax(counts))]))
        level_counts = [np.unique(codes[:, lv], return_counts=True)[1] for lv in range(codes.shape[1])]
        return cls(len(codes), depths, level_counts, dict(zip(sizes.tolist(), n_buckets.tolist())), largest_bucket)


@dataclass
class LevelFigures:
    level: int
    codes_used: int
    utilization: float  # codes used / codebook size
    entropy: float  # nats
    perplexity: float  # exp(entropy): the number of equally used codes with the same entropy


def level_figures(counts: CodeCounts, sizes: Sequence[int]) -> list[LevelFigures]:
    out = []
    for level, (per_code, size) in enumerate(zip(counts.level_counts, sizes), start=1):
        p = np.asarray(per_code, dtype=np.float64) / counts.n_items
        entropy = -float(np.sum(p * np.log(p + 1e-12)))
        out.append(LevelFigures(level, len(per_code), len(per_code) / size, entropy, float(np.exp(entropy))))
    return out


def prefix_agreement(x: np.ndarray, codes: np.ndarray, *, k: int = 10, n_queries: int = 1000,
                     seed: int = 42) -> list[float]:
    """Per depth d = 1..L: the mean share of a query's k true nearest neighbours (Euclidean,
    the query itself left out) whose first d codes equal the query's.

    Queries are ``n_queries`` rows drawn with ``seed``; neighbours are searched among all rows
    of *x* (the whole sample). High shares at every depth mean similar items share prefixes.
    """
    x, codes = np.asarray(x), np.asarray(codes)
    if k >= len(x):
        raise ValueError(f"k={k} needs more than {len(x)} rows")
    queries = np.random.RandomState(seed).choice(len(x), min(n_queries, len(x)), replace=False)
    neighbors = _embedding_neighbors(x, queries, k + 1)[:, 1:]  # (q, k)
    same = codes[neighbors] == codes[queries][:, None, :]  # (q, k, L)
    shared_prefix = np.cumprod(same, axis=2)  # 1 while every level so far agrees
    return [float(v) for v in shared_prefix.mean(axis=(0, 1))]


def random_pair_agreement(counts: CodeCounts) -> list[float]:
    """Per depth: the chance that two distinct random items share the prefix (the baseline
    ``prefix_agreement`` should beat)."""
    pairs = counts.n_items * (counts.n_items - 1.0)
    return [d.sum_pairs / pairs if pairs else 0.0 for d in counts.depths]


def projection_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, d) -> (n, 2) float32: the two leading principal components, or UMAP (``umap-learn``)."""
    x = np.asarray(x, dtype=np.float64)
    if method == "umap":
        try:
            import umap
        except ImportError as exc:
            raise ImportError("projection 'umap' needs umap-learn: pip install 'semid-spark[report]' umap-learn") from exc
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x).astype(np.float32)
    if method != "pca":
        raise ValueError(f"projection {method!r}; expected 'pca' or 'umap'")
    centered = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    axes = vt[:2] * np.sign(vt[:2, :1] + 1e-300)  # a fixed sign per axis: the same data, the same picture
    return (centered @ axes.T).astype(np.float32)


@dataclass
class QualityReport:
    """The report's figures; ``to_json`` gives plain types."""

    n_items: int
    n_levels: int
    codebook_sizes: list[int]
    n_unique_codes: int
    collision_rate: float  # 1 - distinct full codes / items
    collision_rate_per_level: list[float]
    largest_bucket: int
    largest_bucket_codes: str
    bucket_sizes: dict[int, int]
    levels: list[LevelFigures]
    sample: dict = field(default_factory=dict)  # metrics.evaluate on the sample, plus its size
    prefix_agreement: list[float] = field(default_factory=list)
    random_pair_agreement: list[float] = field(default_factory=list)
    k: int = 10
    model_sha256: str = ""
    # a written table's IDs: moved_share and counter_share (exact), error_ratio (sampled: reconstruction
    # MSE of the written codes over that of the nearest codes); empty for a catalog's codes
    uniqueness: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = asdict(self)
        out["bucket_sizes"] = {str(s): n for s, n in sorted(self.bucket_sizes.items())}
        return out


def build_report(counts: CodeCounts, sizes: Sequence[int], *, sample: dict | None = None,
                 agreement: Sequence[float] = (), k: int = 10, model_sha256: str = "") -> QualityReport:
    n = counts.n_items
    full = counts.depths[-1]
    return QualityReport(
        n_items=n, n_levels=len(counts.depths), codebook_sizes=list(map(int, sizes)),
        n_unique_codes=full.n_prefixes, collision_rate=1.0 - full.n_prefixes / n,
        collision_rate_per_level=[1.0 - d.n_prefixes / n for d in counts.depths],
        largest_bucket=full.largest, largest_bucket_codes=counts.largest_bucket,
        bucket_sizes=dict(counts.bucket_sizes), levels=level_figures(counts, sizes),
        sample=dict(sample or {}), prefix_agreement=list(agreement),
        random_pair_agreement=random_pair_agreement(counts), k=k, model_sha256=model_sha256,
    )
