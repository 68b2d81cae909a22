"""RQ-VAE's shape arguments as semantic-id 0.2.5 defaults them, for ``RQVAE`` and ``RQVAEModule`` alike
(torch-free: ``RQVAE`` is built and loaded without torch)."""

from __future__ import annotations

from typing import Sequence


def level_sizes(num_emb_list: Sequence[int] | None) -> list[int]:
    """Codebook sizes per level: *num_emb_list*, or semantic-id's default of four levels of 256."""
    return [256] * 4 if num_emb_list is None else [int(k) for k in num_emb_list]


def hidden_layers(layers: Sequence[int] | None) -> list[int]:
    """Hidden widths of the encoder MLP: *layers*, or semantic-id's default."""
    return [512, 256, 128] if layers is None else [int(n) for n in layers]
