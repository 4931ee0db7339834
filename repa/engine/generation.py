"""Generation shared by training grids and `repa sample`: sample i depends only on (seed, i).
Official counterpart: sihyun-yu/REPA @ 67f7145, generate.py."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from repa.engine.denoiser import Denoiser, PerSampleNoise, sample_generators


def class_labels(seed: int, indices: Sequence[int], num_classes: int, mode: str = "uniform") -> torch.Tensor:
    """uniform: each label drawn from its own (seed, i) generator (official: uniform at random);
    balanced: i mod num_classes, the same count per class."""
    if mode == "balanced":
        return torch.tensor([int(i) % num_classes for i in indices], dtype=torch.long)
    return torch.tensor(
        [int(torch.randint(num_classes, (1,), generator=g)) for g in sample_generators(seed + 7919, indices)],
        dtype=torch.long,
    )


@torch.no_grad()
def generate(denoiser: Denoiser, sampler, indices: Sequence[int], labels: torch.Tensor, seed: int,
             shape: tuple[int, ...], device, state_dtype="float64") -> torch.Tensor:
    """x0 [len(indices), *shape] for these sample indices; x1 and all sampler noise per sample."""
    generators = sample_generators(seed, indices)
    x1 = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
    dtype = torch.float64 if state_dtype == "float64" else "model"
    return denoiser.sample(sampler, x1, labels.to(device), PerSampleNoise(generators), state_dtype=dtype)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float [N,3,H,W] -> uint8 [N,H,W,3] (the official generate.py rounding)."""
    images = torch.clamp(255.0 * (images.float() + 1) / 2, 0, 255)
    return images.permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()


def image_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 [N,H,W,3] -> one uint8 image, round(sqrt(N)) columns."""
    n, h, w, c = images.shape
    cols = max(1, round(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = image
    return grid
