"""Loading weights safely, and finding them on this machine (official REPA checkpoints: sihyun-yu/REPA @ 67f7145,
train.py).

Never unpickles arbitrary objects nor runs code from a file: `.pt`/`.pth` files go through
torch.load(weights_only=True) (with argparse.Namespace allowed, which official REPA training
checkpoints store under "args"), `.safetensors` through safetensors; a TorchScript archive is
refused, or (OpenAI's CLIP release) its tensors are read without running it. Every failure is one
line naming the file.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import socket
from pathlib import Path
from typing import Any, Iterable, Mapping

from repa.errors import CheckpointError


# ============================================================================
# Where weights live on this machine: repa's cache, torch hub's, Hugging Face's
# ============================================================================


def user_cache() -> Path:
    """$XDG_CACHE_HOME, else ~/.cache."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))


def cache_dir() -> Path:
    """$REPA_CACHE, else $XDG_CACHE_HOME/repa, else ~/.cache/repa; a file there is one line."""
    folder = Path(os.environ["REPA_CACHE"]) if os.environ.get("REPA_CACHE") else user_cache() / "repa"
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: the repa cache (REPA_CACHE, else $XDG_CACHE_HOME/repa) is a file, not a "
                              "folder; point REPA_CACHE to a folder")
    return folder


def torch_hub_checkpoints() -> Path:
    """Where torch.hub keeps downloaded checkpoints: $TORCH_HOME/hub/checkpoints."""
    return Path(os.environ.get("TORCH_HOME", user_cache() / "torch")) / "hub" / "checkpoints"


def hf_hub_cache() -> Path:
    """$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def hf_repo_dir(repo: str) -> Path:
    """The Hugging Face cache folder of a model repository."""
    return hf_hub_cache() / f"models--{repo.replace('/', '--')}"


def hf_cached_file(repo: str, filenames: tuple) -> Path | None:
    """A file of `repo` already in the Hugging Face cache (any snapshot), found without network."""
    snapshots = hf_repo_dir(repo) / "snapshots"
    for name in filenames:
        found = sorted(snapshots.glob(f"*/{name}"))
        if found:
            return found[-1]
    return None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


# ============================================================================
# Downloading
# ============================================================================


@functools.lru_cache(maxsize=None)
def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """A fast check before any download, so that a machine without network fails in seconds
    (the DNS lookup, which has no timeout of its own, runs in a thread we stop waiting for)."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Timeout

    def connect() -> bool:
        with socket.create_connection((host, port), timeout=timeout):
            return True

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout)
    except (OSError, Timeout):
        return False
    finally:
        pool.shutdown(wait=False)


def download(url: str, target: Path, timeout: float = 60.0) -> Path:
    """Stream `url` to `target` atomically, giving up when the connection stalls for `timeout` s."""
    import urllib.request

    from repa.storage import writing

    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    with writing(target, temporary=[tmp]):  # a full disk keeps no multi-GB .part behind
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        os.replace(tmp, target)
    return target


# ============================================================================
# Reading weight files
# ============================================================================


def load_file(path: str | Path, torchscript_tensors: bool = False) -> Any:
    """Read a .safetensors / .pt / .pth / .bin file as tensors and plain containers.

    Nothing that carries code is ever run: a pickle goes through torch.load(weights_only=True), and a
    TorchScript archive (which torch.jit.load would execute) is refused, unless `torchscript_tensors`
    asks for its tensors alone, read without running any of its code (OpenAI's CLIP release)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors

        try:
            return load_safetensors(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); re-download or re-save it") from None
    import pickle

    import torch

    if _is_torchscript(path):
        if not torchscript_tensors:
            raise CheckpointError(
                f"{path}: is a TorchScript archive, which carries code that loading it would run; repa never loads "
                "one as a checkpoint or weights file. Use a safetensors file or a torch.save'd state dict")
        return read_torchscript_tensors(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"{path}: holds pickled Python objects that safe loading refuses ({reason}); if you trust the file, "
            "convert it once: python -c \"import torch; c = torch.load('IN', weights_only=False); "
            "torch.save({k: c[k] for k in ('ema', 'model') if k in c} or c, 'OUT.pt')\""
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint ({reason})") from None


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a code/ folder (torch.save files have none)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


# ============================================================================
# The tensors of a TorchScript archive, without running its code
# ============================================================================
#
# A TorchScript archive's data.pkl pickles the module tree: objects of `__torch__.*` classes (whose
# code, and any `__setstate__`, lives in code/ and would run under torch.jit.load), each built from a
# dict of its attributes, tensors among them (storages in data/). This reader resolves no class but
# inert stand-ins for modules, torch's tensor rebuild and OrderedDict, so no code of the archive runs.


class _ScriptObject:
    """An inert stand-in for a TorchScript object: keeps the state it is built with, runs nothing."""

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):
        self.state = state


_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    import torch

    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()


def read_torchscript_tensors(path: Path) -> dict:
    """{dotted attribute name: tensor} of a TorchScript archive's module tree (its state dict's keys)."""
    import collections
    import pickle
    import zipfile

    import torch

    def refuse(what: str):
        raise CheckpointError(f"{path}: TorchScript archive whose data refers to {what}; only module attributes "
                              "and tensors are read (nothing of the archive is run)")

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        root = names[0].split("/")[0]
        order = archive.read(f"{root}/byteorder").strip() if f"{root}/byteorder" in names else b"little"
        if order != b"little":
            refuse(f"{order.decode(errors='replace')}-endian storages")

        class TensorsOnly(pickle.Unpickler):
            def find_class(self, module, name):
                if module.startswith("__torch__"):
                    return _ScriptObject
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return _rebuild_tensor
                if (module, name) == ("collections", "OrderedDict"):
                    return collections.OrderedDict
                if module == "torch" and name in _STORAGE_DTYPES:
                    return getattr(torch, _STORAGE_DTYPES[name])
                return refuse(f"{module}.{name}")

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                        and isinstance(pid[1], torch.dtype)):
                    return refuse(f"an unknown record {pid!r}")
                _, dtype, key, _, numel = pid
                data = bytearray(archive.read(f"{root}/data/{key}"))
                flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
                if flat.numel() < numel:
                    raise CheckpointError(f"{path}: storage {key} is truncated")
                return flat

        try:
            with archive.open(f"{root}/data.pkl") as stream:
                tree = TensorsOnly(stream).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: unreadable TorchScript archive ({type(exc).__name__}: "
                                  f"{str(exc).strip()[:200]})") from None
    tensors: dict = {}
    _collect_tensors(tree, "", tensors)
    return tensors


def _collect_tensors(node, prefix: str, out: dict) -> None:
    import torch

    state = node.state if isinstance(node, _ScriptObject) else None
    if not isinstance(state, dict):
        return
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect_tensors(value, f"{prefix}{name}.", out)


def unwrap_state_dict(obj: Any, keys: Iterable[str] = ("ema", "model", "state_dict")) -> dict:
    """A bare state dict from the usual containers: {"ema": ...}, {"model": ...}, {"state_dict": ...}."""
    if isinstance(obj, Mapping):
        for key in keys:
            if key in obj and isinstance(obj[key], Mapping):
                return dict(obj[key])
        if all(hasattr(v, "shape") for v in obj.values()):
            return dict(obj)
    raise CheckpointError(
        f"expected a state dict or a dict with one of {list(keys)}, got {type(obj).__name__} "
        f"with keys {list(obj)[:8] if isinstance(obj, Mapping) else '-'}"
    )


def strip_prefix(state: Mapping[str, Any], prefixes: Iterable[str] = ("module.", "_orig_mod.")) -> dict:
    """Remove DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def load_state_strict(model, state: Mapping[str, Any], source: str) -> None:
    """load_state_dict(strict=True), with one line naming the file, the key and both shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if mismatched:
        k = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise CheckpointError(
            f"{source}: {k}: shape {list(state[k].shape)} in the file, {list(own[k].shape)} in the model{more}; "
            "the checkpoint was trained with another architecture (size, patch, resolution, projector dims)"
        )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source}: does not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


# The code that defines the digits networks, their data and their training: a cached network
# is reused only while these files are unchanged (the file name carries their digest).
DIGITS_RECIPE = ("components/digits_models.py", "components/dataset/digits.py")


def digits_recipe_digest() -> str:
    digest = hashlib.blake2b(digest_size=4)
    for name in DIGITS_RECIPE:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()


def digits_model_path(name: str, seed: int, epochs: int) -> Path:
    """Where a network trained by repa on the embedded digits is cached."""
    return cache_dir() / "digits" / f"{name}-seed{seed}-e{epochs}-{digits_recipe_digest()}.safetensors"


def file_digest(path: str | Path, quick: bool = False, quick_bytes: int = 1 << 20) -> str:
    """blake2b of a file, or (quick) of its size, first and last MiB: catches truncation cheaply."""
    path = Path(path)
    digest = hashlib.blake2b(digest_size=16)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if quick:
            digest.update(str(size).encode())
            digest.update(f.read(quick_bytes))
            f.seek(max(0, size - quick_bytes))
            digest.update(f.read(quick_bytes))
        else:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()
