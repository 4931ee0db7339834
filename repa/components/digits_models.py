"""Two small networks this project trains itself on the embedded digits dataset, so that
everything runs offline: a conv encoder whose patch tokens are a REPA alignment target
(encoder `digits-convnet`), and an independent CNN classifier (other seed, other
architecture) whose features score samples (metrics `digits-fd`, `digits-accuracy`).

Both are deterministic from their seed, trained on first use in well under a minute on two
CPU cores, and cached under the repa cache directory (REPA_CACHE, default ~/.cache/repa).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.console import status
from repa.storage import write_atomic, writing
from repa.weights import digits_model_path

log = logging.getLogger("repa")

TRAIN_RESOLUTION = 32


class DigitsConvEncoder(nn.Module):
    """Stride-4 conv net: uint8-normalised [B,3,R,R] -> patch tokens [B,(R/4)^2,128]; trained as a
    classifier through the mean token (99.7% held-out accuracy after 20 epochs)."""

    embed_dim, patch_size = 128, 4

    def __init__(self, width: int = 128):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def tokens(self, x):
        return self.norm(self.stem(x).flatten(2).transpose(1, 2))

    def forward(self, x):
        return self.head(self.tokens(x).mean(1))


class DigitsCNN(nn.Module):
    """A small CNN classifier; `features` (128-d, before the last layer) feed the Frechet distance."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def digits_split(split: str):
    from repa.components.dataset import DigitsParams
    from repa.components.dataset.digits import DigitsDataset

    return DigitsDataset(DigitsParams(resolution=TRAIN_RESOLUTION), split=split)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float in [-1, 1]."""
    return images.float() / 127.5 - 1


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to max_shift pixels (one per batch), zero padded."""
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    x = F.pad(x, [max_shift] * 4, value=-1.0)
    h, w = x.shape[-2:]
    return x[..., max_shift + dy : h - max_shift + dy, max_shift + dx : w - max_shift + dx]


@torch.enable_grad()
def train_classifier(model: nn.Module, seed: int, epochs: int, lr: float = 3e-3, batch: int = 128,
                     on_epoch=lambda: None) -> nn.Module:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = digits_split("train")
    x, y = normalise(data.images), data.labels
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(y) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(model(_shift(x[idx], generator)), y[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        on_epoch()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def heldout_accuracy(model: nn.Module) -> float:
    data = digits_split("heldout")
    return (model(normalise(data.images)).argmax(-1) == data.labels).float().mean().item()


def cached_model(name: str, build, seed: int, epochs: int) -> tuple[nn.Module, Path]:
    """Load <cache>/digits/<name>-seed<seed>.safetensors, training and saving it on first use."""
    from safetensors.torch import load_file, save_file

    path = digits_model_path(name, seed, epochs)
    with torch.random.fork_rng():  # the initial weights come from the seed; the caller's RNG is untouched
        torch.manual_seed(seed)
        model = build()
    if path.is_file():  # cached: read it, even from a read-only shared cache (no lock to take)
        model.load_state_dict(load_file(str(path)))
        return model.eval().requires_grad_(False), path
    with writing(path.parent):  # the cache ($REPA_CACHE) may be read-only or full
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w")
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent processes (DDP ranks, test workers) train it once
        if not path.is_file():
            log.info("repa: training the offline %s on the embedded digits (once; cached at %s)", name, path)
            with torch.random.fork_rng(), status(f"training {name}, epoch", total=epochs) as advance:
                train_classifier(model, seed, epochs, on_epoch=advance)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with writing(path, temporary=[tmp]):
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
                os.replace(tmp, path)
            write_atomic(path.with_suffix(".json"), json.dumps(
                {"seed": seed, "epochs": epochs, "heldout_accuracy": heldout_accuracy(model)}))
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False), path
