"""ODE and SDE integrators, step for step as REPA's `euler_sampler` / `euler_maruyama_sampler`
(official code: sihyun-yu/REPA @ 67f7145, samplers.py).

`velocity(x, t, step_t)` returns dx/dt at model time t[B]; `step_t` (a float) is the time at
which the current step began. Guidance is switched on or off per step by `step_t`, as the
official code does (Heun's corrector included).
"""

from __future__ import annotations

import torch

from repa.interfaces import NoiseSource, Path, Sampler


def _full(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def score_from_velocity(v, x, t, path: Path):
    """grad log p_t(x) = -eps/sigma, with eps recovered from (x_t, v) on the path."""
    alpha, sigma, d_alpha, d_sigma = path.broadcast(t, x)
    eps = (alpha * v - d_alpha * x) / (alpha * d_sigma - sigma * d_alpha)
    return -eps / sigma


class EulerSampler(Sampler):
    def __init__(self, steps: int, heun: bool = False):
        if steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")
        self.steps, self.heun = steps, heun

    def function_evaluations(self) -> int:
        """Heun corrects every step but the last: 2 * steps - 1."""
        return 2 * self.steps - 1 if self.heun else self.steps

    def sample(self, velocity, x1, path, noise=None):
        t_steps = torch.linspace(1, 0, self.steps + 1, dtype=torch.float64)
        x = x1
        for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
            d_cur = velocity(x, _full(x, t_cur), float(t_cur))
            x_next = x + (t_next - t_cur) * d_cur
            if self.heun and i < self.steps - 1:
                d_prime = velocity(x_next, _full(x, t_next), float(t_cur))
                x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
            x = x_next
        return x


class EulerMaruyamaSampler(Sampler):
    """dx = [v - 1/2 w(t) score] dt + sqrt(w(t)) dW with w(t) = 2t (SiT Sec. 3.3)."""

    def __init__(self, steps: int, t_last: float = 0.04):
        if steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")
        self.steps, self.t_last = steps, t_last

    def _drift(self, velocity, x, t_cur, path):
        t = _full(x, t_cur)
        v = velocity(x, t, float(t_cur))
        return v - 0.5 * (2 * t_cur) * score_from_velocity(v, x, t, path)

    def sample(self, velocity, x1, path, noise: NoiseSource):
        t_steps = torch.linspace(1.0, self.t_last, self.steps, dtype=torch.float64)
        t_steps = torch.cat([t_steps, torch.zeros(1, dtype=torch.float64)])
        x = x1
        for t_cur, t_next in zip(t_steps[:-2], t_steps[1:-1]):
            dt = t_next - t_cur
            dw = noise.randn_like(x) * torch.sqrt(torch.abs(dt))
            x = x + self._drift(velocity, x, t_cur, path) * dt + torch.sqrt(2 * t_cur) * dw
        t_cur, t_next = t_steps[-2], t_steps[-1]
        return x + (t_next - t_cur) * self._drift(velocity, x, t_cur, path)
