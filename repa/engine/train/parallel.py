"""How the model is spread over processes: DDP (through accelerate, the default) or FSDP
(torch's fully_shard, per SiT block, for backbones too large to replicate). The trainer talks to
one of these two strategies and never branches on the choice itself.

Checkpoints are the same in both: full (unsharded) state dicts with the model's own names, so a
checkpoint trained with FSDP samples, evaluates and resumes like any other (the optimizer state
is stored in each strategy's own layout, so resume with the strategy that wrote it).
"""

from __future__ import annotations

import contextlib

import torch

from repa.weights import load_state_strict, strip_prefix


def _full(value) -> torch.Tensor:
    """A gradient norm as a plain tensor on the device (an FSDP norm is a distributed tensor)."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


class DDPStrategy:
    """Every process holds the whole model; accelerate wraps it in DistributedDataParallel."""

    collective_sampling = False  # the main process can sample the EMA model alone

    def __init__(self, acc):
        self.acc = acc

    def wrap(self, model, ema, make_optimizer):
        """make_optimizer(network) -> the optimizer over the network's parameter groups."""
        model, optimizer = self.acc.prepare(model, make_optimizer(model))
        return model, ema, optimizer

    def unwrapped(self, model):
        return self.acc.unwrap_model(model, keep_torch_compile=False)

    def no_sync(self, model):
        return self.acc.no_sync(model)

    def clip(self, parameters, max_norm: float) -> torch.Tensor:
        """Clip these gradients' global L2 norm; returns the norm before clipping, on the device."""
        return _full(self.acc.clip_grad_norm_(parameters, max_norm))

    def after_inference(self, module) -> None:
        """Nothing to do: a replicated module holds its whole parameters at all times (FSDP's
        counterpart reshards what sampling gathered)."""

    def states(self, model, ema, optimizer) -> tuple[dict, dict, dict]:
        """(model, EMA, optimizer) state dicts; meaningful on the main process."""
        return self.unwrapped(model).state_dict(), ema.state_dict(), {"layout": "ddp", "state": optimizer.state_dict()}

    def load(self, model, ema, optimizer, saved, source: str) -> None:
        load_state_strict(self.unwrapped(model), strip_prefix(saved.model), f"{source}/model.safetensors")
        load_state_strict(ema, strip_prefix(saved.ema), f"{source}/ema.safetensors")
        optimizer.load_state_dict(_optimizer_state(saved, "ddp", source))


class FSDPStrategy:
    """Parameters, gradients and optimizer state sharded over processes (FSDP2 `fully_shard`, one
    unit per `Backbone.shard_units()`, e.g. per transformer block). The EMA is sharded the same way, so its update stays local."""

    collective_sampling = True  # a sharded model's forward needs every process

    def __init__(self, acc):
        self.acc = acc

    @staticmethod
    def _shard(module):
        from torch.distributed.fsdp import fully_shard

        for unit in module.backbone.shard_units():  # e.g. SiT's blocks; the rest is the root unit
            fully_shard(unit)
        fully_shard(module)
        return module

    def wrap(self, model, ema, make_optimizer):
        model, ema = self._shard(model), self._shard(ema)
        return model, ema, make_optimizer(model)  # built on the sharded parameters

    def unwrapped(self, model):
        return model

    def no_sync(self, model):
        return contextlib.nullcontext()  # gradients are reduce-scattered every micro-batch

    def clip(self, parameters, max_norm: float) -> torch.Tensor:
        return _full(torch.nn.utils.clip_grad_norm_(parameters, max_norm))

    def after_inference(self, module) -> None:
        """The root unit keeps its parameters gathered after a forward without backward (the EMA
        sampling grids): shard them again so the EMA update stays shard-local."""
        module.reshard()

    @staticmethod
    def _options():
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def states(self, model, ema, optimizer) -> tuple[dict, dict, dict]:
        """Gathered full state dicts (a collective: every process calls it; the main one gets them)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        options = self._options()
        return (get_model_state_dict(model, options=options), get_model_state_dict(ema, options=options),
                {"layout": "fsdp", "state": get_optimizer_state_dict(model, optimizer, options=options)})

    def load(self, model, ema, optimizer, saved, source: str) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, strip_prefix(saved.model), options=options)
        set_model_state_dict(ema, strip_prefix(saved.ema), options=options)
        set_optimizer_state_dict(model, optimizer, _optimizer_state(saved, "fsdp", source), options=options)


def _optimizer_state(saved, layout: str, source: str) -> dict:
    from repa.errors import CheckpointError

    stored = saved.optimizer
    if stored.get("layout", "ddp") != layout:
        raise CheckpointError(f"{source}/optimizer.pt: written with train.distributed = \"{stored.get('layout')}\"; "
                              f"resume with that setting (the weights themselves load anywhere)")
    return stored["state"]


STRATEGIES = {"ddp": DDPStrategy, "fsdp": FSDPStrategy}
