"""Time samplers. All randomness comes from the generator passed in (reproducible, resumable)."""

from __future__ import annotations

import torch

from repa.interfaces import Weighting


class UniformWeighting(Weighting):
    def __init__(self, params=None):
        pass

    def sample_t(self, batch, generator, path, device=None):
        return torch.rand(batch, generator=generator, device=device)


class LognormalWeighting(Weighting):
    """REPA's `lognormal`: sigma_EDM = exp(N(mean, std)); t solves sigma(t)/alpha(t) = sigma_EDM,
    i.e. t = s/(1+s) on the linear path and 2/pi atan(s) on the cosine path."""

    def __init__(self, params):
        self.mean, self.std = params.mean, params.std

    def sample_t(self, batch, generator, path, device=None):
        normal = torch.randn(batch, generator=generator, device=device)
        return path.t_from_noise_ratio((normal * self.std + self.mean).exp())


class LogitNormalWeighting(Weighting):
    def __init__(self, params):
        self.mean, self.std = params.mean, params.std

    def sample_t(self, batch, generator, path, device=None):
        normal = torch.randn(batch, generator=generator, device=device)
        return torch.sigmoid(normal * self.std + self.mean)
