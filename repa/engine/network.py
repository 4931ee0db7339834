"""The trained network of a run: the backbone, every term's modules at the term's section, and a
trainable autoencoder's modules under `autoencoder.`; one nn.Module, so DDP/FSDP, the EMA, the
optimizer and checkpoints see one set of named parameters.

Checkpoints keep the official layout (sihyun-yu/REPA @ 67f7145, models/sit.py): the backbone's
keys at the top, REPA's projectors under `projectors.<k>.` (the [[alignment]] entries' sections). In
memory the network nests the backbone under `backbone.`; `checkpoint_layout` and `network_layout`
convert between the two and are the only places that know it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from repa.errors import RepaError
from repa.interfaces import BackboneOutput, TrainedModule

BACKBONE = "backbone."


@dataclass(frozen=True)
class Placement:
    """A trained module at a dotted section of the network (e.g. `projectors.0`), with its training policy."""

    section: str
    spec: TrainedModule


class TrainedNetwork(nn.Module):
    """forward(run) -> run(self): the training step's computation runs inside one call of the (DDP or
    FSDP wrapped) network, whatever modules the terms call. `denoise` is what samplers evaluate."""

    def __init__(self, backbone: nn.Module, placements: Sequence[Placement] = (), joints: Sequence[nn.Module] = ()):
        super().__init__()
        self.backbone = backbone
        self.placements = list(placements)
        for placement in self.placements:
            _place(self, placement.section, placement.spec.module)
        self.joints = list(joints)  # `repa.interfaces.Joint` modules (placed above), in the sampler state's order

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def has_null_label(self) -> bool:
        return self.backbone.has_null_label

    @property
    def context_shape(self) -> tuple | None:
        return getattr(self.backbone, "context_shape", None)

    def null_condition(self, y: torch.Tensor) -> torch.Tensor:
        """The unconditional rows for conditions y (`repa.interfaces.Backbone.null_condition`)."""
        if self.context_shape is None and not self.has_null_label:
            raise RepaError("guidance needs the null label, but this model was built without one (label_dropout = 0); "
                            "sample with cfg_scale = 1")
        return self.backbone.null_condition(y)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        self.backbone.check_inputs(x, t, y)

    def forward(self, run: Callable[["TrainedNetwork"], object]):
        return run(self)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, extras: Sequence[torch.Tensor] = ()) -> list:
        """[the image's output, then each jointly denoised quantity's prediction] at (x_t, t, y): the
        quantities' states `extras` [B,K,D] enter as extra tokens (zeros when not given: cost probes).
        Through the module's own call, so that a sharded network (FSDP) gathers its weights."""
        return self(lambda network: network._denoise(x, t, y, extras))

    def _denoise(self, x, t, y, extras) -> list:
        if not self.joints:
            return [self.backbone(x, t, y).out]
        if not extras:
            extras = [x.new_zeros(x.shape[0], joint.tokens, joint.width) for joint in self.joints]
        output = self.backbone(x, t, y, extra_tokens=torch.cat([j.embed(z) for j, z in zip(self.joints, extras)], 1))
        return [output.out, *(joint.head(extra) for joint, extra in zip(self.joints, split_extra(output, self.joints)))]

    def trained(self) -> list[tuple[TrainedModule, list[nn.Parameter]]]:
        """(policy, parameters) per placement with a policy of its own, after everything the [optim] values
        train (the backbone and the placements without one), in the network's parameter order."""
        special = {id(p.spec.module): p.spec for p in self.placements if _own_policy(p.spec)}
        own = {id(param): spec for spec_id, spec in special.items() for param in spec.module.parameters()}
        default = [p for p in self.parameters() if id(p) not in own]
        groups = [(TrainedModule(self), default)]
        for spec in special.values():
            groups.append((spec, list(spec.module.parameters())))
        return groups

    def unaveraged(self) -> set[str]:
        """Names of the parameters and buffers the EMA copies instead of averaging (policy ema=False)."""
        names = set()
        for placement in self.placements:
            if not placement.spec.ema:
                module = placement.spec.module
                prefix = {id(m): n for n, m in self.named_modules()}[id(module)]
                names |= {f"{prefix}.{n}" for n, _ in module.named_parameters()}
                names |= {f"{prefix}.{n}" for n, _ in module.named_buffers()}
        return names


def _own_policy(spec: TrainedModule) -> bool:
    return any(v is not None for v in (spec.lr, spec.weight_decay, spec.betas, spec.max_grad_norm))


def split_extra(output: BackboneOutput, joints: Sequence[nn.Module]) -> list[torch.Tensor]:
    """The backbone's extra-token output cut into each quantity's tokens, in order."""
    return list(output.extra.split([joint.tokens for joint in joints], dim=1))


def _place(root: nn.Module, section: str, module: nn.Module) -> None:
    """Register `module` at the dotted `section` (intermediate ModuleDicts created as needed)."""
    *parents, leaf = section.split(".")
    node = root
    for name in parents:
        if not hasattr(node, name):
            node.add_module(name, nn.ModuleDict())
        node = getattr(node, name)
    if isinstance(node, nn.ModuleDict):
        node[leaf] = module
    else:
        node.add_module(leaf, module)


def checkpoint_layout(state: Mapping[str, torch.Tensor]) -> dict:
    """A TrainedNetwork's state dict -> the official layout (the backbone's keys at the top)."""
    return {k[len(BACKBONE):] if k.startswith(BACKBONE) else k: v for k, v in state.items()}


def network_layout(state: Mapping[str, torch.Tensor], network: nn.Module) -> dict:
    """A checkpoint in the official layout -> `network`'s state dict keys: a key the network does not
    have is the backbone's when `backbone.<key>` is one of the network's (so a backbone may itself
    have a submodule called `backbone`); anything else is left for the strict load to report."""
    own = nn.Module.state_dict(network).keys()  # the module's own names, whatever its state_dict shows
    return {k if k in own or BACKBONE + k not in own else BACKBONE + k: v for k, v in state.items()}
