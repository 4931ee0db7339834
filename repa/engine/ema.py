"""Exponential moving average of the weights (REPA/DiT: decay 0.9999, every optimizer step; official
code: sihyun-yu/REPA @ 67f7145, train.py `update_ema`)."""

from __future__ import annotations

import copy

import torch


def make_ema(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy, equal to the model (the official `update_ema(ema, model, decay=0)`)."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, apply: torch.Tensor | None = None) -> None:
    """ema = decay * ema + (1 - decay) * model, over all parameters (pos_embed included, as official),
    as two multi-tensor operations. `apply` (a bool tensor on the device): where it is False (a
    skipped step) the EMA stays as it is, decided on the device without a synchronisation."""
    ema_named, named = dict(ema.named_parameters()), dict(model.named_parameters())
    if ema_named.keys() != named.keys():
        raise ValueError("the EMA and the model have different parameters")
    ema_params = [ema_named[k] for k in named]
    params = [p.detach() for p in named.values()]
    if apply is None:
        torch._foreach_mul_(ema_params, decay)
        torch._foreach_add_(ema_params, params, alpha=1 - decay)
        return
    keep = torch.where(apply, decay, 1.0).to(ema_params[0].dtype)
    take = torch.where(apply, 1 - decay, 0.0).to(ema_params[0].dtype)  # 1 - decay in float64, as alpha above
    torch._foreach_mul_(ema_params, keep)
    # ema + p * take in one rounding, as add(alpha=) computes ema + alpha * p: bitwise the same update
    torch._foreach_addcmul_(ema_params, params, [take] * len(params))
