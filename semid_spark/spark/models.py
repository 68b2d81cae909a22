"""The job's models: which kind the config asks for, built, fitted where, saved, found and loaded.

A model kind is a line of ``KINDS``: its class (what a saved model's ``metadata.json`` says in
``type``) and how the config builds one. Every fitted encoder the job holds is a
``core.FittedEncoder`` (codebooks and their sizes, ``n_features_in_``, ``sha256``, ``to_bytes``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
from typing import Callable

from pyspark.sql import SparkSession

from semid_spark import storage
from semid_spark.algorithms import io as model_io
from semid_spark.algorithms import load_encoder as load_saved
from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.algorithms.rq_vae import RQVAE
from semid_spark.config import RQ_VAE_JOB_PARAMS, JobConfig, ModelConfig
from semid_spark.core import FittedEncoder
from semid_spark.delta.table import SHA_PROPERTY, TableRef
from semid_spark.exceptions import ConfigError, ModelFormatError
from semid_spark.spark.publish import check_published

log = logging.getLogger(__name__)


def _rq_kmeans(model_cfg: ModelConfig, dim: int) -> RQKMeans:
    return RQKMeans(model_cfg.n_levels, model_cfg.sizes, random_state=model_cfg.seed, **model_cfg.params)


def _rq_vae(model_cfg: ModelConfig, dim: int) -> RQVAE:
    return RQVAE(in_dim=dim, num_emb_list=model_cfg.sizes, random_state=model_cfg.seed,
                 **{**RQ_VAE_JOB_PARAMS, **model_cfg.params})


# model.kind -> (the class a saved model of that kind names in its metadata, its builder from the config)
KINDS: dict[str, tuple[type, Callable[[ModelConfig, int], FittedEncoder]]] = {
    "rq_kmeans": (RQKMeans, _rq_kmeans),
    "rq_vae": (RQVAE, _rq_vae),
}


def new_encoder(model_cfg: ModelConfig, dim: int):
    """An unfitted encoder of ``model.kind`` for *dim*-d embeddings, with the config's shape and params."""
    return KINDS[model_cfg.kind][1](model_cfg, dim)


def fit_device(model_cfg: ModelConfig) -> str:
    """``model.fit_device``; ``auto``: cuda where the driver has a GPU (and torch), else cpu."""
    if model_cfg.fit_device != "auto":
        return model_cfg.fit_device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def import_torch_in_background() -> None:
    """The fit needs torch, whose import takes seconds of the driver's time: start it while Spark
    reads and checks the input (an ``import torch`` meanwhile waits for this one, then finds it done)."""
    if "torch" in sys.modules or importlib.util.find_spec("torch") is None:
        return
    threading.Thread(target=importlib.import_module, args=("torch",), name="semid-import-torch", daemon=True).start()


def model_exists(path: str) -> bool:
    """Whether a finished model is saved at *path* (local or URL): its manifest is written last."""
    return storage.exists(storage.join(path, model_io.METADATA_FILE))


def load_encoder(path: str, cfg: JobConfig | None = None, *, published: bool = True):
    """The model at ``model.path``, or an error that names the setting and what to do; with *cfg*, also
    when the saved model's kind or shape is not the config's (never a silent reuse). *published*:
    refuse a refit's version that was saved and not published (``spark.publish``)."""
    if not model_exists(path):
        raise ModelFormatError(f"no model at model.path={path!r}: run `semid fit --config …` (or `semid run`, which fits "
                               "when the model is missing), or point model.path at a saved model")
    if published:
        check_published(path)
    if cfg is not None:
        check_model_matches_config(model_io.read_metadata(path), cfg)
    try:
        return load_saved(path)
    except ModelFormatError as exc:
        raise ModelFormatError(f"model.path={path!r}: {exc}") from None


def save_model(encoder, path: str) -> None:
    encoder.save(path)
    log.info("model saved to %s", path)


def refuse_fitting_over_bound_model(spark: SparkSession, cfg: JobConfig, *, replaces_table: bool = False) -> None:
    """A fit must not overwrite the model that the output table's IDs were assigned with: every later
    run would then refuse the table (ModelMismatchError) and that model would be gone. Checked before
    anything is read or fitted. *replaces_table*: the run replaces the table itself (``run`` with
    ``output.new_table_on_model_change``), so the table's old model may go."""
    if replaces_table or not model_exists(cfg.model.path):
        return
    out = TableRef(cfg.output.path, cfg.output.table)
    detail = out.detail(spark)
    saved = model_io.read_metadata(cfg.model.path).get("sha256")
    if detail is None or (detail["properties"] or {}).get(SHA_PROPERTY) != saved:
        return
    raise ConfigError(
        f"model.path={cfg.model.path!r} holds model {str(saved)[:12]}…, which table {out}'s IDs were assigned with; "
        "fitting over it would make every later run refuse that table. Use `semid refit --config …` for a new "
        "version (aligned to these IDs, with its churn report), or set model.path to a new location and "
        "output to a new table")


def _meta_sizes(meta: dict) -> list[int]:
    sizes = meta.get("n_clusters") if meta.get("type") == "RQKMeans" else meta.get("num_emb_list")
    if isinstance(sizes, int):
        sizes = [sizes] * int(meta.get("n_levels") or 1)
    return [int(k) for k in sizes or []]


def _meta_dim(meta: dict):
    return meta.get("D") if meta.get("type") == "RQKMeans" else meta.get("in_dim")


def saved_model_summary(meta: dict) -> tuple[str, list[int], int | None, str]:
    """(type, codes per level, input dimension, sha256) of a saved model, from its manifest *meta*."""
    return str(meta.get("type")), _meta_sizes(meta), _meta_dim(meta), str(meta.get("sha256"))


def check_model_matches_config(meta: dict, cfg: JobConfig) -> None:
    """A saved model whose kind or shape differs from the config's is an error, never a silent reuse."""
    kind, sizes = meta.get("type"), _meta_sizes(meta)
    if cfg.model.auto_shape:  # the shape was chosen when the model was fitted: its levels only, if given
        wants = sizes if cfg.model.n_levels in (None, len(sizes)) else [f"{cfg.model.n_levels} levels"]
    else:
        wants = cfg.model.sizes
    if kind and kind != KINDS[cfg.model.kind][0].__name__ or (sizes and sizes != wants):
        raise ConfigError(
            f"model.path={cfg.model.path!r} holds a {kind} model of {'x'.join(map(str, sizes))} codes, and the config "
            f"asks for {cfg.model.kind} {'x'.join(map(str, wants))} (model.kind, model.n_levels, model.n_clusters): "
            "a saved model is never refitted silently. Use `semid refit` for a new version aligned to the table's "
            "IDs, or set model.path (and the output) to a new location for a new model")
