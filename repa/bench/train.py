"""Training-step throughput and peak memory: SiT + REPA with a DINOv2-B-architecture encoder
(random weights), AdamW, EMA; encoder features computed online or read from a cache."""

from __future__ import annotations

import torch

from repa.bench.timing import autocast, default_device, device_name, peak_gib, reset_peak, timed
from repa.precision import autocast_dtype


class _Given:
    """Tokens computed once (a feature cache on the device): the step reads them instead of encoding."""

    def __init__(self, tokens):
        self.tokens = tokens

    def preprocess(self, images):
        return images

    def __call__(self, x):
        return self.tokens


def _step_fn(model, ema, optimizer, objective, slots, encoder, images, x0, y, precision, device):
    """The trainer's step (repa.engine.train.trainer), with its own step context and objective: nothing
    read from the device, fused AdamW skipping a non-finite step on the device, the EMA likewise."""
    from repa.engine.train.context import StepInputs, TrainingContext
    from repa.engine.train.trainer import apply_step, skips_on_device
    from repa.testing import _GivenLatents

    batch = len(x0)
    device_side = skips_on_device(optimizer)
    encoders = {need.encoder.identity(): encoder for slot in slots for need in slot.term.needs().encoders}
    latents, drop = _GivenLatents(), torch.zeros(batch, dtype=torch.bool, device=device)

    def step():
        noise, t = torch.randn_like(x0), torch.rand(batch, device=device)
        inputs = StepInputs(0, images, y, drop, t, noise, noise, [], x0, {}, (0, batch), batch, 0)
        ctx = TrainingContext(inputs, objective, latents, encoders, ema, objective.computed(0))
        ctx.prepare()
        with autocast(device, precision):
            parts = model(lambda network: objective(network, ctx))
        parts.total.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ok = torch.isfinite(parts.total.detach()) & torch.isfinite(norm)
        apply_step(optimizer, ema, model, 0.9999, ok, device_side)

    return step


def step_flops(step) -> int:
    """FLOPs of one call of `step` (forward, backward, encoder), counted from the model's operations
    by torch.utils.flop_counter (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def bench_train(device: str | None = None, size: str | None = None, batch: int | None = None,
                precisions=None, compile_options=(False,), **_) -> dict:
    """Each configuration in a fresh process (CPU peak memory = that process's peak resident set)."""
    from repa.bench.timing import isolated

    device = device or default_device()
    gpu = device != "cpu"
    size = size or ("XL" if gpu else "B")
    batch = batch or (32 if gpu else 8)
    results = {"device": device_name(device), "model": f"SiT-{size}/2 + REPA (dinov2-vit-b architecture)",
               "batch": batch}
    for compiled in ((False, True) if gpu else compile_options):
        for precision in precisions or (("bf16",) if gpu else ("no", "bf16")):
            for features in ("online", "cached"):
                key = f"{precision}{' compiled' if compiled else ''} {features} features"
                results[key] = isolated("repa.bench.train:train_case", device=device, size=size, batch=batch,
                                        precision=precision, compiled=compiled, features=features)
    return results


def train_case(device: str, size: str, batch: int, precision: str, compiled: bool | str, features: str,
               count_flops: bool = False, repeat: int = 5) -> dict:
    from repa.bench.models import bench_config, sit_b2
    from repa.components.encoder.specs import SPECS
    from repa.components.encoder.vit import build_vit_encoder
    from repa.engine.build import build_objective_parts
    from repa.engine.train.ema import make_ema
    from repa.engine.train.objective import Objective

    encoder = build_vit_encoder(SPECS["dinov2-vit-b"], 256, None).to(device)  # architecture, random weights
    encoder.autocast_dtype = autocast_dtype(precision)
    images = torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8, device=device)
    x0 = torch.randn(batch, 4, 32, 32, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    torch.manual_seed(0)
    model, slots = sit_b2(device, False, size)
    model.train()
    objective = Objective(*build_objective_parts(bench_config(size)), slots)
    ema = make_ema(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    if features == "cached":
        with torch.no_grad():
            cached = encoder(encoder.preprocess(images))
        del encoder  # a cache means the encoder is not in memory during training
        encoder = _Given(cached)
    step = _step_fn(model, ema, optimizer, objective, slots, encoder, images, x0, y, precision, device)
    flops = step_flops(step) if count_flops else None  # eager: the compiled graph does the same arithmetic
    if compiled:
        from repa.engine.build import compile_network

        compile_network(model, compiled)
    reset_peak(device)
    timing = timed(step, device, warmup=3 if compiled else 2, repeat=repeat)
    figures = {"step_ms": 1000 * timing["median_s"], "images_per_s": batch / timing["median_s"],
               "peak_memory_gib": peak_gib(device)}
    if flops:
        figures["tflops_per_step"] = flops / 1e12
        figures["achieved_tflops"] = flops / timing["median_s"] / 1e12
    return figures
