"""The progress bars a researcher watches: training (step, loss, alignment loss, steps/s, ETA) and
item counts (preprocessing, sampling)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(description: str) -> Progress:
    """Items done of a known total, with a `rate` field the caller updates."""
    return Progress(TextColumn(description), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), TimeRemainingColumn())


class TrainingProgress:
    def __init__(self, total: int, start: int, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("align {task.fields[align]}"),
            TextColumn("{task.fields[rate]} steps/s"), TimeRemainingColumn(),
            console=Console(file=sys.stderr), disable=not enabled, refresh_per_second=2,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, loss="-", align="-", rate="-")
        self._last, self._last_step = time.perf_counter(), start

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, step: int, values: dict, window) -> None:
        if not self.enabled:
            return
        aligns = [v for k, v in values.items() if k.startswith("align_loss_")]
        now = time.perf_counter()
        rate = (step - self._last_step) / (now - self._last) if now > self._last else 0.0
        self._last, self._last_step = now, step
        self.progress.update(
            self.task, completed=step, loss=f"{values['loss']:.4f}",
            align=f"{sum(aligns) / len(aligns):.4f}" if aligns else "-", rate=f"{rate:.2f}",
        )
