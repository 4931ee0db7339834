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
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, apply: torch.Tensor | None = None,
               copied: frozenset = frozenset()) -> None:
    """ema = decay * ema + (1 - decay) * model, over all parameters (pos_embed included, as official) and
    floating buffers (a BatchNorm's statistics), as multi-tensor operations; other buffers are copied.
    `copied`: names the EMA follows (a module trained with ema=False). `apply` (a bool tensor on the
    device): where it is False (a skipped step) the EMA stays as it is, decided on the device without a
    synchronisation."""
    ema_named, named = _state_tensors(ema), _state_tensors(model)
    if ema_named.keys() != named.keys():
        raise ValueError("the EMA and the model have different parameters")
    averaged = [k for k in named if k not in copied and named[k].is_floating_point()]
    _average([ema_named[k] for k in averaged], [named[k].detach() for k in averaged], decay, apply)
    followed = [k for k in named if k not in averaged]
    if followed:  # a skipped step leaves the trained weights as they were: copying them is still exact
        torch._foreach_copy_([ema_named[k] for k in followed], [named[k].detach() for k in followed])


def _state_tensors(module: torch.nn.Module) -> dict:
    tensors = dict(module.named_parameters())
    tensors.update((name, b) for name, b in module.named_buffers() if name not in tensors)
    return tensors


def _average(ema_params: list, params: list, decay: float, apply: torch.Tensor | None) -> None:
    if not params:
        return
    if apply is None:
        torch._foreach_mul_(ema_params, decay)
        torch._foreach_add_(ema_params, params, alpha=1 - decay)
        return
    # Every operand is a tensor list matching ema_params shape for shape, or one 0-dim tensor: the
    # conditions of CUDA's fused multi-tensor kernels (a list of 0-dim tensors, as addcmul would take,
    # falls back to one kernel per parameter). Multiplying by 1.0 or 0.0 is exact, so a kept step is
    # bitwise the unconditional update above and a skipped one adds exactly zero.
    dtype = ema_params[0].dtype
    kept = torch._foreach_mul(params, apply.to(dtype))
    torch._foreach_mul_(ema_params, torch.where(apply, decay, 1.0).to(dtype))
    torch._foreach_add_(ema_params, kept, alpha=1 - decay)
