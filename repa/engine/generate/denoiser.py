"""Binding a network (`repa.engine.network.AlignedNetwork`), its prediction target, the path,
labels and guidance into the velocity field that samplers integrate (as the official samplers.py,
sihyun-yu/REPA @ 67f7145)."""

from __future__ import annotations

from typing import Sequence

import torch

from repa.interfaces import Guidance, Path, Prediction
from repa.precision import autocast_to


class Interrupted(Exception):
    """Sampling abandoned because a stop was asked for (a training run's grid)."""


class GlobalNoise:
    """Noise from torch's global RNG (what the official samplers use)."""

    def randn_like(self, x):
        return torch.randn_like(x)


class PerSampleNoise:
    """Row i drawn from generator i only: sample i depends on its own seed, never on the batch."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    def randn_like(self, x):
        if len(self.generators) != x.shape[0]:
            raise ValueError(f"{len(self.generators)} generators for a batch of {x.shape[0]}")
        return torch.stack(
            [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device) for g in self.generators]
        )


def sample_generators(seed: int, indices: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One generator per sample index, seeded from (seed, index) only."""
    return [torch.Generator(device).manual_seed(seed * 1_000_003 + int(i)) for i in indices]


class Denoiser:
    """velocity(x, t, step_t) for labels y, with guidance decided per step by `step_t`.

    The state x may be float64 (official default); the model sees its own dtype, under
    autocast to `autocast_dtype` when given (the network only: the integration stays in x's dtype).
    With jointly denoised quantities (a term's extra tokens) the state packs the image and each of
    them (`PackedState`), so that every sampler integrates them all unchanged."""

    def __init__(self, model, prediction: Prediction, path: Path, guidance: Guidance | None = None,
                 autocast_dtype: torch.dtype | None = None, null: torch.Tensor | None = None):
        """null: the unconditional rows guidance uses (default: the network's null condition for y)."""
        self.model, self.prediction, self.path, self.guidance = model, prediction, path, guidance
        self.null = null
        self.model_dtype = next(model.parameters()).dtype
        self.autocast_dtype = autocast_dtype
        self.state = PackedState(None, [])  # set per sample()
        self.last_joint: list[torch.Tensor] = []  # each quantity's end state [B,K,D] after sample()
        self.interrupt = None  # () -> bool, asked at every evaluation: True abandons the sampling (Interrupted)

    def _null_conditions(self, y):
        return self.model.null_condition(y) if self.null is None else self.null

    def network_fn(self, model=None) -> "BoundNetwork":
        """network(x, t, y) -> [the image's output, each quantity's] for packed states x, in x's dtype: what
        guidance evaluates (`repa.interfaces.NetworkFn`); `.of(other)` evaluates another network of the
        experiment (guidance by a second model) on the same states."""
        return BoundNetwork(self, self.model if model is None else model)

    def velocity_for(self, y: torch.Tensor):
        low, high = self.prediction.time_range
        network = self.network_fn()

        def velocity(x, t, step_t):
            if self.interrupt is not None and self.interrupt():
                raise Interrupted
            t = t.clamp(low, high)
            if self.guidance is None:
                outs = network(x, t, y)
            else:
                null = self._null_conditions(y) if self.guidance.active(step_t) else None
                outs = self.guidance.guide(network, x, t, y, null, step_t)
            parts = self.state.unpack(x)
            return self.state.pack(*(self.prediction.to_velocity(out, part, t, self.path)
                                     for out, part in zip(outs, parts)))

        return velocity

    @torch.no_grad()
    def sample(self, sampler, x1, y, noise=None, state_dtype=torch.float64):
        """x1 [B,C,H,W] noise, y [B] labels -> x0 in `state_dtype`. Jointly denoised quantities start
        from `noise` after x1, in order; their ends are kept in `self.last_joint`."""
        self.model.check_inputs(x1, torch.zeros(x1.shape[0], device=x1.device), y)
        dtype = self.model_dtype if state_dtype == "model" else state_dtype
        noise = noise or GlobalNoise()
        joints = list(getattr(self.model, "joints", []))
        shapes = [(joint.tokens, joint.width) for joint in joints]
        self.state = PackedState(x1.shape[1:], shapes)
        starts = [noise.randn_like(x1.new_empty(x1.shape[0], *shape)) for shape in shapes]
        x0 = sampler.sample(self.velocity_for(y), self.state.pack(x1, *starts).to(dtype), self.path, noise)
        image, *self.last_joint = self.state.unpack(x0)
        return image


class BoundNetwork:
    """A network evaluated on the denoiser's packed sampler states, under its autocast."""

    def __init__(self, denoiser: Denoiser, model):
        self.denoiser, self.model = denoiser, model
        self.dtype = next(model.parameters()).dtype

    def of(self, model) -> "BoundNetwork":
        return BoundNetwork(self.denoiser, model)

    def __call__(self, x, t, y) -> list:
        parts = self.denoiser.state.unpack(x)
        with autocast_to(x.device.type, self.denoiser.autocast_dtype):
            outs = self.model.denoise(parts[0].to(self.dtype), t.to(self.dtype), y, [p.to(self.dtype) for p in parts[1:]])
        return [out.to(x.dtype) for out in outs]


class PackedState:
    """The image [B,C,H,W] and each jointly denoised quantity [B,K,D] as one [B, C*H*W + sum K*D] sampler
    state: samplers act elementwise (and paths broadcast over any shape), so integrating the packed
    state integrates all with the same t, steps and noise law, as REG's sampler does (Martinser/REG,
    samplers.py). Without quantities the state is the image itself."""

    def __init__(self, image_shape, joint_shapes):
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self.shapes = [tuple(s) for s in joint_shapes]

    def pack(self, image: torch.Tensor, *joints: torch.Tensor) -> torch.Tensor:
        if not self.shapes:
            return image
        return torch.cat([image.flatten(1), *(joint.flatten(1).to(image.dtype) for joint in joints)], dim=1)

    def unpack(self, state: torch.Tensor) -> list[torch.Tensor]:
        if not self.shapes:
            return [state]
        sizes = [int(torch.Size(self.image_shape).numel())] + [int(torch.Size(s).numel()) for s in self.shapes]
        parts = state.split(sizes, dim=1)
        return [parts[0].reshape(-1, *self.image_shape)] + [p.reshape(-1, *s) for p, s in zip(parts[1:], self.shapes)]
