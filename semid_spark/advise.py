"""Codebook-shape advice: predict, from a sample, the counters a catalog of a target size would get.

Each shape (levels x codes, or codes per level) is RQ-KMeans fitted on the sample, which it encodes;
its encode rate on one core is timed. The rows per full code estimate the code distribution,
smoothed for a larger catalog (``code_distribution``: Good-Turing's mass for the unseen codes over a
Chao1 count of them, adjusted counts for the rare seen ones). For N items drawn from it

* collision share (items whose code another item also has) = sum_c p_c (1 - (1 - p_c)^(N - 1));
* counter share under ``suffix`` = 1 - E[distinct codes] / N, E[distinct] = sum_c 1 - (1 - p_c)^N;
* largest bucket: the largest m that at least half a code is expected to hold (Poisson counts).

Under ``relocate`` (the job's default) an item whose code is taken moves to a free last-level code of
its prefix among its ``relocate_candidates`` nearest, so counters come from prefixes whose items crowd
those candidates. A Poisson excess over each prefix's last-level codes, sum_p E[(N_p - K_L)+] / N,
misses that crowding: on real text (words, 3x256, 16x the sample) it predicted 0.0001 where 0.093 of
items got counters. So the counters are simulated: Poisson items per prefix, each a bootstrap draw
of the sample's items of that prefix with its own candidates, placed by the job's own assignment
(``simulated_counter_share``). ``semid bench --advice`` checks the predictions against the same model
on catalogs 4x and 16x the sample (the README gives its figures). Numpy only; the CLI's
``semid advise`` and ``model.n_clusters: auto`` draw the sample as the job's fit does.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.uniqueness.relocate import N_CANDIDATES, assign_last_level, encode_with_candidates
from semid_spark.utils.metrics import collision_share
from semid_spark.utils.timing import best_of, one_blas_thread

# Uniform and shrinking shapes from 65,536 full codes to 5.5e11, in the order of their encode cost.
DEFAULT_SHAPES = ("2x256", "3x256", "4x256", "3x1024", "2048/1024/512/256", "4x2048", "3x4096", "3x8192")
ENCODE_TIMING_ROWS = 16_384  # sample rows encoded on one core to time it
DEFAULT_MAX_COUNTER_SHARE = 0.001  # the goal a recommendation meets: 1 item in 1,000 with a counter
# Items a relocation is simulated on, at most (prefixes are sampled beyond): the assignment costs ~3 us an
# item in prefixes of a few items, ~100 us where prefixes are full (3x1024 at 10^9), so 10 s at worst
SIMULATED_ITEMS = 100_000
# Lloyd iterations of the advice's fit: the predictions need the sample's code distribution, not a converged
# fit. 3x1024 on 200k x 128 synthetic rows: 100 iterations (levels 2 and 3 converged at 70 and 93) fitted in
# 73.8 s to MSE 9.3074, 20 in 36.6 s to 9.3231, 10 in 26.4 s to 9.3340
ADVICE_MAX_ITER = 20
CROWDED = 8  # a prefix holding more than this many times its last-level codes is simulated with that many


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x4096' -> (4096, 4096, 4096); '2048/1024/512' -> (2048, 1024, 512): codes per level."""
    text = text.strip().lower()
    try:
        if "x" in text:
            levels, clusters = (int(part) for part in text.split("x"))
            sizes = (clusters,) * levels
        else:
            sizes = tuple(int(part) for part in text.split("/"))
    except ValueError:
        sizes = ()
    if not sizes or any(k < 2 for k in sizes):
        raise ValueError(f"shape {text!r}: expected LEVELSxCODES (3x4096) or codes per level (2048/1024/512), "
                         "at least 2 codes a level")
    return sizes


def shape_name(sizes: Sequence[int]) -> str:
    """(4096, 4096, 4096) -> '3x4096'; (2048, 1024, 512) -> '2048/1024/512'."""
    return f"{len(sizes)}x{sizes[0]}" if len(set(sizes)) == 1 else "/".join(map(str, sizes))


def encode_cost(sizes: Sequence[int]) -> int:
    """Codewords a row is compared with (its encode costs 2·d·ΣK flops): the order shapes are tried in."""
    return sum(sizes)


def cheapest_first(shapes: Sequence[str | Sequence[int]]) -> list[tuple[int, ...]]:
    """Shapes ('3x256', '2048/1024/512' or codes per level) as codes per level, in the order they are
    tried: fewest codewords a row is compared with, then fewest levels."""
    sizes = (parse_shape(s) if isinstance(s, str) else tuple(int(k) for k in s) for s in shapes)
    return sorted(sizes, key=lambda s: (encode_cost(s), len(s)))


@dataclass(frozen=True)
class Prediction:
    sizes: tuple[int, ...]
    target_rows: int
    sample_rows: int
    sample_collision_share: float | None  # measured on the sample itself
    collision_share: float  # predicted at target_rows
    counter_share: float  # predicted at target_rows, under the strategy
    largest_bucket: float  # predicted at target_rows
    fit_s: float  # the fit on the sample, on this driver
    strategy: str = "relocate"  # uniqueness.strategy the counter share is predicted for
    suffix_counter_share: float | None = None  # predicted at target_rows if every item kept its nearest code
    encode_rows_per_core_s: float | None = None  # measured on the sample, one BLAS thread
    encode_core_hours: float | None = None  # target_rows at that rate
    relocation_core_hours: float | None = None  # candidates and assignment for target_rows (see predict_from)
    fitted: bool = True  # False: not tried (see note); the shares are then lower bounds
    note: str = ""

    @property
    def choice(self) -> str:
        return shape_name(self.sizes)

    @property
    def n_levels(self) -> int:
        return len(self.sizes)

    @property
    def n_clusters(self) -> int | list[int]:
        """model.n_clusters for this shape: one size, or one per level."""
        return self.sizes[0] if len(set(self.sizes)) == 1 else list(self.sizes)

    @property
    def full_codes(self) -> int:
        return math.prod(self.sizes)

    @property
    def core_hours(self) -> float:
        """What the shape costs a first run of target_rows: the fit on the driver (all its cores), the
        encode and the relocation on executors' cores."""
        return (self.fit_s * (os.cpu_count() or 1) / 3600 + (self.encode_core_hours or 0.0)
                + (self.relocation_core_hours or 0.0))

    def as_dict(self) -> dict:
        return {"choice": self.choice, "n_levels": self.n_levels, "n_clusters": self.n_clusters,
                **asdict(self), "sizes": list(self.sizes), "core_hours": self.core_hours}


@dataclass(frozen=True)
class CodeDistribution:
    """The smoothed code distribution of a sample, in memory that grows with the codes it saw, never
    with the K^L codes that exist: the unseen codes all have one probability, so they are one count."""

    seen: np.ndarray  # (n_seen,) float64: the probability of each code the sample saw, in its order
    unseen: int = 0  # codes the sample did not see that a larger catalog reaches (Chao1, capped)
    unseen_p: float = 0.0  # the probability of each of them

    def weighted(self) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, how many codes have each): the seen codes one each, then the unseen."""
        if not self.unseen:
            return self.seen, np.ones(len(self.seen))
        return np.append(self.seen, self.unseen_p), np.append(np.ones(len(self.seen)), float(self.unseen))

    @property
    def total(self) -> float:
        return float(self.seen.sum() + self.unseen * self.unseen_p)


def code_distribution(code_counts: np.ndarray, n_codes: int) -> CodeDistribution:
    """Probabilities of the codes seen (rows per code in a sample, in their order) and of the unseen
    ones a larger catalog would reach (at most *n_codes* codes in all).

    The unseen codes hold the Good-Turing mass f1 / n (f1: codes seen once), spread evenly over the
    Chao1 estimate of how many there are, f1 (f1 - 1) / 2 (f2 + 1). The seen codes share the rest in
    proportion to Good-Turing's adjusted counts r* = (r + 1) f_{r+1} / f_r for the small r whose
    neighbour count f_{r+1} is at least ten codes (noisier beyond), their raw counts above: a code seen
    once is less likely than 1 / n, a crowded code keeps its weight."""
    counts = np.asarray(code_counts, dtype=np.float64)
    counts = counts[counts > 0]
    n, seen = counts.sum(), len(counts)
    f1, f2 = int((counts == 1).sum()), int((counts == 2).sum())
    unseen = int(min(f1 * (f1 - 1) // (2 * (f2 + 1)), max(n_codes - seen, 0)))
    if not unseen:
        return CodeDistribution(counts / n)
    r = counts.astype(np.int64)
    f = np.bincount(r, minlength=r.max() + 2)
    adjusted = counts.copy()
    for v in range(1, r.max() + 1):
        if f[v + 1] < 10:  # f[v] > 0: f1 > 0 here, and each later v had f[v] >= 10
            break
        adjusted[r == v] = (v + 1) * f[v + 1] / f[v]
    mass = f1 / n
    return CodeDistribution(adjusted / adjusted.sum() * (1 - mass), unseen, mass / unseen)


def _weighted(p, times) -> tuple[np.ndarray, np.ndarray]:
    """(p, times) of a ``CodeDistribution`` or of plain probabilities, one code each, zeros dropped."""
    if isinstance(p, CodeDistribution):
        p, times = p.weighted()
    p = np.asarray(p, dtype=np.float64)
    times = np.ones(len(p)) if times is None else np.asarray(times, dtype=np.float64)
    keep = p > 0
    return p[keep], times[keep]


def predicted_figures(p: CodeDistribution | np.ndarray, target_rows: int) -> tuple[float, float, float]:
    """(collision share, counter share, largest bucket) of *target_rows* items drawn from the code
    distribution *p* (a ``CodeDistribution``, or one probability per code)."""
    p, times = _weighted(p, None)
    log_miss = np.log1p(-np.minimum(p, 1 - 1e-16))  # log(1 - p), finite when one code holds everything
    distinct = np.sum(times * -np.expm1(target_rows * log_miss))
    collision = float(np.sum(times * p * -np.expm1((target_rows - 1) * log_miss)))
    return collision, float(1.0 - distinct / target_rows), float(largest_bucket(p, target_rows, times))


def largest_bucket(p: np.ndarray, target_rows: int, times: np.ndarray | None = None) -> int:
    """The largest bucket *target_rows* items drawn from *p* (*times* codes of each probability; one
    each by default) are likely to have: the largest m such that the expected number of codes holding
    >= m items (Poisson counts) is at least one half. Where the smoothing spreads the mass over many
    unseen codes, N·max p would say far less than one item."""
    from scipy.stats import poisson

    p, times = _weighted(p, times)
    values, where = np.unique(p, return_inverse=True)
    times = np.bincount(where.ravel(), weights=times)
    lam = target_rows * values

    def codes_holding(m: int) -> float:
        return float(np.sum(times * poisson.sf(m - 1, lam)))

    low, high = 1, 2
    while codes_holding(high) >= 0.5:
        low, high = high, high * 2
    while high - low > 1:  # codes_holding(low) >= 0.5 > codes_holding(high)
        mid = (low + high) // 2
        low, high = (mid, high) if codes_holding(mid) >= 0.5 else (low, mid)
    return low


def relocated_counter_share(prefix_p: CodeDistribution | np.ndarray, target_rows: int, last_level_codes: int) -> float:
    """Share of *target_rows* items drawn from the prefix distribution *prefix_p* that find no free
    last-level code of their prefix (each prefix has *last_level_codes*): sum_p E[(N_p - K)+] / N."""
    from scipy.stats import poisson

    p, times = _weighted(prefix_p, None)
    lam = target_rows * p
    k = last_level_codes
    excess = lam * poisson.sf(k - 1, lam) - k * poisson.sf(k, lam)
    return float((times * np.clip(excess, 0.0, None)).sum() / target_rows)


def advise(x: np.ndarray, target_rows: int, shapes: Sequence[str | Sequence[int]], *, random_state: int = 0,
           strategy: str = "relocate", max_counter_share: float | None = None,
           stop_when_met: bool = True, n_candidates: int = N_CANDIDATES) -> list[Prediction]:
    """One ``Prediction`` per shape ('3x256', '2048/1024/512' or codes per level), cheapest first.

    Each is RQ-KMeans fitted on the sample *x* (``advice_model``: ``ADVICE_MAX_ITER`` Lloyd iterations
    on at most 256 rows a centroid, as faiss trains; greedy, no joint passes: on a sample of a few
    dozen rows a code the passes would spread the sample's codes more than the catalog's), then timed
    encoding up to ``ENCODE_TIMING_ROWS`` of the sample on one core.

    With *max_counter_share*, a shape with fewer full codes than that share allows is not fitted
    (``fitted=False``, its shares the floor 1 - codes / target_rows), and with *stop_when_met* the
    first shape that meets it ends the search (they are tried cheapest first).
    """
    if target_rows < 1:
        raise ValueError(f"target_rows={target_rows}; expected >= 1")
    out = []
    for sizes in cheapest_first(shapes):
        floor = max(0.0, 1.0 - math.prod(sizes) / target_rows)  # more items than codes: the rest get counters
        too_few = max_counter_share is not None and floor > max_counter_share
        if too_few or max(sizes) > len(x):
            note = (f"{math.prod(sizes):,} full codes for {target_rows:,} items" if too_few
                    else f"a sample of {len(x):,} rows cannot fit {max(sizes):,} codes a level")
            out.append(Prediction(sizes, target_rows, len(x), None, floor, floor, target_rows / math.prod(sizes),
                                  0.0, strategy, floor, fitted=False, note=note))
            continue
        out.append(predict_shape(x, target_rows, sizes, random_state=random_state, strategy=strategy,
                                 n_candidates=n_candidates))
        if stop_when_met and max_counter_share is not None and out[-1].counter_share <= max_counter_share:
            break
    return out


def predict_shape(x: np.ndarray, target_rows: int, sizes: tuple[int, ...], *, random_state: int,
                  strategy: str, n_candidates: int = N_CANDIDATES) -> Prediction:
    """One shape's fit on the sample, its encode rate on one core, and its figures at *target_rows*."""
    started = time.perf_counter()
    model = advice_model(sizes, random_state).fit(x)
    return predict_with(model, x, target_rows, fit_s=time.perf_counter() - started, strategy=strategy,
                        n_candidates=n_candidates, random_state=random_state)


def advice_model(sizes: Sequence[int], random_state: int) -> RQKMeans:
    """The fit the predictions are made with (see ``advise``), unfitted."""
    return RQKMeans(len(sizes), list(sizes), random_state=random_state, max_samples_per_cluster=256,
                    max_iter=ADVICE_MAX_ITER, inertia_tol=0.0, refine_passes=0)


@dataclass(frozen=True)
class SampleCodes:
    """What a fitted model makes of the sample, whatever the target size: its codes, the relocation
    candidates and distances (under ``relocate``), and seconds per row on one core."""

    sizes: tuple[int, ...]
    codes: np.ndarray  # (n, L)
    cand: np.ndarray | None  # (n, T) last-level candidates, None under suffix
    dist: np.ndarray | None  # (n, T)
    encode_s_per_row: float
    candidates_s_per_row: float  # the extra of an encode pass that also finds the candidates


def sample_codes(model: RQKMeans, x: np.ndarray, *, strategy: str, n_candidates: int = N_CANDIDATES) -> SampleCodes:
    """Encode the sample *x* (with candidates under ``relocate``) and time, on one core as an executor's
    Python worker runs, the encode of up to ``ENCODE_TIMING_ROWS`` of its rows (best of two) and the
    same rows encoded with their candidates (the job's encode pass under ``relocate``)."""
    sizes = tuple(len(book) for book in model.codebooks_)
    relocating = strategy == "relocate"
    codes, cand, dist = encode_with_candidates(model, x, n_candidates) if relocating else (model.encode(x), None, None)
    timed = x[:ENCODE_TIMING_ROWS]
    with one_blas_thread():
        encode_s = best_of(lambda: model.encode(timed), 2)
        candidates_s = best_of(lambda: encode_with_candidates(model, timed, n_candidates), 2) if relocating else encode_s
    return SampleCodes(sizes, codes, cand, dist, encode_s / len(timed), max(candidates_s - encode_s, 0.0) / len(timed))


def predict_with(model: RQKMeans, x: np.ndarray, target_rows: int, *, fit_s: float, strategy: str,
                 n_candidates: int = N_CANDIDATES, random_state: int = 0) -> Prediction:
    """The figures at *target_rows* of *model* (fitted on the sample *x* in *fit_s*)."""
    measured = sample_codes(model, x, strategy=strategy, n_candidates=n_candidates)
    return predict_from(measured, target_rows, fit_s=fit_s, strategy=strategy, random_state=random_state)


def predict_from(measured: SampleCodes, target_rows: int, *, fit_s: float, strategy: str,
                 random_state: int = 0) -> Prediction:
    """The figures at *target_rows* from the sample's codes and timings.

    Costs: the encode at the measured rate; relocation's, the candidates' extra for every item plus
    the simulated assignment's seconds per item for the items that share a code (collision share x N)."""
    sizes, codes = measured.sizes, measured.codes
    _, counts = np.unique(codes, axis=0, return_counts=True)
    p = code_distribution(counts, math.prod(sizes))
    collision, counter, largest = predicted_figures(p, target_rows)
    suffix, relocation_h = counter, 0.0
    if strategy == "relocate":
        simulated, assign_s_per_item = simulated_counter_share(codes, measured.cand, measured.dist, target_rows, sizes,
                                                               seed=random_state)
        counter = min(simulated, suffix)
        relocation_h = target_rows * (measured.candidates_s_per_row + collision * assign_s_per_item) / 3600
    rate = 1 / measured.encode_s_per_row
    return Prediction(sizes, target_rows, len(codes), collision_share(codes), collision, counter, largest, fit_s,
                      strategy, suffix, rate, target_rows / rate / 3600, relocation_h)


def simulated_counter_share(codes: np.ndarray, cand: np.ndarray, dist: np.ndarray, target_rows: int,
                            sizes: Sequence[int], *, seed: int, budget: int = SIMULATED_ITEMS) -> tuple[float, float]:
    """(the share of *target_rows* items left with a counter by relocation, the assignment's seconds
    per item placed), simulated from the sample's codes (n, L) and last-level candidates and distances
    (n, T) (``encode_with_candidates``).

    Each prefix the sample saw gets Poisson(N q_p) items (q: the smoothed prefix distribution). An
    item is a sample item of its prefix drawn at random (or, with the Good-Turing chance of a code
    the prefix's sample did not show, of any prefix: the last level's codebook is shared by every
    prefix), whose last-level code and candidates it keeps. The job's own assignment
    (``assign_last_level``) places them. A prefix of more than ``CROWDED`` x K_last items is simulated
    with that many, the rest counted as counters; beyond *budget* items, prefixes are sampled and
    their counters weighted. Prefixes the sample did not see take the Poisson excess of
    ``relocated_counter_share``: they hold few items."""
    n, k = len(codes), int(sizes[-1])
    rng = np.random.default_rng(seed)
    if codes.shape[1] > 1:
        _, prefix, seen = np.unique(codes[:, :-1], axis=0, return_inverse=True, return_counts=True)
        prefix = prefix.ravel()
    else:
        prefix, seen = np.zeros(n, dtype=np.int64), np.array([n])
    q = code_distribution(seen, math.prod(sizes[:-1]))
    unseen = CodeDistribution(np.empty(0), q.unseen, q.unseen_p)  # the prefixes the sample did not see
    unseen_counters = relocated_counter_share(unseen, target_rows, k) * target_rows
    items = rng.poisson(target_rows * q.seen)
    simulated = np.minimum(items, CROWDED * k)
    keep_rate = min(1.0, budget / max(int(simulated.sum()), 1))
    kept = np.flatnonzero((rng.random(len(seen)) < keep_rate) & (simulated > 0))
    if not len(kept):
        return unseen_counters / target_rows, 0.0
    by_prefix, starts = _grouped(prefix, len(seen))
    last = codes[:, -1].astype(np.int64)
    _, last_pos = np.unique(np.stack([prefix, last], axis=1), axis=0, return_inverse=True)
    once = np.bincount(last_pos.ravel())[last_pos.ravel()] == 1  # the item's code is a singleton of its prefix
    novel = np.bincount(prefix, weights=once, minlength=len(seen)) / seen  # Good-Turing: a code unseen there
    owner = np.repeat(kept, simulated[kept])
    pick = by_prefix[starts[owner] + (rng.random(len(owner)) * seen[owner]).astype(np.int64)]
    anywhere = rng.random(len(owner)) < novel[owner]
    pick[anywhere] = rng.integers(0, n, int(anywhere.sum()))
    code = last[pick]
    started = time.perf_counter()
    _, unplaced = assign_last_level(np.stack([owner, code], axis=1), cand[pick], dist[pick],
                                    np.arange(len(owner)), np.empty((0, 2), dtype=np.int64), k)
    assign_s = time.perf_counter() - started
    counters = (unplaced.sum() + (items[kept] - simulated[kept]).sum()) / keep_rate
    return float(min(counters + unseen_counters, target_rows) / target_rows), assign_s / len(owner)


def _grouped(labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(row indices sorted by label, the first position of each label in it)."""
    order = np.argsort(labels, kind="stable")
    return order, np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=n_labels))[:-1]])


def recommend(predictions: Sequence[Prediction], max_counter_share: float) -> Prediction:
    """The cheapest shape that meets *max_counter_share* (fewest core-hours: fit, encode, relocation;
    fewer levels, the shorter IDs, where they tie); when none does, the fitted one with the lowest
    predicted counter share."""
    fitted = [p for p in predictions if p.fitted] or list(predictions)
    meeting = [p for p in fitted if p.counter_share <= max_counter_share]
    if meeting:
        return min(meeting, key=lambda p: (p.core_hours, p.n_levels))
    return min(fitted, key=lambda p: (p.counter_share, p.core_hours, p.n_levels))


def render(predictions: Sequence[Prediction], best: Prediction, max_counter_share: float,
           not_tried: Sequence[str] = ()) -> str:
    """A markdown table of the predictions, the recommendation and why."""
    target = predictions[0].target_rows
    lines = [f"Predicted at {target:,} items from a sample of {predictions[0].sample_rows:,} "
             f"(uniqueness.strategy: {predictions[0].strategy}; goal: counter share <= {max_counter_share}; "
             "cheapest shape first):", "",
             "| shape | full codes | sample collision share | collision share | counter share | largest bucket "
             "| fit s | encode rows/s/core | encode core-h | relocation core-h | core-h in all |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in predictions:
        mark = (" **recommended**" if best.counter_share <= max_counter_share else " **closest**") if p is best else ""
        if not p.fitted:
            lines.append(f"| {p.choice}{mark} | {p.full_codes:,} | not fitted: {p.note} | ≥ {p.collision_share:.4f} | "
                         f"≥ {p.counter_share:.4f} | ≥ {p.largest_bucket:,.0f} | | | | | |")
            continue
        lines.append(f"| {p.choice}{mark} | {p.full_codes:,} | {p.sample_collision_share:.4f} | "
                     f"{p.collision_share:.4f} | {p.counter_share:.4f} | {p.largest_bucket:,.0f} | {p.fit_s:.1f} | "
                     f"{p.encode_rows_per_core_s:,.0f} | {p.encode_core_hours:,.2f} | "
                     f"{p.relocation_core_hours or 0.0:,.2f} | {p.core_hours:,.2f} |")
    lines += ["", why(predictions, best, max_counter_share)]
    if not_tried:
        lines += ["", f"Not tried (each compares a row with more codewords than {best.choice}, "
                      f"which meets the goal): {', '.join(not_tried)}."]
    return "\n".join(lines) + "\n"


def why(predictions: Sequence[Prediction], best: Prediction, max_counter_share: float) -> str:
    """One sentence: why *best* is recommended, or what would meet the goal when nothing does."""
    if best.counter_share > max_counter_share:
        dearest = max(encode_cost(p.sizes) for p in predictions)
        target = best.target_rows
        larger = [s for s in map(parse_shape, DEFAULT_SHAPES)
                  if encode_cost(s) > dearest and 1 - math.prod(s) / target <= max_counter_share][:2]
        step = f"--shapes {','.join(map(shape_name, larger))}" if larger else "larger shapes (--shapes)"
        return (f"No shape tried meets the goal: {best.choice} comes closest, {best.counter_share:.4f} of the items "
                f"would need a counter. Try {step}, a larger sample (model.sample_size) or a looser "
                f"--max-counter-share.")
    cheaper = [p for p in predictions if p.fitted and p is not best and p.core_hours < best.core_hours]
    too_few = [p.choice for p in predictions if not p.fitted]
    reason = (f"{best.choice}: the cheapest shape whose predicted counter share ({best.counter_share:.4f}) meets "
              f"the goal, {best.core_hours:,.2f} core-hours for {best.target_rows:,} items")
    if cheaper:
        reason += "; cheaper but short of it: " + ", ".join(f"{p.choice} ({p.counter_share:.4f})" for p in cheaper)
    if too_few:
        reason += f"; {', '.join(too_few)} not fitted (see the table)"
    return reason + "."


@dataclass(frozen=True)
class Advice:
    """What ``choose_shape`` tried, and the shape it recommends."""

    predictions: tuple[Prediction, ...]
    recommended: Prediction
    max_counter_share: float
    not_tried: tuple[str, ...] = ()  # dearer than the recommendation, which meets the goal

    @property
    def meets_goal(self) -> bool:
        return self.recommended.counter_share <= self.max_counter_share

    @property
    def markdown(self) -> str:
        return render(self.predictions, self.recommended, self.max_counter_share, self.not_tried)

    def as_dict(self) -> dict:
        return {"recommended": self.recommended.choice if self.meets_goal else None,
                "closest": self.recommended.choice, "n_clusters": self.recommended.n_clusters,
                "meets_goal": self.meets_goal, "max_counter_share": self.max_counter_share, "not_tried": list(self.not_tried),
                "predictions": [p.as_dict() for p in self.predictions]}

    def record(self) -> dict:
        """What a model fitted with ``n_clusters: auto`` keeps in its metadata about the choice."""
        best = self.recommended
        return {"chosen": best.choice, "target_rows": best.target_rows, "sample_rows": best.sample_rows,
                "max_counter_share": self.max_counter_share, "predicted_counter_share": best.counter_share,
                "predicted_collision_share": best.collision_share, "strategy": best.strategy,
                "tried": {p.choice: (round(p.counter_share, 6) if p.fitted else None) for p in self.predictions}}


def choose_shape(x: np.ndarray, target_rows: int, *, shapes: Sequence[str | Sequence[int]] | None = None,
                 n_levels: int | None = None, max_counter_share: float = DEFAULT_MAX_COUNTER_SHARE,
                 random_state: int = 0, strategy: str = "relocate", n_candidates: int = N_CANDIDATES) -> Advice:
    """The advice for *target_rows* items: the given *shapes* all tried, or by default those of
    ``DEFAULT_SHAPES`` (with *n_levels*: of that many levels) cheapest first until one meets the goal."""
    given = shapes is not None
    if not given:
        shapes = [s for s in map(parse_shape, DEFAULT_SHAPES) if n_levels is None or len(s) == n_levels]
        if not shapes:  # a depth the defaults lack: their sizes at that depth
            shapes = [(k,) * n_levels for k in (256, 1024, 4096, 8192)]
    predictions = advise(x, target_rows, shapes, random_state=random_state, strategy=strategy,
                         max_counter_share=max_counter_share, stop_when_met=not given, n_candidates=n_candidates)
    tried = {p.sizes for p in predictions}
    not_tried = tuple(shape_name(s) for s in cheapest_first(shapes) if s not in tried)
    return Advice(tuple(predictions), recommend(predictions, max_counter_share), max_counter_share, not_tried)
