"""The run record every run writes, whatever its tracker: one JSON object per line in
<run>/metrics.jsonl (training scalars, evaluation results) and sample grids as PNG under
<run>/samples/. `repa evaluate` and `repa ablate` read it back."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from repa.interfaces import Tracker


def _jsonable(value: Any):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunRecord(Tracker):
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


