"""The jsonl tracker (always on) and Weights & Biases."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def _jsonable(value: Any):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlTracker:
    """One JSON object per line in <run>/metrics.jsonl; images as PNG under <run>/samples/."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **{k: _jsonable(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        from PIL import Image

        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        for name, array in images.items():
            suffix = "" if name == "samples" else f"_{name}"
            Image.fromarray(array).save(folder / f"{step:07d}{suffix}.png")

    def finish(self) -> None:
        pass


class WandbTracker:
    def __init__(self, params, run_dir: str | Path, config: dict):
        import wandb

        mode = params.mode or os.environ.get("WANDB_MODE") or "online"
        self.run = wandb.init(
            project=params.project, entity=params.entity, name=Path(run_dir).name, dir=str(run_dir),
            config=config, mode=mode, tags=params.tags, resume="allow",
        )

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        self.run.log(dict(scalars), step=step)

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        import wandb

        self.run.log({name: wandb.Image(array) for name, array in images.items()}, step=step)

    def finish(self) -> None:
        self.run.finish()
