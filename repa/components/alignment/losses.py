"""Per-sample alignment losses, always computed in float32.

Under fp16 autocast, normalising small projector outputs overflows/underflows (a reported
REPA NaN source), so both inputs are upcast and autocast is disabled here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repa.interfaces import AlignmentLoss


def _float32_unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


class CosineAlignment(AlignmentLoss):
    """REPA Eq. (8): -1/N sum_n sim(y_n, h_phi(h_t^n)), per sample."""

    def __call__(self, projected, target):
        with torch.autocast(projected.device.type, enabled=False):
            sim = (_float32_unit(projected) * _float32_unit(target)).sum(dim=-1)  # [B, T]
            return -sim.mean(dim=-1)


class NTXentAlignment(AlignmentLoss):
    """InfoNCE over patches: projected patch n must pick target patch n among the negatives."""

    def __init__(self, temperature: float = 0.1, negatives: str = "image"):
        self.temperature, self.negatives = temperature, negatives

    def __call__(self, projected, target):
        with torch.autocast(projected.device.type, enabled=False):
            p, z = _float32_unit(projected), _float32_unit(target)
            batch, tokens, _ = p.shape
            if self.negatives == "image":
                logits = p @ z.transpose(1, 2) / self.temperature  # [B, T, T]
                labels = torch.arange(tokens, device=p.device).expand(batch, tokens)
                ce = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # [B, T]
            else:
                flat_p, flat_z = p.reshape(batch * tokens, -1), z.reshape(batch * tokens, -1)
                logits = flat_p @ flat_z.T / self.temperature
                labels = torch.arange(batch * tokens, device=p.device)
                ce = F.cross_entropy(logits, labels, reduction="none").view(batch, tokens)
            return ce.mean(dim=-1)
