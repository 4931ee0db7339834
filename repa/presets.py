"""Built-in experiment presets: component choices the commands start from when no experiment
file says otherwise (the engine itself names no component)."""

from __future__ import annotations

# The paper's evaluation setting (REPA Table 4): SDE Euler-Maruyama, 250 steps, CFG 1.8 on
# t in [0, 0.7], decoded with sd-vae ft-ema.
PAPER_PRESET = ["sample.sampler=euler-maruyama", "sample.steps=250", "sample.cfg_scale=1.8",
                "sample.guidance_interval=[0.0, 0.7]", 'autoencoder={ kind = "sd-vae", variant = "ft-ema" }']

# `repa sample` without an experiment file: the released SiT-XL/2 + REPA model.
RELEASED_EXPERIMENT = {
    "experiment": {"name": "released-sit-xl-2"},
    "data": {"kind": "folder", "path": "", "resolution": 256},
    "backbone": "SiT-XL/2",
    "alignment": [{"encoder": "dinov2-vit-b", "depth": 8}],
    "autoencoder": {"kind": "sd-vae", "variant": "ft-ema"},
}

# `repa evaluate SAMPLES.npz --metrics ...` without an experiment file: only [eval] is used.
METRICS_ONLY_EXPERIMENT = {"data": {"kind": "digits"}, "backbone": "SiT-S/2", "autoencoder": "identity"}
