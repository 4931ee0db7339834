"""The packed dataset: a slice of a page-cached memory map per sample (the format: `repa.packs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from repa.errors import DataError
from repa.interfaces import Dataset
from repa.packs import MANIFEST, read_manifest, verify

class PackedDataset(torch.utils.data.Dataset, Dataset):
    def __init__(self, params, split: str = "train"):
        self.root = Path(params.path)
        self.manifest = read_manifest(self.root)
        if self.manifest["resolution"] != params.resolution:
            raise DataError(f"{self.root / MANIFEST}: packed at {self.manifest['resolution']} px but "
                            f"data.resolution is {params.resolution}")
        verify(self.root, self.manifest, params.verify)
        self.num_classes, self.resolution = params.num_classes, params.resolution
        self.shard_size = self.manifest["shard_size"]
        self.fields = list(self.manifest["fields"])
        self._maps: list[dict[str, np.ndarray]] | None = None

    def _memory_maps(self) -> list[dict[str, np.ndarray]]:
        # Opened lazily so that every DataLoader worker maps the files itself.
        if self._maps is None:
            self._maps = [
                {name: np.load(self.root / f["name"], mmap_mode="r") for name, f in shard["files"].items()}
                for shard in self.manifest["shards"]
            ]
        return self._maps

    def __len__(self) -> int:
        return self.manifest["count"]

    def __getitem__(self, i: int) -> dict:
        shard = self._memory_maps()[i // self.shard_size]
        j = i % self.shard_size
        item = {"image": torch.from_numpy(np.array(shard["images"][j])), "y": int(shard["labels"][j])}
        if "moments" in shard:
            item["moments"] = torch.from_numpy(np.array(shard["moments"][j], dtype=np.float32))
        return item
