"""Work functions for repa.engine.prep.preprocess.map_in_processes whose process dies, as one the
out-of-memory killer picks does (imported by the spawned workers: it lives in a module, not a test)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crop_or_die(job):
    """preprocess's crop_one, except that a source named *killer* kills its worker every time."""
    from repa.engine.prep.preprocess import WORKER_DIED, crop_one  # noqa: F401 (the real one)

    if "killer" in Path(job[1]).name:
        die()
    return crop_one(job)


def square_or_die(job):
    """(index, marker folder): index 3 always kills its worker; index 6 only the first time (a marker
    file remembers it), as a worker killed once for memory another process took."""
    index, markers = job
    if index == 3:
        die()
    if index == 6 and not (Path(markers) / "6").exists():
        (Path(markers) / "6").touch()
        die()
    return index, index * index
