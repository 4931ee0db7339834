"""Writing to disk when the disk says no: a full disk, a quota, a permission or a read-only
mount becomes one `StorageError` line naming the path (and, where known, the bytes needed);
the temporary files of the failed write are removed and earlier outputs are left as they were."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from repa.errors import RepaError

# errno -> (what happened, what to do)
_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free some space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
    errno.EFBIG: ("file too large for this file system or limit", "write elsewhere or raise the limit"),
    errno.EACCES: ("permission denied", "make it writable or write elsewhere"),
    errno.EPERM: ("operation not permitted", "make it writable or write elsewhere"),
    errno.EROFS: ("read-only file system", "write elsewhere"),
}
_OS_ERROR = re.compile(r"os error (\d+)")  # how safetensors' Rust writer reports errno


class StorageError(RepaError):
    """A write failed for a reason outside the program (space, permission); nothing partial is left."""


def write_errno(exc: BaseException) -> int | None:
    """The errno of a failed write we explain, from an OSError or a safetensors error; else None."""
    if isinstance(exc, OSError):
        number = exc.errno
    elif type(exc).__name__ == "SafetensorError":
        match = _OS_ERROR.search(str(exc))
        number = int(match.group(1)) if match else None
    else:
        return None
    return number if number in _FAULTS else None


def _torch_write_failure(exc: BaseException, path: Path, needed: int | None) -> int | None:
    """torch.save reports a failed write without errno ("PytorchStreamWriter failed writing file
    ...: file write failed"); on a file system with less room than the write needs, it was ENOSPC."""
    if not (isinstance(exc, RuntimeError) and "file write failed" in str(exc)):
        return None
    free = free_bytes(path)
    return errno.ENOSPC if free is not None and free < max(needed or 0, 1 << 20) else None


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} bytes"


def free_bytes(path: Path) -> int | None:
    """Free space on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def describe(path: Path, number: int, needed: int | None = None, action: str = "write") -> str:
    what, todo = _FAULTS[number]
    line = f"{path}: cannot {action}: {what}"
    if number in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path)
        amounts = [f"{human_bytes(needed)} needed" if needed else "", f"{human_bytes(free)} free" if free is not None else ""]
        shown = ", ".join(a for a in amounts if a)
        line += f" ({shown})" if shown else ""
    return f"{line}; {todo}"


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path = Path(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def writing(path: Path, needed: int | None = None, temporary: Iterable[Path] = ()) -> Iterator[None]:
    """Run a write into `path`; on a disk fault remove `temporary` and raise one StorageError line."""
    try:
        yield
    except Exception as exc:
        number = write_errno(exc) or _torch_write_failure(exc, path, needed)
        if number is None:
            raise
        _remove(temporary)
        raise StorageError(describe(getattr(exc, "filename", None) or path, number, needed)) from None


def require_space(path: Path, needed: int) -> None:
    """Refuse before writing `needed` bytes under `path` when the file system plainly lacks them."""
    free = free_bytes(path)
    if free is not None and needed > free:
        raise StorageError(describe(path, errno.ENOSPC, needed))


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a whole file under a temporary name, then rename: a reader sees the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    with writing(path, len(payload), temporary=[tmp]):
        tmp.write_bytes(payload)
        os.replace(tmp, path)


def save_figure(figure, path: Path, dpi: int = 120) -> Path:
    """A matplotlib figure as a PNG at `path`, written whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    with writing(path, temporary=[tmp]):
        figure.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    return path


def entry_problem(folder: Path, name) -> str | None:
    """Why a manifest entry may not be opened: not a plain relative name inside `folder` (absolute, with
    `..`, or a link out of it); None when it stays inside. Checked before anything is opened."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not isinstance(name, str) or not name or "\x00" in name:
        return f"entry {name!r} is not a file name"
    pure = PurePosixPath(name)
    if pure.is_absolute() or PureWindowsPath(name).is_absolute() or ".." in pure.parts or "\\" in name:
        return f"entry {name!r} names a path outside its folder (absolute or with '..')"
    target = (Path(folder) / pure).resolve()
    if not target.is_relative_to(Path(folder).resolve()):
        return f"entry {name!r} leads outside its folder (a link to {target})"
    return None
