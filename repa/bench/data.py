"""Loader throughput, official layout vs packed, on a synthetic ImageNet-shaped dataset this
benchmark writes itself (256x256 PNG + [8,32,32] float32 moments), and center-crop throughput.
The official layout is that of the official code (sihyun-yu/REPA @ 67f7145, dataset.py).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def synthetic_official(root: Path, count: int, resolution: int = 256, seed: int = 0) -> None:
    """Smooth random images (so PNG compresses like photos do, roughly) and random moments."""
    from repa.engine.prep.preprocess import official_image_name, official_latent_name

    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, resolution, dtype=np.float32)
    labels_img, labels_lat = [], []
    for i in range(count):
        image = (base[None, :, None] * rng.random(3) + base[:, None, None] * rng.random(3)) / 2
        image = np.clip(image + rng.normal(0, 8, (resolution, resolution, 3)), 0, 255).astype(np.uint8)
        name = official_image_name(i)
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / name, compress_level=1)
        latent = official_latent_name(i)
        (root / "vae-sd" / latent).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / "vae-sd" / latent, rng.normal(size=(8, resolution // 8, resolution // 8)).astype(np.float32))
        labels_img.append([name, i % 1000])
        labels_lat.append([latent, i % 1000])
    (root / "images" / "dataset.json").write_text(json.dumps({"labels": labels_img}))
    (root / "vae-sd" / "dataset.json").write_text(json.dumps({"labels": labels_lat}))


def loader_throughput(dataset, batch: int, workers: int, seconds: float = 20.0) -> float:
    """Samples/s through a shuffled DataLoader (page cache dropped is not possible here: warm cache)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=False)
    count, started = 0, None
    for i, item in enumerate(loader):
        if i == 2:
            started, count = time.perf_counter(), 0
        count += len(item["y"])
        if started and time.perf_counter() - started > seconds:
            break
    return count / (time.perf_counter() - started)


def bench_data(count: int = 10_000, workers: int = 2, batch: int = 64, root: str | None = None, **_) -> dict:
    from repa.components.dataset import FolderParams, PackedParams
    from repa.components.dataset.crop import center_crop_arr
    from repa.components.dataset.folder import FolderDataset
    from repa.components.dataset.packed import PackedDataset
    from repa.engine.prep.preprocess import pack

    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        synthetic_official(tmp / "official", count)
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        pack(tmp / "official", tmp / "packed", 256, shard_size=4096, workers=workers, progress=False)
        pack_s = time.perf_counter() - started
        official = FolderDataset(FolderParams(path=str(tmp / "official"), resolution=256))
        packed = PackedDataset(PackedParams(path=str(tmp / "packed"), resolution=256, verify="quick"))
        official_rate = loader_throughput(official, batch, workers)
        packed_rate = loader_throughput(packed, batch, workers)
        disk = {name: sum(f.stat().st_size for f in (tmp / name).rglob("*") if f.is_file()) / 2**30
                for name in ("official", "packed")}
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)) for _ in range(50)]
    started = time.perf_counter()
    for photo in photos:
        center_crop_arr(photo, 256)
    crop_rate = len(photos) / (time.perf_counter() - started)
    return {"samples": count, "workers": workers, "batch": batch, "cpu_count": os.cpu_count(),
            "official_samples_per_s": official_rate, "packed_samples_per_s": packed_rate,
            "packed_over_official": packed_rate / official_rate, "official_gib": disk["official"],
            "packed_gib": disk["packed"], "write_synthetic_s": write_s, "pack_s": pack_s,
            "center_crop_images_per_s_one_process (500x375 -> 256)": crop_rate}


def packed_throughput(count: int, workers: int | None = None, batch: int = 256, seconds: float = 20.0) -> dict:
    """The packed format's loader samples/s (every core a worker), on `count` synthetic samples."""
    from repa.components.dataset import PackedParams
    from repa.components.dataset.packed import PackedDataset
    from repa.engine.prep.preprocess import pack

    workers = workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_official(tmp / "official", count)
        pack(tmp / "official", tmp / "packed", 256, shard_size=4096, workers=workers, progress=False)
        packed = PackedDataset(PackedParams(path=str(tmp / "packed"), resolution=256, verify="quick"))
        rate = loader_throughput(packed, min(batch, count // 4), workers, seconds)
    return {"samples_per_s": rate, "workers": workers}
