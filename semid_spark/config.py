"""Job configuration: frozen dataclasses, read from YAML at the edge, with ``--set`` overrides.

Unknown keys and bad values fail at load time, naming the key and listing the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Sequence, get_args, get_origin, get_type_hints

import yaml

from semid_spark import storage
from semid_spark.exceptions import ConfigError


@dataclass(frozen=True)
class SparkConfig:
    """The embedded session's settings: applied only when the job starts Spark itself and nobody chose a
    master (no spark-submit, Connect, PYSPARK_SUBMIT_ARGS, MASTER or spark-defaults.conf). A key left
    out keeps ``session.EMBEDDED_DEFAULTS``' value; a cluster's session is never changed."""

    master: str | None = None  # default local[*]
    app_name: str | None = None  # default semid_spark
    warehouse_dir: str | None = None  # default artifacts/spark-warehouse
    shuffle_partitions: int | None = None  # default 8
    driver_memory: str | None = None  # the JVM's heap (local mode runs executors in it); default 4g
    conf: dict = field(default_factory=dict)  # further spark.* settings

    def settings(self) -> dict[str, str]:
        """The Spark settings this section writes (and nothing it leaves out), as ``spark.*`` keys."""
        named = {"spark.master": self.master, "spark.app.name": self.app_name,
                 "spark.sql.warehouse.dir": self.warehouse_dir, "spark.sql.shuffle.partitions": self.shuffle_partitions,
                 "spark.driver.memory": self.driver_memory}
        return {**{k: _spark_value(v) for k, v in named.items() if v is not None},
                **{k: _spark_value(v) for k, v in self.conf.items()}}


def _spark_value(value: Any) -> str:
    """A setting as Spark reads it: YAML's true is Spark's "true", not Python's "True"."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class InputConfig:
    path: str | None = None  # Delta or Parquet directory ...
    table: str | None = None  # ... or a table name
    format: Literal["delta", "parquet"] = "delta"  # of input.path (a table name says its own)
    key_col: str = "item_id"  # the item key column: unique, not null (string or integer)
    embedding_col: str = "embedding"  # array<float> or array<double>, one length for every row
    on_invalid: Literal["fail", "reject"] = "fail"  # reject: bad rows go to reject_path and are skipped
    reject_path: str | None = None  # Delta directory for rejected rows, with their reason (on_invalid=reject)
    since: Literal["all", "last_run"] = "all"  # last_run: only the rows a Delta input gained since (its Change Data Feed)

    def __post_init__(self) -> None:
        if self.since == "last_run" and self.table is None and self.format != "delta":
            raise ConfigError("input.since=last_run needs a Delta input (input.table, or input.format=delta)")
        if (self.path is None) == (self.table is None):
            raise ConfigError("input: give exactly one of input.path or input.table")
        if self.on_invalid == "reject" and not self.reject_path:
            raise ConfigError("input.on_invalid=reject needs input.reject_path (where rejected rows are written)")


# The job's RQ-VAE arguments where they differ from RQVAE's own (semantic-id 0.2.5's): a job trains a
# few epochs on its sample, and with RQVAE's lr=1e-4 and random codebooks 10 epochs on 30k rows
# (d=64, 3x64) left the reconstruction MSE at 1.078, the data's variance (1.081); these reached 0.805.
# model.params overrides them.
RQ_VAE_JOB_PARAMS = {"e_dim": 32, "kmeans_init": True, "lr": 1e-3}


@dataclass(frozen=True)
class ModelConfig:
    path: str = "artifacts/model"  # where the model is saved and read (local path or fsspec URL)
    kind: Literal["rq_kmeans", "rq_vae"] = "rq_kmeans"  # rq_vae needs the torch extra on the driver
    # levels of the ID (default 3, or the length of n_clusters); RQKMeans/RQVAE keep semantic-id's 4 (README)
    n_levels: int | None = None
    # codes per level: one size for every level, or one per level ([2048, 1024, 512]), or auto: the
    # cheapest shape `semid advise` predicts for the catalog (quality.max_counter_share, default 0.001;
    # with n_levels, among shapes of that many levels), chosen when the model is fitted
    n_clusters: int | list[int] | Literal["auto"] = 256
    # n_clusters auto: the catalog size to choose the shape for (default: the input's valid rows)
    target_rows: int | None = None
    sample_size: int = 200_000  # at most this many rows go to the driver for fitting
    seed: int = 0  # the sample and the fit: the same seed and input give the same model
    fit_device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda when the driver has it
    refit: bool = False  # run: fit even when a model exists at path (a new model needs a new table)
    # semid refit: where the new version is saved (default: <path>_v<its sha256's first 12 hex digits>)
    refit_path: str | None = None
    params: dict = field(default_factory=dict)  # further constructor arguments of the algorithm

    def __post_init__(self) -> None:
        if self.auto_shape:
            if self.kind != "rq_kmeans":
                raise ConfigError(f"model.n_clusters=auto chooses RQ-KMeans shapes; model.kind={self.kind!r} "
                                  "needs its codes per level in model.n_clusters")
            if (self.n_levels is not None and self.n_levels < 1) or (self.target_rows is not None and self.target_rows < 1):
                raise ConfigError(f"model: n_levels={self.n_levels}, target_rows={self.target_rows}; expected >= 1")
            return
        per_level = isinstance(self.n_clusters, list)
        if per_level and self.n_levels is not None and self.n_levels != len(self.n_clusters):
            raise ConfigError(f"model: n_levels={self.n_levels} but n_clusters lists {len(self.n_clusters)} sizes "
                              f"{self.n_clusters}; give one size per level, or leave n_levels out")
        levels = len(self.n_clusters) if per_level else (3 if self.n_levels is None else self.n_levels)
        object.__setattr__(self, "n_levels", levels)
        if levels < 1 or min(self.sizes) < 2 or self.sample_size < max(self.sizes):
            raise ConfigError(
                f"model: n_levels={self.n_levels}, n_clusters={self.n_clusters}, sample_size={self.sample_size}; "
                "expected n_levels >= 1, n_clusters >= 2, sample_size >= n_clusters"
            )

    @property
    def auto_shape(self) -> bool:
        """Whether the shape is chosen when the model is fitted (``n_clusters: auto``)."""
        return self.n_clusters == "auto"

    @property
    def sizes(self) -> list[int]:
        """Codes per level, one entry a level."""
        if self.auto_shape:
            raise ConfigError("model.n_clusters is auto: the shape is chosen when the model is fitted "
                              "(a saved model's shape is its codebooks')")
        return list(self.n_clusters) if isinstance(self.n_clusters, list) else [self.n_clusters] * self.n_levels

    def with_shape(self, sizes) -> "ModelConfig":
        """This config with codes per level *sizes* (the shape auto chose, or a saved model's)."""
        return dataclasses.replace(self, n_clusters=[int(k) for k in sizes], n_levels=None)


@dataclass(frozen=True)
class EncodeConfig:
    device: Literal["cpu", "cuda"] = "cpu"  # cpu: numpy on executors (no torch needed)
    batch_rows: int = 8192  # rows per Arrow batch handed to the encoder (spark.sql.execution.arrow.maxRecordsPerBatch)
    # how a first run's executors get the embeddings: auto reads a local or FUSE Delta/Parquet input's files
    # with pyarrow (no JVM->Python transfer of embeddings) unless Delta features need Spark's reader;
    # files does so for remote URLs too (fsspec on executors); spark always uses Spark's reader
    reader: Literal["auto", "files", "spark"] = "auto"

    def __post_init__(self) -> None:
        if self.batch_rows < 1:
            raise ConfigError(f"encode.batch_rows={self.batch_rows}; expected >= 1")


# uniqueness.strategy's values: the job's implementations are ``spark.strategies.STRATEGIES`` (a test
# holds the two equal; this module stays free of pyspark)
STRATEGY_NAMES = ("relocate", "suffix")
# uniqueness.relocate_solver's values: ``uniqueness.relocate.SOLVERS`` (a test holds the two equal)
RELOCATE_SOLVERS = ("greedy", "exact")


@dataclass(frozen=True)
class UniquenessConfig:
    sep: str = "-"  # between the ID's parts: 12-4-9, 12-4-9-1 with a counter
    hot_code_rows: int = 1_000_000  # a code with more new rows than this is ranked in several tasks
    # relocate: items sharing a code move to free last-level codes of their prefix, counters only where
    # none is free near them; suffix: every item keeps its nearest code, later ones get counters
    strategy: str = "relocate"
    relocate_candidates: int = 16  # last-level codes an item may move to (its own included)
    # how a prefix's colliding items share its free codes: greedy (nearest first, by distance then key)
    # or exact (as many placed as possible, then the least total distance; an assignment solver)
    relocate_solver: str = "greedy"

    def __post_init__(self) -> None:
        if self.hot_code_rows < 1:
            raise ConfigError(f"uniqueness.hot_code_rows={self.hot_code_rows}; expected >= 1")
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(f"uniqueness.strategy={self.strategy!r}; expected "
                              + " or ".join(repr(name) for name in STRATEGY_NAMES))
        if isinstance(self.relocate_candidates, bool) or not isinstance(self.relocate_candidates, int) \
                or self.relocate_candidates < 2:
            raise ConfigError(f"uniqueness.relocate_candidates={self.relocate_candidates!r}; expected an int >= 2")
        if self.relocate_solver not in RELOCATE_SOLVERS:
            raise ConfigError(f"uniqueness.relocate_solver={self.relocate_solver!r}; expected "
                              + " or ".join(repr(name) for name in RELOCATE_SOLVERS))


@dataclass(frozen=True)
class QualityConfig:
    """Gates a run checks before it writes (None: off). Both figures are over the run's new items."""

    max_counter_share: float | None = None  # most of them whose ID may need a counter (a shared code)
    min_utilisation: float | None = None  # least share of its codes every level must use
    # semid refit: most of the table's (sampled) items whose full code the aligned new version changes
    max_churn: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_counter_share", "min_utilisation", "max_churn"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"quality.{name}={value}; expected a share between 0 and 1, or null (off)")

    @property
    def active(self) -> bool:
        return self.max_counter_share is not None or self.min_utilisation is not None


@dataclass(frozen=True)
class OutputConfig:
    path: str | None = None  # a Delta directory (default artifacts/semantic_ids) ...
    table: str | None = None  # ... or a table name
    new_table_on_model_change: bool = False  # replace the table (kept in Delta history) for a new model
    max_retries: int = 2  # re-rank and merge again when another run committed first (ConcurrentRunError after)
    # semid refit publishes the new version: new_table writes all its IDs to a new table (refit_path or
    # refit_table; default: this one's name plus _v<model sha>), keep_ids keeps every written ID here and
    # gives only new items codes of the new version
    on_refit: Literal["new_table", "keep_ids"] = "new_table"
    refit_path: str | None = None  # on_refit=new_table: the new table's Delta directory
    refit_table: str | None = None  # ... or its table name
    churn_path: str | None = None  # the refits' churn reports, one row each (default: <path>_churn)
    churn_table: str | None = None  # (default with output.table: <table>_churn)

    def __post_init__(self) -> None:
        if self.refit_path is not None and self.refit_table is not None:
            raise ConfigError("output: give one of output.refit_path or output.refit_table, not both")
        if self.churn_path is not None and self.churn_table is not None:
            raise ConfigError("output: give one of output.churn_path or output.churn_table, not both")
        if self.max_retries < 0:
            raise ConfigError(f"output.max_retries={self.max_retries}; expected >= 0")
        if self.path is not None and self.table is not None:
            raise ConfigError("output: give one of output.path or output.table, not both")
        if self.path is None and self.table is None:
            object.__setattr__(self, "path", "artifacts/semantic_ids")


@dataclass(frozen=True)
class JobConfig:
    input: InputConfig
    spark: SparkConfig = field(default_factory=SparkConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    uniqueness: UniquenessConfig = field(default_factory=UniquenessConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)

    @classmethod
    def from_yaml(cls, path: str, overrides: Sequence[str] = ()) -> "JobConfig":
        """Read *path* (a local file or any fsspec URL: ``s3://``, ``abfss://``, ``gs://``, ``dbfs:/Volumes/…``),
        apply ``section.key=value`` overrides (values parsed as YAML), validate."""
        try:
            text = storage.read_bytes(path).decode("utf-8")
        except (OSError, ValueError) as exc:  # a missing file or object, no permission, an unknown URL scheme
            raise ConfigError(f"cannot read config {path!r}: {exc}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
        return cls.from_dict(raw or {}, overrides, source=path)

    @classmethod
    def from_dict(cls, raw: dict, overrides: Sequence[str] = (), *, source: str = "config") -> "JobConfig":
        """*raw* sections, then *overrides* (``section.key=value``; a dict setting takes one more part,
        the rest of the path as its key: ``spark.conf.spark.executor.memory=2g``). An error names the
        setting and where its value came from: *source* or ``--set``."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
        raw = {k: dict(v or {}) if isinstance(v, dict) or v is None else v for k, v in raw.items()}
        from_set: dict[str, str] = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            parts = key.strip().split(".", 2)
            if not sep or len(parts) < 2 or not all(parts):
                raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set model.n_clusters=64")
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"--set {item!r}: {parts[0]} is not a section")
            if len(parts) == 3:  # a key inside a dict setting (spark.conf, model.params): may hold dots itself
                inner = section.setdefault(parts[1], {})
                if not isinstance(inner, dict):
                    raise ConfigError(f"--set {item!r}: {parts[0]}.{parts[1]} takes no sub-keys")
                inner[parts[2]] = parsed
            else:
                section[parts[1]] = parsed
            from_set[".".join(parts[:2])] = item
        if "input" not in raw:
            raise ConfigError(f"{source}: no input: section; a job reads input.path (a Delta or Parquet directory) "
                              "or input.table, e.g. --set input.path=/data/items")
        return _build(cls, raw, (), source, from_set)


def _origin(path: tuple[str, ...], source: str, from_set: dict[str, str]) -> str:
    """Where the value at *path* came from, as an error should name it."""
    dotted = ".".join(path)
    hits = [item for key, item in from_set.items() if key == dotted or key.startswith(dotted + ".")]
    return f"--set {hits[0]}" if hits else source


def _build(cls, raw: Any, path: tuple[str, ...], source: str, from_set: dict[str, str]):
    where = ".".join(path) or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{_origin(path, source, from_set)}: {where} should be a mapping of keys, got {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    if unknown := sorted(set(raw) - known):
        raise ConfigError(f"{_origin((*path, unknown[0]), source, from_set)}: unknown key(s) "
                          f"{[('.'.join((*path, k))) for k in unknown]}; "
                          f"valid keys{' of ' + where if path else ''}: {sorted(known)}")
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value or {}, (*path, name), source, from_set)
        else:
            key = (*path, name)
            try:
                values[name] = _check_value(value, hint, ".".join(key))
            except ConfigError as exc:
                raise ConfigError(f"{_origin(key, source, from_set)}: {exc}") from None
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{_origin(path, source, from_set)}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{source}: {where}: {exc}") from None


def _check_value(value: Any, hint: Any, where: str) -> Any:
    options = get_args(hint) if get_origin(hint) is not Literal else (hint,)
    for option in options or (hint,):
        if get_origin(option) is Literal:
            if value in get_args(option):
                return value
        elif get_origin(option) is list:
            (item,) = get_args(option)
            if isinstance(value, list) and value and all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                return list(value)
        elif option is type(None):
            if value is None:
                return value
        elif option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        elif option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        elif option in (str, bool, dict) and isinstance(value, option):
            return value
    raise ConfigError(f"{where}={value!r}: expected {_describe(hint)}")


def _describe(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if get_origin(hint) is list:
        return f"a list of {_describe(get_args(hint)[0])}"
    args = get_args(hint)
    if not args:
        return getattr(hint, "__name__", str(hint))
    return " or ".join("null" if a is type(None) else _describe(a) for a in args)
