"""The two interpolants of SiT/REPA; coefficients match the official `SILoss.interpolant`
(sihyun-yu/REPA @ 67f7145, loss.py)."""

from __future__ import annotations

import math

import torch

from repa.interfaces import Path


class LinearPath(Path):
    def coefficients(self, t):
        return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)

    def t_from_noise_ratio(self, ratio):
        # sigma/alpha = t/(1-t)  =>  t = r/(1+r)  (REPA's lognormal weighting on the linear path)
        return ratio / (1 + ratio)


class CosinePath(Path):
    def coefficients(self, t):
        half_pi = math.pi / 2
        return (
            torch.cos(t * half_pi),
            torch.sin(t * half_pi),
            -half_pi * torch.sin(t * half_pi),
            half_pi * torch.cos(t * half_pi),
        )

    def t_from_noise_ratio(self, ratio):
        # sigma/alpha = tan(pi t / 2)  =>  t = 2/pi atan(r)
        return 2 / math.pi * torch.atan(ratio)
