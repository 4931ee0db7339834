"""Training randomness as a function of (seed, step, row of the global batch) only (the official
code, sihyun-yu/REPA @ 67f7145 train.py / loss.py, draws from the global RNG instead).

Every process draws the whole global batch's t, noise and label-dropout mask from one
generator seeded by (seed, step) and keeps its own rows. So a step is the same whatever the
number of processes or accumulation steps, and resuming at step k needs no RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repa.interfaces import Path, Weighting


def step_seed(seed: int, step: int) -> int:
    return (seed * 0x9E3779B1 + step * 0x85EBCA77 + 0x632BE5AB) % (2**63 - 1)


@dataclass
class GlobalDraws:
    t: torch.Tensor  # [G]
    noise: torch.Tensor  # [G, C, H, W] the interpolant's eps
    posterior: torch.Tensor  # [G, C, H, W] noise of the latent draw from the VAE moments
    drop: torch.Tensor  # [G] bool: label replaced by the null label (CFG dropout)
    legacy_drop: torch.Tensor  # [G] bool: the official script's second dropout
    extra_noise: tuple = ()  # [G, K, D] per jointly denoised quantity (extra tokens), drawn last, in order

    def rows(self, start: int, stop: int) -> "GlobalDraws":
        fields = ("t", "noise", "posterior", "drop", "legacy_drop")
        return GlobalDraws(*(getattr(self, f)[start:stop] for f in fields),
                           tuple(noise[start:stop] for noise in self.extra_noise))


def draw_step(
    seed: int, step: int, global_batch: int, shape: tuple[int, ...], weighting: Weighting, path: Path,
    label_dropout: float, device: torch.device, extra_shapes: list[tuple[int, ...]] = (),
) -> GlobalDraws:
    """The draws of one step; the jointly denoised quantities' noises (extra_shapes: (K, D) each) come
    after all the others, so that every other draw is the same with and without them."""
    generator = torch.Generator(device).manual_seed(step_seed(seed, step))
    t = weighting.sample_t(global_batch, generator, path, device=device)
    noise = torch.randn((global_batch, *shape), generator=generator, device=device)
    posterior = torch.randn((global_batch, *shape), generator=generator, device=device)
    drop = torch.rand(global_batch, generator=generator, device=device) < label_dropout
    legacy = torch.rand(global_batch, generator=generator, device=device) < label_dropout
    extra = tuple(torch.randn((global_batch, *shape), generator=generator, device=device) for shape in extra_shapes)
    return GlobalDraws(t, noise, posterior, drop, legacy, extra)
