"""The optimizer's parameter groups: everything the [optim] values train, then one group per trained
module with settings of its own (`repa.interfaces.TrainedModule`: lr, weight decay, betas, its own
gradient-norm clip). Without such modules the optimizer gets the network's parameters as one list,
exactly as before groups existed (the same state layout in checkpoints)."""

from __future__ import annotations


def _own_settings(spec) -> dict:
    return {key: value for key, value in (("lr", spec.lr), ("weight_decay", spec.weight_decay),
                                          ("betas", spec.betas)) if value is not None}


class OptimizerGroups:
    def __init__(self, network, optim_params):
        self.network, self.max_grad_norm = network, optim_params.max_grad_norm
        self.own = [p.spec for p in network.placements if _own_settings(p.spec) or p.spec.max_grad_norm is not None]
        self.base_lrs = [optim_params.lr] + [spec.lr if spec.lr is not None else optim_params.lr for spec in self.own]

    def _split(self, network) -> tuple[list, list[list]]:
        """(the default group's parameters, each own group's), in the network's parameter order."""
        own_ids = [{id(p) for p in spec.module.parameters()} for spec in self.own]
        taken = set().union(*own_ids) if own_ids else set()
        default = [p for p in network.parameters() if id(p) not in taken]
        return default, [[p for p in network.parameters() if id(p) in ids] for ids in own_ids]

    def torch_groups(self, network):
        """What torch.optim takes: the parameters (one group), or a list of group dicts."""
        if not self.own:
            return network.parameters()
        default, owned = self._split(network)
        return [{"params": default}] + [{"params": params, **_own_settings(spec)}
                                        for spec, params in zip(self.own, owned)]

    def clipped(self, model) -> list[tuple[list, float]]:
        """(parameters, max norm) per clip: the default one first (its norm is logged)."""
        if not any(spec.max_grad_norm is not None for spec in self.own):
            return [(list(model.parameters()), self.max_grad_norm)]
        default, owned = self._split(model)
        clips = [(default, self.max_grad_norm)]
        for spec, params in zip(self.own, owned):
            if spec.max_grad_norm is None:
                clips[0][0].extend(params)
            else:
                clips.append((params, spec.max_grad_norm))
        return clips
