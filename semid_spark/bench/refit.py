"""Churn of a refit on a grown, drifted catalog: cold or warm-started, unaligned or aligned.

Run: ``make bench-refit``. The current model is fitted on a synthetic catalog; the catalog then
grows by ``--growth`` (30%) with shifted topic weights (``synthetic.drifted_items``) and a new
version is fitted on all of it, from k-means++ ("cold", what a plain re-run does) or from the
current codebooks ("warm", ``fit(..., init=current)``). For the items of the current table, the
share whose level 1..d prefix changes is printed for each version before and after
``align.align``, with the reconstruction error of the grown catalog under each model, and written
to ``<out>/refit.json``. Goals (issue 17): aligned full-ID churn at most half of the unaligned
cold refit's, level-1 churn at most a third. ``--kind rq_vae`` does the same with RQ-VAE (the job's
parameters, ``--epochs``), whose warm start begins at the current weights.

``--job``: the same through the Spark job on a local Delta table: ``semid run`` on the current
catalog, the grown catalog appended to the input, then ``semid refit`` publishing with
``new_table`` and, on a copy, ``keep_ids``; its churn report and timings go to
``<out>/refit_job.json`` (and ``<out>/refit_job/…/churn.md``), with the share of the items whose ID
string changed (``id_churn``) beside the share whose full code did.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from semid_spark.algorithms.align import align, churn
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.synthetic import drifted_items, generated_catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semid_spark.bench.refit", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--topics", type=int, default=500)
    parser.add_argument("--growth", type=float, default=0.3)
    parser.add_argument("--drift", type=float, default=1.0)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--kind", choices=["rq_kmeans", "rq_vae"], default="rq_kmeans")
    parser.add_argument("--epochs", type=int, default=20, help="rq_vae: training epochs of each fit")
    parser.add_argument("--out", default="artifacts/bench")
    parser.add_argument("--job", action="store_true", help="also through the Spark job (semid run, then semid refit)")
    args = parser.parse_args(argv)
    current = generated_catalog(args.items, args.dim, args.topics, seed=0)
    grown = np.concatenate([current, drifted_items(int(args.growth * args.items), args.dim, args.topics, seed=0,
                                                   drift=args.drift)])

    def error(model) -> float:
        return float(((grown - model.decode(model.encode(grown))) ** 2).sum(axis=1).mean())

    def model():
        if args.kind == "rq_kmeans":
            return RQKMeans(args.levels, args.clusters, random_state=0)
        from semid_spark.algorithms.rq_vae import RQVAE
        from semid_spark.config import RQ_VAE_JOB_PARAMS

        return RQVAE(in_dim=args.dim, num_emb_list=[args.clusters] * args.levels, random_state=0, epochs=args.epochs,
                     **RQ_VAE_JOB_PARAMS)

    old = model().fit(current)
    print(f"{args.kind}: current {len(current):,} items, grown {len(grown):,} (drift {args.drift}), {args.levels} x "
          f"{args.clusters}; current model's error on the grown catalog {error(old):.4f}")
    rows = []
    for start in ("cold", "warm"):
        began = time.perf_counter()
        new = model().fit(grown, **({"init": old} if start == "warm" else {}))
        fit_s = time.perf_counter() - began
        result = align(old, new, current)
        for aligned in (False, True):
            codes = result.aligned_codes if aligned else result.new_codes
            rows.append({"start": start, "aligned": aligned, "churn": churn(result.old_codes, codes),
                         "error_grown": error(result.model if aligned else new), "fit_s": fit_s})
    print(f"{'refit':22s} " + " ".join(f"{'1..' + str(d + 1):>8s}" for d in range(args.levels)) + f" {'MSE grown':>10s}")
    for row in rows:
        name = f"{row['start']}, {'aligned' if row['aligned'] else 'unaligned'}"
        print(f"{name:22s} " + " ".join(f"{c:8.4f}" for c in row["churn"]) + f" {row['error_grown']:10.4f}")
    baseline = rows[0]["churn"]  # cold, unaligned: what a plain re-run gives
    best = rows[3]["churn"]  # warm, aligned: what semid refit does
    goals = {"full_id": (best[-1], 0.5 * baseline[-1]), "level_1": (best[0], baseline[0] / 3)}
    for name, (value, limit) in goals.items():
        print(f"{name} churn, warm aligned: {value:.4f} (goal <= {limit:.4f}: {'met' if value <= limit else 'MISSED'})")
    print(f"cold refit, aligned only: full-ID {rows[1]['churn'][-1]:.4f}, level 1 {rows[1]['churn'][0]:.4f} "
          f"(alignment alone cannot undo a re-partition)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "refit.json"), "w", encoding="utf-8") as fh:
        json.dump({"args": vars(args), "rows": rows, "goals": {k: {"value": v, "limit": lim}
                                                                for k, (v, lim) in goals.items()}}, fh, indent=2)
    if args.job:
        job(args, current, grown)
    return 0


def job(args, current: np.ndarray, grown: np.ndarray) -> None:
    """``semid run`` on *current*, then ``semid refit`` on *grown*: new_table, and keep_ids on a copy."""
    import shutil

    import pyarrow as pa

    from semid_spark.config import JobConfig
    from semid_spark.spark import pipeline
    from semid_spark.spark.compat import from_arrow
    from semid_spark.spark.refit import refit, table_churn
    from semid_spark.spark.session import get_session

    root = os.path.abspath(os.path.join(args.out, "refit_job"))
    shutil.rmtree(root, ignore_errors=True)

    def cfg(base: str, **output) -> JobConfig:
        params = {"params": {"epochs": args.epochs}} if args.kind == "rq_vae" else {}
        return JobConfig.from_dict({"input": {"path": f"{base}/in"},
                                    "model": {"path": f"{base}/model", "kind": args.kind, "n_levels": args.levels,
                                              "n_clusters": args.clusters, "sample_size": 200_000, **params},
                                    "output": {"path": f"{base}/ids", **output}})

    base = f"{root}/current"
    spark = get_session(cfg(base).spark)

    def write(x: np.ndarray, start: int, mode: str) -> None:
        table = pa.table({"item_id": pa.array([f"item{i:09d}" for i in range(start, start + len(x))]),
                          "embedding": pa.array(list(x), type=pa.list_(pa.float32()))})
        from_arrow(spark, table).write.format("delta").mode(mode).save(f"{base}/in")

    write(current, 0, "overwrite")
    began = time.perf_counter()
    first = pipeline.run(spark, cfg(base))
    run_s = time.perf_counter() - began
    write(grown[len(current):], len(current), "append")
    keep = f"{root}/keep_ids"
    shutil.copytree(base, keep)
    results = {"run": {"seconds": run_s, "n_inserted": first.n_inserted}}
    for mode, where in (("new_table", base), ("keep_ids", keep)):
        began = time.perf_counter()
        report = refit(spark, cfg(where, on_refit=mode), out_dir=f"{root}/{mode}-report")
        results[mode] = {**report.as_dict(), "wall_s": time.perf_counter() - began}
        c = report.comparison
        print(f"job refit, {mode}: {time.perf_counter() - began:.1f} s (sample {report.seconds['sample']:.1f}, "
              f"fit warm + cold {report.seconds['fit']:.1f}, publish {report.seconds['publish']:.1f}), "
              f"{report.run['n_inserted']:,} IDs inserted into {report.ids_table}; ID strings changed "
              f"{c.id_churn:.4f}" + (f" of the {c.id_churn_items:,} items in both tables" if c.id_churn_items else "")
              + f", full codes {c.churn_aligned[-1]:.4f} of the sampled ones")
        if mode == "new_table":
            read = spark.read.format("delta").load
            results[mode]["table_churn"] = table_churn(read(f"{base}/ids"), read(report.ids_table), "item_id")
            print(f"  over the tables: full codes changed {results[mode]['table_churn']['codes']:.4f}, ID strings "
                  f"{results[mode]['table_churn']['strings']:.4f} (goal <= codes + 0.05: "
                  f"{'met' if results[mode]['table_churn']['strings'] <= results[mode]['table_churn']['codes'] + 0.05 else 'MISSED'})")
    print(c.markdown(f"semid refit on {len(current):,} + {len(grown) - len(current):,} items (the table's sampled items)"))
    with open(os.path.join(args.out, "refit_job.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2, default=str)


if __name__ == "__main__":
    raise SystemExit(main())
