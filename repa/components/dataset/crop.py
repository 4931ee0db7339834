"""Center crops: ADM's (guided-diffusion `center_crop_arr`), used by REPA's ImageNet preprocessing
(sihyun-yu/REPA @ 67f7145, preprocessing/dataset_tools.py), and U-ViT's, which the official
text-to-image data went through (baofff/U-ViT, datasets.py `center_crop`)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """Halve with BOX while the short side >= 2*size, BICUBIC-resize the short side to size,
    then crop the center. Returns uint8 [size, size, C]."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def uvit_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """The centred square of the short side, then one Lanczos resize to size x size (smaller images
    are enlarged). Returns uint8 [size, size, C]."""
    arr = np.asarray(image)
    side = min(arr.shape[:2])
    top, left = (arr.shape[0] - side) // 2, (arr.shape[1] - side) // 2
    square = Image.fromarray(np.ascontiguousarray(arr[top : top + side, left : left + side]))
    return np.array(square.resize((size, size), Image.Resampling.LANCZOS))


CROPS = {"adm": center_crop_arr, "uvit": uvit_center_crop}


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # 16/32-bit integer and float greyscale


def to_rgb(image: Image.Image) -> Image.Image:
    """Greyscale, palette, CMYK and alpha images -> RGB as the official dataset tool's
    `convert("RGB")` (alpha dropped, not composited); 16-bit and float greyscale are first
    rescaled to 8 bits, which `convert` would clip (a 16-bit image would turn white)."""
    if image.mode in WIDE_MODES:
        image = Image.fromarray(_to_8bit(np.asarray(image), image.mode), mode="L")
    return image.convert("RGB") if image.mode != "RGB" else image


def _to_8bit(values: np.ndarray, mode: str, rows_at_once: int = 256) -> np.ndarray:
    """In bands of rows: float64 copies of a whole large image would take 8 bytes a pixel, several times."""
    peak = values.max(initial=0)
    if mode.startswith("I;16") or (mode == "I" and peak > 255):
        rescale = lambda band: band / 257.0  # 0..65535 -> 0..255
    elif mode == "F" and peak <= 1.0:
        rescale = lambda band: band * 255.0  # float images in [0, 1]
    else:
        rescale = lambda band: band
    out = np.empty(values.shape, dtype=np.uint8)
    for top in range(0, values.shape[0], rows_at_once):
        band = rescale(values[top : top + rows_at_once].astype(np.float64))
        out[top : top + rows_at_once] = np.clip(np.rint(band), 0, 255)
    return out
