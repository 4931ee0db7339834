"""Mixed precision, named as in the experiment file: one map from names to autocast dtypes."""

from __future__ import annotations

import torch

# train.mixed_precision says "no", sample.precision says "fp32": both mean full precision.
AUTOCAST_DTYPES = {"no": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name; None for full precision."""
    return AUTOCAST_DTYPES[precision]


def on_cpu(device: str) -> bool:
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def effective_precision(precision: str, device: str) -> str:
    """fp16 autocast needs a GPU: a CPU runs bf16 instead."""
    return "bf16" if on_cpu(device) and precision == "fp16" else precision


def autocast_to(device_type: str, dtype: torch.dtype | None):
    """torch.autocast to `dtype`, disabled for None (full precision)."""
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def autocast(device_type: str, precision: str):
    """torch.autocast for a precision name."""
    return autocast_to(device_type, autocast_dtype(precision))


def set_tf32(allow: bool, device_type: str) -> None:
    """TF32 for float32 matmuls and convolutions on a GPU (train.allow_tf32, sample.allow_tf32; the
    official train.py and generate.py turn it on). A CPU has no TF32: nothing to set."""
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
