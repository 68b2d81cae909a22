"""RQ-KMeans: residual k-means, a drop-in for semantic-id 0.2.5's ``RQKMeans``."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from semid_spark.algorithms import _ops, io
from semid_spark.core import ArrayLike, BaseSemanticEncoder, check_codes, check_embeddings
from semid_spark.exceptions import (
    ConfigError, EmptyClusterWarning, InvalidInputError, ModelFormatError, NotFittedError,
)
from semid_spark.utils.progress import progress

log = logging.getLogger(__name__)

SEED_SAMPLE_PER_CLUSTER = 64  # k-means++ seeds on at most this many points per cluster


@dataclass(frozen=True)
class LevelStats:
    level: int
    n_clusters: int
    n_iter: int
    inertia: float  # mean squared residual after this level
    n_empty: int


def _torch_device(device: str):
    """Validate a device string and return the torch device (torch is imported here, lazily)."""
    if not isinstance(device, str) or not (
        device in ("cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ConfigError(f"unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'mps'")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch.cuda.is_available() is False")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but torch.backends.mps.is_available() is False")
    return torch.device(device)


class RQKMeans(BaseSemanticEncoder):
    """Residual quantisation with k-means: level l clusters the residuals left by levels < l.

    Parameters
    ----------
    n_levels : int, number of levels L (>= 1)
    n_clusters : int or list of L ints (>= 1), codebook size per level; stored as given (the
        fitted sizes are ``[len(c) for c in codebooks_]``)
    metric : ``"l2"`` only; ``"cosine"`` raises ``NotImplementedError`` (normalise the
        embeddings first: on unit vectors l2 and cosine rank neighbours alike)
    implementation : ``"kmeans"`` or ``"constrained"`` (balanced: at fit time every cluster
        holds exactly N//K or N//K+1 of the level's points, and each level learns per-centroid
        offsets ``offsets_`` that ``encode`` adds to the squared distances, so that encoding
        stays balanced: still a per-row rule, the same codes on every device)
    max_iter, tol : Lloyd stops after max_iter iterations or when the summed squared center
        shift is <= tol * mean feature variance of the level's input (scikit-learn's rule)
    random_state : int or None; the same seed gives the same codebooks bit for bit on the
        same device; no global random state is read or changed
    n_init : restarts per level keeping the lowest inertia; None means 1 (k-means++ seeding
        makes more restarts rarely worth their cost)
    max_samples_per_cluster : None (Lloyd on every point) or a cap: Lloyd runs on a random
        subsample of at most this many points per cluster at each level, as faiss does (256);
        all points are still encoded and pass their residuals on (ignored when constrained)
    device : ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``: where ``fit`` and ``encode`` run unless a call
        says otherwise (as RQVAE takes it); codes are the same on every device

    The constructor only stores its arguments (scikit-learn's contract: ``get_params``,
    ``set_params`` and ``sklearn.base.clone`` work); ``fit`` checks them.

    Attributes (after ``fit`` or ``load`` only)
    ----------
    codebooks_ : list of L float32 arrays of shape (K_l, D)
    offsets_ : None, or (``implementation="constrained"``) a list of L float32 arrays (K_l,): a
        row's code at a level is the centroid of least squared distance plus offset
    D_, n_features_in_ : int, embedding dimension
    level_stats_ : list of LevelStats (``fit`` only)
    """

    def __init__(
        self,
        n_levels: int = 4,
        n_clusters: int | Sequence[int] = 256,
        metric: Literal["l2", "cosine"] = "l2",
        implementation: Literal["kmeans", "constrained"] = "kmeans",
        max_iter: int = 100,
        tol: float = 1e-4,
        random_state: int | None = None,
        verbose: bool = False,
        n_init: int | None = None,
        max_samples_per_cluster: int | None = None,
        device: str = "cpu",
    ):
        # scikit-learn's contract: store the arguments as given; fit checks them (_level_sizes)
        self.n_levels = n_levels
        self.n_clusters = n_clusters
        self.metric = metric
        self.implementation = implementation
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.n_init = n_init
        self.max_samples_per_cluster = max_samples_per_cluster
        self.device = device

    def _level_sizes(self) -> list[int]:
        """Check the parameters; the codebook size of each level (``n_clusters`` as a list)."""
        n_levels, n_clusters = self.n_levels, self.n_clusters
        if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) or n_levels < 1:
            raise ConfigError(f"n_levels={n_levels!r}; expected an int >= 1")
        if isinstance(n_clusters, (int, np.integer)) and not isinstance(n_clusters, bool):
            sizes = [int(n_clusters)] * int(n_levels)
        else:
            sizes = [int(k) for k in n_clusters]
            if len(sizes) != n_levels:
                raise ConfigError(f"len(n_clusters)={len(sizes)} must match n_levels={n_levels}")
        if any(k < 1 for k in sizes):
            raise ConfigError(f"n_clusters={sizes}; every level needs >= 1 cluster")
        if self.metric == "cosine":  # semantic-id's wording, which its users match on
            raise NotImplementedError("Cosine metric is not yet implemented. Please use metric='l2' "
                                      "(normalise X first: on unit vectors l2 and cosine rank neighbours alike)")
        if self.metric != "l2":
            raise ConfigError(f"unknown metric {self.metric!r}; expected 'l2'")
        if self.implementation not in ("kmeans", "constrained"):
            raise ConfigError(f"unknown implementation {self.implementation!r}; expected 'kmeans' or 'constrained'")
        if self.max_iter < 1 or self.tol < 0 or (self.n_init is not None and self.n_init < 1):
            raise ConfigError(f"max_iter={self.max_iter}, tol={self.tol}, n_init={self.n_init}; "
                              "expected >= 1, >= 0, >= 1")
        if self.max_samples_per_cluster is not None and self.max_samples_per_cluster < 1:
            raise ConfigError(f"max_samples_per_cluster={self.max_samples_per_cluster}; expected >= 1 or None")
        return sizes

    # ------------------------------------------------------------------ fitting
    def fit(self, X: ArrayLike, *, device: str | None = None) -> "RQKMeans":
        """Learn one codebook per level from X of shape (N, D); returns self.

        *device*: this call's device; None: the constructor's ``device``."""
        sizes = self._level_sizes()
        x = check_embeddings(X)
        if len(x) < max(sizes):
            raise InvalidInputError(
                f"n_samples={len(x)} should be >= n_clusters={max(sizes)}"
            )
        torch_device = _torch_device(device or self.device)
        import torch

        from semid_spark.algorithms import _torch_ops

        seeds = np.random.SeedSequence(self.random_state).spawn(len(sizes))
        codebooks, stats, offsets = [], [], []
        with _torch_ops.full_fp32_matmul(), torch.no_grad():
            residual = torch.from_numpy(x).to(torch_device)
            levels = progress(enumerate(sizes), desc=f"RQ-KMeans fit ({len(x):,} rows)", total=len(sizes),
                              unit="level")
            for level, k in levels:
                rng = np.random.default_rng(seeds[level])
                centers, n_iter = self._fit_level(residual, k, rng, _torch_ops)
                codebook = centers.float().cpu().numpy()
                level_offsets = None
                if self.implementation == "constrained":  # encode as balanced as the fit: offsets
                    dist = torch.addmm(_torch_ops.sq_norms(centers), residual, centers.T, alpha=-2.0)
                    level_offsets = _ops.balancing_offsets(dist.cpu().numpy())
                offsets.append(level_offsets)
                codes = _torch_ops.nearest_codes(residual, centers, _torch_ops.level_norms(centers, level_offsets),
                                                 level_offsets)
                residual = residual - centers[codes]
                inertia = float((residual * residual).sum(dim=1).mean())
                n_empty = int((torch.bincount(codes, minlength=k) == 0).sum())
                if n_empty:
                    warnings.warn(f"level {level}: {n_empty} of {k} clusters are empty", EmptyClusterWarning)
                stats.append(LevelStats(level, k, n_iter, inertia, n_empty))
                codebooks.append(np.ascontiguousarray(codebook, dtype=np.float32))
                levels.set_postfix(mse=f"{inertia:.4g}", iters=n_iter)
                log.info("level %d/%d K=%d iter=%d mse=%.4g empty=%d", level + 1, len(sizes), k, n_iter, inertia, n_empty)
        self._set_codebooks(codebooks, offsets if self.implementation == "constrained" else None)
        self.level_stats_ = stats
        return self

    def _set_codebooks(self, codebooks: list[np.ndarray], offsets: list[np.ndarray] | None = None) -> None:
        self.codebooks_ = codebooks
        self.offsets_ = offsets
        self.D_ = self.n_features_in_ = int(codebooks[0].shape[1])

    def _fit_level(self, x, k: int, rng: np.random.Generator, ops):
        """Best of n_init runs of k-means++ then Lloyd on x (n, d): returns (centers, n_iter)."""
        import torch

        n = len(x)
        cap = self.max_samples_per_cluster
        if cap is not None and n > cap * k and self.implementation == "kmeans":
            # Lloyd on a subsample, as faiss does (its default is 256 per centroid); every
            # point is still encoded with the result, and its residual passed on
            keep = np.sort(rng.choice(n, cap * k, replace=False))
            x, n = x[torch.from_numpy(keep).to(x.device)], cap * k
        tol_abs = self.tol * float(x.var(dim=0).mean())
        best = None
        for _ in range(self.n_init or 1):
            n_seed = min(n, SEED_SAMPLE_PER_CLUSTER * k)
            sample = np.sort(rng.choice(n, n_seed, replace=False)) if n_seed < n else np.arange(n)
            init = ops.kmeans_plus_plus(x[torch.from_numpy(sample).to(x.device)], k, rng)
            centers, n_iter = ops.lloyd(
                x, init, max_iter=self.max_iter, tol=tol_abs, balanced=self.implementation == "constrained"
            )
            inertia = float(ops.assign(x, centers)[1].double().sum())
            if best is None or inertia < best[0]:
                best = (inertia, centers, n_iter)
        return best[1], best[2]

    # ------------------------------------------------------------------ using a model
    def _check_fitted(self) -> None:
        if not getattr(self, "codebooks_", None):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit() first")

    def encode(self, X: ArrayLike, *, device: str | None = None, batch_size: int | None = None) -> np.ndarray:
        """Codes (N, L) int32: at each level the nearest centroid to the residual.

        Ties go to the lowest index, and the numpy ("cpu") and torch (cuda/mps) paths give
        identical codes (see ``_ops``). ``batch_size`` only bounds memory. *device* None: the
        constructor's ``device``.
        """
        self._check_fitted()
        device = device or self.device
        x = check_embeddings(X, dim=self.D_)
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}; expected >= 1 or None")
        if device == "cpu":
            return _ops.encode_residual(x, self.codebooks_, chunk=min(batch_size or _ops.ENCODE_CHUNK, _ops.ENCODE_CHUNK),
                                        offsets=getattr(self, "offsets_", None))
        torch_device = _torch_device(device)
        from semid_spark.algorithms import _torch_ops

        return _torch_ops.encode_residual(x, self.codebooks_, torch_device, chunk=batch_size or 65536,
                                          offsets=getattr(self, "offsets_", None))

    def decode(self, codes: ArrayLike) -> np.ndarray:
        """Sum of the chosen centroids: (N, L') codes, L' <= L, -> (N, D) float32."""
        self._check_fitted()
        arr = check_codes(codes, sizes=[len(c) for c in self.codebooks_])
        return _ops.decode_codes(arr, self.codebooks_, self.D_)

    def latent_residuals(self, X: ArrayLike, codes: np.ndarray) -> np.ndarray:
        """What the last level quantises: X minus levels < L-1, (N, D) float64."""
        self._check_fitted()
        r = check_embeddings(X, dim=self.D_).astype(np.float64)
        for level in range(len(self.codebooks_) - 1):
            r -= self.codebooks_[level][np.asarray(codes)[:, level]]
        return r

    @property
    def sha256(self) -> str:
        """Digest of the codebooks: the model's identity, stamped on every ID the job writes."""
        self._check_fitted()
        return io.arrays_sha256(self._arrays())

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"codebook_{i}": cb for i, cb in enumerate(self.codebooks_)}
        for i, level_offsets in enumerate(getattr(self, "offsets_", None) or []):  # format version 2
            arrays[f"offsets_{i}"] = level_offsets
        return arrays

    def _metadata(self) -> dict:
        return {
            "type": "RQKMeans", "n_levels": len(self.codebooks_), "n_clusters": [len(c) for c in self.codebooks_],
            "metric": self.metric, "implementation": self.implementation, "max_iter": self.max_iter,
            "tol": self.tol, "random_state": self.random_state, "n_init": self.n_init, "D": self.D_,
            "max_samples_per_cluster": self.max_samples_per_cluster,
        }

    def save(self, path: str) -> None:
        """Write ``metadata.json`` + ``codebooks.npz`` (with sha256) into directory *path*."""
        self._check_fitted()
        io.save_model(path, self._metadata(), self._arrays())

    def to_bytes(self) -> bytes:
        """The model as bytes (arrays + metadata + sha256), e.g. to ship to Spark executors."""
        self._check_fitted()
        return io.dumps_model(self._metadata(), self._arrays())

    @classmethod
    def load(cls, path: str, *, device: str = "cpu") -> "RQKMeans":
        """Read a model saved by ``save`` (or by semantic-id 0.2.5); the digest is verified."""
        meta, arrays = io.load_model(path, expected_type="RQKMeans")
        return cls._from_parts(meta, arrays, path)

    @classmethod
    def _from_parts(cls, meta: dict, arrays: dict[str, np.ndarray], path: str) -> "RQKMeans":
        try:
            model = cls(
                n_levels=meta["n_levels"], n_clusters=meta["n_clusters"], metric=meta.get("metric", "l2"),
                implementation=meta.get("implementation", "kmeans"), max_iter=meta.get("max_iter", 100),
                tol=meta.get("tol", 1e-4), random_state=meta.get("random_state"), n_init=meta.get("n_init"),
                max_samples_per_cluster=meta.get("max_samples_per_cluster"),
            )
            sizes = model._level_sizes()
            books = [np.ascontiguousarray(arrays[f"codebook_{i}"], dtype=np.float32) for i in range(len(sizes))]
            dim = int(meta["D"])
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelFormatError(f"{path!r}: metadata and arrays do not describe a model: {exc!r}") from None
        for i, (book, k) in enumerate(zip(books, sizes)):
            if book.shape != (k, dim):
                raise ModelFormatError(f"{path!r}: codebook_{i} has shape {book.shape}, expected {(k, dim)}")
        offsets = None
        if "offsets_0" in arrays:  # a balanced model (format version 2); older files have none
            offsets = [np.ascontiguousarray(arrays.get(f"offsets_{i}", np.empty(0)), dtype=np.float32)
                       for i in range(len(sizes))]
            for i, (level_offsets, k) in enumerate(zip(offsets, sizes)):
                if level_offsets.shape != (k,):
                    raise ModelFormatError(f"{path!r}: offsets_{i} has shape {level_offsets.shape}, expected {(k,)}")
        model._set_codebooks(books, offsets)
        return model
