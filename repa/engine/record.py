"""The run record every run writes, whatever its tracker: one JSON object per line in
<run>/metrics.jsonl (training scalars, evaluation results) and sample grids as PNG under
<run>/samples/. `repa evaluate` and `repa ablate` read it back."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from repa.interfaces import Tracker
from repa.storage import writing


def _jsonable(value: Any):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def run_dir_of(config) -> Path:
    """A run's folder: <experiment.output_dir>/<experiment.name>."""
    return Path(config.experiment.output_dir) / config.experiment.name


class RunRecord(Tracker):
    """One JSON object per line in <run>/metrics.jsonl; images as PNG under <run>/samples/."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **{k: _jsonable(v) for k, v in scalars.items()}}
        line = json.dumps(record) + "\n"
        with writing(self.path, len(line)), open(self.path, "a") as f:
            f.write(line)

    def rewind(self, step: int) -> None:
        """Drop the records of steps after `step` (a resumed run redoes them); a line cut by a kill
        is dropped too. Rewritten atomically: a kill during it keeps the old file."""
        if not self.path.is_file():
            return
        kept = [line for line in _lines(self.path, keepends=True) if _step_of(line) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with writing(self.path, sum(map(len, kept)), temporary=[tmp]):
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        for name, array in images.items():
            suffix = "" if name == "samples" else f"_{name}"
            self.write_image(f"{step:07d}{suffix}", array)

    def write_image(self, stem: str, array: np.ndarray) -> None:
        """samples/<stem>.png, written whole or not at all."""
        from PIL import Image

        path = self.run_dir / "samples" / f"{stem}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        with writing(path, array.nbytes, temporary=[tmp]):
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(array).save(tmp, format="png")
            os.replace(tmp, path)


def _parse(line: str) -> dict | None:
    """One metrics.jsonl line as a record; None for a line a kill cut short (or any other non-record)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _step_of(line: str) -> float:
    record = _parse(line)
    return record["step"] if record else math.inf


def read_records(run_dir: Path) -> list[dict]:
    """The complete records of <run_dir>/metrics.jsonl, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(_parse, _lines(path)) if r is not None]


def _lines(path: Path, keepends: bool = False) -> list[str]:
    """The file's lines; a line that is not UTF-8 (a damaged disk, an editor) reads as a record that does
    not parse, so it is dropped like a line cut by a kill instead of stopping resume and evaluate."""
    return path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=keepends)


