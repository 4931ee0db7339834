"""RAE's dimension-dependent noise schedule (bytetriper/RAE, src/stage2/transport/transport.py and
integrators.py). t = 0 is data, t = 1 noise, as in repa. With shift s = sqrt(dim / base) (dim = C*H*W of
the latents; base 4096), every t is mapped t -> s t / (1 + (s - 1) t), in training and on the sampler's
grid, so that high-dimensional latents spend more time at high noise."""

from __future__ import annotations

import math

import torch

from repa.interfaces import Sampler, Weighting


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def shift_for(dim: int, base: int) -> float:
    return math.sqrt(dim / base)


class ShiftedLogitNormal(Weighting):
    """logit(t) ~ N(mean, std), truncated to [0, 1 - 1/1000] by inverse-CDF sampling (truncated_logitnormal_sample),
    then shifted. The loss weight is 1 (velocity loss, mean over the elements)."""

    def __init__(self, mean: float, std: float, shift: float, high: float = 1 - 1 / 1000):
        self.mean, self.std, self.shift, self.high = mean, std, shift, high

    def from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        normal = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
        beta = (torch.logit(torch.tensor(self.high)) - self.mean) / self.std
        u = normal.cdf(torch.tensor(-math.inf)) + (normal.cdf(beta) - normal.cdf(torch.tensor(-math.inf))) * u.clamp(0, 1)
        t = torch.sigmoid(self.mean + self.std * normal.icdf(u.cpu()).to(u.device)).clamp(0.0, self.high)
        return shift_time(t, self.shift)

    def sample_t(self, batch, generator, path, device=None):
        return self.from_uniform(torch.rand(batch, generator=generator, device=device)).float()


class ShiftedEuler(Sampler):
    """The probability-flow ODE by Euler steps on RAE's grid: t_k = shift(1 - k (1 - eps) / steps), k = 0..steps,
    from 1 down to shift(eps) (eps = 1/1000); no last step to 0 (torchdiffeq's euler over the grid)."""

    def __init__(self, steps: int, shift: float, eps: float = 1 / 1000):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps, self.shift, self.eps = steps, shift, eps

    def grid(self) -> torch.Tensor:
        return shift_time(1 - torch.linspace(0, 1 - self.eps, self.steps + 1, dtype=torch.float64), self.shift)

    def sample(self, velocity, x1, path, noise):
        x, times = x1, self.grid()
        for t_cur, t_next in zip(times[:-1], times[1:]):
            t = torch.full((x.shape[0],), float(t_cur), dtype=x.dtype, device=x.device)
            x = x + (t_next - t_cur).to(x.dtype) * velocity(x, t, float(t_cur))
        return x
