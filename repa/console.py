"""What a researcher watches while work runs. In a terminal: rich bars (training: step, loss,
alignment loss, a smoothed steps/s and the ETA it implies); with the console's log lines printed
above the bar. Elsewhere (CI, a pipe, --no-progress): plain lines every PLAIN_EVERY seconds."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

PLAIN_EVERY = 30.0  # seconds between plain progress lines
LIVE_READ_EVERY = 1.0  # seconds between reads of the latest losses for the live bar
log = logging.getLogger("repa")


UNWRAPPED = 1000  # columns of a console that is not a terminal: tables and lines at their full width


def output_console(**options) -> Console:
    """A console for tables and results: the terminal's width in a terminal (rich's detection, so COLUMNS
    too); written to a pipe or a file, its full width (never wrapped mid-word)."""
    console = Console(**options)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=UNWRAPPED, **options)
    return console


def interactive(enabled: bool = True) -> bool:
    return enabled and sys.stderr.isatty()


def shown(text: str) -> str:
    """A file name as it can be printed: bytes that are not UTF-8 (kept by the OS as surrogates) as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@contextlib.contextmanager
def console_logging(console: Console):
    """While a bar is live, the console's log lines go through its console (printed above the
    bar) instead of a stream handler writing under it."""
    root = logging.getLogger()
    streams = [h for h in root.handlers if type(h) is logging.StreamHandler
               and getattr(h, "stream", None) in (sys.stderr, sys.__stderr__)]
    if not streams:
        yield
        return
    through = _ConsoleHandler(console)
    through.setFormatter(streams[0].formatter)
    through.setLevel(streams[0].level)
    for log_filter in streams[0].filters:
        through.addFilter(log_filter)
    for handler in streams:
        root.removeHandler(handler)
    root.addHandler(through)
    try:
        yield
    finally:
        root.removeHandler(through)
        for handler in streams:
            root.addHandler(handler)


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)


class PlainBar:
    """progress_bar's stand-in without a terminal: a line every PLAIN_EVERY seconds and at the end."""

    def __init__(self, description: str):
        self.description, self.tasks = description, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for task in self.tasks.values():
            if exc[0] is None and task["visible"] and task["shown"] != task["completed"]:
                self._line(task)
        return False

    def add_task(self, description: str, total: int, completed: int = 0, visible: bool = True, **fields) -> int:
        self.tasks[len(self.tasks)] = {"total": total, "completed": completed, "visible": visible, "fields": fields,
                                       "started": time.perf_counter(), "first": completed, "last": 0.0, "shown": None}
        return len(self.tasks) - 1

    def advance(self, task: int, advance: int = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, advance: int = 0, completed: int | None = None, **fields) -> None:
        state = self.tasks[task]
        state["completed"] = completed if completed is not None else state["completed"] + advance
        state["fields"].update(fields)
        now = time.perf_counter()
        if state["visible"] and now - state["last"] >= PLAIN_EVERY:
            self._line(state)

    def _line(self, state) -> None:
        done, total = state["completed"], state["total"]
        elapsed = time.perf_counter() - state["started"]
        rate = (done - state["first"]) / elapsed if elapsed > 0 else 0.0
        eta = f", eta {duration((total - done) / rate)}" if rate > 0 and done < total else ""
        extra = " ".join(str(v) for v in state["fields"].values() if v)
        print(f"{self.description}: {done}/{total}{' ' + extra if extra else ''}{eta}", file=sys.stderr, flush=True)
        state["last"], state["shown"] = time.perf_counter(), done


def progress_bar(description: str, enabled: bool = True):
    """Items done of a known total, with a `rate` field the caller updates: a rich bar in a
    terminal, plain periodic lines otherwise (add_task's `visible`: whether this process reports)."""
    if not interactive(enabled):
        return PlainBar(description)
    return Progress(TextColumn(description), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=sys.stderr))


@contextlib.contextmanager
def status(description: str, total: int | None = None, enabled: bool = True):
    """First-use work (training the offline encoder, loading an autoencoder): a transient bar in a
    terminal, a start and an end line otherwise. Yields `advance()`."""
    started = time.perf_counter()
    if not interactive(enabled):
        log.info("repa: %s ...", description)
        yield lambda n=1: None
        log.info("repa: %s: done in %s", description, duration(time.perf_counter() - started))
        return
    console = Console(file=sys.stderr)
    columns = [SpinnerColumn(), TextColumn(description)] + ([MofNCompleteColumn(), BarColumn()] if total else [])
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar, console_logging(console):
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
    log.info("repa: %s: done in %s", description, duration(time.perf_counter() - started))


class StepClock:
    """Seconds per training step: an exponential moving average of the steps' own time (sample
    grids and checkpoints excluded), bias-corrected so the first steps count fully."""

    def __init__(self, smoothing: float = 0.1):
        self.smoothing, self.average, self.weight = smoothing, 0.0, 0.0

    def add(self, seconds: float) -> None:
        self.average = (1 - self.smoothing) * self.average + self.smoothing * seconds
        self.weight = (1 - self.smoothing) * self.weight + self.smoothing

    @property
    def seconds_per_step(self) -> float | None:
        return self.average / self.weight if self.weight else None

    def rate(self) -> float | None:
        per_step = self.seconds_per_step
        return 1.0 / per_step if per_step else None

    def eta(self, steps_left: int) -> float | None:
        """steps left / the shown rate: the two never disagree."""
        per_step = self.seconds_per_step
        return steps_left * per_step if per_step is not None else None


class TrainingProgress:
    def __init__(self, total: int, start: int, enabled: bool = True, visible: bool = True):
        self.total, self.visible, self.clock = total, visible, StepClock()
        self.shown = {"loss": "-", "align": "-"}  # as of the last read
        self.live = visible and interactive(enabled)
        self.console = Console(file=sys.stderr)
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("align {task.fields[align]}"),
            TextColumn("{task.fields[rate]} steps/s"), TextColumn("eta {task.fields[eta]}"),
            console=self.console, disable=not self.live, refresh_per_second=4,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, loss="-", align="-", rate="-",
                                           eta="-")
        self._last_line = self._last_read = time.perf_counter()
        self._logging = console_logging(self.console) if self.live else contextlib.nullcontext()

    def __enter__(self):
        self.progress.__enter__()
        self._logging.__enter__()
        return self

    def __exit__(self, *exc):
        self._logging.__exit__(*exc)
        return self.progress.__exit__(*exc)

    def show(self, record: dict) -> None:
        """Losses to show: a log record's, or the latest step's (read from the device when shown)."""
        aligns = [v for k, v in record.items() if k.startswith("align_loss_")]
        if "loss" in record:
            self.shown["loss"] = f"{record['loss']:.4f}"
        self.shown["align"] = f"{sum(aligns) / len(aligns):.4f}" if aligns else "-"

    def update(self, step: int, step_seconds: float, latest=None) -> None:
        """After each step; `step_seconds`: the time of the step alone; `latest()`: that step's losses, called
        only when a line is printed (a read from the device: at most once a second in a terminal)."""
        if not self.visible:
            return
        self.clock.add(step_seconds)
        now = time.perf_counter()
        printing = now - self._last_line >= PLAIN_EVERY or step == self.total
        if latest is not None and (printing or (self.live and now - self._last_read >= LIVE_READ_EVERY)):
            self._last_read = now
            self.show(latest())
        rate, eta = self.clock.rate(), self.clock.eta(self.total - step)
        shown = {**self.shown, "rate": f"{rate:.2f}" if rate else "-", "eta": duration(eta) if eta is not None else "-"}
        if self.live:
            self.progress.update(self.task, completed=step, **shown)
        elif printing:
            self._last_line = now
            print(f"step {step}/{self.total}: loss {shown['loss']}, align {shown['align']}, {shown['rate']} steps/s, "
                  f"eta {shown['eta']}", file=sys.stderr, flush=True)
