"""Codebook-size advice: predict, from a sample, the collisions a catalog of a target size would get.

For each choice of levels × codes, RQ-KMeans is fitted on the sample and encodes it. The rows per
full code estimate the code distribution, smoothed for the codes a larger catalog reaches and the
sample did not: those hold the Good-Turing mass f1/n (f1: codes seen once), spread evenly over the
Chao1 estimate of how many there are, f1^2 / 2 f2 (capped by the codes that exist). For N items
drawn from it the expected figures are

* counter share (items whose ID needs a counter) = 1 - E[distinct codes] / N, with
  E[distinct codes] = sum_c 1 - (1 - p_c)^N;
* collision share (items whose code another item also has) = sum_c p_c (1 - (1 - p_c)^(N - 1));
* largest bucket = N * max_c p_c.

With ``uniqueness.strategy: relocate`` (the job's default) an item whose code is taken moves to a
free last-level code of its prefix, so only a prefix's items beyond its K_L last-level codes need
counters: counter share = sum_p E[(N_p - K_L)+] / N, with N_p ~ Poisson(N q_p) over the prefixes'
distribution q (smoothed as the codes' are), and E[(X - K)+] = lambda P(X >= K) - K P(X > K). An
item reaches only ``relocate_candidates`` of its prefix's codes, so where a prefix's items crowd a
few of them, more need counters than this predicts.

Checked against catalogs 4x the sample (synthetic topic mixtures, 2,000 -> 8,000 rows, six
choices from 2x16 to 3x64, two seeds): the counter share came within 0.03 of the real one in
10 of 12 cases, and 0.07-0.08 low for 2x128, whose sample saw most codes once. Numpy only; the CLI's
``semid advise`` draws the sample as the job does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.utils.metrics import collision_share

DEFAULT_CHOICES = ("2x256", "3x256", "4x256", "3x1024")


@dataclass(frozen=True)
class Prediction:
    n_levels: int
    n_clusters: int
    target_rows: int
    sample_rows: int
    sample_collision_share: float  # measured on the sample itself
    collision_share: float  # predicted at target_rows
    counter_share: float  # predicted at target_rows, under the strategy
    largest_bucket: float  # predicted at target_rows
    fit_s: float
    strategy: str = "relocate"  # uniqueness.strategy the counter share is predicted for
    suffix_counter_share: float | None = None  # predicted at target_rows if every item kept its nearest code

    @property
    def choice(self) -> str:
        return f"{self.n_levels}x{self.n_clusters}"

    def as_dict(self) -> dict:
        return {"choice": self.choice, **asdict(self)}


def parse_choice(text: str) -> tuple[int, int]:
    """'3x256' -> (3, 256)."""
    levels, sep, clusters = text.strip().lower().partition("x")
    if not sep or not levels.isdigit() or not clusters.isdigit() or int(levels) < 1 or int(clusters) < 1:
        raise ValueError(f"choice {text!r}: expected LEVELSxCODES, e.g. 3x256")
    return int(levels), int(clusters)


def code_distribution(code_counts: np.ndarray, n_codes: int) -> np.ndarray:
    """Probabilities of the codes seen (rows per code in a sample) and of the unseen ones a larger
    catalog would reach (Good-Turing mass over a Chao1 count of them; at most *n_codes* in all)."""
    counts = np.asarray(code_counts, dtype=np.float64)
    counts = counts[counts > 0]
    n, seen = counts.sum(), len(counts)
    f1, f2 = int((counts == 1).sum()), int((counts == 2).sum())
    unseen = int(min(round(f1 * (f1 - 1) / (2 * (f2 + 1))), max(n_codes - seen, 0)))
    if not unseen:
        return counts / n
    mass = f1 / n
    return np.concatenate([counts / n * (1 - mass), np.full(unseen, mass / unseen)])


def predicted_figures(p: np.ndarray, target_rows: int) -> tuple[float, float, float]:
    """(collision share, counter share, largest bucket) of *target_rows* items drawn from the code
    distribution *p*."""
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    log_miss = np.log1p(-np.minimum(p, 1 - 1e-16))  # log(1 - p), finite when one code holds everything
    distinct = np.sum(-np.expm1(target_rows * log_miss))
    collision = float(np.sum(p * -np.expm1((target_rows - 1) * log_miss)))
    return collision, float(1.0 - distinct / target_rows), float(target_rows * p.max())


def relocated_counter_share(prefix_p: np.ndarray, target_rows: int, last_level_codes: int) -> float:
    """Share of *target_rows* items drawn from the prefix distribution *prefix_p* that find no free
    last-level code of their prefix (each prefix has *last_level_codes*): sum_p E[(N_p - K)+] / N."""
    from scipy.stats import poisson

    lam = target_rows * np.asarray(prefix_p, dtype=np.float64)
    k = last_level_codes
    excess = lam * poisson.sf(k - 1, lam) - k * poisson.sf(k, lam)
    return float(np.clip(excess, 0.0, None).sum() / target_rows)


def advise(x: np.ndarray, target_rows: int, choices: Sequence[tuple[int, int]], *, random_state: int = 0,
           strategy: str = "relocate") -> list[Prediction]:
    """One ``Prediction`` per (levels, codes) choice, from RQ-KMeans fitted on the sample *x* (Lloyd to
    convergence on at most 256 rows a centroid, as faiss trains; greedy, no joint passes: the
    predictions were calibrated on that fit, and on a sample of a few dozen rows a code the passes
    would spread the sample's codes more than the catalog's)."""
    if target_rows < 1:
        raise ValueError(f"target_rows={target_rows}; expected >= 1")
    out = []
    for levels, clusters in choices:
        started = time.perf_counter()
        model = RQKMeans(levels, clusters, random_state=random_state, max_samples_per_cluster=256,
                         inertia_tol=0.0, refine_passes=0).fit(x)
        fit_s = time.perf_counter() - started
        codes = model.encode(x)
        _, counts = np.unique(codes, axis=0, return_counts=True)
        p = code_distribution(counts, clusters ** levels)
        collision, counter, largest = predicted_figures(p, target_rows)
        suffix = counter
        if strategy == "relocate":
            _, prefix_counts = np.unique(codes[:, :-1], axis=0, return_counts=True) if levels > 1 else (None, [len(x)])
            q = code_distribution(np.asarray(prefix_counts), clusters ** (levels - 1))
            counter = relocated_counter_share(q, target_rows, clusters)
        out.append(Prediction(levels, clusters, target_rows, len(x), collision_share(codes),
                              collision, counter, largest, fit_s, strategy, suffix))
    return out


def recommend(predictions: Sequence[Prediction], max_counter_share: float) -> Prediction:
    """The shortest IDs that meet *max_counter_share* (fewest levels, then fewest codes a level);
    when none does, the lowest predicted counter share."""
    meeting = [p for p in predictions if p.counter_share <= max_counter_share]
    if meeting:
        return min(meeting, key=lambda p: (p.n_levels, p.n_clusters))
    return min(predictions, key=lambda p: (p.counter_share, p.n_levels, p.n_clusters))


def render(predictions: Sequence[Prediction], best: Prediction, max_counter_share: float) -> str:
    """A markdown table of the predictions and the recommendation."""
    target = predictions[0].target_rows
    lines = [f"Predicted at {target:,} items from a sample of {predictions[0].sample_rows:,} "
             f"(uniqueness.strategy: {predictions[0].strategy}; goal: counter share <= {max_counter_share}):", "",
             "| levels x codes | sample collision share | collision share | counter share | largest bucket | fit s |",
             "|---|---|---|---|---|---|"]
    for p in predictions:
        mark = " **recommended**" if p is best else ""
        lines.append(f"| {p.choice}{mark} | {p.sample_collision_share:.4f} | {p.collision_share:.4f} | "
                     f"{p.counter_share:.4f} | {p.largest_bucket:,.0f} | {p.fit_s:.1f} |")
    return "\n".join(lines) + "\n"
