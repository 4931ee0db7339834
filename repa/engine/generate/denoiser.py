"""Binding a network (`repa.engine.network.AlignedNetwork`), its prediction target, the path,
labels and guidance into the velocity field that samplers integrate (as the official samplers.py,
sihyun-yu/REPA @ 67f7145)."""

from __future__ import annotations

from typing import Sequence

import torch

from repa.errors import RepaError
from repa.interfaces import Guidance, Path, Prediction
from repa.precision import autocast_to


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
    autocast to `autocast_dtype` when given (the network only: the integration stays in x's dtype)."""

    def __init__(self, model, prediction: Prediction, path: Path, guidance: Guidance | None = None,
                 autocast_dtype: torch.dtype | None = None):
        self.model, self.prediction, self.path, self.guidance = model, prediction, path, guidance
        self.model_dtype = next(model.parameters()).dtype
        self.autocast_dtype = autocast_dtype
        self.state: JointState | None = None  # set per sample(): the packing of a [[joint]] quantity
        self.last_joint: torch.Tensor | None = None

    def _null_labels(self, y):
        if not self.model.has_null_label:
            raise RepaError(
                "guidance needs the null label, but this model was built without one (label_dropout = 0); "
                "sample with cfg_scale = 1"
            )
        return torch.full_like(y, self.model.num_classes)

    def velocity_for(self, y: torch.Tensor):
        """The velocity of the sampler's state: the image, or with a [[joint]] quantity the packed
        [B, C*H*W + K*D] (image, z) (`JointState`), so that every sampler integrates both unchanged."""
        low, high = self.prediction.time_range

        def velocity(x, t, step_t):
            t = t.clamp(low, high)
            guided = self.guidance is not None and self.guidance.active(step_t)
            parts = self.state.unpack(x) if self.state else (x,)
            t_in, y_in = (torch.cat([t, t]), torch.cat([y, self._null_labels(y)])) if guided else (t, y)
            inputs = [torch.cat([p, p]) if guided else p for p in parts]
            with autocast_to(x.device.type, self.autocast_dtype):
                outs = self.model(inputs[0].to(self.model_dtype), t_in.to(self.model_dtype), y_in, align=False,
                                  **({"joint_state": inputs[1].to(self.model_dtype)} if self.state else {}))
            outs = [outs[0]] + ([outs[2]] if self.state else [])
            velocities = []
            for part, out in zip(parts, outs):
                out = out.to(x.dtype)
                if guided:
                    cond, uncond = out.chunk(2)
                    out = self.guidance.combine(cond, uncond, step_t)
                velocities.append(self.prediction.to_velocity(out, part, t, self.path))
            return self.state.pack(*velocities) if self.state else velocities[0]

        return velocity

    @torch.no_grad()
    def sample(self, sampler, x1, y, noise=None, state_dtype=torch.float64):
        """x1 [B,C,H,W] noise, y [B] labels -> x0 in `state_dtype`. With a [[joint]] quantity its
        start is drawn from `noise` after x1 and its end is kept in `self.last_joint` [B,K,D]."""
        self.model.check_inputs(x1, torch.zeros(x1.shape[0], device=x1.device), y)
        dtype = self.model_dtype if state_dtype == "model" else state_dtype
        noise = noise or GlobalNoise()
        joint = getattr(self.model, "joint", None)
        self.state = None if joint is None else JointState(x1.shape[1:], (joint.tokens, joint.width))
        if self.state:
            x1 = self.state.pack(x1, noise.randn_like(x1.new_empty(x1.shape[0], joint.tokens, joint.width)))
        x0 = sampler.sample(self.velocity_for(y), x1.to(dtype), self.path, noise)
        if not self.state:
            return x0
        x0, self.last_joint = self.state.unpack(x0)
        return x0


class JointState:
    """The image [B,C,H,W] and a joint quantity [B,K,D] as one [B, C*H*W + K*D] sampler state: samplers
    act elementwise (and paths broadcast over any shape), so integrating the packed state integrates
    both with the same t, steps and noise law, as REG's sampler does (Martinser/REG, samplers.py)."""

    def __init__(self, image_shape, joint_shape):
        self.image_shape, self.joint_shape = tuple(image_shape), tuple(joint_shape)
        self.split = int(torch.Size(self.image_shape).numel())

    def pack(self, image: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
        return torch.cat([image.flatten(1), joint.flatten(1).to(image.dtype)], dim=1)

    def unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, joint = state[:, :self.split], state[:, self.split:]
        return image.reshape(-1, *self.image_shape), joint.reshape(-1, *self.joint_shape)
