"""Optimizers. REPA uses AdamW, lr 1e-4, betas (0.9, 0.999), no weight decay, eps 1e-8."""

from __future__ import annotations

from pydantic import Field

from repa.interfaces import OptimizerParams
from repa.plugins import hookimpl


class AdamWParams(OptimizerParams):
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping (global L2 norm)")
    fused: bool = Field(True, description="one fused kernel per step (CPU and CUDA); it also skips a "
                        "non-finite step on the device, so a step never waits for it")


def _adamw(params, parameters):
    import torch

    return torch.optim.AdamW(parameters, lr=params.lr, betas=params.betas, weight_decay=params.weight_decay,
                             eps=params.eps, fused=params.fused)


@hookimpl
def repa_register_optimizers(registry):
    registry.add("adamw", _adamw, AdamWParams, "torch.optim.AdamW (REPA's optimiser)")
