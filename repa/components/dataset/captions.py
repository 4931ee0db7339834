"""`digits-captions`: the embedded digits with captions measured on each image, for the offline
text-to-image quickstart ("a thick slanted seven").

Three measurements of the ink, each split at its digit's median over all 1,797 images (the upper half
by rank, so every word is true of half of each digit's images):
- thickness: ink per inked row (the strokes' width times their count; "thick" / "thin");
- slant: how far the ink's top leans right of its bottom (the shear of its second moments,
  -cov(x, y) / var(y) with y downwards; "slanted" / "upright");
- size: the area of the ink's bounding box ("large" / "small").
Each image has eight captions: the digit with every subset of the three words ("a seven", "a thick
seven", ..., "a thick slanted large seven"). Item i is caption i mod 8 of image i // 8, so the data
order (seeded per epoch) decides which caption a step sees, reproducibly; the official COCO dataset
draws one of an image's captions at random instead."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch

from repa.components.dataset.digits import INK, DigitsDataset, digits_arrays
from repa.components.text_encoder.words import DIGIT_WORDS

ATTRIBUTES = (("thin", "thick"), ("upright", "slanted"), ("small", "large"))  # (below, above) the median
VARIANTS = tuple(itertools.product((False, True), repeat=len(ATTRIBUTES)))  # which words a caption shows


def measurements(gray: np.ndarray) -> np.ndarray:
    """[N,R,R] intensities in [0,1] -> [N,3]: thickness, slant, size (see the module's docstring)."""
    n, side, _ = gray.shape
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    mass = gray.sum(axis=(1, 2)) + 1e-9
    mean_x = (gray * xs).sum(axis=(1, 2)) / mass
    mean_y = (gray * ys).sum(axis=(1, 2)) / mass
    dx, dy = xs[None] - mean_x[:, None, None], ys[None] - mean_y[:, None, None]
    slant = -(gray * dx * dy).sum(axis=(1, 2)) / ((gray * dy * dy).sum(axis=(1, 2)) + 1e-9)
    ink = gray >= INK / 255
    rows, columns = ink.any(axis=2), ink.any(axis=1)
    thickness = ink.sum(axis=(1, 2)) / np.maximum(rows.sum(axis=1), 1)
    height = np.array([np.ptp(np.flatnonzero(r)) + 1 if r.any() else 0 for r in rows])
    width = np.array([np.ptp(np.flatnonzero(c)) + 1 if c.any() else 0 for c in columns])
    return np.stack([thickness, slant, height * width], axis=1)


@lru_cache(maxsize=4)
def attribute_words(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N], above-median flags [N,3]) for all 1,797 digits, medians taken per digit."""
    images, labels = digits_arrays(resolution)
    values = measurements(images[:, 0].float().numpy() / 255)
    labels = labels.numpy()
    above = np.zeros(values.shape, dtype=bool)
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        for k in range(values.shape[1]):  # the upper half by rank: ties (box areas) split by the other measures
            order = np.lexsort([values[rows, j] for j in range(values.shape[1]) if j != k] + [values[rows, k]])
            above[rows[order[len(rows) // 2:]], k] = True
    return labels, above


def caption(digit: int, above: np.ndarray, shown: tuple) -> str:
    words = [pair[int(flag)] for pair, flag, show in zip(ATTRIBUTES, above, shown) if show] + [DIGIT_WORDS[digit]]
    article = "an" if words[0] in ("eight", "upright") else "a"
    return " ".join([article, *words])


class DigitCaptionsDataset(DigitsDataset):
    def __init__(self, params, split: str = "train"):
        super().__init__(params, split="heldout" if split == "val" else split)
        self.above = attribute_words(params.resolution)[1][self.keep]

    def __len__(self) -> int:
        return len(self.labels) * len(VARIANTS)

    def __getitem__(self, i: int) -> dict:
        image, variant = divmod(int(i), len(VARIANTS))
        return {"image": self.images[image], "label": int(self.labels[image]),
                "y": caption(int(self.labels[image]), self.above[image], VARIANTS[variant])}

    def prompts(self, seed: int, indices, mode: str) -> list:
        """Sample i asks for digit i mod 10 (balanced) or a random digit, with each word shown at random
        and its value at random, from its own (seed, i) generator."""
        rows = []
        for i in indices:
            g = np.random.default_rng([seed, int(i), 104729])
            digit = int(i) % 10 if mode == "balanced" else int(g.integers(10))
            shown, above = tuple(bool(b) for b in g.integers(2, size=3)), g.integers(2, size=3).astype(bool)
            text = caption(digit, above, shown)
            rows.append((text, digit, text))
        return rows

    def empty_context(self) -> torch.Tensor | None:
        return None
