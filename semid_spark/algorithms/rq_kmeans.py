"""RQ-KMeans: residual k-means, a drop-in for semantic-id 0.2.5's ``RQKMeans``."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from semid_spark.algorithms import _ops, io, require_torch
from semid_spark.core import ArrayLike, BaseSemanticEncoder, check_codes, check_embeddings
from semid_spark.exceptions import (
    ConfigError, EmptyClusterWarning, InvalidInputError, ModelFormatError, NotFittedError,
)
from semid_spark.utils.progress import progress

log = logging.getLogger(__name__)

SEED_SAMPLE_PER_CLUSTER = 64  # seeding looks at most this many points per cluster
# Greedy k-means++ reads its whole sample once per center: sample x K x d, memory-bound. Above this many
# sample rows x K (K > 1024 at 64 per cluster) k-means|| seeds instead, in GEMMs (3 x 4096 on 500k x 128,
# 2 cores: greedy k-means++ spent 417 of a 604 s fit). Seeding on fewer rows instead costs error: on real
# sentences at 3 x 1024, 16 per cluster gave MSE 0.4525 and 4 gave 0.4662 against 0.4443 with 64
SEED_BUDGET = 64 * 1024 * 1024
SEED_ROUNDS = 5  # k-means|| draws 2K candidates in this many rounds, then weighted k-means++ picks K of them
SEED_OVERSAMPLE = 2
SEED_GATHER_BYTES = 16 * 1024 * 1024  # k-means|| reads its sample in blocks of at most this many bytes:
# a block of 65,536 rows was 201 MB at d = 768, a third of the default sample
SEED_COPY_BYTES = 32 * 1024 * 1024  # greedy k-means++ works on a copy of its sample: at most this big,
# else k-means|| (which reads the sample by index); 200k x 768 rows at 1024/512 codes copied 201 and
# 100 MB per level before
WARMUP_PER_CLUSTER = 256  # Lloyd starts on a subsample of this many points per cluster (faiss's cap)...
WARMUP_INERTIA_TOL = 3e-3  # ...until an iteration gains less than this fraction, then goes on with all
REFINE_MIN_ROWS_PER_CODE = 64  # joint passes only when the fit has this many rows per codeword (else they overfit)


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
    torch = require_torch(f"device {device!r}" if device != "cpu" else "this model on device 'cpu'")

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch.cuda.is_available() is False")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but torch.backends.mps.is_available() is False")
    return torch.device(device)


def _fit_backend(device: str):
    """(kernel module, device) for a fit: numpy's ``_fit_ops`` on cpu (no torch needed), torch's
    ``_torch_ops`` on cuda and mps."""
    if device == "cpu":
        from semid_spark.algorithms import _fit_ops

        return _fit_ops, None
    torch_device = _torch_device(device)
    from semid_spark.algorithms import _torch_ops

    return _torch_ops, torch_device


def refine_codebooks(ops, x, codebooks: list, *, max_passes: int, tol: float, codes=None, residual=None):
    """Lower the full reconstruction error of greedy residual codebooks by joint passes, with the
    kernels of *ops* (``_fit_ops``: numpy arrays, ``_torch_ops``: tensors).

    A pass encodes every row, then, level after level, moves each codeword by the mean residual
    of the rows that use it: with the codes fixed that is the least-squares codeword given the
    other levels, so the error can only fall (block coordinate descent on the whole model, where
    the greedy fit optimised each level for the levels above it only). Stops after *max_passes*,
    or when a pass lowers the error by less than the fraction *tol*; a pass that raises it (the
    greedy encoding may pick other codes) is undone. *codes* (L, n) and *residual* (n, d): the
    greedy encoding of x by *codebooks* when the caller has it (the first pass then encodes
    nothing; *residual* is updated in place). Returns the codebooks, the passes kept and the
    greedy codes (L, n) of those codebooks; the caller's codebooks are left as they are.
    """
    books = [ops.copy(c) for c in codebooks]
    error, kept, kept_books, kept_codes = math.inf, 0, books, None
    for n_pass in range(max_passes + 1):
        if n_pass == 0 and codes is not None and residual is not None:
            new_error = ops.squared_error(residual)
        else:
            codes, residual, new_error = ops.residual_pass(x, books, out=residual)  # reuses the caller's rows
        if new_error >= error:  # the last update made things worse: keep the codebooks before it
            break
        kept, kept_books, kept_codes = n_pass, [ops.copy(c) for c in books], codes
        if new_error > (1.0 - tol) * error or n_pass == max_passes:
            break
        error = new_error
        for level, book in enumerate(books):
            shift, _ = ops.mean_rows(residual, codes[level], len(book))
            book += shift
            ops.subtract_codewords_(residual, shift, codes[level])
    return kept_books, kept, kept_codes


def kmeans_parallel(ops, x, k: int, rng: np.random.Generator, rows: np.ndarray | None = None):
    """k-means|| seeding (Bahmani et al., 2012) with the kernels of *ops*: (n, d) -> (k, d) centers.

    SEED_ROUNDS rounds each draw SEED_OVERSAMPLE * k / SEED_ROUNDS rows in proportion to their squared
    distance to the candidates so far and measure every row against the new ones in one blocked
    assignment (a GEMM); the candidates, weighted by the rows nearest to each, are then reduced to k by
    greedy k-means++. Its cost is n x 2k x d in GEMMs where greedy k-means++ on the n rows reads them
    k times. *rows*: the sample as indices into x (None: all of x), gathered SEED_GATHER_BYTES at a time,
    never copied whole. Falls back to greedy k-means++ where fewer than k candidates are drawn (tiny or
    duplicated data)."""
    rows = np.arange(len(x)) if rows is None else rows
    n = len(rows)

    def measure(centers) -> tuple[np.ndarray, np.ndarray]:  # each sample row's nearest center and distance
        step = max(1, SEED_GATHER_BYTES // (4 * x.shape[1]))
        parts = [ops.assign(ops.take(x, rows[s : s + step]), centers) for s in range(0, n, step)]
        return (np.concatenate([ops.to_numpy(labels) for labels, _ in parts]),
                np.concatenate([np.asarray(ops.to_numpy(dists), dtype=np.float64) for _, dists in parts]))

    chosen = np.array([int(rng.integers(n))])  # positions in rows
    closest = measure(ops.take(x, rows[chosen]))[1]
    owner = np.zeros(n, dtype=np.int64)  # index into chosen of each row's nearest candidate
    per_round = -(-SEED_OVERSAMPLE * k // SEED_ROUNDS)
    for _ in range(SEED_ROUNDS):
        cumulative = np.cumsum(closest)
        if cumulative[-1] <= 0:
            break
        picks = np.unique(np.minimum(np.searchsorted(cumulative, rng.random(per_round) * cumulative[-1]), n - 1))
        labels, dists = measure(ops.take(x, rows[picks]))
        closer = dists < closest
        closest[closer] = dists[closer]
        owner[closer] = len(chosen) + labels[closer]
        chosen = np.concatenate([chosen, picks])
    weights = np.bincount(owner, minlength=len(chosen)).astype(np.float64)
    if int((weights > 0).sum()) < k:
        return ops.kmeans_plus_plus(ops.take(x, rows), k, rng)
    return ops.kmeans_plus_plus(ops.take(x, rows[chosen]), k, rng, weights=weights)


class RQKMeans(BaseSemanticEncoder):
    """Residual quantisation with k-means: level l clusters the residuals left by levels < l.

    Parameters
    ----------
    n_levels : int, number of levels L (>= 1)
    n_clusters : int or list of L ints (>= 1), codebook size per level; stored as given (the
        fitted sizes are ``[len(c) for c in codebooks_]``)
    metric : ``"l2"`` only; ``"cosine"`` raises ``NotImplementedError`` (normalise the
        embeddings first: on unit vectors l2 and cosine rank neighbours alike)
    implementation : ``"kmeans"`` or ``"constrained"`` (balanced: Lloyd with priced assignments,
        and each level learns per-centroid offsets ``offsets_`` that ``encode`` adds to the
        squared distances: still a per-row rule, the same codes on every device). Balance is
        the goal of a heuristic price search, not a guarantee: it aims at N/K rows within 2%
        per cluster on the training data and stops at the best prices it found; on 360 fits
        (1-5k rows, 10-32 clusters, two BLAS core types) the worst cluster was 3.3% off N/K,
        the median fit's 1.8%. Rows at a near-tie may fall either side with another CPU's
        rounding, so two machines can differ by a row or two per cluster
    max_iter, tol : Lloyd stops after max_iter iterations or when the summed squared center
        shift is <= tol * mean feature variance of the level's input (scikit-learn's rule)
    inertia_tol : Lloyd also stops when an iteration lowers the level's inertia by less than this
        fraction (0: never). Lloyd's tail creeps (on 169k real sentence embeddings a level gains
        under 0.1% per iteration after ~10 and runs 100+ to converge); the joint passes below
        buy more error per pass over the data than those iterations do
    refine_passes : after the greedy levels, at most this many joint passes (0: none, the plain
        residual k-means of semantic-id): encode every row, then move each level's codewords by
        the mean residual of their rows, level after level (the least-squares codewords given the
        codes). Greedy fitting tunes each level for the levels above it only; the passes lower the
        error of the whole code, and stop when one gains less than ``inertia_tol``. Not with
        ``implementation="constrained"`` (the balanced sizes are the point there)
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
    level_stats_ : list of LevelStats (``fit`` only), from the final codebooks
    refine_passes_ : joint passes kept (``fit`` only)
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
        inertia_tol: float = 1e-3,
        refine_passes: int = 8,
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
        self.inertia_tol = inertia_tol
        self.refine_passes = refine_passes

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
        if not 0 <= self.inertia_tol < 1 or self.refine_passes < 0:
            raise ConfigError(f"inertia_tol={self.inertia_tol}, refine_passes={self.refine_passes}; "
                              "expected 0 <= inertia_tol < 1 and refine_passes >= 0")
        if self.max_samples_per_cluster is not None and self.max_samples_per_cluster < 1:
            raise ConfigError(f"max_samples_per_cluster={self.max_samples_per_cluster}; expected >= 1 or None")
        return sizes

    # ------------------------------------------------------------------ fitting
    def fit(self, X: ArrayLike, *, device: str | None = None, init: "RQKMeans | None" = None) -> "RQKMeans":
        """Learn one codebook per level from X of shape (N, D); returns self.

        *device*: this call's device; None: the constructor's ``device``. *init*: a fitted model
        of the same shape whose codebooks start Lloyd at every level instead of k-means++ (a
        warm start: a refit on a drifted catalog then keeps the clusters the data still supports,
        see :mod:`semid_spark.algorithms.align`)."""
        sizes = self._level_sizes()
        x = check_embeddings(X)
        if len(x) < max(sizes):
            raise InvalidInputError(
                f"n_samples={len(x)} should be >= n_clusters={max(sizes)}"
            )
        if init is not None and ([len(c) for c in init.codebooks_] != sizes or init.D_ != x.shape[1]):
            raise ConfigError(f"init has codebooks {[c.shape for c in init.codebooks_]}; expected "
                              f"{[(k, x.shape[1]) for k in sizes]}")
        ops, where = _fit_backend(device or self.device)
        seeds = np.random.SeedSequence(self.random_state).spawn(len(sizes))
        centers, offsets, n_iters, codes = [], [], [], []
        balanced = self.implementation == "constrained"
        with ops.fit_context():
            data = ops.rows_on(x, where)
            residual = data
            levels = progress(enumerate(sizes), desc=f"RQ-KMeans fit ({len(x):,} rows)", total=len(sizes),
                              unit="level")
            for level, k in levels:
                rng = np.random.default_rng(seeds[level])
                start = None if init is None else ops.rows_on(init.codebooks_[level], where)
                level_centers, n_iter, prices = self._fit_level(residual, k, rng, ops, start)
                level_offsets = None
                if balanced:  # encode as balanced as the fit: the prices of the final centers are the offsets
                    rows = residual
                    if len(rows) > ops.PRICE_ROWS_PER_CLUSTER * k:
                        pick = np.sort(rng.choice(len(rows), ops.PRICE_ROWS_PER_CLUSTER * k, replace=False))
                        rows = ops.take(rows, pick)
                    prices, _ = ops.balancing_prices(ops.squared_distances(rows, level_centers), prices,
                                                     max_iter=ops.OFFSET_PRICE_STEPS)
                    level_offsets = np.asarray(ops.to_numpy(prices), dtype=np.float32)
                    level_codes = ops.nearest_codes(residual, level_centers, ops.level_norms(level_centers, level_offsets),
                                                    offsets=level_offsets)
                else:
                    level_codes = ops.assign(residual, level_centers)[0]
                if residual is data:  # the first level's residual is the data: copy once, then in place
                    residual = ops.copy(data)
                ops.subtract_codewords_(residual, level_centers, level_codes)
                codes.append(level_codes)
                centers.append(level_centers)
                offsets.append(level_offsets)
                n_iters.append(n_iter)
                levels.set_postfix(mse=f"{ops.mean_sq_norm(residual):.4g}", iters=n_iter)
            self.refine_passes_ = 0
            if self.refine_passes and not balanced and len(sizes) > 1 and len(x) >= REFINE_MIN_ROWS_PER_CODE * max(sizes):
                codes = ops.stack(codes)  # the levels' own arrays go: one copy of the codes, not two
                centers, self.refine_passes_, codes = refine_codebooks(
                    ops, data, centers, max_passes=self.refine_passes, tol=self.inertia_tol, codes=codes,
                    residual=residual)
            # from the final codebooks and their codes (the passes' when they ran), in the residual's memory
            stats, residual = [], ops.copy_into(residual, data) if residual is not data else ops.copy(data)
            for level, (level_centers, level_codes, k) in enumerate(zip(centers, codes, sizes)):
                ops.subtract_codewords_(residual, level_centers, level_codes)
                inertia = ops.mean_sq_norm(residual)
                n_empty = int((ops.counts(level_codes, k) == 0).sum())
                if n_empty:
                    warnings.warn(f"level {level}: {n_empty} of {k} clusters are empty", EmptyClusterWarning)
                stats.append(LevelStats(level, k, n_iters[level], inertia, n_empty))
                log.info("level %d/%d K=%d iter=%d mse=%.4g empty=%d", level + 1, len(sizes), k, n_iters[level],
                         inertia, n_empty)
        codebooks = [np.ascontiguousarray(ops.to_numpy(c), dtype=np.float32) for c in centers]
        self._set_codebooks(codebooks, offsets if balanced else None)
        self.level_stats_ = stats
        return self

    def _set_codebooks(self, codebooks: list[np.ndarray], offsets: list[np.ndarray] | None = None) -> None:
        self.codebooks_ = codebooks
        self.offsets_ = offsets
        self.D_ = self.n_features_in_ = int(codebooks[0].shape[1])

    def _fit_level(self, x, k: int, rng: np.random.Generator, ops, start=None):
        """Best of n_init runs of k-means++ then Lloyd on x (n, d): (centers, n_iter, prices).

        Balanced (constrained): Lloyd with priced assignments, on the warm-up subsample; its
        prices (k,) are returned to warm-start the level's offsets. Otherwise prices is None.
        """
        n = len(x)
        balanced = self.implementation == "constrained"
        cap = self.max_samples_per_cluster
        if cap is not None and n > cap * k:
            # Lloyd on a subsample, as faiss does (its default is 256 per centroid); every
            # point is still encoded with the result, and its residual passed on
            keep = np.sort(rng.choice(n, cap * k, replace=False))
            x, n = ops.take(x, keep), cap * k
        tol_abs = self.tol * ops.mean_feature_variance(x)  # scikit-learn's tolerance
        best = None
        for _ in range(1 if start is not None else (self.n_init or 1)):
            rows = x
            if start is not None:  # warm start from a given codebook: no seeding, no warm-up
                init = ops.copy(start)
            else:
                n_seed = min(n, SEED_SAMPLE_PER_CLUSTER * k)
                sample = np.sort(rng.choice(n, n_seed, replace=False)) if n_seed < n else np.arange(n)
                greedy = n_seed * k <= SEED_BUDGET and n_seed * x.shape[1] * 4 <= SEED_COPY_BYTES
                init = (ops.kmeans_plus_plus(ops.take(x, sample), k, rng) if greedy
                        else kmeans_parallel(ops, x, k, rng, rows=sample))
            if start is None and n > WARMUP_PER_CLUSTER * k:
                # the first iterations move the centers far and need no precision: a subsample
                # does them at a fraction of the cost, the full data then converges from there.
                # Read by index: a copy was up to 0.65x the sample (131k of 200k rows at K = 512)
                warm = np.sort(rng.choice(n, WARMUP_PER_CLUSTER * k, replace=False))
                warm_tol = max(self.inertia_tol, WARMUP_INERTIA_TOL)
                if balanced:  # balanced Lloyd below needs the subsample's (rows, k) distances anyway
                    rows = ops.take(x, warm)
                    init, _ = ops.lloyd(rows, init, max_iter=self.max_iter, tol=0.0, inertia_tol=warm_tol)
                else:
                    init, _ = ops.lloyd(x, init, max_iter=self.max_iter, tol=0.0, inertia_tol=warm_tol, rows=warm)
            if balanced:  # balanced Lloyd on the subsample (memory O(rows x k)); offsets come after
                centers, n_iter, prices = ops.balanced_lloyd(rows, init, max_iter=self.max_iter, tol=tol_abs,
                                                             inertia_tol=self.inertia_tol)
            else:
                prices = None
                centers, n_iter = ops.lloyd(x, init, max_iter=self.max_iter, tol=tol_abs, inertia_tol=self.inertia_tol)
            if start is not None or (self.n_init or 1) == 1:
                return centers, n_iter, prices
            inertia = float(ops.to_numpy(ops.assign(x, centers)[1]).sum(dtype=np.float64))
            if best is None or inertia < best[0]:
                best = (inertia, centers, n_iter, prices)
        return best[1], best[2], best[3]

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

    def encode_with_candidates(self, X: ArrayLike, n_candidates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Codes (N, L) int32 as ``encode`` gives them, and each row's relocation candidates (N, T) int32
        with their squared distances (N, T) float32 (``uniqueness.relocate.last_level_candidates``),
        from the same pass over X (numpy)."""
        self._check_fitted()
        x = check_embeddings(X, dim=self.D_)
        return _ops.encode_residual_with_candidates(x, self.codebooks_, n_candidates,
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
            "max_samples_per_cluster": self.max_samples_per_cluster, "inertia_tol": self.inertia_tol,
            "refine_passes": self.refine_passes,
            # how the job chose this shape (model.n_clusters: auto); kept, never read back into the fit
            **({"shape_advice": self.shape_advice} if getattr(self, "shape_advice", None) else {}),
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
                inertia_tol=meta.get("inertia_tol", 0.0), refine_passes=meta.get("refine_passes", 0),
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
        if meta.get("shape_advice"):
            model.shape_advice = meta["shape_advice"]
        return model
