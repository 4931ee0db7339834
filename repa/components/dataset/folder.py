"""The official REPA dataset layout (sihyun-yu/REPA @ 67f7145: dataset.py / preprocessing/dataset_tools.py):

    root/images/00000/img00000000.png ... + images/dataset.json
    root/vae-sd/00000/img-mean-std-00000000.npy ... + vae-sd/dataset.json   (moments [8,h,w])

Images and latents pair by sorted order, as official; here the pairing is also checked by name.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from repa.components.dataset.files import (
    IMAGE_EXTENSIONS, check_resolution, list_files, read_image, read_labels, read_npy,
)
from repa.errors import DataError
from repa.interfaces import Dataset

_INDEX = re.compile(r"(\d+)\.\w+$")


def _pair_key(name: str) -> tuple[str, str]:
    match = _INDEX.search(name)
    return (name.rsplit("/", 1)[0] if "/" in name else "", match.group(1) if match else name)


class FolderDataset(torch.utils.data.Dataset, Dataset):
    def __init__(self, params, split: str = "train"):
        self.root = Path(params.path)
        self.images_dir = self.root / "images"
        if not self.images_dir.is_dir():
            raise DataError(f"{self.images_dir}: missing; data.path must hold images/ (official layout); "
                            "create it with `repa preprocess images SRC DEST`")
        self.num_classes = params.num_classes
        self.resolution = params.resolution
        self.images = list_files(self.images_dir, IMAGE_EXTENSIONS)
        if not self.images:
            raise DataError(f"{self.images_dir}: no images found")
        self.latents_dir = self.root / params.latents if params.latents else None
        self.latents = self._check_latents() if self.latents_dir else None
        self.labels = self._labels()
        check_resolution(self.images_dir / self.images[0], params.resolution)

    def _check_latents(self) -> list[str]:
        if not self.latents_dir.is_dir():
            raise DataError(f"{self.latents_dir}: missing; encode the images with `repa preprocess latents "
                            f"{self.root} {self.root}` or set data.latents = \"\" to encode on the fly")
        latents = list_files(self.latents_dir, {".npy"})
        if len(latents) != len(self.images):
            raise DataError(f"{self.latents_dir}: {len(latents)} latent files but {len(self.images)} images in "
                            f"{self.images_dir}; re-run `repa preprocess latents` (it resumes)")
        for image, latent in zip(self.images, latents):
            if _pair_key(image) != _pair_key(latent):
                raise DataError(f"{self.latents_dir / latent}: pairs with image {image} by sorted order but "
                                "their names differ; the two folders hold different samples")
        return latents

    def _labels(self) -> list[int]:
        if self.latents is not None:
            table, names, json_path = read_labels(self.latents_dir / "dataset.json"), self.latents, self.latents_dir / "dataset.json"
        else:
            table, names, json_path = read_labels(self.images_dir / "dataset.json"), self.images, self.images_dir / "dataset.json"
        labels = []
        for name in names:
            if name not in table:
                raise DataError(f"{json_path}: has no label for {name}; the labels do not match the files")
            if not 0 <= table[name] < self.num_classes:
                raise DataError(f"{json_path}: label {table[name]} of {name} is outside 0..{self.num_classes - 1} "
                                f"(data.num_classes = {self.num_classes})")
            labels.append(table[name])
        if len(table) != len(names):
            raise DataError(f"{json_path}: lists {len(table)} files but the folder has {len(names)}")
        return labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = read_image(self.images_dir / self.images[i], self.resolution)
        item = {"image": torch.from_numpy(image), "y": self.labels[i]}
        if self.latents is not None:
            moments = read_npy(self.latents_dir / self.latents[i])
            item["moments"] = torch.from_numpy(moments.reshape(moments.shape[-3:]).astype("float32"))
        return item
