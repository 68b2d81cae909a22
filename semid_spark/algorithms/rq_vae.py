"""RQ-VAE: a residual-quantised autoencoder, a drop-in for semantic-id 0.2.5's ``RQVAE``.

Training runs on torch (cpu, cuda, mps). A fitted model is a set of plain arrays: encoding
and decoding on ``device="cpu"`` use numpy only (BatchNorm folded into the linear layers),
so Spark executors need neither torch nor a GPU, and get the same codes as the torch path.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from typing import Iterator, Literal, Sequence

import numpy as np

from semid_spark import storage
from semid_spark.algorithms import _ops, io, require_torch
from semid_spark.algorithms._vae_shape import hidden_layers, level_sizes
from semid_spark.algorithms.rq_kmeans import RQKMeans, _torch_device
from semid_spark.algorithms.rq_kmeans_plus import load_original, warm_start
from semid_spark.core import ArrayLike, BaseSemanticEncoder, check_codes, check_embeddings
from semid_spark.exceptions import ConfigError, InvalidInputError, ModelFormatError, NotFittedError
from semid_spark.utils.progress import progress

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.npz"
MONITOR_ROWS = 4096  # fixed sample on which each epoch's collision rate and utilisation are measured
KMEANS_INIT_ROWS_PER_CODE = 64  # k-means codebook init on up to this many latents per code
BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default
_SCHEDULERS = (None, "cosine", "step", "constant_with_warmup")


class RQVAE(BaseSemanticEncoder):
    """Residual-quantised VAE: MLP encoder -> L residual codebooks -> MLP decoder.

    Parameters are those of semantic-id 0.2.5 (``in_dim`` ... ``verbose``), plus:

    random_state : int or None; the same seed on the same device gives the same model
    reset_dead_codes : after each epoch but the last, codes no batch of the epoch chose are
        re-seeded on residuals sampled in proportion to their quantisation error (their
        optimizer state cleared), which keeps codebook utilisation high

    Training keeps the state of the epoch with the lowest collision rate on a fixed sample of
    up to 4096 training rows (ties: the lower reconstruction loss on that sample), whatever
    ``verbose`` is. ``fit`` starts from fresh weights each time, unless given ``init``.

    The constructor only stores its arguments (scikit-learn's contract: ``get_params``,
    ``set_params`` and ``sklearn.base.clone`` work); ``fit`` checks them. ``device`` is where
    ``fit`` and ``encode`` run unless a call says otherwise, as for RQKMeans.

    Attributes (after ``fit``; ``codebooks_`` and ``residual_encoder_`` after ``load`` too)
    ----------
    codebooks_ : list of L float32 arrays of shape (K_l, e_dim)
    n_features_in_ : int, ``in_dim``
    history_ : dict of per-epoch lists: loss, recon_loss, collision_rate, lr, utilization
        (per level, fraction of codes used on the sample), n_reset (codes re-seeded)
    best_epoch_ : index of the epoch whose state was kept
    residual_encoder_ : True for an RQ-KMeans+ model (latent = x + encoder(x))
    """

    def __init__(
        self,
        in_dim: int = 768,
        num_emb_list: Sequence[int] | None = None,
        e_dim: int = 64,
        layers: Sequence[int] | None = None,
        dropout_prob: float = 0.0,
        bn: bool = False,
        loss_type: Literal["mse", "l1"] = "mse",
        quant_loss_weight: float = 1.0,
        beta: float = 0.25,
        kmeans_init: bool = False,
        kmeans_iters: int = 100,
        sk_epsilons: Sequence[float] | None = None,
        sk_iters: int = 100,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        batch_size: int = 2048,
        epochs: int = 100,
        lr_scheduler: Literal["cosine", "step", "constant_with_warmup"] | None = None,
        warmup_epochs: int = 0,
        lr_step_size: int = 50,
        lr_gamma: float = 0.5,
        device: str = "cpu",
        verbose: bool | int = False,
        random_state: int | None = None,
        reset_dead_codes: bool = True,
    ):
        # scikit-learn's contract: store the arguments as given; fit checks them (_check_params)
        self.in_dim, self.num_emb_list, self.e_dim, self.layers = in_dim, num_emb_list, e_dim, layers
        self.dropout_prob, self.bn, self.loss_type = dropout_prob, bn, loss_type
        self.quant_loss_weight, self.beta = quant_loss_weight, beta
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.sk_epsilons, self.sk_iters = sk_epsilons, sk_iters
        self.lr, self.weight_decay, self.batch_size = lr, weight_decay, batch_size
        self.epochs, self.lr_scheduler, self.warmup_epochs = epochs, lr_scheduler, warmup_epochs
        self.lr_step_size, self.lr_gamma = lr_step_size, lr_gamma
        self.device, self.verbose, self.random_state = device, verbose, random_state
        self.reset_dead_codes = reset_dead_codes

    def _check_params(self) -> None:
        """Raise ConfigError naming the first parameter out of range (``fit`` and ``load`` call it)."""
        for name in ("in_dim", "e_dim", "kmeans_iters", "sk_iters", "batch_size"):
            _positive_int(getattr(self, name), name)
        sizes = self._sizes
        if not sizes or any(k < 1 for k in sizes):
            raise ConfigError(f"num_emb_list={sizes}; expected one or more codebook sizes >= 1")
        for n in self._layers:
            _positive_int(n, "layers[i]")
        if self.loss_type not in ("mse", "l1"):
            raise ConfigError(f"unknown loss_type {self.loss_type!r}; expected 'mse' or 'l1'")
        eps = self.sk_epsilons
        if eps is not None and (len(eps) != len(sizes) or min(eps) < 0):
            raise ConfigError(f"sk_epsilons={list(eps)}; expected {len(sizes)} values >= 0")
        if self.lr_scheduler not in _SCHEDULERS:
            raise ConfigError(f"unknown lr_scheduler {self.lr_scheduler!r}; expected one of {list(_SCHEDULERS)}")
        if (not 0 <= self.dropout_prob < 1 or self.lr <= 0 or self.epochs < 0 or self.warmup_epochs < 0
                or self.lr_step_size < 1):
            raise ConfigError(
                f"dropout_prob={self.dropout_prob}, lr={self.lr}, epochs={self.epochs}, warmup_epochs="
                f"{self.warmup_epochs}, lr_step_size={self.lr_step_size}; expected 0 <= dropout < 1, lr > 0, "
                "epochs >= 0, warmup_epochs >= 0, lr_step_size >= 1"
            )

    @property
    def _sizes(self) -> list[int]:
        return level_sizes(self.num_emb_list)

    @property
    def _layers(self) -> list[int]:
        return hidden_layers(self.layers)

    @property
    def _epsilons(self) -> list[float] | None:
        return None if self.sk_epsilons is None else [float(e) for e in self.sk_epsilons]

    @property
    def n_levels(self) -> int:
        return len(self._sizes)

    # ------------------------------------------------------------------ training
    @property
    def architecture(self) -> dict:
        """What another RQVAE must share to start from this one's weights: widths, layers, codebook sizes, BatchNorm."""
        return {"in_dim": int(self.in_dim), "e_dim": int(self.e_dim), "layers": self._layers, "sizes": self._sizes,
                "bn": bool(self.bn)}

    def fit(self, X: ArrayLike, *, device: str | None = None, pretrained_codebook_path: str | None = None,
            init: "RQVAE | None" = None) -> "RQVAE":
        """Train on embeddings X of shape (N, in_dim); returns self.

        ``pretrained_codebook_path``: an RQ-KMeans ``codebooks.npz`` (or its directory) to
        warm-start from (RQ-KMeans+, see :mod:`semid_spark.algorithms.rq_kmeans_plus`).
        ``init``: a fitted RQVAE of the same ``architecture`` whose weights and codebooks training
        starts from, instead of fresh ones (``semid refit``: a new version that keeps the codes the
        data still supports, so that alignment has little to undo).
        """
        self._check_params()
        x = check_embeddings(X, dim=self.in_dim)
        if init is not None:
            init._check_fitted()
            if pretrained_codebook_path is not None:
                raise ConfigError("init and pretrained_codebook_path both name a start; give one")
            if init.architecture != self.architecture:
                raise ConfigError(f"init has the architecture {init.architecture}; this RQVAE's is {self.architecture}")
        torch = require_torch("RQ-VAE training")
        torch_device = _torch_device(device or self.device)

        from semid_spark.algorithms import _vae_nn  # torch

        seed = int(np.random.SeedSequence(self.random_state).generate_state(1)[0])
        fork_devices = [torch_device.index or 0] if torch_device.type == "cuda" else []
        # the caller's global RNG and determinism setting are left as they were
        with torch.random.fork_rng(devices=fork_devices), _deterministic(torch, warn_only=torch_device.type != "cpu"):
            torch.manual_seed(seed)
            net = _vae_nn.RQVAENet(
                self.in_dim, self._sizes, self.e_dim, self._layers, dropout=self.dropout_prob,
                bn=self.bn, beta=self.beta,
            ).to(torch_device)
            if init is not None:
                net.residual_encoder = bool(init.residual_encoder_)
                net.load_state_dict({name: torch.from_numpy(np.array(value)) for name, value in init._weights.items()})
            elif pretrained_codebook_path is not None:
                warm_start(net, pretrained_codebook_path)
            elif self.kmeans_init:
                self._kmeans_init(net, x, torch_device, seed)
            gen = torch.Generator().manual_seed(seed)
            self._train(net, x, torch_device, gen)
        self._set_net(net)
        return self

    def _kmeans_init(self, net, x: np.ndarray, device, seed: int) -> None:
        """Codebooks from RQ-KMeans on the encoder's latents of a sample of X."""
        import torch

        rng = np.random.default_rng(seed)
        n = min(len(x), KMEANS_INIT_ROWS_PER_CODE * max(self._sizes))
        if len(x) < max(self._sizes):
            raise InvalidInputError(f"kmeans_init needs n_samples={len(x)} >= the largest codebook, {max(self._sizes)}")
        sample = x[np.sort(rng.choice(len(x), n, replace=False))]
        net.eval()
        with torch.no_grad():
            latent = net.latent(torch.from_numpy(sample).to(device)).cpu().numpy()
        km = RQKMeans(self.n_levels, self._sizes, max_iter=self.kmeans_iters, random_state=seed)
        km.fit(latent, device=str(device))
        with torch.no_grad():
            for codebook, centers in zip(net.quantizer.codebooks, km.codebooks_):
                codebook.copy_(torch.from_numpy(centers))

    def _lr_factor(self, steps_per_epoch: int):
        total, warm = self.epochs * steps_per_epoch, self.warmup_epochs * steps_per_epoch
        kind, step_len, gamma = self.lr_scheduler, self.lr_step_size * steps_per_epoch, self.lr_gamma

        def factor(step: int) -> float:
            if kind in ("cosine", "constant_with_warmup") and step < warm:
                return step / max(1, warm)
            if kind == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
            if kind == "step":
                return gamma ** (step // step_len)
            return 1.0

        return factor

    def _train(self, net, x: np.ndarray, device, gen) -> None:
        import torch
        import torch.nn.functional as F

        n, bs = len(x), self.batch_size
        data = torch.from_numpy(x)
        steps_per_epoch = math.ceil(n / bs)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor(steps_per_epoch))
        monitor = data[torch.randperm(n, generator=gen)[:MONITOR_ROWS]].to(device)
        recon_fn = F.mse_loss if self.loss_type == "mse" else F.l1_loss
        sizes = self._sizes
        self.history_ = {k: [] for k in ("loss", "recon_loss", "collision_rate", "lr", "utilization", "n_reset")}
        self.best_epoch_ = None
        best, best_state = None, None
        epochs = progress(range(self.epochs), desc=f"RQ-VAE fit ({n:,} rows)", unit="epoch")
        for epoch in epochs:
            net.train()
            usage = [torch.zeros(k, dtype=torch.long, device=device) for k in sizes]
            recent: list[list] = [[] for _ in sizes]  # residual inputs of the last batches
            total = recon_total = 0.0
            order = torch.randperm(n, generator=gen)
            n_batches = 0
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                if self.bn and len(idx) < 2:  # BatchNorm cannot train on one row
                    continue
                xb = data[idx].to(device)
                out, quant_loss, codes, inputs = net(xb, self._epsilons, self.sk_iters)
                recon = recon_fn(out, xb)
                loss = recon + self.quant_loss_weight * quant_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total, recon_total, n_batches = total + loss.item(), recon_total + recon.item(), n_batches + 1
                for level, k in enumerate(sizes):
                    usage[level] += torch.bincount(codes[:, level], minlength=k)
                    recent[level] = (recent[level] + [inputs[level]])[-4:]
            n_reset = 0
            if self.reset_dead_codes and epoch < self.epochs - 1:
                n_reset = self._reset_dead(net, opt, usage, recent, gen)
            collision, utilization, monitor_recon = _monitor_stats(net, monitor, sizes, recon_fn)
            h = self.history_
            h["loss"].append(total / max(1, n_batches))
            h["recon_loss"].append(recon_total / max(1, n_batches))
            h["collision_rate"].append(collision)
            h["lr"].append(opt.param_groups[0]["lr"])
            h["utilization"].append(utilization)
            h["n_reset"].append(n_reset)
            epochs.set_postfix(loss=f"{h['loss'][-1]:.4g}", collision=f"{collision:.4f}")
            if best is None or (collision, monitor_recon) < best:
                best, best_state, self.best_epoch_ = (collision, monitor_recon), copy.deepcopy(net.state_dict()), epoch
            if self.verbose and (epoch + 1) % (self.verbose if type(self.verbose) is int else 10) == 0:
                log.info("epoch %d/%d loss %.4g recon %.4g collision %.4f util %s reset %d", epoch + 1,
                         self.epochs, h["loss"][-1], h["recon_loss"][-1], collision,
                         [round(u, 3) for u in utilization], n_reset)
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()

    def _reset_dead(self, net, opt, usage, recent, gen) -> int:
        """Re-seed unused codes on residuals drawn with probability proportional to their error."""
        import torch

        n_reset = 0
        for level, codebook in enumerate(net.quantizer.codebooks):
            dead = torch.nonzero(usage[level] == 0).flatten()
            if not len(dead) or not recent[level]:
                continue
            pool = torch.cat(recent[level])
            with torch.no_grad():
                from semid_spark.algorithms._vae_nn import sq_dists

                err = sq_dists(pool, codebook).min(dim=1).values.clamp_min(0).double().cpu() + 1e-12
                pick = torch.multinomial(err, len(dead), replacement=len(dead) > len(pool), generator=gen)
                codebook[dead] = pool[pick.to(pool.device)]
            state = opt.state.get(codebook, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][dead] = 0
            n_reset += len(dead)
        return n_reset

    # ------------------------------------------------------------------ the fitted arrays
    def _set_net(self, net) -> None:
        self.n_features_in_ = self.in_dim
        self.residual_encoder_ = net.residual_encoder
        self._weights = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
        self._module, self._frozen = None, None

    def _check_fitted(self) -> None:
        if getattr(self, "_weights", None) is None:
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit() first")

    @property
    def codebooks_(self) -> list[np.ndarray]:
        """The L codebooks, float32 arrays of shape (K_l, e_dim)."""
        self._check_fitted()
        books: list[np.ndarray] = []
        while (name := f"quantizer.codebooks.{len(books)}") in self._weights:
            books.append(self._weights[name])
        return books

    def frozen(self) -> tuple[list, list, bool, list, list, list]:
        """Inference arrays: (encoder weights, biases, residual, codebooks, decoder weights, biases).

        BatchNorm (eval mode) is folded into the linear layers; everything is float32.
        """
        self._check_fitted()
        if getattr(self, "_frozen", None) is None:
            enc_w, enc_b = _fold_mlp(self._weights, "encoder")
            dec_w, dec_b = _fold_mlp(self._weights, "decoder")
            self._frozen = (enc_w, enc_b, self.residual_encoder_, self.codebooks_, dec_w, dec_b)
        return self._frozen

    @property
    def sha256(self) -> str:
        """Digest of the weights: the model's identity."""
        self._check_fitted()
        return io.arrays_sha256(self._weights)

    @property
    def module(self):
        """The fitted network as an :class:`~semid_spark.algorithms.rq_vae_module.RQVAEModule` (built from
        the arrays on first use, in eval mode; needs torch)."""
        self._check_fitted()
        if getattr(self, "_module", None) is None:
            torch = require_torch("RQVAE.module (the torch network)")

            from semid_spark.algorithms.rq_vae_module import RQVAEModule

            module = RQVAEModule(self.in_dim, self._sizes, self.e_dim, self._layers, self.dropout_prob, self.bn,
                                 self.loss_type, self.quant_loss_weight, self.beta, self.kmeans_init,
                                 self.kmeans_iters, self._epsilons, self.sk_iters,
                                 residual_encoder=self.residual_encoder_)
            module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self._weights.items()})
            self._module = module.eval()
        return self._module

    @classmethod
    def from_module(cls, module, **params) -> "RQVAE":
        """A fitted RQVAE holding *module*'s weights (an ``RQVAEModule``, e.g. trained in a loop of
        one's own); *params*: the estimator's other arguments (``device``, ``random_state``, ...)."""
        names = ("in_dim", "num_emb_list", "e_dim", "layers", "dropout_prob", "bn", "loss_type",
                 "quant_loss_weight", "beta", "kmeans_init", "kmeans_iters", "sk_epsilons", "sk_iters")
        model = cls(**{name: getattr(module, name) for name in names}, **params)
        model._check_params()
        model.residual_encoder_ = bool(module.residual_encoder)
        model._adopt_weights({k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()},
                             type(module).__name__)
        return model

    # ------------------------------------------------------------------ using a model
    def encode(self, X: ArrayLike, *, device: str | None = None, batch_size: int | None = None) -> np.ndarray:
        """Codes (N, L) int32. ``device="cpu"`` runs on numpy; cuda/mps on torch; same codes."""
        enc_w, enc_b, residual, books, _, _ = self.frozen()
        x = check_embeddings(X, dim=self.in_dim)
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}; expected >= 1 or None")
        device = device or self.device
        if device == "cpu":
            return _ops.encode_latent(x, enc_w, enc_b, residual, books,
                                      chunk=min(batch_size or _ops.ENCODE_CHUNK, _ops.ENCODE_CHUNK))
        from semid_spark.algorithms import _torch_ops

        return _torch_ops.encode_latent(x, enc_w, enc_b, residual, books, _torch_device(device),
                                        chunk=batch_size or 65536)

    def latent_residuals(self, X: ArrayLike, codes: np.ndarray) -> np.ndarray:
        """What the last level quantises: latent minus levels < L-1 (N, e_dim), float64."""
        enc_w, enc_b, residual, books, _, _ = self.frozen()
        z = _ops.mlp_forward(check_embeddings(X, dim=self.in_dim), enc_w, enc_b, residual=residual, dtype=np.float64)
        for level in range(len(books) - 1):
            z = z - books[level][codes[:, level]]
        return z

    def decode(self, codes: ArrayLike) -> np.ndarray:
        """Decoder output (N, in_dim) float32 for codes (N, L'), L' <= L (numpy)."""
        _, _, _, books, dec_w, dec_b = self.frozen()
        arr = check_codes(codes, sizes=[len(b) for b in books])
        z_q = _ops.decode_codes(arr, books, self.e_dim)
        return _ops.mlp_forward(z_q, dec_w, dec_b, residual=False)

    # ------------------------------------------------------------------ files
    def _params(self) -> dict:
        return {
            "in_dim": self.in_dim, "num_emb_list": self._sizes, "e_dim": self.e_dim, "layers": self._layers,
            "dropout_prob": self.dropout_prob, "bn": self.bn, "loss_type": self.loss_type,
            "quant_loss_weight": self.quant_loss_weight, "beta": self.beta, "kmeans_init": self.kmeans_init,
            "kmeans_iters": self.kmeans_iters, "sk_epsilons": self._epsilons, "sk_iters": self.sk_iters,
        }

    def _metadata(self) -> dict:
        return {"type": "RQVAE", **self._params(), "residual_encoder": self.residual_encoder_,
                "random_state": self.random_state, "reset_dead_codes": self.reset_dead_codes}

    def save(self, path: str) -> None:
        """Write ``metadata.json`` + ``weights.npz`` (named float32 arrays, sha256) into *path*."""
        self._check_fitted()
        io.save_model(os.fspath(path), self._metadata(), self._weights, arrays_file=WEIGHTS_FILE)

    def to_bytes(self) -> bytes:
        """The model as bytes (arrays + metadata + sha256), e.g. to ship to Spark executors."""
        self._check_fitted()
        return io.dumps_model(self._metadata(), self._weights)

    @classmethod
    def load(cls, path: str, *, device: str = "cpu") -> "RQVAE":
        """Read a model saved by ``save``; without torch. A ``model.pt`` of semantic-id 0.2.5
        is migrated with torch's weights-only loader (never unpickling code)."""
        path = os.fspath(path)
        if not storage.exists(storage.join(path, WEIGHTS_FILE)) and storage.exists(storage.join(path, "model.pt")):
            return load_original(cls, path, device=device)
        meta, weights = io.load_model(path, expected_type="RQVAE", arrays_file=WEIGHTS_FILE)
        return cls._from_parts(meta, weights, path, device=device)

    @classmethod
    def _from_parts(cls, meta: dict, weights: dict[str, np.ndarray], path: str, *, device: str = "cpu") -> "RQVAE":
        try:
            params = {k: meta[k] for k in cls(in_dim=1, num_emb_list=[2])._params()}
            model = cls(**params, device=device, random_state=meta.get("random_state"),
                        reset_dead_codes=meta.get("reset_dead_codes", True))
            model._check_params()
            model.residual_encoder_ = bool(meta.get("residual_encoder", False))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelFormatError(f"{path!r}: metadata does not describe an RQVAE: {exc!r}") from None
        model._adopt_weights(weights, path)
        return model

    def _adopt_weights(self, weights: dict[str, np.ndarray], source: str) -> None:
        """Take named arrays as the fitted model after checking their shapes against the params."""
        dims = [self.in_dim, *self._layers, self.e_dim]
        expected = {f"quantizer.codebooks.{i}": (k, self.e_dim) for i, k in enumerate(self._sizes)}
        for prefix, ds in (("encoder", dims), ("decoder", dims[::-1])):
            for i in range(len(ds) - 1):
                expected[f"{prefix}.layers.{i}.linear.weight"] = (ds[i + 1], ds[i])
                expected[f"{prefix}.layers.{i}.linear.bias"] = (ds[i + 1],)
        for name, shape in expected.items():
            if name not in weights or weights[name].shape != shape:
                found = weights[name].shape if name in weights else "missing"
                raise ModelFormatError(f"{source!r}: array {name} is {found}, expected shape {shape}")
        self._weights = {k: np.ascontiguousarray(v) for k, v in weights.items()}
        self._module, self._frozen = None, None
        self.n_features_in_ = self.in_dim


@contextlib.contextmanager
def _deterministic(torch, *, warn_only: bool) -> Iterator[None]:
    """Deterministic kernels while training: multi-threaded CPU backward of codebook lookups
    otherwise sums in a varying order, and the same seed would not give the same model."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}={value!r}; expected an int >= 1")
    return int(value)


def _fold_mlp(weights: dict[str, np.ndarray], prefix: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Linear (+ eval-mode BatchNorm) layers -> plain (weight, bias) pairs, float32."""
    ws, bs = [], []
    i = 0
    while f"{prefix}.layers.{i}.linear.weight" in weights:
        w = weights[f"{prefix}.layers.{i}.linear.weight"].astype(np.float64)
        b = weights[f"{prefix}.layers.{i}.linear.bias"].astype(np.float64)
        if f"{prefix}.layers.{i}.bn.weight" in weights:
            g = weights[f"{prefix}.layers.{i}.bn.weight"] / np.sqrt(weights[f"{prefix}.layers.{i}.bn.running_var"] + BN_EPS)
            b = g * (b - weights[f"{prefix}.layers.{i}.bn.running_mean"]) + weights[f"{prefix}.layers.{i}.bn.bias"]
            w = g[:, None] * w
        ws.append(np.ascontiguousarray(w, dtype=np.float32))
        bs.append(np.ascontiguousarray(b, dtype=np.float32))
        i += 1
    return ws, bs


def _monitor_stats(net, monitor, sizes: list[int], recon_fn) -> tuple[float, list[float], float]:
    """(collision rate, per-level utilisation, reconstruction loss) on the monitor sample."""
    import torch

    net.eval()
    with torch.no_grad():
        out, _, codes, _ = net(monitor)
        recon = float(recon_fn(out, monitor))
    codes_np = codes.cpu().numpy()
    n_unique = len(np.unique(codes_np, axis=0))
    utilization = [len(np.unique(codes_np[:, level])) / k for level, k in enumerate(sizes)]
    return 1.0 - n_unique / len(codes_np), utilization, recon
