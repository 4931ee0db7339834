"""Encoder feature caches: run an alignment encoder once over the dataset, so that training
can skip its forward pass. A cache records what produced it; training refuses a cache whose
encoder, weights, resolution, preprocessing, precision or dataset differ from the experiment.

    DEST/features.json   the record (below)      DEST/manifest.json + tokens-*.npy   packed shards
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from repa.packs import PackWriter, read_manifest, verify
from repa.console import progress_bar
from repa.errors import DataError
from repa.precision import autocast_dtype
from repa.storage import write_atomic
from repa.weights import file_digest

RECORD = "features.json"


def describe(config, entry, encoder, dataset, precision: str) -> dict:
    """Everything the tokens depend on."""
    return {
        "encoder": entry.encoder.kind,
        "encoder_params": entry.encoder.params.model_dump(mode="json"),
        "weights_blake2b": file_digest(encoder.weights_file) if encoder.weights_file else None,
        "resolution": config.data.params.resolution,
        "preprocessing": encoder.preprocessing(),
        "precision": precision,
        "dataset": {"kind": config.data.kind, **config.data.params.model_dump(mode="json"), "count": len(dataset)},
    }


def _entry_index(config, encoder_name: str) -> int:
    for k, entry in enumerate(config.alignment):
        if entry.encoder.kind == encoder_name:
            return k
    names = [a.encoder.kind for a in config.alignment] or ["none"]
    raise DataError(f"--encoder {encoder_name}: the experiment's alignment encoders are {', '.join(names)}")


@torch.no_grad()
def cache_features(config, encoder_name: str, dest: Path, batch_size: int = 64, precision: str = "no",
                   device: str | None = None, shard_size: int = 16384, progress: bool = True) -> int:
    """Compute the tokens of alignment encoder `encoder_name` for every training sample."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    entry = config.alignment[_entry_index(config, encoder_name)]
    dataset = config.data.build(split="train")
    encoder = entry.encoder.build(resolution=config.data.params.resolution).to(device)
    encoder.autocast_dtype = autocast_dtype(precision)
    tokens = encoder.tokens_for(config.data.params.resolution)
    record = describe(config, entry, encoder, dataset, precision)
    writer = PackWriter(Path(dest), len(dataset), config.data.params.resolution,
                        {"tokens": ("float32", (tokens, encoder.embed_dim))}, shard_size, source=record,
                        what="encoder features")
    write_atomic(Path(dest) / RECORD, json.dumps(record, indent=1))  # first: a partial cache says what it holds
    done = writer.done_until
    with progress_bar(f"{encoder_name} features", enabled=progress) as bar:
        task = bar.add_task("features", total=len(dataset), completed=done, rate="")
        for start in range(done, len(dataset), batch_size):
            indices = range(start, min(start + batch_size, len(dataset)))
            images = torch.stack([dataset[i]["image"] for i in indices]).to(device)
            for i, row in zip(indices, encoder(encoder.preprocess(images)).cpu().numpy()):
                writer.write(i, tokens=row)
            bar.advance(task, len(indices))
    return len(dataset) - done


class FeatureCache:
    """Random access to cached tokens by dataset index."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not (self.root / RECORD).is_file():
            raise DataError(f"{self.root / RECORD}: missing; create the cache with `repa preprocess features`")
        self.record = json.loads((self.root / RECORD).read_text())
        self.manifest = read_manifest(self.root)
        verify(self.root, self.manifest, "quick")
        self.shard_size = self.manifest["shard_size"]
        self._maps = None

    def check(self, expected: dict) -> None:
        for key, value in expected.items():
            if self.record.get(key) != value:
                raise DataError(
                    f"{self.root / RECORD}: {key} is {self.record.get(key)!r} in the cache but {value!r} in this "
                    "experiment; rebuild it with `repa preprocess features` or use features = \"online\""
                )

    def __len__(self) -> int:
        return self.manifest["count"]

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._maps is None:
            self._maps = [np.load(self.root / s["files"]["tokens"]["name"], mmap_mode="r")
                          for s in self.manifest["shards"]]
        return torch.from_numpy(np.array(self._maps[i // self.shard_size][i % self.shard_size]))


def feature_key(folder: str) -> str:
    """The batch key of a feature cache's tokens."""
    return f"features:{folder}"


class WithFeatures(torch.utils.data.Dataset):
    """A dataset whose items also carry `features:<folder>` for each feature cache the terms read."""

    def __init__(self, dataset, caches: dict[str, FeatureCache]):
        for k, cache in caches.items():
            if len(cache) != len(dataset):
                raise DataError(f"{cache.root}: {len(cache)} cached samples but the dataset has {len(dataset)}")
        self.dataset, self.caches = dataset, caches
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        for folder, cache in self.caches.items():
            item[feature_key(folder)] = cache[i]
        return item
