"""Datasets. Each item is a dict: image (uint8 [3,R,R]), y (int label), and optionally
moments (the autoencoder's stored mean/std) and features_<k> (cached encoder tokens). The
official layout is that of sihyun-yu/REPA @ 67f7145 (dataset.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from repa.interfaces import DatasetParams
from repa.plugins import hookimpl


class FolderParams(DatasetParams):
    path: str = Field(description="dataset root: images/ (+ vae-sd/) each with dataset.json")
    latents: str | None = Field("vae-sd", description="subfolder of stored latent moments; none = encode on the fly")
    num_classes: int = Field(1000, ge=1)

    def known_classes(self) -> int:
        return self.num_classes

    def location(self) -> str:
        return self.path


class PackedParams(DatasetParams):
    path: str = Field(description="folder written by `repa preprocess pack` (manifest.json + shards)")
    num_classes: int = Field(1000, ge=1)
    verify: Literal["quick", "full", "none"] = Field(
        "quick", description="checksums checked at start: quick (size + first/last MiB: truncation), full "
        "(every byte), or none"
    )

    def known_classes(self) -> int:
        return self.num_classes

    def location(self) -> str:
        return self.path


class ImagesParams(DatasetParams):
    path: str = Field(description="class subfolders of images (ImageNet style); ADM center crop on the fly")
    num_classes: int | None = Field(None, ge=1, description="default: the number of class folders")

    def known_classes(self) -> int | None:
        return self.num_classes

    def location(self) -> str:
        return self.path


class DigitsParams(DatasetParams):
    resolution: int = Field(32, ge=8, description="the 8x8 digits are upscaled (bilinear) to this size")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="fixed held-out split (seed 0)")

    @property
    def num_classes(self) -> int:
        return 10  # the ten digits

    def known_classes(self) -> int:
        return self.num_classes


class CocoParams(DatasetParams):
    path: str = Field(description="the official T2I layout (U-ViT's COCO preprocessing): train/ and val/ folders + empty_context.npy")
    resolution: int = Field(256, description="of the stored images (the latents are resolution / 8)")

    def known_classes(self) -> int:
        return 0  # captions, no classes

    def location(self) -> str:
        return self.path


def _build(module: str, cls: str):
    def factory(params, *, split: str = "train"):
        import importlib

        return getattr(importlib.import_module(f"repa.components.dataset.{module}"), cls)(params, split=split)

    return factory


@hookimpl
def repa_register_datasets(registry):
    registry.add("folder", _build("folder", "FolderDataset"), FolderParams,
                 "official REPA layout: images/ + vae-sd/ with dataset.json")
    registry.add("packed", _build("packed", "PackedDataset"), PackedParams,
                 "repa's packed format: memory-mapped shards + manifest (fast at ImageNet scale)")
    registry.add("images", _build("images", "ImageFolderDataset"), ImagesParams,
                 "raw class-folder images, center-cropped on the fly (small experiments)")
    registry.add("digits-captions", _build("captions", "DigitCaptionsDataset"), DigitsParams,
                 "the digits with eight captions each, measured on the image (\"a thick slanted seven\"); no download")
    registry.add("coco", _build("coco", "CocoDataset"), CocoParams,
                 "MS-COCO in the official T2I layout (U-ViT): <i>.png, <i>.npy moments, <i>_<k>.npy CLIP contexts")
    registry.add("digits", _build("digits", "DigitsDataset"), DigitsParams,
                 "scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); no download")
