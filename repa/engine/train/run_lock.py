"""One process per run folder: <run>/.lock, held with an OS lock for the life of the run.

The kernel drops the lock when its process ends, however it ends (kill -9 included), so a stale
.lock file never blocks a resume; the file only says who held it last. POSIX record locks
(lockf), not flock: forked DataLoader workers do not inherit them, so a worker outliving a
killed run for a few seconds does not hold the folder. (A process drops its record lock when it
closes any descriptor of the file: only this class opens it.)"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from repa.errors import RepaError
from repa.storage import writing

LOCK_FILE = ".lock"


class RunFolderBusy(RepaError):
    """Another process is training in this run folder."""


class RunLock:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def check_free(self) -> None:
        """Refuse early (before building anything) when a live process holds the folder; writes nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return  # no lock file (or unreadable: acquire() will say)
        try:  # shared: the processes of one launch check at once without refusing each other
            self._try_lock(fd, fcntl.LOCK_SH)
            fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def acquire(self) -> None:
        with writing(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._try_lock(fd)
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            with writing(self.path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(holder).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _try_lock(self, fd: int, mode: int = fcntl.LOCK_EX) -> None:
        try:
            fcntl.lockf(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):  # what lockf says when another process holds it
                raise
            raise RunFolderBusy(f"{self.run_dir}: in use by {self._holder()}; wait for it to finish or stop it, "
                                f"or choose another experiment.name") from None

    def _holder(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
            return f"repa run PID {holder['pid']} on {holder['host']} (since {holder['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (it has not written its PID yet)"
