"""Torch modules of RQ-VAE: the MLP encoder/decoder, the residual quantiser, Sinkhorn.

Only training (and encoding on cuda/mps) needs these; a fitted model's arrays are read
and encoded by numpy in ``_ops`` without torch. Parameter names here are the array names
in the model files, so saving is ``state_dict`` to numpy and loading is the reverse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    """Dropout -> Linear -> (BatchNorm) -> (ReLU); the last block of an MLP has no BN or ReLU."""

    def __init__(self, d_in: int, d_out: int, *, dropout: float, bn: bool, last: bool) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(d_in, d_out)
        self.bn = nn.BatchNorm1d(d_out) if bn and not last else None
        self.last = last
        nn.init.xavier_normal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(self.dropout(x))
        if self.bn is not None:
            x = self.bn(x)
        return x if self.last else F.relu(x)


class MLP(nn.Module):
    def __init__(self, dims: list[int], *, dropout: float, bn: bool) -> None:
        super().__init__()
        n = len(dims) - 1
        self.layers = nn.ModuleList(
            Block(dims[i], dims[i + 1], dropout=dropout, bn=bn, last=i == n - 1) for i in range(n)
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def sinkhorn_codes(sq_dist: Tensor, epsilon: float, n_iters: int) -> Tensor:  # (b, k) -> (b,)
    """Balanced assignment: argmax of the entropic transport plan with uniform code marginals.

    Computed in float64 and in the log domain, so small epsilons neither overflow nor
    underflow. Costs are rescaled to [0, 1] first, which makes epsilon scale-free.
    """
    cost = sq_dist.double()
    cost = (cost - cost.min()) / (cost.max() - cost.min()).clamp_min(1e-12)
    log_kernel = -cost / epsilon
    b, k = cost.shape
    log_row, log_col = -math.log(b), -math.log(k)
    v = torch.zeros(k, dtype=cost.dtype, device=cost.device)
    for _ in range(n_iters):
        u = log_row - torch.logsumexp(log_kernel + v, dim=1)
        v = log_col - torch.logsumexp(log_kernel + u[:, None], dim=0)
    return (log_kernel + v).argmax(dim=1)


def sq_dists(x: Tensor, codebook: Tensor) -> Tensor:  # (n, d), (k, d) -> (n, k)
    return (x * x).sum(1, keepdim=True) - 2 * x @ codebook.T + (codebook * codebook).sum(1)


class ResidualQuantizer(nn.Module):
    """L codebooks; level l quantises what levels < l left. Codes are nearest (or Sinkhorn)."""

    def __init__(self, sizes: list[int], dim: int, *, beta: float) -> None:
        super().__init__()
        self.codebooks = nn.ParameterList(
            nn.Parameter(torch.empty(k, dim).uniform_(-1.0 / k, 1.0 / k)) for k in sizes
        )
        self.beta = beta

    def forward(
        self, z: Tensor, sk_epsilons: list[float] | None = None, sk_iters: int = 100
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """z (b, d) -> (straight-through z_q (b, d), loss, codes (b, L), residual inputs per level).

        Loss per level: ||sg(r) - e||^2 + beta ||r - sg(e)||^2, averaged over levels. The
        residual passed on is r - sg(e), so every level's commitment term trains the encoder.
        """
        residual, z_q, losses, codes, inputs = z, torch.zeros_like(z), [], [], []
        for level, codebook in enumerate(self.codebooks):
            inputs.append(residual.detach())
            d = sq_dists(residual.detach(), codebook.detach())
            eps = sk_epsilons[level] if sk_epsilons else 0.0
            idx = sinkhorn_codes(d, eps, sk_iters) if eps > 0 else d.argmin(dim=1)
            chosen = codebook[idx]
            losses.append(F.mse_loss(chosen, residual.detach()) + self.beta * F.mse_loss(residual, chosen.detach()))
            z_q = z_q + chosen
            residual = residual - chosen.detach()
            codes.append(idx)
        z_st = z + (z_q - z).detach()
        return z_st, torch.stack(losses).mean(), torch.stack(codes, dim=1), inputs


class RQVAENet(nn.Module):
    """encoder (in_dim -> layers -> e_dim), residual quantiser, decoder (the mirror).

    With ``residual_encoder`` (RQ-KMeans+), the latent is ``x + encoder(x)``.
    """

    def __init__(
        self, in_dim: int, sizes: list[int], e_dim: int, layers: list[int], *,
        dropout: float, bn: bool, beta: float, residual_encoder: bool = False,
    ) -> None:
        super().__init__()
        dims = [in_dim, *layers, e_dim]
        self.encoder = MLP(dims, dropout=dropout, bn=bn)
        self.quantizer = ResidualQuantizer(sizes, e_dim, beta=beta)
        self.decoder = MLP(dims[::-1], dropout=dropout, bn=bn)
        self.residual_encoder = residual_encoder

    def latent(self, x: Tensor) -> Tensor:
        return x + self.encoder(x) if self.residual_encoder else self.encoder(x)

    def forward(self, x: Tensor, sk_epsilons: list[float] | None = None, sk_iters: int = 100):
        z_q, quant_loss, codes, inputs = self.quantizer(self.latent(x), sk_epsilons, sk_iters)
        return self.decoder(z_q), quant_loss, codes, inputs


class ResidualEncoderWrapper(nn.Module):
    """``x + mlp(x)``: semantic-id's RQ-KMeans+ encoder around any module mapping (B, d) -> (B, d).

    ``RQVAENet`` keeps its residual as a flag (``residual_encoder``), so its parameter names, and
    the model files, stay the same with or without it; this wrapper is for encoders of one's own.
    """

    def __init__(self, original_encoder: nn.Module) -> None:
        super().__init__()
        self.mlp = original_encoder

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(x)
