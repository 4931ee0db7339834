"""Generation shared by training grids and `repa sample`: sample i depends only on (seed, i).
Official counterpart: sihyun-yu/REPA @ 67f7145, generate.py."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from repa.engine.generate.denoiser import Denoiser, PerSampleNoise, sample_generators


def class_labels(seed: int, indices: Sequence[int], num_classes: int, mode: str = "random") -> torch.Tensor:
    """random: each label drawn uniformly from its own (seed, i) generator (official generate.py);
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


def image_grid(images: np.ndarray, pad: int = 2, columns: int | None = None,
               column_labels: Sequence[str] | None = None, min_cell: int = 64,
               row_labels: Sequence[str] | None = None) -> np.ndarray:
    """uint8 [N,H,W,3] -> one uint8 image: `columns` columns (default round(sqrt(N))), each cell
    upscaled by an integer factor (nearest neighbour: pixels stay sharp) to at least `min_cell`
    px, and a label above each column when given (e.g. its class)."""
    n, h, w, c = images.shape
    scale = max(1, math.ceil(min_cell / max(1, min(h, w))))
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    cols = columns or max(1, round(math.sqrt(n)))
    rows = math.ceil(n / cols)
    header = LABEL_BAND if column_labels else 0
    grid = np.full((header + rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, cols)
        top, left = header + pad + r * (h + pad), pad + k * (w + pad)
        grid[top : top + h, left : left + w] = image
    if column_labels:
        grid = _label_columns(grid, column_labels[:cols], w, pad)
    if row_labels:
        grid = _label_rows(grid, row_labels[:rows], h, pad, header)
    return grid


def _label_rows(grid: np.ndarray, labels: Sequence[str], cell: int, pad: int, top: int) -> np.ndarray:
    """A white band left of the grid with each row's label (e.g. its prompt), centred on the row."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    band = int(max(probe.textlength(str(label)) for label in labels)) + 2 * pad + 4
    image = Image.new("RGB", (grid.shape[1] + band, grid.shape[0]), (255, 255, 255))
    image.paste(Image.fromarray(grid), (band, 0))
    draw = ImageDraw.Draw(image)
    for r, label in enumerate(labels):
        draw.text((pad + 2, top + pad + r * (cell + pad) + cell / 2 - 6), str(label), fill=(0, 0, 0))
    return np.asarray(image)


def prompt_rows(conditioning, seed: int, n: int, mode: str = "balanced"):
    """A grid of prompted samples: round(sqrt(n)) prompts (sample conditions 0, 1, ...), one per row, each
    drawn once per column with its own noise -> (y for samples 0..n-1, the grid's layout keywords)."""
    columns = max(1, round(math.sqrt(n)))
    rows = math.ceil(n / columns)
    found = conditioning.conditions(seed, range(rows), mode)
    y = found.y.repeat_interleave(columns, dim=0)[:n]
    return y, {"columns": columns, "row_labels": list(found.captions)}


LABEL_BAND = 14  # px above the cells for the column labels (PIL's default font is 11 px high)


def _label_columns(grid: np.ndarray, labels: Sequence[str], cell: int, pad: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    for k, label in enumerate(labels):
        left = pad + k * (cell + pad)
        width = draw.textlength(str(label))
        draw.text((left + max(0, (cell - width) / 2), 1), str(label), fill=(0, 0, 0))
    return np.asarray(image)