"""The ADM center crop (guided-diffusion `center_crop_arr`), used by REPA's preprocessing."""

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


def to_rgb(image: Image.Image) -> Image.Image:
    """Greyscale, palette, CMYK and alpha images -> RGB (alpha composited on white)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image
