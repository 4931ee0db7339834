"""Trackers besides the run record (repa.engine.record): none, or Weights & Biases."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from repa.interfaces import Tracker


class RecordOnly(Tracker):
    """No tracker besides the run record (metrics.jsonl and samples/), which the engine always writes."""

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        """The engine's run record already holds these scalars."""

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """The engine's run record already saves these images under samples/."""


class WandbTracker(Tracker):
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
