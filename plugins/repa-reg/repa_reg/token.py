"""REG's class-token modules (Martinser/REG, models/sit.py): `cls_projectors2` + `wg_norm` bring the
noisy class token into the transformer, `final_layer.linear_cls` reads its prediction out."""

from __future__ import annotations

import torch
import torch.nn as nn

from repa.interfaces import Joint


class ClassToken(nn.Module, Joint):
    """One token of the encoder's width: z0 = its class token (DINOv2's x_norm_clstoken)."""

    tokens = 1
    aligned = True  # REG's projector sees [class, patches] and aligns them with [encoder class, patches]

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.width = width
        self.cls_projectors2 = nn.Linear(width, hidden_size)
        self.wg_norm = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.linear_cls = nn.Linear(hidden_size, width)
        # As REG's SiT.initialize_weights: xavier for every Linear, then the output zeroed.
        nn.init.xavier_uniform_(self.cls_projectors2.weight)
        nn.init.zeros_(self.cls_projectors2.bias)
        nn.init.zeros_(self.linear_cls.weight)
        nn.init.zeros_(self.linear_cls.bias)

    def clean(self, tokens: torch.Tensor, global_token: torch.Tensor | None) -> torch.Tensor:
        return global_token.unsqueeze(1)

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        return self.wg_norm(self.cls_projectors2(z))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear_cls(hidden)
