"""Checkpoints: written atomically, verified on resume, pruned to the last K.

    checkpoints/0050000/  model.safetensors  ema.safetensors  optimizer.pt  rng-<rank>.pt
                          state.json (step, counters, config hash)  manifest.json (sizes, digests)
                          phema.safetensors (post-hoc EMA profiles, where train.posthoc_ema tracks them)

A checkpoint is complete when its folder has its final name: files are written into
checkpoints/.tmp-<step>/ and the folder is renamed last.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from repa.errors import CheckpointError
from repa.storage import entry_problem
from repa.weights import file_digest, load_file

FILES = ("model.safetensors", "ema.safetensors", "optimizer.pt", "state.json")
PHEMA_FILE = "phema.safetensors"  # the post-hoc EMA profiles, where the run tracks them
# state.json "layout": 2 = the parameter order of repa.engine.network.AlignedNetwork (backbone,
# then projectors), which the optimizer state follows; checkpoints without it predate it.
LAYOUT = 2


@dataclass
class Saved:
    model: dict
    ema: dict
    optimizer: dict
    state: dict
    rng: dict | None


def checkpoint_name(step: int) -> str:
    return f"{step:07d}"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2]}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_tensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def begin(checkpoints: Path, step: int) -> Path:
    """The temporary folder a checkpoint is written into (main process)."""
    tmp = checkpoints / f".tmp-{checkpoint_name(step)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def parameter_fingerprint(model: torch.nn.Module) -> list[float]:
    """(sum, sum of squares) of all parameters in float64: equal on every rank when DDP keeps them in sync."""
    def full(x):  # an FSDP shard's sum is a distributed tensor: reduce it over the processes
        return x.full_tensor() if hasattr(x, "full_tensor") else x

    with torch.no_grad():
        total = sum(full(p.double().sum()) for p in model.parameters())
        squares = sum(full(p.double().square().sum()) for p in model.parameters())
    return [float(total), float(squares)]


def write_rank_state(tmp: Path, rank: int, model: torch.nn.Module, unlogged: list | None = None) -> None:
    """Each process's RNG states, a fingerprint of the weights it holds and its values of the steps
    since the last log line."""
    torch.save({**rng_state(), "parameters": parameter_fingerprint(model), "unlogged": unlogged or []},
               tmp / f"rng-{rank}.pt")


def write_main(tmp: Path, model_state: dict, ema_state: dict, optimizer_state: dict, state: dict,
               phema_state: dict | None = None) -> None:
    """The main process's files; `phema_state`: the post-hoc EMA profiles (train.posthoc_ema)."""
    if phema_state is not None:
        _save_tensors(phema_state, tmp / PHEMA_FILE)
    _save_tensors(model_state, tmp / "model.safetensors")
    _save_tensors(ema_state, tmp / "ema.safetensors")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))


def write_manifest(tmp: Path) -> None:
    manifest = {f.name: {"bytes": f.stat().st_size, "blake2b": file_digest(f)} for f in sorted(tmp.iterdir())}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))


def move_into_place(tmp: Path, final: Path) -> Path:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def commit(tmp: Path, checkpoints: Path, step: int, keep: int, keep_every: int | None = None) -> Path:
    """Record digests, rename into place, prune to the last `keep`; checkpoints at multiples of
    `keep_every` are never pruned (a paper's curve needs each of them)."""
    write_manifest(tmp)
    final = move_into_place(tmp, checkpoints / checkpoint_name(step))
    for old in complete_checkpoints(checkpoints)[:-keep]:
        if not (keep_every and int(old.name) % keep_every == 0):
            shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """The checkpoint folders, by step: folders named by ASCII digits alone (others are not checkpoints)."""
    if not checkpoints.is_dir():
        return []
    return sorted((p for p in checkpoints.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()),
                  key=lambda p: int(p.name))


def verify(folder: Path) -> None:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{folder}: no manifest.json (incomplete checkpoint)")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = {name: (int(entry["bytes"]), str(entry["blake2b"])) for name, entry in manifest.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({type(exc).__name__}: {exc})") from None
    for name in FILES:
        if name not in expected:
            raise CheckpointError(f"{folder}: {name} is missing from the checkpoint")
    for name in expected:  # before anything is opened: a manifest names files in its folder only
        problem = entry_problem(folder, name)
        if problem:
            raise CheckpointError(f"{manifest_path}: {problem}; refused (a checkpoint manifest names its own files)")
    for name, (size, digest) in expected.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            raise CheckpointError(f"{path}: missing or truncated ({size} bytes expected)")
        if file_digest(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (corrupt)")


def state_bytes(states) -> int:
    """Bytes of every tensor in nested dicts/lists/tuples: what a checkpoint of them needs on disk."""
    if isinstance(states, torch.Tensor):
        return states.numel() * states.element_size()
    if isinstance(states, dict):
        return sum(state_bytes(v) for v in states.values())
    if isinstance(states, (list, tuple)):
        return sum(state_bytes(v) for v in states)
    return 0


def read_state(path: Path) -> dict:
    """state.json: a manifest can match a file that was written wrong; it must still be a step record."""
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state["step"], bool):
        raise CheckpointError(f"{path}: holds no integer \"step\" (not a repa checkpoint state)")
    return state


def read(folder: Path, rank: int) -> Saved:
    verify(folder)
    rng_path = folder / f"rng-{rank}.pt"
    return Saved(
        model=load_file(folder / "model.safetensors"),
        ema=load_file(folder / "ema.safetensors"),
        optimizer=load_file(folder / "optimizer.pt"),
        state=read_state(folder / "state.json"),
        rng=load_file(rng_path) if rng_path.is_file() else None,
    )


def latest_usable(checkpoints: Path, rank: int, warn) -> tuple[Path, Saved] | None:
    """The newest checkpoint that verifies; corrupt ones are reported and skipped."""
    for folder in reversed(complete_checkpoints(checkpoints)):
        try:
            return folder, read(folder, rank)
        except CheckpointError as exc:
            warn(f"checkpoint {folder.name} is unusable ({exc}); trying the previous one")
    return None
