"""Two versions of a model on the same items: churn per prefix depth, error and collisions.

What ``semid refit`` reports before it publishes a new version, and ``semid evaluate --compare``
for any two saved models. Numpy only (the job collects a sample of items to the driver first).

- *churn*: for the items, the share whose level-1, level-1..2, …, full code changes from the
  current codes (the table's, or the current model's) to the new version's, unaligned (the new
  model's own code numbers) and aligned (:func:`semid_spark.algorithms.align.align`);
- *error*: each model's mean squared reconstruction error of the items (nearest codes);
- *collisions*: the share of the items whose full code another of these items also gets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from semid_spark.algorithms.align import Alignment, align, churn
from semid_spark.exceptions import InvalidInputError
from semid_spark.utils.metrics import collision_share


@dataclass(frozen=True)
class VersionComparison:
    old_model_sha256: str
    new_model_sha256: str  # the aligned model's (the version that would be published)
    n_items: int
    churn_unaligned: list[float]  # per depth 1..L: share of items whose prefix changes, new model as fitted
    churn_aligned: list[float]  # the same after alignment
    error_old: float  # mean squared reconstruction error per item (summed over dimensions)
    error_new: float
    collision_old: float  # share of the items sharing their full code with another of them
    collision_new: float
    # a reference version's unaligned churn (semid refit: a cold refit, what a plain `semid fit` gives)
    churn_reference: list[float] | None = None
    # once published: the share of the items in both ID tables whose ID string changed, over id_churn_items
    # (keep_ids: 0, no written ID changes; new_table: items keep their string where their code is unchanged)
    id_churn: float | None = None
    id_churn_items: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def markdown(self, title: str = "Model versions on the same items") -> str:
        depths = len(self.churn_aligned)
        heads = [f"1..{d + 1}" if d else "1" for d in range(depths)]
        heads[-1] += " (full ID)"
        lines = [
            f"# {title}",
            "",
            f"Current model `{self.old_model_sha256[:12]}`, new version `{self.new_model_sha256[:12]}`, "
            f"{self.n_items:,} items.",
            "",
            "Share of the items whose prefix changes:",
            "",
            "| new version | " + " | ".join(heads) + " |",
            "|---|" + "---:|" * depths,
            "| unaligned | " + " | ".join(f"{c:.4f}" for c in self.churn_unaligned) + " |",
            "| aligned | " + " | ".join(f"{c:.4f}" for c in self.churn_aligned) + " |",
            *(["| a cold refit (plain `semid fit`), unaligned | "
               + " | ".join(f"{c:.4f}" for c in self.churn_reference) + " |"] if self.churn_reference else []),
            *([f"ID strings changed: {self.id_churn:.4f} of the "
               + (f"{self.id_churn_items:,} items in both ID tables" if self.id_churn_items is not None
                  else "written items (keep_ids: insert-only, no written ID changes)")
               + f" (full codes, on the sampled items: {self.churn_aligned[-1]:.4f}).", ""]
              if self.id_churn is not None else []),
            "",
            "| figure | current | new |",
            "|---|---:|---:|",
            f"| reconstruction error (mean squared, per item) | {self.error_old:.6g} | {self.error_new:.6g} |",
            f"| share of these items sharing a full code | {self.collision_old:.4f} | {self.collision_new:.4f} |",
            "",
        ]
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def compare_versions(old_model, new_model, X, *, old_codes: np.ndarray | None = None, reference=None
                     ) -> tuple[VersionComparison, Alignment]:
    """Compare *new_model* with *old_model* on the items *X* (n, d), and align it.

    *old_codes*: the items' current codes (n, L) when they are known (read from the ID table,
    relocated codes included); default: *old_model*'s nearest codes. *reference*: another new
    model whose unaligned churn is reported beside (``churn_reference``). Returns the comparison
    and the alignment (whose ``model`` is the new version to publish).
    """
    x = np.asarray(X, dtype=np.float32)
    if x.ndim != 2 or not len(x):
        raise InvalidInputError(f"items of shape {x.shape}: expected (n, d) with n >= 1 to compare versions on")
    old_nearest = np.asarray(old_model.encode(x))
    current = old_nearest if old_codes is None else np.asarray(old_codes)
    if current.shape != old_nearest.shape:
        raise InvalidInputError(f"old_codes has shape {current.shape}; the current model gives {old_nearest.shape}")
    alignment = align(old_model, new_model, x, old_codes=current)
    comparison = VersionComparison(
        old_model_sha256=old_model.sha256,
        new_model_sha256=alignment.model.sha256,
        n_items=len(x),
        churn_unaligned=churn(current, alignment.new_codes),
        churn_aligned=churn(current, alignment.aligned_codes),
        error_old=_error(old_model, x, old_nearest),
        error_new=_error(new_model, x, alignment.new_codes),
        collision_old=collision_share(old_nearest),
        collision_new=collision_share(alignment.new_codes),
        churn_reference=None if reference is None else churn(current, reference.encode(x)),
    )
    return comparison, alignment


def _error(model, x: np.ndarray, codes: np.ndarray) -> float:
    recon = np.asarray(model.decode(codes), dtype=np.float64)
    return float(((x.astype(np.float64) - recon) ** 2).sum(axis=1).mean())
