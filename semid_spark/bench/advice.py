"""`semid bench --advice`: the advisor's predictions beside what catalogs 4x and 16x its sample really get.

Per shape, the advisor's fit on a sample of ``--sample`` rows (``advise.advice_model``) predicts,
at each multiple of the sample, the counter share after relocation, the suffix rule's counter
share, the collision share, the largest bucket and the encode core-hours; then the same model
encodes the first ``multiple x sample`` rows of the catalog (one BLAS thread, timed), and the
relocation itself (``relocate_codes``, which the job's placement is tested against) says which
items keep a shared code. The sample is the catalog's first rows, as a grown catalog keeps its
old items; a real corpus (listed by frequency or source) is shuffled first, since the job's sample
is drawn at random.

``--data synthetic`` draws a topic mixture (``--dim``, ``--topics`` unit-normal centres, noise 0.3 x
unit normal, as ``bench --relocation``'s catalog); ``sentences``
and ``words`` take ``make bench-quality``'s real text (WordLlama, 256-d; the ``example`` extra).
Writes ``<out>/advice-<data>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from semid_spark.advise import DEFAULT_SHAPES, advice_model, parse_shape, predict_from, sample_codes, shape_name
from semid_spark.bench.suite import write_figures
from semid_spark.uniqueness.relocate import relocate_codes
from semid_spark.utils.metrics import collision_share
from semid_spark.utils.timing import one_blas_thread

FIGURES = ("counter_share", "suffix_counter_share", "collision_share", "largest_bucket", "encode_core_hours")


def real_figures(model, rows: np.ndarray) -> dict:
    """What *rows* really get from *model*: encoded on one core (timed), then relocated."""
    with one_blas_thread():
        started = time.perf_counter()
        codes = model.encode(rows)
        encode_s = time.perf_counter() - started
    counts = np.unique(codes, axis=0, return_counts=True)[1]
    relocated = relocate_codes(model, rows, codes=codes)
    return {"counter_share": float(relocated.unplaced.mean()), "suffix_counter_share": 1 - len(counts) / len(rows),
            "collision_share": collision_share(codes), "largest_bucket": int(counts.max()),
            "encode_core_hours": encode_s / 3600}


def check_shape(x: np.ndarray, sizes: list[int], sample: int, multiples: list[int], seed: int) -> list[dict]:
    """One row per multiple: the predicted and the real figures of one shape."""
    started = time.perf_counter()
    model = advice_model(sizes, seed).fit(x[:sample])
    fit_s = time.perf_counter() - started
    measured = sample_codes(model, x[:sample], strategy="relocate")  # the same for every multiple
    out = []
    for m in multiples:
        n = m * sample
        predicted = predict_from(measured, n, fit_s=fit_s, strategy="relocate", random_state=seed)
        real = real_figures(model, x[:n])
        out.append({"shape": shape_name(sizes), "sample": sample, "rows": n, "multiple": m, "fit_s": fit_s,
                    "predicted": {f: getattr(predicted, f) for f in FIGURES}, "real": real})
        print(f"  {shape_name(sizes)} x{m}: counters predicted {predicted.counter_share:.4f} real "
              f"{real['counter_share']:.4f}; suffix {predicted.suffix_counter_share:.4f} / "
              f"{real['suffix_counter_share']:.4f}; largest {predicted.largest_bucket:.0f} / {real['largest_bucket']}",
              flush=True)
    return out


def render(rows: list[dict], title: str) -> str:
    lines = [title, "",
             "| shape | rows (x sample) | counters after relocation, predicted / real | suffix counters | "
             "collision share | largest bucket | encode core-h |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        p, q = r["predicted"], r["real"]
        lines.append(f"| {r['shape']} | {r['rows']:,} (x{r['multiple']}) | {p['counter_share']:.4f} / "
                     f"{q['counter_share']:.4f} | {p['suffix_counter_share']:.4f} / {q['suffix_counter_share']:.4f} | "
                     f"{p['collision_share']:.4f} / {q['collision_share']:.4f} | {p['largest_bucket']:,.0f} / "
                     f"{q['largest_bucket']:,} | {p['encode_core_hours']:.4f} / {q['encode_core_hours']:.4f} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """The largest gaps between predicted and real figures, over every shape and multiple."""
    gap = {f: max(abs(r["predicted"][f] - r["real"][f]) for r in rows) for f in FIGURES if f != "largest_bucket"}
    gap["encode_core_hours_ratio"] = [min(r["predicted"]["encode_core_hours"] / r["real"]["encode_core_hours"]
                                          for r in rows),
                                      max(r["predicted"]["encode_core_hours"] / r["real"]["encode_core_hours"]
                                          for r in rows)]
    return gap


def load_rows(args) -> np.ndarray:
    if args.data in ("sentences", "words"):
        from semid_spark.bench.quality import real_text

        x = real_text(args.data, args.sample * max(args.multiples), args.out)[1]
        return x[np.random.default_rng(0).permutation(len(x))]  # a sample drawn at random, as the job's is
    from semid_spark.synthetic import generated_catalog

    return generated_catalog(args.sample * max(args.multiples), args.dim, args.topics, seed=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semid bench --advice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help="comma-separated (default %(default)s)")
    parser.add_argument("--data", choices=["synthetic", "sentences", "words"], default="synthetic")
    parser.add_argument("--sample", type=int, default=20_000, help="the advisor's sample (the catalog's first rows)")
    parser.add_argument("--multiples", default="4,16", help="catalog sizes, as multiples of the sample")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--topics", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="the fit's random_state")
    parser.add_argument("--out", default="artifacts/bench")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.multiples = sorted(int(m) for m in args.multiples.split(","))
    shapes = [list(parse_shape(s)) for s in args.shapes.split(",")]
    x = load_rows(args)
    sample = min(args.sample, len(x) // max(args.multiples))  # a real corpus may hold fewer rows
    title = (f"The advisor's predictions from a sample of {sample:,} rows beside catalogs "
             f"{', '.join(f'{m}x' for m in args.multiples)} as large ({args.data}, {x.shape[1]}-d):")
    print(title, flush=True)
    rows = []
    for sizes in shapes:
        if max(sizes) > sample:
            print(f"  {shape_name(sizes)}: skipped, {max(sizes):,} codes a level > a sample of {sample:,}", flush=True)
            continue
        rows.extend(check_shape(x, sizes, sample, args.multiples, args.seed))
    table = render(rows, title)
    figures = {"data": args.data, "dim": int(x.shape[1]), "sample": sample, "multiples": args.multiples,
               "worst_gaps": summary(rows), "rows": rows}
    if args.data == "synthetic":
        figures.update(topics=args.topics, noise=0.3)
    print(table)
    print("largest gaps:", {k: (round(v, 4) if isinstance(v, float) else [round(u, 2) for u in v])
                            for k, v in figures["worst_gaps"].items()})
    write_figures(args.out, f"advice-{args.data}", figures, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
