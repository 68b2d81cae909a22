"""``semid validate``: every check a run makes before it writes, in seconds, writing nothing.

The config (already parsed), the Spark and Delta versions, the locations the run would write, the
saved model against the config, the input's columns and types, every key (null, duplicates: one
aggregation over the key column) and the embeddings of a sample of rows (length, NaN/inf), the
output table against the model. Each check is one line of the summary; the first failure's exit
status is the one the run would end with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import pyspark
from pyspark.sql import DataFrame, SparkSession

from semid_spark.algorithms import io as model_io
from semid_spark.config import JobConfig
from semid_spark.delta.table import TableRef, bound_model
from semid_spark.exceptions import ModelMismatchError, SemanticIdError, exit_code
from semid_spark.spark.models import check_model_matches_config, model_exists, saved_model_summary
from semid_spark.spark.preflight import check_locations
from semid_spark.spark.publish import check_published
from semid_spark.spark.source import read_input
from semid_spark.spark.validate import check_input, check_keys, normalize_columns


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    exit_code: int = 0
    seconds: float = 0.0


@dataclass
class Validation:
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        return next((c.exit_code for c in self.checks if not c.ok), 0)

    def summary(self) -> str:
        lines = [f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}"
                 + (f" ({c.seconds:.1f} s)" if c.seconds >= 0.5 else "") for c in self.checks]
        verdict = "valid" if self.ok else f"{sum(not c.ok for c in self.checks)} problem(s)"
        return "semid validate: " + verdict + f" ({self.seconds:.1f} s)\n" + "\n".join(lines)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "seconds": round(self.seconds, 2),
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "seconds": round(c.seconds, 2)}
                           for c in self.checks]}


class _Checks:
    def __init__(self) -> None:
        self.result = Validation()

    def run(self, name: str, fn) -> object:
        """fn() -> (detail, value); an error of ours becomes a failed check, and None is returned."""
        start = time.perf_counter()
        try:
            detail, value = fn()
        except SemanticIdError as exc:
            self.result.checks.append(Check(name, False, f"{type(exc).__name__}: {exc}", exit_code(exc),
                                            time.perf_counter() - start))
            return None
        self.result.checks.append(Check(name, True, detail, seconds=time.perf_counter() - start))
        return value


def validate(spark: SparkSession, cfg: JobConfig, *, sample_rows: int = 10_000) -> Validation:
    """Every check a run makes before it writes, reading at most *sample_rows* embeddings (all keys)."""
    start = time.perf_counter()
    checks = _Checks()
    key, emb, model = cfg.input.key_col, cfg.input.embedding_col, cfg.model
    shape = "n_clusters auto" if model.auto_shape else "x".join(map(str, model.sizes))
    checks.run("config", lambda: (f"{model.kind} {shape}, uniqueness "
                                  f"{cfg.uniqueness.strategy}, output {cfg.output.table or cfg.output.path}", None))
    checks.run("spark", lambda: (f"Spark {spark.version} (pyspark {pyspark.__version__}), delta-spark "
                                 f"{_version_or_none('delta-spark')}", None))
    checks.run("locations", lambda: _locations(spark, cfg))
    saved = checks.run("model", lambda: _saved_model(cfg))
    df = checks.run("input columns", lambda: _columns(spark, cfg))
    if df is not None:
        checks.run("rows", lambda: _rows(df, key, emb, saved["dim"] if saved else None, sample_rows))
    if saved is not None:
        checks.run("output table", lambda: _table(spark, cfg, saved["sha256"]))
    checks.result.seconds = time.perf_counter() - start
    return checks.result


def _version_or_none(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _locations(spark: SparkSession, cfg: JobConfig):
    check_locations(spark, cfg)
    return "output, model (and reject) locations can be written", None


def _saved_model(cfg: JobConfig):
    if not model_exists(cfg.model.path):
        return f"none at {cfg.model.path} yet: `semid run` fits one on {cfg.model.sample_size:,} sampled rows", None
    check_published(cfg.model.path)
    meta = model_io.read_metadata(cfg.model.path)  # one read of the manifest for both
    check_model_matches_config(meta, cfg)
    kind, sizes, dim, sha = saved_model_summary(meta)
    return (f"{kind} {'x'.join(map(str, sizes))}, {dim}-d, sha256 {sha[:12]} at {cfg.model.path}",
            {"dim": dim, "sha256": sha})


def _columns(spark: SparkSession, cfg: JobConfig):
    raw = read_input(spark, cfg)
    key, emb = cfg.input.key_col, cfg.input.embedding_col
    df = normalize_columns(raw, key, emb)
    types = dict(raw.dtypes)
    return f"{cfg.input.table or cfg.input.path}: {key} {types[key]}, {emb} {types[emb]}", df


def _rows(df: DataFrame, key: str, emb: str, dim: int | None, sample_rows: int):
    n_rows = check_keys(df, key)
    _, info = check_input(df.limit(sample_rows), key, emb, dim=dim)
    scope = "every row" if info.n_rows >= n_rows else f"the first {info.n_rows:,} rows"
    return f"{n_rows:,} rows, keys unique and not null; embeddings of {scope}: {info.dim}-d, finite", None


def _table(spark: SparkSession, cfg: JobConfig, sha: str):
    out = TableRef(cfg.output.path, cfg.output.table)
    detail = out.detail(spark)
    if detail is None:
        return f"no table at {out} yet: the first run creates it", None
    bound = bound_model(spark, out, dict(detail["properties"] or {}))
    if bound and bound != sha:
        raise ModelMismatchError(f"table {out} holds IDs of model {bound[:12]}…, model.path holds {sha[:12]}…: set "
                                 "model.path to the table's model, or write to a new output table, or `semid refit`")
    return f"{out}: {int(detail['numFiles'] or 0)} files, IDs of this model", None
