"""Folder locks: one `repa run` per run folder (<run>/.lock), one `repa evaluate` per run and
none while it trains (<run>/.evaluate.lock, then <run>/.lock shared), one `repa sample` per
output folder (<out>/.lock).

The kernel drops a lock when its process ends, however it ends (kill -9 included), so a stale
lock file never blocks anything; the file only says who held it last. POSIX record locks
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
EVALUATE_LOCK_FILE = ".evaluate.lock"


class RunFolderBusy(RepaError):
    """Another process holds this folder."""


class FolderLock:
    """`command` (e.g. "repa sample") holds `folder` through `folder/name`; `advice` ends the line that
    refuses a second holder."""

    def __init__(self, folder: Path, command: str, advice: str, name: str = LOCK_FILE):
        self.folder, self.command, self.advice = Path(folder), command, advice
        self.path = self.folder / name
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

    def acquire(self, shared: bool = False) -> None:
        """Exclusive, or shared with other shared holders (never with an exclusive one). A shared holder
        writes its name too: callers make sure it is the only one that does (see evaluate_lock)."""
        with writing(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._try_lock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            holder = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}
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

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _try_lock(self, fd: int, mode: int) -> None:
        try:
            fcntl.lockf(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):  # what lockf says when another process holds it
                raise
            raise RunFolderBusy(f"{self.folder}: in use by {self._holder()}; {self.advice}") from None

    def _holder(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
            return (f"{holder.get('command', 'repa run')} PID {holder['pid']} on {holder['host']} "
                    f"(since {holder['since']})")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "another process (it has not written its PID yet)"


class RunLock(FolderLock):
    """Held by `repa run` for the life of the run."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir, "repa run", "wait for it to finish or stop it, or choose another experiment.name")


class EvaluateLock:
    """What `repa evaluate RUN` holds: the run's evaluate lock (one evaluate at a time: no duplicate
    records), then its run lock shared (no training meanwhile: a checkpoint being scored is never
    rotated away). The evaluate lock makes it the only shared holder that writes its name."""

    def __init__(self, run_dir: Path):
        self.alone = FolderLock(run_dir, "repa evaluate", "wait for it to finish", EVALUATE_LOCK_FILE)
        self.run = FolderLock(run_dir, "repa evaluate", "evaluate the run when it stops")

    def acquire(self) -> None:
        self.alone.acquire()
        try:
            self.run.acquire(shared=True)
        except BaseException:
            self.alone.release()
            raise

    def release(self) -> None:
        self.run.release()
        self.alone.release()
