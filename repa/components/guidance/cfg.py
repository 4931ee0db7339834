"""Classifier-free guidance (Ho & Salimans 2022) with a guidance interval (Kynkaanniemi et al. 2024)."""

from __future__ import annotations

from repa.interfaces import Guidance


class ClassifierFreeGuidance(Guidance):
    def __init__(self, scale: float, low: float = 0.0, high: float = 1.0):
        if not 0 <= low <= high <= 1:
            raise ValueError(f"guidance interval must satisfy 0 <= low <= high <= 1, got [{low}, {high}]")
        self.scale, self.low, self.high = scale, low, high

    def active(self, t: float) -> bool:
        # scale 1 is the conditional model: skip the unconditional pass entirely.
        return self.scale != 1.0 and self.low <= t <= self.high

    def combine(self, cond, uncond, t):
        return uncond + self.scale * (cond - uncond)
