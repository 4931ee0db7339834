"""Autoguidance (Karras et al. 2024) as RAE samples with it (bytetriper/RAE, DDT.py forward_with_autoguidance):
guided = weak + scale * (main - weak) where t lies in the interval, the weak model a smaller or earlier
network of the same task (RAE: DiT^DH-S at 14 epochs), with the same labels: no null label is needed."""

from __future__ import annotations

from repa.errors import ConfigError
from repa.interfaces import Guidance


class AutoGuidance(Guidance):
    def __init__(self, scale: float, interval, weak_network):
        self.scale, (self.low, self.high), self.weak = scale, interval, weak_network  # weak: a loaded network

    def active(self, t: float) -> bool:
        return self.scale != 1.0 and self.low <= t <= self.high

    def guide(self, network, x, t, y, null, step_t):
        outs = network(x, t, y)
        if not self.active(step_t):
            return outs
        return [weak + self.scale * (main - weak) for main, weak in zip(outs, network.of(self.weak)(x, t, y))]

    def extra_evaluations(self, t: float) -> float:
        return 1.0 if self.active(t) else 0.0  # a pass of the weak model (of its own cost)


def build(params, scale, interval, load_network):
    if load_network is None:
        raise ConfigError(["guidance autoguidance: this command cannot load a second network"])
    return AutoGuidance(scale, interval, load_network(params.weak))
