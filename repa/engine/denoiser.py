"""Binding a network (`repa.engine.alignment.AlignedNetwork`), its prediction target, the path,
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

    def _null_labels(self, y):
        if not self.model.has_null_label:
            raise RepaError(
                "guidance needs the null label, but this model was built without one (label_dropout = 0); "
                "sample with cfg_scale = 1"
            )
        return torch.full_like(y, self.model.num_classes)

    def velocity_for(self, y: torch.Tensor):
        low, high = self.prediction.time_range

        def velocity(x, t, step_t):
            t = t.clamp(low, high)
            guided = self.guidance is not None and self.guidance.active(step_t)
            x_in, t_in, y_in = (x, t, y)
            if guided:
                x_in, t_in, y_in = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, self._null_labels(y)])
            with autocast_to(x.device.type, self.autocast_dtype):
                out = self.model(x_in.to(self.model_dtype), t_in.to(self.model_dtype), y_in, align=False)[0]
            out = out.to(x.dtype)
            if guided:
                cond, uncond = out.chunk(2)
                out = self.guidance.combine(cond, uncond, step_t)
            return self.prediction.to_velocity(out, x, t, self.path)

        return velocity

    @torch.no_grad()
    def sample(self, sampler, x1, y, noise=None, state_dtype=torch.float64):
        """x1 [B,C,H,W] noise, y [B] labels -> x0 in `state_dtype`."""
        self.model.check_inputs(x1, torch.zeros(x1.shape[0], device=x1.device), y)
        dtype = self.model_dtype if state_dtype == "model" else state_dtype
        return sampler.sample(self.velocity_for(y), x1.to(dtype), self.path, noise or GlobalNoise())
