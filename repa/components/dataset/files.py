"""Reading the files of a dataset, each failure one DataError line naming the file (the official
layout: sihyun-yu/REPA @ 67f7145, dataset.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from repa.errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".jfif"}


def list_files(root: Path, extensions: set[str]) -> list[str]:
    """Relative paths (forward slashes) of files with these extensions, sorted as strings (official)."""
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            if os.path.splitext(name)[1].lower() in extensions:
                found.append(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
    return sorted(found)


def read_labels(json_path: Path) -> dict[str, int]:
    """dataset.json {"labels": [[relative_name, class_index], ...]} -> {name: label}."""
    if not json_path.is_file():
        raise DataError(f"{json_path}: missing; every dataset folder needs its dataset.json "
                        "(create it with `repa preprocess images` / `repa preprocess latents`)")
    try:
        labels = json.loads(json_path.read_text())["labels"]
        return {str(name): int(label) for name, label in labels}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{json_path}: not a dataset.json with a 'labels' list of [name, class] pairs ({exc})") from None


def read_image(path: Path, resolution: int | None = None) -> np.ndarray:
    """uint8 [3, H, W] RGB; with `resolution`, every image is checked (not only the first)."""
    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for damaged files
        raise DataError(f"{path}: unreadable or corrupt image ({exc}); re-run `repa preprocess images`") from None
    if resolution is not None and array.shape[:2] != (resolution, resolution):
        raise _wrong_size(path, (array.shape[1], array.shape[0]), resolution)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _wrong_size(path: Path, size: tuple[int, int], resolution: int) -> DataError:
    return DataError(
        f"{path}: images are {size[0]}x{size[1]} but the experiment's data.resolution is {resolution}; "
        f"set data.resolution = {size[0]} or preprocess the dataset at {resolution}"
    )


def read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable or corrupt .npy ({exc}); re-run `repa preprocess latents`") from None


def check_resolution(path: Path, resolution: int) -> None:
    try:
        with Image.open(path) as image:
            size = image.size
    except Exception as exc:
        raise DataError(f"{path}: unreadable or corrupt image ({exc})") from None
    if size != (resolution, resolution):
        raise _wrong_size(path, size, resolution)
