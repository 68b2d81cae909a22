"""Writing the quality report: ``report.md``, ``report.json``, three PNG plots, and
``atlas.parquet`` for Apple's Embedding Atlas (``embedding-atlas atlas.parquet --x x --y y``).

Plots need matplotlib (the ``report`` extra); without it the markdown and JSON are still
written and the report says which plots are missing and why.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Mapping

import numpy as np

from semid_spark.utils.quality import QualityReport

log = logging.getLogger(__name__)

PLOTS = {"bucket_sizes": "bucket_sizes.png", "code_usage": "code_usage.png", "agreement": "agreement_by_depth.png"}


def write_report(report: QualityReport, out_dir: str, *, level_counts: list[np.ndarray] | None = None,
                 title: str = "Semantic ID quality") -> dict[str, str]:
    """Write the markdown, JSON and plots into *out_dir*; returns {kind: path}."""
    os.makedirs(out_dir, exist_ok=True)
    written = {"json": os.path.join(out_dir, "report.json")}
    with open(written["json"], "w", encoding="utf-8") as fh:
        json.dump(report.to_json(), fh, indent=2, default=_plain)
    plots, why_not = _plots(report, out_dir, level_counts)
    written.update(plots)
    written["markdown"] = os.path.join(out_dir, "report.md")
    with open(written["markdown"], "w", encoding="utf-8") as fh:
        fh.write(render_markdown(report, {k: os.path.basename(v) for k, v in plots.items()}, why_not, title))
    return written


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def render_markdown(report: QualityReport, plots: Mapping[str, str], why_not: str, title: str) -> str:
    n_levels = report.n_levels
    lines = [f"# {title}", "",
             f"{report.n_items:,} items, {n_levels} levels of {'/'.join(map(str, report.codebook_sizes))} codes"
             + (f", model sha256 {report.model_sha256[:12]}…" if report.model_sha256 else "") + ".", "",
             "## Collisions and buckets (exact, over every item)", "",
             "| figure | value |", "|---|---|",
             f"| distinct full codes | {report.n_unique_codes:,} |",
             f"| collision rate (1 - distinct / items) | {report.collision_rate:.4f} |",
             f"| collision rate by prefix depth 1..{n_levels} | {_fmt(report.collision_rate_per_level)} |",
             f"| largest bucket | {report.largest_bucket:,} items (codes {report.largest_bucket_codes}) |",
             f"| items alone in their bucket | {report.bucket_sizes.get(1, 0):,} |", ""]
    if report.uniqueness:
        u = report.uniqueness
        lines += ["## Unique IDs (the written table)", "", "| figure | value |", "|---|---|",
                  f"| items moved to a free last-level code of their prefix (exact) | {_fmt(u.get('moved_share'))} |",
                  f"| items whose ID has a counter (exact) | {_fmt(u.get('counter_share'))} |",
                  f"| reconstruction MSE of the written codes / of the nearest codes (sampled) | "
                  f"{_fmt(u.get('error_ratio'))} |", ""]
    lines += ["## Code use per level", "",
             "| level | codes used | utilisation | entropy (nats) | perplexity |", "|---|---|---|---|---|"]
    for lv in report.levels:
        lines.append(f"| {lv.level} | {lv.codes_used} | {lv.utilization:.4f} | {lv.entropy:.4f} | {lv.perplexity:.1f} |")
    if report.prefix_agreement:
        n_sample = report.sample.get("n_samples", 0)
        lines += ["", f"## Neighbour agreement by prefix depth (sampled: {n_sample:,} items)", "",
                  f"Share of a query's {report.k} nearest neighbours in embedding space that share its "
                  "first d codes, against the share for two random items.", "",
                  "| depth | neighbours sharing the prefix | random pair | lift |", "|---|---|---|---|"]
        for depth, (got, chance) in enumerate(zip(report.prefix_agreement, report.random_pair_agreement), start=1):
            lift = f"{got / chance:.1f}x" if chance > 0 else "-"
            lines.append(f"| 1..{depth} | {got:.4f} | {chance:.3g} | {lift} |")
    if report.sample:
        lines += ["", "## semantic-id metrics on the sample (`semid_spark.evaluate`)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in report.sample.items()]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()]
    if why_not:
        lines += ["", f"Plots not drawn: {why_not}"]
    return "\n".join(lines) + "\n"


def _plots(report: QualityReport, out_dir: str, level_counts) -> tuple[dict[str, str], str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}, "matplotlib is not installed (pip install 'semid-spark[report]')"
    paths = {}

    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = sorted(report.bucket_sizes)
    ax.bar(np.arange(len(sizes)), [report.bucket_sizes[s] for s in sizes])
    ax.set_xticks(np.arange(len(sizes)), [str(s) for s in sizes])
    ax.set_yscale("log")
    ax.set_xlabel("items sharing one full code (bucket size)")
    ax.set_ylabel("buckets")
    ax.set_title("Bucket sizes")
    paths["bucket_sizes"] = _save(fig, out_dir, PLOTS["bucket_sizes"])

    fig, ax = plt.subplots(figsize=(6, 4))
    for level, counts in enumerate(level_counts or [], start=1):
        share = np.sort(np.asarray(counts, dtype=np.float64))[::-1] / report.n_items
        ax.plot(np.arange(1, len(share) + 1), share, label=f"level {level}")
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("share of items")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Code usage per level")
    paths["code_usage"] = _save(fig, out_dir, PLOTS["code_usage"])

    if report.prefix_agreement:
        fig, ax = plt.subplots(figsize=(6, 4))
        depth = np.arange(1, len(report.prefix_agreement) + 1)
        ax.bar(depth - 0.2, report.prefix_agreement, width=0.4, label=f"{report.k} nearest neighbours")
        ax.bar(depth + 0.2, report.random_pair_agreement, width=0.4, label="random pair")
        ax.set_xticks(depth, [f"1..{d}" for d in depth])
        ax.set_xlabel("prefix depth")
        ax.set_ylabel("share sharing the query's prefix")
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set_title("Neighbour agreement by prefix depth")
        paths["agreement"] = _save(fig, out_dir, PLOTS["agreement"])
    return paths, ""


def _save(fig, out_dir: str, name: str) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_atlas(path: str, *, keys, semantic_ids, codes: np.ndarray, xy: np.ndarray,
                key_col: str = "item_id", extra: Mapping[str, object] | None = None) -> str:
    """One Parquet file Embedding Atlas opens as it is: the key, the ID, ``level_1..level_L``,
    ``prefix_1..prefix_L`` (strings to colour by), ``x``/``y`` and any extra (text) columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    codes = np.asarray(codes)
    columns: dict[str, object] = {key_col: keys, "semantic_id": semantic_ids}
    for lv in range(codes.shape[1]):
        columns[f"level_{lv + 1}"] = pa.array(codes[:, lv].astype(np.int32))
    for lv in range(codes.shape[1]):
        columns[f"prefix_{lv + 1}"] = pa.array(["-".join(map(str, row)) for row in codes[:, :lv + 1].tolist()])
    columns["x"], columns["y"] = pa.array(xy[:, 0]), pa.array(xy[:, 1])
    for name, values in (extra or {}).items():
        if name not in columns:
            columns[name] = values
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path
