"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", Sec. 3 and App. C; NVlabs/edm2 training/phema.py and reconstruct_phema.py).

During training, power-function EMA profiles are tracked at a few relative widths (`std`, edm2:
0.05 and 0.10) and snapshotted every `train.posthoc_ema_every` steps into RUN/phema/<step>.safetensors
(never pruned). Afterwards any width at any snapshot step is a least-squares combination of the
snapshots (`repa ema`). Time is counted in optimizer steps: edm2 counts images, t = step x batch, and
both the per-step beta (1 - batch/nimg) and the solved coefficients are invariant to that scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from repa.config.schema import POWER_EMA_MAX_STD as MAX_STD
from repa.engine.train.ema import make_ema, update_ema
from repa.errors import CheckpointError, DataError
SNAPSHOTS = "phema"  # RUN/phema/<step>.safetensors


def exp_to_std(exp):
    """Relative standard deviation of the power-function profile t^exp (paper Eq. 123)."""
    exp = np.float64(exp)
    return np.sqrt((exp + 1) / (exp + 2) ** 2 / (exp + 3))


def std_to_exp(std):
    """The exponent of a relative width: the largest real root of the cubic of Eq. 126 (Algorithm 2)."""
    std = np.asarray(std, dtype=np.float64)
    roots = [np.roots([1, 7, 16 - s ** -2, 12 - s ** -2]).real.max() for s in std.ravel()]
    return np.float64(roots).reshape(std.shape)


def beta(std: float, step: int) -> float:
    """The decay of optimizer step `step` (1-based): (1 - 1/step)^(exp + 1) (Eq. 127 with t in steps);
    0 at the first step, so each profile starts as the network after it."""
    return float((1 - 1 / step) ** (std_to_exp(std) + 1))


def correlation(a_t, a_std, b_t, b_std):
    """Inner products of power-function profiles ending at a_t and b_t (Eq. 151, Algorithm 3)."""
    a_exp, b_exp = std_to_exp(a_std), std_to_exp(b_std)
    ratio = a_t / b_t
    t_exp = np.where(a_t < b_t, b_exp, -a_exp)
    return (a_exp + 1) * (b_exp + 1) * ratio ** t_exp / ((a_exp + b_exp + 1) * np.maximum(a_t, b_t))


def coefficients(in_t, in_std, out_t, out_std) -> np.ndarray:
    """[inputs, outputs] weights: the least-squares fit of each output profile by the snapshot profiles
    (Algorithm 3), columns normalised to sum to 1."""
    in_t, in_std = (np.float64(x).reshape(-1, 1) for x in np.broadcast_arrays(in_t, in_std))
    out_t, out_std = (np.float64(x).reshape(1, -1) for x in np.broadcast_arrays(out_t, out_std))
    gram = correlation(in_t, in_std, in_t.T, in_std.T)
    target = correlation(in_t, in_std, out_t, out_std)
    weights = np.linalg.solve(gram, target)
    return weights / weights.sum(axis=0)


def std_name(std: float) -> str:
    """A width as it names snapshot keys and files: 6 significant digits (the config refuses two widths
    that share a name)."""
    return f"{std:.6g}"


class PowerEMA:
    """The tracked profiles: one frozen copy of the network per width, updated after every optimizer step."""

    def __init__(self, network: torch.nn.Module, stds: list[float]):
        self.stds = list(stds)
        self.profiles = [make_ema(network) for _ in self.stds]

    def update(self, network: torch.nn.Module, step: int, apply: torch.Tensor | None, copied: frozenset) -> None:
        """After optimizer step `step` (1-based; a skipped step leaves every profile as it is)."""
        for std, profile in zip(self.stds, self.profiles):
            update_ema(profile, network, beta(std, step), apply, copied)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{std_name(std)}/{k}": v for std, p in zip(self.stds, self.profiles) for k, v in p.state_dict().items()}

    def load(self, tensors: dict, source: str) -> None:
        from repa.weights import load_state_strict

        stored = sorted({k.split("/", 1)[0] for k in tensors})
        if stored != sorted(std_name(s) for s in self.stds):
            raise CheckpointError(f"{source}: holds post-hoc EMA widths {stored}, the experiment tracks "
                                  f"{[std_name(s) for s in self.stds]}; resume with the widths it was trained with")
        for std, profile in zip(self.stds, self.profiles):
            prefix = std_name(std) + "/"
            load_state_strict(profile, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, source)

    def snapshot(self, run_dir: Path, step: int, layout) -> Path:
        """RUN/phema/<step>.safetensors: every profile in the checkpoint layout, with its step and widths."""
        tensors = {f"{std_name(std)}/{k}": v.detach().contiguous().cpu()
                   for std, p in zip(self.stds, self.profiles) for k, v in layout(p.state_dict()).items()}
        path = Path(run_dir) / SNAPSHOTS / f"{step:07d}.safetensors"
        save_tensors(tensors, path, {"step": str(step), "stds": json.dumps(self.stds)})
        return path


def save_tensors(tensors: dict, path: Path, metadata: dict) -> None:
    """A safetensors file written whole or not at all; a full disk is one line, no temporary left."""
    from safetensors.torch import save_file

    from repa.engine.checkpoint import state_bytes
    from repa.storage import require_space, writing

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    needed = state_bytes(tensors)
    with writing(path, needed, temporary=[tmp]):
        require_space(path.parent, needed)
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)


# ----------------------------------------------------------------------------------- reconstruction


def snapshots(run_dir: Path) -> dict[int, Path]:
    """{step: file} of a run's post-hoc EMA snapshots (steps > 0)."""
    folder = Path(run_dir) / SNAPSHOTS
    found = {int(p.stem): p for p in folder.glob("*.safetensors") if p.stem.isdigit()} if folder.is_dir() else {}
    if not found:
        raise DataError(f"{run_dir}: no post-hoc EMA snapshots in {folder}; train with train.posthoc_ema = "
                        "[0.05, 0.10] (and train.posthoc_ema_every) to track them")
    return {step: path for step, path in sorted(found.items()) if step > 0}


def _widths(path: Path) -> list[float]:
    """The widths a snapshot holds, from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return [float(s) for s in json.loads((f.metadata() or {})["stds"])]
    except Exception as exc:  # a truncated or foreign file: one line naming it
        raise DataError(f"{path}: not a readable post-hoc EMA snapshot ({type(exc).__name__}: {str(exc)[:100]}); "
                        "delete it (the others still reconstruct)") from None


def _profile(path: Path, std: float) -> dict[str, torch.Tensor]:
    """One width's state dict from a snapshot."""
    from safetensors import safe_open

    prefix = std_name(std) + "/"
    try:
        with safe_open(str(path), "pt") as f:
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except Exception as exc:
        raise DataError(f"{path}: not a readable post-hoc EMA snapshot ({type(exc).__name__}: {str(exc)[:100]}); "
                        "delete it (the others still reconstruct)") from None


def reconstruct(run_dir: Path, stds: list[float], step: int | None = None,
                inputs: list[float] | None = None) -> tuple[int, dict[float, dict]]:
    """(step, {std: state dict in the checkpoint layout}) at `step` (default: the last snapshot) from the
    snapshots up to it (of the tracked widths `inputs`; default: all). The coefficients come from the
    files' headers; the snapshots are then read one profile at a time into float64 sums. Tensors that are
    not floating point come from the last snapshot."""
    found = snapshots(run_dir)
    step = max(found) if step is None else step
    if step not in found:
        raise DataError(f"{run_dir}: no post-hoc EMA snapshot at step {step}; snapshots: {sorted(found)}")
    for std in stds:
        if not 0 < std < MAX_STD:
            raise DataError(f"--std {std}: a power-function EMA width is between 0 and {MAX_STD:.4f} (exclusive)")
    wanted = None if inputs is None else {std_name(w) for w in inputs}
    snaps = [(t, width, path) for t, path in found.items() if t <= step
             for width in _widths(path) if wanted is None or std_name(width) in wanted]
    if not snaps:
        raise DataError(f"{run_dir}: no snapshot of the widths {inputs} up to step {step}")
    weights = coefficients([t for t, _, _ in snaps], [w for _, w, _ in snaps], step, stds)
    sums, last = [{} for _ in stds], None
    for i, (_, width, path) in enumerate(snaps):
        last = _profile(path, width)
        for j, total in enumerate(sums):
            for key, value in last.items():
                if value.is_floating_point():
                    term = float(weights[i, j]) * value.double()
                    total[key] = total[key] + term if key in total else term
    out = {}
    for std, total in zip(stds, sums):
        out[std] = {key: total[key].to(value.dtype) if key in total else value.clone() for key, value in last.items()}
    return step, out


def reconstructed_file(run_dir: Path, step: int, std: float, inputs: list[float] | None = None) -> Path:
    made_from = "-from" + "-".join(std_name(w) for w in sorted(inputs)) if inputs else ""
    return Path(run_dir) / SNAPSHOTS / "reconstructed" / f"{step:07d}-std{std_name(std)}{made_from}.safetensors"


def write_reconstructions(run_dir: Path, stds: list[float], step: int | None = None,
                          inputs: list[float] | None = None) -> list[Path]:
    """`repa ema`: one EMA weights file per width, loadable by `repa sample --checkpoint` (official layout)."""
    step, states = reconstruct(run_dir, stds, step, inputs)
    written = []
    for std, state in states.items():
        path = reconstructed_file(run_dir, step, std, inputs)
        save_tensors({k: v.contiguous() for k, v in state.items()}, path, {"step": str(step), "std": str(std)})
        written.append(path)
    return written
