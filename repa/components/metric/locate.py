"""Where the FID Inception weights are looked for (no heavy imports)."""

from __future__ import annotations

from pathlib import Path

from repa.weights import torch_hub_checkpoints

PYTORCH_FID = "pt_inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY = "weights-inception-2015-12-05-6726825d.pth"
URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PYTORCH_FID}"


def inception_candidates(weights: str | None) -> list[Path]:
    if weights:
        return [Path(weights).expanduser()]
    checkpoints = torch_hub_checkpoints()
    return [checkpoints / PYTORCH_FID, checkpoints / TORCH_FIDELITY]


def inception_present(weights: str | None) -> Path | None:
    return next((p for p in inception_candidates(weights) if p.is_file()), None)


def inception_missing(weights: str | None) -> str:
    places = "; ".join(str(p) for p in inception_candidates(weights))
    return (f"FID Inception weights not found; looked in: {places}. Download {URL} (the TensorFlow FID graph "
            f"ported by pytorch-fid) and save it as {inception_candidates(None)[0]}, or set weights = \"...\" "
            "in the metric's table")
