"""``semid fit|assign|run|refit|evaluate|advise --config FILE [--set section.key=value ...]`` and ``semid bench``.

The same entry point serves the console script, ``python -m semid_spark.cli`` and the thin
files in ``jobs/`` that spark-submit runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from semid_spark.exceptions import SemanticIdError

log = logging.getLogger("semid_spark")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="semid", description="Semantic IDs for a catalog, on Spark, into Delta.")
    parser.add_argument("command", choices=["fit", "assign", "run", "refit", "evaluate", "advise"],
                        help="fit: sample and fit the model; assign: IDs for keys not yet in the table; run: both; "
                             "refit: a new model version aligned to the table's IDs, its churn report, then "
                             "published as output.on_refit says (unless quality.max_churn refuses); "
                             "evaluate: the quality report of the table (markdown, JSON, plots, Embedding Atlas file); "
                             "advise: predicted collisions of a few codebook sizes at a target catalog size")
    parser.add_argument("--config", required=True, help="YAML job config (see conf/): a local file, a file shipped "
                        "with spark-submit --files, or an fsspec URL (s3://…, abfss://…, gs://…, dbfs:/Volumes/…)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (parsed as YAML), e.g. --set model.n_clusters=64")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bars (scheduled jobs)")
    loud.add_argument("--verbose", action="store_true", help="debug logs of semid_spark and progress bars everywhere")
    parser.add_argument("--log-level", default=None, help="log level (overrides --quiet/--verbose), e.g. INFO")
    report = parser.add_argument_group("evaluate")
    report.add_argument("--out", default=None, help="directory (local path or fsspec URL: s3://…, abfss://…, "
                        "dbfs:/Volumes/…) for report.md/json, PNGs, atlas.parquet "
                        "(default artifacts/evaluate); for advise: advice.md/json (default artifacts/advise); "
                        "for refit: churn.md/json (default artifacts/refit)")
    report.add_argument("--compare", default=None, metavar="MODEL_PATH",
                        help="compare model.path's model with the one at MODEL_PATH on the same sampled items "
                             "(churn per prefix depth, error, collisions): compare.md/json")
    report.add_argument("--source", choices=["auto", "table", "catalog"], default="auto",
                        help="the written ID table (auto: when it exists) or the catalog encoded with the model")
    report.add_argument("--sample-size", type=int, default=20_000, help="rows sampled for neighbour figures")
    report.add_argument("--k", type=int, default=10, help="neighbours per query")
    report.add_argument("--queries", type=int, default=1000, help="queries for agreement by prefix depth")
    report.add_argument("--projection", choices=["pca", "umap"], default="pca", help="2-D projection for the Atlas file")
    advise = parser.add_argument_group("advise")
    advise.add_argument("--target-rows", type=int, default=None,
                        help="catalog size to predict for (default: the input's row count)")
    advise.add_argument("--choices", default=None, help="levels x codes to compare, e.g. 3x256,4x256 "
                        "(default: 2x256,3x256,4x256,3x1024)")
    advise.add_argument("--max-counter-share", type=float, default=0.05,
                        help="recommend the shortest IDs whose predicted counter share is at most this")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own arguments: semid bench [--quick] [--out DIR] | --scale [--sizes ...]
        if "--scale" in argv:
            from semid_spark.bench.scale import main as scale_main

            return scale_main([a for a in argv[1:] if a != "--scale"])
        from semid_spark.bench.suite import main as bench_main

        return bench_main(argv[1:])
    args = parse_args(argv)
    _set_up_output(args)
    from semid_spark.config import JobConfig
    from semid_spark.spark import pipeline
    from semid_spark.spark.session import get_session, master_origin, not_applied

    try:
        origin = master_origin()
        # under spark-submit the session owes nothing to the config, and a config shipped with --files
        # (cluster deploy mode) is found through it
        if origin is not None and origin.jvm_running:
            spark = get_session()
            cfg = JobConfig.from_yaml(config_location(args.config), args.set)
            not_applied(cfg.spark, f"the master comes from {origin.source}")
        else:
            cfg = JobConfig.from_yaml(config_location(args.config), args.set)
            spark = get_session(cfg.spark)
        if args.command == "evaluate":
            return _evaluate(spark, cfg, args)
        if args.command == "advise":
            return _advise(spark, cfg, args)
        if args.command == "refit":
            return _refit(spark, cfg, args)
        step = {"fit": pipeline.fit_only, "assign": pipeline.assign_only, "run": pipeline.run}[args.command]
        report = step(spark, cfg)
    except SemanticIdError as exc:
        print(f"semid {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), default=str))
    return 0


def config_location(path: str) -> str:
    """*path*, or, when no such local file exists, the file of that name that spark-submit's ``--files``
    shipped (in cluster deploy mode the driver runs on a cluster node: YARN puts the file in its
    working directory, other managers in SparkFiles' folder)."""
    import os

    from semid_spark import storage

    if storage.is_url(path) or os.path.exists(path):
        return path
    try:
        from pyspark import SparkFiles

        shipped = os.path.join(SparkFiles.getRootDirectory(), os.path.basename(path))
    except Exception:  # no SparkContext: nothing was shipped
        return path
    return shipped if os.path.exists(shipped) else path


def _set_up_output(args: argparse.Namespace) -> None:
    import os

    import semid_spark
    from semid_spark.utils.progress import set_progress

    level = args.log_level.upper() if args.log_level else ("WARNING" if args.quiet else "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    if args.verbose:
        log.setLevel(logging.DEBUG)
    set_progress(False if args.quiet else (True if args.verbose else None))
    log.info("semid_spark %s from %s", semid_spark.__version__, os.path.dirname(semid_spark.__file__))


def _advise(spark, cfg, args: argparse.Namespace) -> int:
    from semid_spark import storage
    from semid_spark.spark import pipeline
    from semid_spark.utils import advise

    try:
        choices = [advise.parse_choice(c) for c in (args.choices.split(",") if args.choices else advise.DEFAULT_CHOICES)]
    except ValueError as exc:
        print(f"semid advise: {exc}", file=sys.stderr)
        return 2
    predictions, best = pipeline.advise(spark, cfg, target_rows=args.target_rows, choices=choices,
                                        max_counter_share=args.max_counter_share)
    table = advise.render(predictions, best, args.max_counter_share)
    out = args.out or "artifacts/advise"
    storage.write_bytes(storage.join(out, "advice.md"), table.encode())
    storage.write_bytes(storage.join(out, "advice.json"), json.dumps(
        {"recommended": best.choice, "max_counter_share": args.max_counter_share,
         "predictions": [p.as_dict() for p in predictions]}, indent=2).encode())
    print(table + f"\nrecommended: {best.choice} (model.n_levels={best.n_levels}, model.n_clusters={best.n_clusters})")
    return 0


def _refit(spark, cfg, args: argparse.Namespace) -> int:
    from semid_spark.spark.refit import REFIT_TITLE, refit

    report = refit(spark, cfg, out_dir=args.out or "artifacts/refit")
    print(report.comparison.markdown(REFIT_TITLE))
    print(f"published {cfg.output.on_refit}: model {report.comparison.new_model_sha256[:12]} saved at "
          f"{report.new_model_path}, IDs in {report.ids_table}; next runs: --set model.path={report.new_model_path}"
          + (f" and the output at {report.ids_table}" if cfg.output.on_refit == "new_table" else ""))
    print(json.dumps(report.as_dict(), default=str))
    return 0


def _evaluate(spark, cfg, args: argparse.Namespace) -> int:
    if args.compare:
        from semid_spark.spark.refit import COMPARE_TITLE, compare_models

        comparison, paths = compare_models(spark, cfg, args.compare, out_dir=args.out or "artifacts/evaluate",
                                           sample_size=args.sample_size)
        print(comparison.markdown(COMPARE_TITLE))
        for kind, path in paths.items():
            print(f"  {kind}: {path}")
        return 0
    from semid_spark.spark.evaluate import EvaluateOptions, evaluate_job

    options = EvaluateOptions(out_dir=args.out or "artifacts/evaluate", sample_size=args.sample_size, k=args.k, n_queries=args.queries,
                              projection=args.projection, source=args.source)
    report, paths = evaluate_job(spark, cfg, options)
    print(f"{report.n_items:,} items: collision rate {report.collision_rate:.4f}, largest bucket "
          f"{report.largest_bucket}, neighbours sharing the level-1 code "
          f"{report.prefix_agreement[0] if report.prefix_agreement else float('nan'):.3f}")
    for kind, path in paths.items():
        print(f"  {kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
