"""ID quality on real text: counters, moved items and error, ``suffix`` against ``relocate`` and faiss RQ.

Run: ``make bench-quality`` (installs the ``example`` and ``compare`` extras). The catalog is real
English text embedded offline by WordLlama (its 256-d model ships in its wheel; centred and unit
length, as ``make example`` does):

- ``--corpus sentences`` (default): every distinct sentence of 40-300 characters in the docstrings
  of the Python standard library and of the installed packages (~155k with the project's
  dependencies; the count and a digest of the list are written beside the figures);
- ``--corpus words``: the most frequent alphabetic words of wordfreq's large English list.

One RQ-KMeans (3 x 256, default parameters) is fitted on it; then, on the same rows:

- ``suffix``: every item keeps its nearest code; the items after the first of a code get counters;
- ``relocate``: colliding items move to free last-level codes of their prefix (the job's default);
- faiss's greedy ``ResidualQuantizer`` (3 x 8 bits), whose shared codes would need counters too.

Each figure is printed beside its goal (issue 16) and written to ``<out>/quality.json`` and
``quality.md``. ``--job`` also runs the Spark job over the same rows with each strategy and checks
that its IDs are the single-machine ones, timing both runs.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import sysconfig
import time
from dataclasses import asdict

import numpy as np

from semid_spark.bench.suite import Row


def words(n: int) -> list[str]:
    """The *n* most frequent alphabetic words of wordfreq's large English list."""
    import wordfreq

    out = [w for w in wordfreq.top_n_list("en", 2 * n, wordlist="large") if w.isalpha()]
    if len(out) < n:
        raise SystemExit(f"wordfreq's list holds {len(out)} alphabetic words; asked for {n}")
    return out[:n]


def docstring_sentences(limit: int) -> list[str]:
    """Distinct sentences (40-300 characters, mostly letters, starting upper-case) of the docstrings of
    the standard library and the installed packages, in path order; at most *limit*."""
    paths = sysconfig.get_paths()
    seen: set[str] = set()
    out: list[str] = []
    for root in (paths["stdlib"], paths["purelib"]):
        for folder, subfolders, files in os.walk(root):
            subfolders.sort()
            if root == paths["stdlib"] and os.path.basename(folder) == "site-packages":
                subfolders[:] = []  # a virtual environment's packages are read from purelib
                continue
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                try:
                    with open(os.path.join(folder, name), encoding="utf-8") as fh:
                        tree = ast.parse(fh.read())
                except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                    continue
                for node in ast.walk(tree):
                    if not isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        continue
                    for sentence in re.split(r"(?<=[.!?])\s+", " ".join((ast.get_docstring(node) or "").split())):
                        if (40 <= len(sentence) <= 300 and sentence[0].isupper() and sentence not in seen
                                and sum(c.isalpha() for c in sentence) > 0.7 * len(sentence)):
                            seen.add(sentence)
                            out.append(sentence)
                            if len(out) == limit:
                                return out
    return out


def real_text(corpus: str, limit: int, out: str) -> tuple[list[str], np.ndarray, str]:
    """(texts, their WordLlama embeddings, sha256 of the texts): embedded once, then read from
    ``<out>/quality_cache/<sha256>.npy`` (embedding 170k sentences takes two minutes on 2 cores)."""
    from semid_spark.examples.emoji_ids import embed

    text = docstring_sentences(limit) if corpus == "sentences" else words(limit)
    digest = hashlib.sha256("\n".join(text).encode()).hexdigest()
    cache = os.path.join(out, "quality_cache")
    path = os.path.join(cache, f"{digest}.npy")
    if os.path.exists(path):
        return text, np.load(path), digest
    x = embed(text, cache)
    np.save(path, x)
    return text, x, digest


def counter_share(codes: np.ndarray) -> tuple[float, int]:
    """(share of items whose ID needs a counter, largest number of items on one code)."""
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return float((len(codes) - len(counts)) / len(codes)), int(counts.max())


def sq_error(x: np.ndarray, recon: np.ndarray) -> float:
    return float(((x.astype(np.float64) - recon) ** 2).sum(axis=1).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semid bench --quality", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=["sentences", "words"], default="sentences")
    parser.add_argument("--items", type=int, default=200_000, help="at most this many (sentences: all there are)")
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--job", action="store_true", help="also run the Spark job with each strategy")
    parser.add_argument("--out", default="artifacts/bench")
    args = parser.parse_args(argv)

    from semid_spark.algorithms.rq_kmeans import RQKMeans
    from semid_spark.uniqueness.relocate import relocate_codes
    from semid_spark.utils.metrics import recall_at_k

    start = time.perf_counter()
    text, x, digest = real_text(args.corpus, args.items, args.out)
    print(f"{len(text):,} {args.corpus} (sha256 {digest[:12]}) embedded by WordLlama {x.shape} in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    rows: list[Row] = []

    def add(row: Row) -> None:
        shown = "-" if row.value is None else f"{row.value:.4f}"
        print(f"{row.figure}: {shown} (goal {row.goal}) {row.detail}", flush=True)
        rows.append(row)

    start = time.perf_counter()
    model = RQKMeans(n_levels=3, n_clusters=args.clusters, random_state=0).fit(x)
    fit_s = time.perf_counter() - start
    nearest = model.encode(x)
    base_error = sq_error(x, model.decode(nearest))
    suffix_share, suffix_bucket = counter_share(nearest)
    start = time.perf_counter()
    relocation = relocate_codes(model, x, keys=text, codes=nearest)
    relocate_s = time.perf_counter() - start
    relocated_error = sq_error(x, model.decode(relocation.codes))
    relocate_share = float(relocation.unplaced.mean())
    _, relocate_bucket = counter_share(relocation.codes)
    add(Row("suffix: share of items with a counter", suffix_share, "(reference: 0.07-0.11 for every peer)", None,
            f"largest bucket {suffix_bucket}; RQ-KMeans 3 x {args.clusters} fitted in {fit_s:.1f} s"))
    add(Row("relocate: share of items with a counter", relocate_share, "<= 0.01", relocate_share <= 0.01,
            f"largest bucket {relocate_bucket}"))
    add(Row("relocate: share of items moved", relocation.moved_share, "(info)", None,
            f"relocation of {len(x):,} items took {relocate_s:.1f} s on one core"))
    ratio = relocated_error / base_error
    add(Row("relocate: reconstruction MSE / nearest codes' MSE", ratio, "<= 1.01", ratio <= 1.01,
            f"{relocated_error:.5f} vs {base_error:.5f}"))
    same_prefix = bool((relocation.codes[:, :-1] == nearest[:, :-1]).all())
    for depth in (1, 2):
        a = recall_at_k(x, nearest[:, :depth], k=10)
        b = recall_at_k(x, relocation.codes[:, :depth], k=10)
        add(Row(f"neighbour recall@10 of the level 1..{depth} prefix: relocate - suffix", b - a, "== 0",
                b == a and same_prefix, f"{b:.4f} vs {a:.4f}; every prefix unchanged: {same_prefix}"))
    a, b = recall_at_k(x, nearest, k=10), recall_at_k(x, relocation.codes, k=10)
    add(Row("neighbour recall@10 of the full code: relocate / suffix", b / a, "(info)", None, f"{b:.4f} vs {a:.4f}"))
    try:
        import faiss
    except ImportError:
        add(Row("faiss ResidualQuantizer: share of items with a counter", None, "(peer)", None, "faiss not installed"))
    else:
        rq = faiss.ResidualQuantizer(x.shape[1], 3, int(np.log2(args.clusters)))
        rq.max_beam_size = 1
        start = time.perf_counter()
        rq.train(x)
        faiss_s = time.perf_counter() - start
        packed = rq.compute_codes(x)
        faiss_share, faiss_bucket = counter_share(packed)
        faiss_error = sq_error(x, rq.decode(packed))
        add(Row("faiss ResidualQuantizer (greedy): share of items with a counter", faiss_share, "(peer)", None,
                f"largest bucket {faiss_bucket}; MSE {faiss_error:.5f} (relocate / faiss "
                f"{relocated_error / faiss_error:.3f}); trained in {faiss_s:.1f} s"))
        add(Row("relocate counter share / faiss counter share", relocate_share / max(faiss_share, 1e-12), "(info)",
                None, "lower is better"))
    if args.job:
        for row in job_rows(x, text, model, relocation, args.out):
            add(row)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality.json"), "w", encoding="utf-8") as fh:
        json.dump({"corpus": args.corpus, "items": len(x), "sha256": digest, "dim": int(x.shape[1]), "clusters": args.clusters,
                   "rows": [asdict(r) for r in rows]}, fh, indent=2)
    table = ["| figure | value | goal | met | detail |", "|---|---|---|---|---|"]
    table += [f"| {r.figure} | {'-' if r.value is None else f'{r.value:.4f}'} | {r.goal} | "
              f"{'' if r.met is None else ('yes' if r.met else 'NO')} | {r.detail} |" for r in rows]
    with open(os.path.join(args.out, "quality.md"), "w", encoding="utf-8") as fh:
        fh.write(f"{len(x):,} {args.corpus} x {x.shape[1]}-d (WordLlama), RQ-KMeans 3 x {args.clusters}\n\n")
        fh.write("\n".join(table) + "\n")
    print(f"written {os.path.join(args.out, 'quality.json')} and quality.md")
    return 0


def job_rows(x: np.ndarray, text: list[str], model, relocation, out: str) -> list[Row]:
    """The Spark job (local[2]) over the same rows with each strategy: seconds, and its codes against
    the single-machine relocation."""
    import shutil

    import pyarrow as pa

    from semid_spark.config import JobConfig
    from semid_spark.spark import pipeline
    from semid_spark.spark.compat import from_arrow
    from semid_spark.spark.session import get_session

    root = os.path.join(out, "quality_job")
    shutil.rmtree(root, ignore_errors=True)
    model.save(os.path.join(root, "model"))
    spark = None
    seconds, reports = {}, {}
    for strategy in ("suffix", "relocate"):
        cfg = JobConfig.from_dict({
            "spark": {"master": "local[2]", "shuffle_partitions": 8},
            "input": {"path": os.path.join(root, "catalog")},
            "model": {"path": os.path.join(root, "model")},
            "output": {"path": os.path.join(root, f"ids_{strategy}")},
            "uniqueness": {"strategy": strategy},
        })
        if spark is None:
            spark = get_session(cfg.spark)
            table = pa.table({"item_id": text, "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(x.ravel()), x.shape[1]).cast(pa.list_(pa.float32()))})
            from_arrow(spark, table).write.format("delta").save(cfg.input.path)
        start = time.perf_counter()
        reports[strategy] = pipeline.run(spark, cfg)
        seconds[strategy] = time.perf_counter() - start
    written = {r.item_id: list(r.codes) for r in spark.read.format("delta").load(
        os.path.join(root, "ids_relocate")).select("item_id", "codes").collect()}
    same = sum(written[k] == c for k, c in zip(text, relocation.codes.tolist()))
    report = reports["relocate"]
    return [
        Row("job, relocate: share with a counter (its run report)", report.counter_share, "<= 0.01",
            report.counter_share <= 0.01, f"moved {report.moved_share:.4f}, error x{report.error_ratio:.4f}"),
        Row("job: items whose codes equal the single-machine relocation", same / len(text), "== 1.0",
            same == len(text), f"{same:,} of {len(text):,}"),
        Row("job seconds, relocate / suffix", seconds["relocate"] / seconds["suffix"], "(cost)", None,
            f"{seconds['relocate']:.1f} s vs {seconds['suffix']:.1f} s, local[2], model given"),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
