"""``RQVAEModule``: the RQ-VAE as a torch module, with semantic-id 0.2.5's constructor and calls.

It is the network :class:`~semid_spark.algorithms.rq_vae.RQVAE` trains (``RQVAE(...).module``
returns one), so a user can call it, train it in their own loop, or hand it to
``SinkhornResolver.assign(model=...)``. Its parameter names are our model files' array names
(``encoder.layers.0.linear.weight``, ``quantizer.codebooks.0``), not semantic-id's.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from semid_spark.algorithms._vae_nn import RQVAENet
from semid_spark.algorithms._vae_shape import hidden_layers, level_sizes
from semid_spark.exceptions import ConfigError


class RQVAEModule(RQVAENet):
    """encoder MLP (in_dim -> layers -> e_dim), residual quantiser, mirrored decoder.

    ``forward(x, use_sk=True)`` -> (reconstruction, quantisation loss, codes (B, L));
    ``get_indices(x)`` -> codes; ``compute_loss(out, quant_loss, x)`` -> (total, reconstruction).
    ``kmeans_init`` and ``kmeans_iters`` are kept for ``RQVAE``, which initialises the codebooks
    with RQ-KMeans before training; the module itself starts from random codebooks.
    """

    def __init__(
        self,
        in_dim: int = 768,
        num_emb_list: Sequence[int] | None = None,
        e_dim: int = 64,
        layers: Sequence[int] | None = None,
        dropout_prob: float = 0.0,
        bn: bool = False,
        loss_type: str = "mse",
        quant_loss_weight: float = 1.0,
        beta: float = 0.25,
        kmeans_init: bool = False,
        kmeans_iters: int = 100,
        sk_epsilons: Sequence[float] | None = None,
        sk_iters: int = 100,
        *,
        residual_encoder: bool = False,
    ) -> None:
        sizes, hidden = level_sizes(num_emb_list), hidden_layers(layers)
        if loss_type not in ("mse", "l1"):
            raise ConfigError(f"unknown loss_type {loss_type!r}; expected 'mse' or 'l1'")
        super().__init__(in_dim, sizes, e_dim, hidden, dropout=dropout_prob, bn=bn, beta=beta,
                         residual_encoder=residual_encoder)
        self.in_dim, self.num_emb_list, self.e_dim, self.layers = in_dim, sizes, e_dim, hidden
        self.dropout_prob, self.bn, self.loss_type = dropout_prob, bn, loss_type
        self.quant_loss_weight, self.beta = quant_loss_weight, beta
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.sk_epsilons = None if sk_epsilons is None else [float(e) for e in sk_epsilons]
        self.sk_iters = sk_iters

    def forward(self, x: Tensor, use_sk: bool = True) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        """x (B, in_dim) -> (reconstruction (B, in_dim), quantisation loss, codes (B, L)); Sinkhorn
        codes on the levels whose ``sk_epsilons`` are > 0 when *use_sk*."""
        out, quant_loss, codes, _ = super().forward(x, self.sk_epsilons if use_sk else None, self.sk_iters)
        return out, quant_loss, codes

    @torch.no_grad()
    def get_indices(self, xs: Tensor, use_sk: bool = False) -> Tensor:
        """Codes (B, L) of xs (B, in_dim), without decoding."""
        _, _, codes, _ = self.quantizer(self.latent(xs), self.sk_epsilons if use_sk else None, self.sk_iters)
        return codes

    def compute_loss(self, out: Tensor, quant_loss: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction + quant_loss_weight * quant_loss, reconstruction), as ``RQVAE.fit`` trains."""
        recon = F.mse_loss(out, xs) if self.loss_type == "mse" else F.l1_loss(out, xs)
        return recon + self.quant_loss_weight * quant_loss, recon
