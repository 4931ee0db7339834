"""A raw image folder (class subfolders, sorted), ADM center crop on the fly; for small runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from repa.components.dataset.crop import center_crop_arr, to_rgb
from repa.components.dataset.files import IMAGE_EXTENSIONS, list_files
from repa.errors import DataError
from repa.interfaces import Dataset


def class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


class ImageFolderDataset(torch.utils.data.Dataset, Dataset):
    def __init__(self, params, split: str = "train"):
        self.root, self.resolution = Path(params.path), params.resolution
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder (data.path of an `images` dataset)")
        classes = class_folders(self.root)
        if not classes:
            raise DataError(f"{self.root}: no class subfolders; put images in one folder per class")
        self.num_classes = params.num_classes or len(classes)
        self.files, self.labels = [], []
        for label, name in enumerate(classes):
            for rel in list_files(self.root / name, IMAGE_EXTENSIONS):
                self.files.append(self.root / name / rel)
                self.labels.append(label)
        if not self.files:
            raise DataError(f"{self.root}: no images in its class folders")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        try:
            with Image.open(self.files[i]) as image:
                array = center_crop_arr(to_rgb(image), self.resolution)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{self.files[i]}: unreadable or corrupt image ({exc})") from None
        return {"image": torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), "y": self.labels[i]}
