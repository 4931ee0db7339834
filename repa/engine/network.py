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
    """forward(x_t, t, y) -> (out [B,C,H,W], [projected hidden state [B,T,D_k] per alignment entry]),
    plus the prediction of the jointly denoised quantity [B,K,D] when there is one ([[joint]])."""

    def __init__(self, backbone: nn.Module, projectors: Sequence[nn.Module], depths: Sequence[int],
                 joint: nn.Module | None = None, joint_entry: int = 0):
        super().__init__()
        if len(projectors) != len(depths):
            raise ValueError(f"{len(projectors)} projectors for {len(depths)} depths")
        self.backbone = backbone
        self.projectors = nn.ModuleList(projectors)
        self.depths = [int(d) for d in depths]
        self.joint, self.joint_entry = joint, joint_entry  # `repa.interfaces.Joint`, checkpointed under joint.

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def has_null_label(self) -> bool:
        return self.backbone.has_null_label

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        self.backbone.check_inputs(x, t, y)

    def forward(self, x, t, y, drop_ids=None, align: bool = True, joint_state=None):
        """align=False (sampling): the backbone's output alone, no hidden states, no projection.
        joint_state [B,K,D]: the joint quantity at t, with a [[joint]] (None: zeros, for cost probes);
        then a third value is returned, its prediction [B,K,D]."""
        depths = sorted(set(self.depths)) if align else []
        if self.joint is None:
            out, hidden = self.backbone(x, t, y, drop_ids=drop_ids, hidden_depths=depths)
        else:
            if joint_state is None:
                joint_state = x.new_zeros(x.shape[0], self.joint.tokens, self.joint.width)
            out, hidden, extra = self.backbone(x, t, y, drop_ids=drop_ids, hidden_depths=depths,
                                               extra_tokens=self.joint.embed(joint_state))
        by_depth = dict(zip(depths, hidden))
        projected = [projector(self._aligned(by_depth[d], k)) for k, (projector, d)
                     in enumerate(zip(self.projectors, self.depths))] if align else []
        return (out, projected) if self.joint is None else (out, projected, self.joint.head(extra))

    def _aligned(self, hidden: torch.Tensor, entry: int) -> torch.Tensor:
        """Entry `entry`'s hidden states: the image tokens, plus the joint's extra tokens in front where
        the joint is aligned with this entry (REG aligns its class token with the encoder's)."""
        if self.joint is None or (self.joint.aligned and entry == self.joint_entry):
            return hidden
        return hidden[:, self.joint.tokens:]


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

    def __call__(self, projected: torch.Tensor, target: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss [B] against the (transformed) target tokens; `prefix` [B,K,D] (a [[joint]]
        quantity aligned with this entry, REG's class token) goes before them after the transform, which
        sees the encoder's tokens only."""
        if self.transform is not None:
            with torch.no_grad():
                target = self.transform(target)
        if prefix is not None:
            target = torch.cat([prefix.to(target.dtype), target], dim=1)
        return self.loss(projected, target)
