"""``semid <verb> --config FILE [--set section.key=value ...] [--conf spark.key=value ...]``.

One parser per verb: fit, assign, run, refit, validate, evaluate, advise (and ``bench``, whose
flags are its own). The same entry point serves the console script, ``python -m semid_spark.cli``
and the thin files in ``jobs/`` that spark-submit runs.

Stdout carries one JSON line a scheduler can parse; what a person reads (summaries, tables,
progress, logs) goes to stderr. The exit status says what kind of failure it was (``EXIT_CODES``).

Each verb imports its modules when it runs: the Spark side (pyspark, Delta, the pipeline) takes
about 0.8 s to import, which ``semid --help`` and a mistyped flag need not pay (measured: importing
this module 0.7 s, ``semid_spark.spark.pipeline`` 1.4 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from typing import Sequence

from semid_spark.advise import DEFAULT_MAX_COUNTER_SHARE
from semid_spark.exceptions import (
    EXIT_CODES, EXIT_FAILED, EXIT_OK, EXIT_QUALITY, ConfigError, SemanticIdError, exit_code,
)

log = logging.getLogger("semid_spark")

VERBS = {
    "run": "fit when no model is saved at model.path, then assign IDs to the keys not yet in the table",
    "fit": "sample the input to the driver and fit the model; save it at model.path",
    "assign": "IDs for the keys not yet in the table, with the saved model",
    "validate": "check the config, the input (columns, types, a sample of rows), the model and the output "
                "locations, in seconds; writes nothing",
    "refit": "a new model version aligned to the table's IDs, its churn report, then published as "
             "output.on_refit says (unless quality.max_churn refuses)",
    "evaluate": "the quality report of the table: markdown, JSON, plots, an Embedding Atlas file",
    "advise": "predicted collisions and counters of a few codebook shapes at a target catalog size",
    "bench": "the benchmarks (semid bench --help lists their own flags)",
}


def _common(verb: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="YAML job config (docs/config.md): a local file, a file "
                        "shipped with spark-submit --files, or an fsspec URL (s3://…, abfss://…, gs://…, dbfs:/Volumes/…)")
    common.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, parsed as YAML: --set model.n_clusters=64, "
                             "--set spark.conf.spark.executor.memory=2g (repeatable)")
    common.add_argument("--conf", action="append", default=[], metavar="SPARK_KEY=VALUE",
                        help="a Spark setting of the session the job starts itself, as spark-submit's --conf "
                             "(ignored, with a warning, under spark-submit or on Databricks: the cluster's settings win)")
    loud = common.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true", help="our warnings, errors and the JSON line only (scheduled jobs)")
    loud.add_argument("--verbose", action="store_true",
                      help="debug logs, and the JVM's, Ivy's and log4j's output, which are hidden otherwise")
    common.add_argument("--log-level", default=None, help="log level of semid_spark (overrides --quiet/--verbose), e.g. INFO")
    return common


def build_parser() -> argparse.ArgumentParser:
    import semid_spark

    parser = argparse.ArgumentParser(
        prog="semid", description="Semantic IDs for a catalog, on Spark, into Delta.",
        epilog="exit status: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"semid_spark {semid_spark.__version__}")
    verbs = parser.add_subparsers(dest="command", metavar="VERB", required=True)
    made = {}
    for verb, what in VERBS.items():
        if verb == "bench":
            verbs.add_parser(verb, help=what, add_help=False)
            continue
        made[verb] = verbs.add_parser(verb, help=what, description=what[0].upper() + what[1:] + ".",
                                      parents=[_common(verb)])
    made["refit"].add_argument("--out", default="artifacts/refit", help="directory (local path or fsspec URL) "
                               "for churn.md/json (default artifacts/refit)")
    evaluate = made["evaluate"]
    evaluate.add_argument("--out", default="artifacts/evaluate", help="directory (local path or fsspec URL) for "
                          "report.md/json, PNGs, atlas.parquet (default artifacts/evaluate)")
    evaluate.add_argument("--compare", default=None, metavar="MODEL_PATH",
                          help="compare model.path's model with the one at MODEL_PATH on the same sampled items "
                               "(churn per prefix depth, error, collisions): compare.md/json")
    evaluate.add_argument("--source", choices=["auto", "table", "catalog"], default="auto",
                          help="the written ID table (auto: when it exists) or the catalog encoded with the model")
    evaluate.add_argument("--sample-size", type=int, default=20_000, help="rows sampled for neighbour figures")
    evaluate.add_argument("--k", type=int, default=10, help="neighbours per query")
    evaluate.add_argument("--queries", type=int, default=1000, help="queries for agreement by prefix depth")
    evaluate.add_argument("--projection", choices=["pca", "umap"], default="pca", help="2-D projection for the Atlas file")
    advise = made["advise"]
    advise.add_argument("--out", default="artifacts/advise", help="directory for advice.md/json (default artifacts/advise)")
    advise.add_argument("--target-rows", type=int, default=None,
                        help="catalog size to predict for (default: the input's row count)")
    advise.add_argument("--shapes", "--choices", dest="shapes", default=None,
                        help="shapes to compare, LEVELSxCODES or codes per level: 3x4096,2048/1024/512/256 "
                             "(default: 2x256 ... 3x8192, cheapest first, until one meets the goal)")
    advise.add_argument("--max-counter-share", type=float, default=DEFAULT_MAX_COUNTER_SHARE,
                        help="recommend the cheapest shape whose predicted counter share is at most this "
                             f"(default {DEFAULT_MAX_COUNTER_SHARE})")
    made["validate"].add_argument("--sample-rows", type=int, default=10_000,
                                  help="rows whose embeddings and keys are checked (the job checks all of them)")
    parser.set_defaults(_verbs=made)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The verb's arguments; a flag of another verb is an error that names the verb."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        args._verbs[args.command].error(f"unrecognized arguments for {args.command}: {' '.join(extra)}")
    del args._verbs
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own arguments: semid bench [--quick] [--out DIR] | --scale | --relocation [--sizes ...] | --advice | --shapes [LIST]
        if argv[1:2] == ["--shapes"] or argv[1:2] and argv[1].startswith("--shapes="):
            from semid_spark.bench.shapes import main as shapes_main

            rest = argv[1:]  # --shapes 3x4096,3x8192 [flags] is the module's own option...
            if rest[0] == "--shapes" and (len(rest) == 1 or rest[1].startswith("-")):
                rest = rest[1:]  # ...and --shapes alone (or before flags) asks for the default shapes
            return shapes_main(rest)
        if "--advice" in argv:
            from semid_spark.bench.advice import main as advice_main

            return advice_main([a for a in argv[1:] if a != "--advice"])
        if "--relocation" in argv:
            from semid_spark.bench.relocation import main as relocation_main

            return relocation_main([a for a in argv[1:] if a != "--relocation"])
        if "--scale" in argv:
            from semid_spark.bench.scale import main as scale_main

            return scale_main([a for a in argv[1:] if a != "--scale"])
        from semid_spark.bench.suite import main as bench_main

        return bench_main(argv[1:])
    args = parse_args(argv)
    _set_up_output(args)
    try:
        return _dispatch(args)
    except SemanticIdError as exc:
        print(f"semid {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"semid {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # not ours: the traceback helps, our one line ends the log
        from semid_spark.spark.logs import jvm_log_path

        lines = traceback.format_exception(exc)
        if not args.verbose:  # a JVM error's message holds its whole Java trace: its head says what failed
            message = lines[-1].splitlines()
            lines[-1] = "\n".join(message[:4] + ([f"\t… {len(message) - 4} more lines (--verbose shows them)"]
                                                  if len(message) > 4 else [])) + "\n"
        print("".join(lines), end="", file=sys.stderr)
        first = (str(exc).strip().splitlines() or [""])[0][:500]
        more = f" (Spark's own output: {jvm_log_path()})" if jvm_log_path() else ""
        print(f"semid {args.command}: failed: {type(exc).__name__}: {first}{more}", file=sys.stderr)
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    from semid_spark.config import JobConfig
    from semid_spark.spark import pipeline
    from semid_spark.spark.session import get_session, master_origin, not_applied

    overrides = [*args.set, *(_conf_override(item) for item in args.conf)]
    origin = master_origin()
    # under spark-submit the session owes nothing to the config, and a config shipped with --files
    # (cluster deploy mode) is found through it
    if origin is not None and origin.jvm_running:
        spark = get_session()
        cfg = JobConfig.from_yaml(config_location(args.config), overrides)
        not_applied(cfg.spark, f"the master comes from {origin.source}")
    else:
        cfg = JobConfig.from_yaml(config_location(args.config), overrides)
        spark = get_session(cfg.spark)
    if args.command == "validate":
        from semid_spark.spark.dry_run import validate

        result = validate(spark, cfg, sample_rows=args.sample_rows)
        print(result.summary(), file=sys.stderr)
        print(json.dumps(result.as_dict(), default=str))
        return EXIT_OK if result.ok else result.exit_code
    if args.command == "evaluate":
        return _evaluate(spark, cfg, args)
    if args.command == "advise":
        return _advise(spark, cfg, args)
    if args.command == "refit":
        return _refit(spark, cfg, args)
    step = {"fit": pipeline.fit_only, "assign": pipeline.assign_only, "run": pipeline.run}[args.command]
    report = step(spark, cfg)
    print(f"semid {args.command}: {report.summary()}", file=sys.stderr)
    print(json.dumps(report.as_dict(), default=str))
    return EXIT_OK


def _conf_override(item: str) -> str:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--conf {item!r}: expected key=value, e.g. --conf spark.sql.shuffle.partitions=400")
    return f"spark.conf.{key.strip()}={json.dumps(value)}"  # quoted: Spark reads the value as given


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
    from semid_spark.spark.logs import hide_jvm_output
    from semid_spark.utils.progress import set_progress

    level = args.log_level.upper() if args.log_level else ("WARNING" if args.quiet else "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    if args.verbose:
        log.setLevel(logging.DEBUG)
    set_progress(False if args.quiet else (True if args.verbose else None))
    hide_jvm_output(not args.verbose)
    log.info("semid_spark %s from %s", semid_spark.__version__, os.path.dirname(semid_spark.__file__))


def _advise(spark, cfg, args: argparse.Namespace) -> int:
    from semid_spark import storage
    from semid_spark.spark import pipeline
    from semid_spark import advise

    try:
        shapes = [advise.parse_shape(c) for c in args.shapes.split(",")] if args.shapes else None
    except ValueError as exc:
        raise ConfigError(f"--shapes {args.shapes!r}: {exc}") from None
    advice = pipeline.advise(spark, cfg, target_rows=args.target_rows, shapes=shapes,
                             max_counter_share=args.max_counter_share)
    best = advice.recommended
    out = args.out
    storage.write_bytes(storage.join(out, "advice.md"), advice.markdown.encode())
    storage.write_bytes(storage.join(out, "advice.json"), json.dumps(advice.as_dict(), indent=2).encode())
    if not advice.meets_goal:  # said in the table's last lines, with what to try; a scheduler sees the status
        print(advice.markdown + f"\nno shape meets --max-counter-share {advice.max_counter_share}; closest: "
              f"{best.choice} ({best.counter_share:.4f})", file=sys.stderr)
        print(json.dumps({"recommended": None, "closest": best.choice, "counter_share": best.counter_share,
                          "max_counter_share": advice.max_counter_share, "out": out}))
        return EXIT_QUALITY
    print(advice.markdown + f"\nrecommended: {best.choice} (model.n_clusters: {json.dumps(best.n_clusters)})",
          file=sys.stderr)
    print(json.dumps({"recommended": best.choice, "n_clusters": best.n_clusters, "out": out}))
    return EXIT_OK


def _refit(spark, cfg, args: argparse.Namespace) -> int:
    from semid_spark.spark.refit import REFIT_TITLE, refit

    report = refit(spark, cfg, out_dir=args.out)
    print(report.comparison.markdown(REFIT_TITLE), file=sys.stderr)
    print(f"published {cfg.output.on_refit}: model {report.comparison.new_model_sha256[:12]} saved at "
          f"{report.new_model_path}, IDs in {report.ids_table}; next runs: --set model.path={report.new_model_path}"
          + (f" and the output at {report.ids_table}" if cfg.output.on_refit == "new_table" else ""), file=sys.stderr)
    print(json.dumps(report.as_dict(), default=str))
    return EXIT_OK


def _evaluate(spark, cfg, args: argparse.Namespace) -> int:
    if args.compare:
        from semid_spark.spark.refit import COMPARE_TITLE, compare_models

        comparison, paths = compare_models(spark, cfg, args.compare, out_dir=args.out,
                                           sample_size=args.sample_size)
        print(comparison.markdown(COMPARE_TITLE), file=sys.stderr)
        print(json.dumps({"files": paths}, default=str))
        return EXIT_OK
    from semid_spark.spark.evaluate import EvaluateOptions, evaluate_job

    options = EvaluateOptions(out_dir=args.out, sample_size=args.sample_size, k=args.k, n_queries=args.queries,
                              projection=args.projection, source=args.source)
    report, paths = evaluate_job(spark, cfg, options)
    print(f"{report.n_items:,} items: collision rate {report.collision_rate:.4f}, largest bucket "
          f"{report.largest_bucket}, neighbours sharing the level-1 code "
          f"{report.prefix_agreement[0] if report.prefix_agreement else float('nan'):.3f}", file=sys.stderr)
    for kind, path in paths.items():
        print(f"  {kind}: {path}", file=sys.stderr)
    print(json.dumps({"n_items": report.n_items, "collision_rate": report.collision_rate,
                      "largest_bucket": report.largest_bucket, "files": paths}, default=str))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
