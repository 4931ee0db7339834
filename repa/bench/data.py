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


COCO_2014 = {"images": 82_783 + 40_504, "captions": 414_113 + 202_654}  # train + val, captions_*2014.json


def synthetic_photos(folder: Path, count: int, size=(640, 480), seed: int = 0) -> list[Path]:
    """COCO-sized JPEGs (640x480, smooth colours plus noise, so they compress roughly as photos do)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = np.linspace(0, 255, size[0], dtype=np.float32), np.linspace(0, 255, size[1], dtype=np.float32)
    paths = []
    for i in range(count):
        image = (xs[None, :, None] * rng.random(3) + ys[:, None, None] * rng.random(3)) / 2
        image = np.clip(image + rng.normal(0, 8, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:012d}.jpg")
        Image.fromarray(image).save(paths[-1], quality=90)
    return paths


def sd_vae_random():
    """stabilityai/sd-vae-ft-mse's architecture (its config.json), randomly initialised."""
    from diffusers.models import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                         block_out_channels=(128, 256, 512, 512), act_fn="silu", sample_size=256,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def rate(work, units: int, repeats: int) -> float:
    """Units per second of `work()` (one warm-up call first)."""
    work()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return units * repeats / (time.perf_counter() - started)


def bench_coco(device: str | None = None, images: int = 256, batch: int | None = None, root: str | None = None,
               **_) -> dict:
    """`repa preprocess coco`'s three stages at full size on synthetic data and random weights: the U-ViT crop
    of 640x480 JPEGs (every core a worker), SD-VAE moments at 256 px, CLIP ViT-L/14 text contexts; and
    what COCO 2014 (train + val) would take at those rates on this machine."""
    from repa.components.autoencoder import SDVAEParams
    from repa.components.autoencoder.sdvae import SDVAE
    from repa.components.text_encoder.clip import build_text_tower
    from repa.engine.prep.coco import CocoImage, SplitSummary, crop_images

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch = batch or (64 if device.type == "cuda" else 16)
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        photos = synthetic_photos(Path(tmp) / "src", images)
        out = Path(tmp) / "out"
        out.mkdir()
        started = time.perf_counter()
        crop_images(out, [CocoImage(p, []) for p in photos], list(range(images)), 256, workers, SplitSummary(), False)
        crop_rate = images / (time.perf_counter() - started)
    vae = SDVAE(SDVAEParams(), vae=sd_vae_random()).to(device)
    pixels = torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    moments_rate = rate(lambda: (vae.encode(pixels), sync()), batch, 3)
    tower = build_text_tower("ViT-L-14").eval().requires_grad_(False).to(device)
    ids = torch.randint(1, 49406, (batch * 4, 77), device=device)

    def contexts():
        with torch.no_grad():
            tower(ids)
        sync()

    caption_rate = rate(contexts, len(ids), 3)
    hours = (COCO_2014["images"] / crop_rate + COCO_2014["images"] / moments_rate
             + COCO_2014["captions"] / caption_rate) / 3600
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{os.cpu_count()}",
            "crop_images_per_s (640x480 JPEG -> 256, all cores)": crop_rate, "crop_workers": workers,
            f"moments_images_per_s (SD-VAE, 256 px, batch {batch}, fp32)": moments_rate,
            f"contexts_captions_per_s (CLIP ViT-L/14 text, batch {batch * 4}, fp32)": caption_rate,
            "coco2014_hours_at_these_rates (one process)": hours, "coco2014": COCO_2014}
