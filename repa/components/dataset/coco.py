"""MS-COCO in the official text-to-image layout (sihyun-yu/REPA @ 67f7145, dataset.py
`MSCOCO256Features`, after U-ViT's preprocessing: github.com/baofff/U-ViT, scripts/), as
`repa preprocess coco` writes it (repa/engine/prep/coco.py):

    PATH/empty_context.npy          the empty caption's context [77, 768] (CLIP ViT-L/14)
    PATH/train/<i>.png              image i, RxR
    PATH/train/<i>.npy              its SD-VAE moments [8, R/8, R/8]: mean and log-variance (U-ViT)
    PATH/train/<i>_<k>.npy          the context of its k-th caption [77, 768]
    PATH/train/captions.json        (repa) {i: [caption, ...]}, for grids; optional
    PATH/val/...                    the same for the 40,504 validation images

Item j is caption k of image i, pairs in order (i, k): every caption is one item, and the seeded data
order decides which one a step sees. The official dataset draws one caption of image i at random per
visit instead; images with 6 or 7 captions (of mostly 5) are seen a little more often here. The
moments are given to the trainer as (mean, std), std = exp(logvar / 2) with the log-variance clamped
to [-30, 20] as the official `sample_posterior`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from repa.errors import DataError
from repa.interfaces import Dataset

CAPTION_FILE = re.compile(r"^(\d+)_(\d+)\.npy$")
MOMENTS_FILE = re.compile(r"^(\d+)\.npy$")
FIX = "write {path} with `repa preprocess coco COCO_DIR {path}` (docs/text-to-image.md)"


def caption_counts(folder: Path) -> list[int]:
    """Captions of each image 0..N-1, from the file names (official `get_feature_dir_info`); a gap in the
    images or in an image's captions is one line naming the missing file."""
    captions: dict[int, set[int]] = {}
    images: set[int] = set()
    for name in os.listdir(folder):
        if found := CAPTION_FILE.match(name):
            captions.setdefault(int(found[1]), set()).add(int(found[2]))
        elif found := MOMENTS_FILE.match(name):
            images.add(int(found[1]))
    count = max(images | set(captions), default=-1) + 1
    for i in range(count):
        found = captions.get(i, set())
        gap = next(k for k in range(len(found) + 1) if k not in found)  # the first caption number not there
        missing = f"{i}.npy" if i not in images else f"{i}_{gap}.npy" if not found or gap < len(found) else None
        if missing:
            raise DataError(f"{folder}: image {i} has no {missing}; {FIX.format(path=folder.parent)}")
    return [len(captions[i]) for i in range(count)]


class CocoDataset(torch.utils.data.Dataset, Dataset):
    num_classes = 0

    def __init__(self, params, split: str = "train"):
        root = Path(params.path).expanduser()
        folder = root / ("val" if split in ("val", "heldout") else "train")
        if not folder.is_dir():
            raise DataError(f"data.path: {root} has no {folder.name}/ folder; {FIX.format(path=root)}")
        self.root, self.folder, self.resolution = root, folder, params.resolution
        self.counts = caption_counts(folder)
        if not self.counts:
            raise DataError(f"{folder}: holds no images (<i>.npy); {FIX.format(path=root)}")
        self.pairs = [(i, k) for i, count in enumerate(self.counts) for k in range(count)]
        captions = folder / "captions.json"
        self.captions = json.loads(captions.read_text()) if captions.is_file() else {}

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.folder / f"{i}.png") as image:
            pixels = np.asarray(image.convert("RGB"))
        if pixels.shape[:2] != (self.resolution, self.resolution):
            raise DataError(f"{self.folder / f'{i}.png'}: is {pixels.shape[1]}x{pixels.shape[0]}, data.resolution is "
                            f"{self.resolution}; set data.resolution or preprocess again")
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)

    def _moments(self, i: int) -> torch.Tensor:
        raw = np.load(self.folder / f"{i}.npy")
        raw = torch.from_numpy(raw).float().reshape(-1, *raw.shape[-2:])  # official files may be [1, 8, h, w]
        mean, logvar = raw.chunk(2, dim=0)
        return torch.cat([mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))])

    def context(self, i: int, k: int) -> torch.Tensor:
        return torch.from_numpy(np.load(self.folder / f"{i}_{k}.npy")).float()

    def __getitem__(self, j: int) -> dict:
        i, k = self.pairs[int(j)]
        return {"image": self._image(i), "moments": self._moments(i), "y": self.context(i, k)}

    def prompts(self, seed: int, indices, mode: str) -> list:
        """Sample i: a caption of image i (cycling over the images), chosen from its own (seed, i)
        generator, as its cached context (official generate_t2i.py: the validation images in order)."""
        rows = []
        for i in indices:
            image = int(i) % len(self.counts)
            k = int(np.random.default_rng([seed, int(i), 31337]).integers(self.counts[image]))
            texts = self.captions.get(str(image), [])
            rows.append((self.context(image, k), None, texts[k] if k < len(texts) else f"val {image} caption {k}"))
        return rows

    def empty_context(self) -> torch.Tensor:
        path = self.root / "empty_context.npy"
        if not path.is_file():
            raise DataError(f"{path}: missing (the empty caption's context, for guidance); {FIX.format(path=self.root)}")
        context = np.load(path)
        return torch.from_numpy(context).float().reshape(-1, context.shape[-1])  # [1, 77, 768] or [77, 768]
