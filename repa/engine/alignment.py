"""REPA in one place (Yu et al. 2024, Sec. 3.2): the network it trains, a backbone plus one
projector per [[alignment]] entry, and each entry's loss term

    coeff_k * align_k(h_phi_k(h_t^[depth_k]), transform_k(y*_k))

The backbone only returns its hidden states at the requested depths; projectors, target
transforms and losses are components of their own kinds, so any backbone gets REPA.

Checkpoints keep the official layout (sihyun-yu/REPA @ 67f7145, models/sit.py): the backbone's
keys at the top, the projectors under `projectors.<k>.`. In memory the network nests the backbone
under `backbone.`; `checkpoint_layout` and `network_layout` convert between the two and are the
only places that know it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from repa.interfaces import AlignmentLoss, TargetTransform

BACKBONE = "backbone."


class AlignedNetwork(nn.Module):
    """forward(x_t, t, y) -> (out [B,C,H,W], [projected hidden state [B,T,D_k] per alignment entry])."""

    def __init__(self, backbone: nn.Module, projectors: Sequence[nn.Module], depths: Sequence[int]):
        super().__init__()
        if len(projectors) != len(depths):
            raise ValueError(f"{len(projectors)} projectors for {len(depths)} depths")
        self.backbone = backbone
        self.projectors = nn.ModuleList(projectors)
        self.depths = [int(d) for d in depths]

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def has_null_label(self) -> bool:
        return self.backbone.has_null_label

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        self.backbone.check_inputs(x, t, y)

    def forward(self, x, t, y, drop_ids=None, align: bool = True):
        """align=False (sampling): the backbone's output alone, no hidden states, no projection."""
        depths = sorted(set(self.depths)) if align else []
        out, hidden = self.backbone(x, t, y, drop_ids=drop_ids, hidden_depths=depths)
        by_depth = dict(zip(depths, hidden))
        return out, [projector(by_depth[d]) for projector, d in zip(self.projectors, self.depths)] if align else []


def checkpoint_layout(state: Mapping[str, torch.Tensor]) -> dict:
    """An AlignedNetwork's state dict -> the official layout (the backbone's keys at the top)."""
    return {k[len(BACKBONE):] if k.startswith(BACKBONE) else k: v for k, v in state.items()}


def network_layout(state: Mapping[str, torch.Tensor], network: nn.Module) -> dict:
    """A checkpoint in the official layout -> `network`'s state dict keys: a key the network does not
    have is the backbone's when `backbone.<key>` is one of the network's (so a backbone may itself
    have a submodule called `backbone`); anything else is left for the strict load to report."""
    own = nn.Module.state_dict(network).keys()  # the module's own names, whatever its state_dict shows
    return {k if k in own or BACKBONE + k not in own else BACKBONE + k: v for k, v in state.items()}


# ============================================================================
# The loss term of one [[alignment]] entry
# ============================================================================


@dataclass
class AlignmentTerm:
    loss: AlignmentLoss
    coeff: float
    stop_after: int | None = None
    transform: TargetTransform | None = None  # of the encoder's tokens; None = identity

    def active(self, step: int) -> bool:
        """HASTE-style early stop: the term is switched off after `stop_after` steps."""
        return self.coeff > 0 and (self.stop_after is None or step < self.stop_after)

    def __call__(self, projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss [B] against the (transformed) target tokens."""
        if self.transform is not None:
            with torch.no_grad():
                target = self.transform(target)
        return self.loss(projected, target)
