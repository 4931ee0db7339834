"""The embedded dataset: scikit-learn's 8x8 handwritten digits, shipped inside the sklearn
wheel (no download). Upscaled to `resolution` and made RGB uint8, with a fixed split."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from repa.interfaces import Dataset

SPLIT_SEED = 0
INK = 64  # uint8 intensity from which a pixel is part of the stroke


def digits_arrays(resolution: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as uint8 [N,3,R,R] and labels int64 [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N,1,8,8] in [0,1]
    pixels = F.interpolate(pixels, size=resolution, mode="bilinear", align_corners=False)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, torch.from_numpy(digits.target.astype(np.int64))


def split_indices(n: int, heldout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    cut = int(round(n * (1 - heldout_fraction)))
    return np.sort(order[:cut]), np.sort(order[cut:])


class DigitsDataset(torch.utils.data.Dataset, Dataset):
    num_classes = 10

    def __init__(self, params, split: str = "train"):
        images, labels = digits_arrays(params.resolution)
        train, heldout = split_indices(len(labels), params.heldout_fraction)
        splits = {"train": train, "heldout": heldout, "all": np.arange(len(labels))}
        if split not in splits:
            from repa.errors import DataError

            raise DataError(f"digits: no split {split!r}; the splits are {', '.join(splits)}")
        keep = splits[split]
        self.keep, self.images, self.labels = keep, images[keep], labels[keep]
        self.resolution = params.resolution

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "y": int(self.labels[i])}

    def foreground(self, image: torch.Tensor) -> torch.Tensor:
        """The ink: white strokes on a black background (a quarter of full intensity and up)."""
        return image.amax(0) >= INK
