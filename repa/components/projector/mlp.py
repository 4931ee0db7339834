"""The MLP projector of REPA (official code: sihyun-yu/REPA @ 67f7145, models/sit.py `build_mlp`).

Its children are numbered 0..4 as the official nn.Sequential's, so official checkpoints'
`projectors.N.{0,2,4}.*` keys load unchanged."""

from __future__ import annotations

import torch.nn as nn

from repa.interfaces import Projector


class MLPProjector(nn.Sequential, Projector):
    """Linear -> SiLU -> Linear -> SiLU -> Linear, applied to every token independently."""

    def __init__(self, in_dim: int, projector_dim: int, out_dim: int):
        super().__init__(
            nn.Linear(in_dim, projector_dim), nn.SiLU(),
            nn.Linear(projector_dim, projector_dim), nn.SiLU(),
            nn.Linear(projector_dim, out_dim),
        )
        for layer in self:  # as the official SiT.initialize_weights does for every Linear
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
