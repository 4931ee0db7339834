"""Benchmarks of the backbone, the samplers, `repa sample` and the offline encoder."""

from __future__ import annotations

import time

import torch

from repa.bench.timing import autocast, default_device, device_name, isolated, peak_gib, reset_peak, timed


def bench_config(size: str = "B"):
    """SiT-<size>/2 with REPA's alignment to dinov2-vit-b (one 768-d MLP projector, at block 8 for L/XL, 4
    otherwise) on 256 px ImageNet-shaped data, as an experiment; nothing of it is loaded."""
    from repa.config import Source, validate_experiment

    raw = {"data": {"kind": "folder", "path": "", "resolution": 256}, "backbone": f"SiT-{size}/2",
           "alignment": [{"encoder": "dinov2-vit-b", "depth": 8 if size in ("L", "XL") else 4}], "sample": {}}
    return validate_experiment(raw, Source("<bench>"))


def sit_b2(device, compile_model: bool = False, size: str = "B"):
    """The trained network (backbone + projector) and its terms, built as `repa run` builds them."""
    from repa.engine.build import build_training

    network, slots = build_training(bench_config(size), 1000)
    network = network.to(device)
    if compile_model:
        from repa.engine.build import compile_network

        compile_network(network, "model")
    return network, slots


def sit_case(device: str, batch: int, precision: str) -> dict:
    """One configuration, in its own process (see bench_sit)."""
    model, slots = sit_b2(device)
    model.train()
    projector, depth = slots[0].term.projector, slots[0].term.depth
    x = torch.randn(batch, 4, 32, 32, device=device)
    t, y = torch.rand(batch, device=device), torch.randint(0, 1000, (batch,), device=device)

    def step():
        with autocast(device, precision):
            output = model.backbone(x, t, y, hidden_depths=[depth])
            loss = output.out.float().square().mean() + projector(output.hidden[depth]).float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    reset_peak(device)
    timing = timed(step, device)
    return {"fwd_bwd_ms": 1000 * timing["median_s"], "images_per_s": batch / timing["median_s"],
            "peak_memory_gib": peak_gib(device)}


def bench_sit(device: str | None = None, batch: int = 8, precisions=("no", "bf16"), **_) -> dict:
    """Forward + backward of SiT-B/2 with one 768-d projector on [batch, 4, 32, 32] latents; each
    precision in a fresh process (CPU peak memory = that process's peak resident set)."""
    device = device or default_device()
    results = {"device": device_name(device), "model": "SiT-B/2 + 1x768 projector", "batch": batch}
    for precision in precisions:
        results[precision] = isolated("repa.bench.models:sit_case", device=device, batch=batch, precision=precision)
    return results


def bench_sampler(device: str | None = None, steps: int = 50, batch: int = 16, **_) -> dict:
    """Euler 50 steps with CFG 4 on [0, 1] (doubled batch every step) on a small SiT (S/2, 32x32x4)."""
    from repa.components.backbone.sit import SiT
    from repa.components.guidance.cfg import ClassifierFreeGuidance
    from repa.components.path.interpolants import LinearPath
    from repa.components.prediction.targets import VelocityPrediction
    from repa.components.sampler.integrators import EulerSampler
    from repa.engine.network import TrainedNetwork
    from repa.engine.generate.denoiser import Denoiser

    device = device or default_device()
    backbone = SiT(input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12, num_heads=6)
    model = TrainedNetwork(backbone).to(device).eval()
    denoiser = Denoiser(model, VelocityPrediction(), LinearPath(), ClassifierFreeGuidance(4.0))
    x1 = torch.randn(batch, 4, 32, 32, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    timing = timed(lambda: denoiser.sample(EulerSampler(steps), x1, y), device, warmup=1, repeat=3)
    return {"device": device_name(device), "model": "SiT-S/2 (32x32x4 latents)", "sampler": f"euler {steps} steps, cfg",
            "batch": batch, "images_per_s": batch / timing["median_s"]}


def bench_sample(device: str | None = None, num: int = 64, **_) -> dict:
    """`repa sample` end to end (PNG + npz): the quickstart-sized model on CPU; SiT-XL/2 with the
    paper's sampler (SDE 250 steps, cfg 1.8 on [0, 0.7]) on a GPU, random weights, fp32 and bf16."""
    import tempfile
    from pathlib import Path

    from repa.config import validate_experiment
    from repa.config import Source
    from repa.engine.network import checkpoint_layout
    from repa.engine.build import build_network
    from repa.engine.generate.sampling import SampleRun
    from repa.presets import PAPER_PRESET

    device = device or default_device()
    results = {"device": device_name(device)}
    if device == "cpu":
        raw = {"data": {"kind": "digits"}, "autoencoder": "identity", "backbone": {"kind": "sit", "depth": 4,
               "hidden_size": 128, "num_heads": 4, "patch_size": 4}, "sample": {"sampler": "heun", "steps": 25,
               "cfg_scale": 2.0, "batch_size": 64}}
        cases = {"quickstart-size SiT, heun 25 steps, cfg 2": (raw, []),
                 "quickstart-size SiT, heun 25 steps, cfg 2, bf16 autocast": (raw, ["sample.precision=bf16"])}
    else:
        vae_dir = _random_sd_vae()
        raw = {"data": {"kind": "folder", "path": "", "resolution": 256}, "backbone": "SiT-XL/2",
               "autoencoder": {"kind": "sd-vae", "path": vae_dir}, "alignment": [{"encoder": "dinov2-vit-b", "depth": 8}],
               "sample": {"batch_size": 64}}
        paper = [o for o in PAPER_PRESET if not o.startswith("autoencoder")]  # the random VAE decodes
        cases = {"SiT-XL/2 paper sampler fp32": (raw, paper),
                 "SiT-XL/2 paper sampler bf16 autocast": (raw, paper + ["sample.precision=bf16"])}
    if device == "cpu":  # the paper's sampler at small size: what skipping the unconditional half saves
        for precision in ("fp32", "bf16"):
            for interval in ((0.0, 0.7), (0.0, 1.0)):
                name = f"quickstart-size SiT, paper SDE 250 steps, cfg 1.8 on [{interval[0]}, {interval[1]}], {precision}"
                results[name] = sample_case(device, precision, interval, toy=True, steps=250)
    for name, (config_raw, overrides) in cases.items():
        config = validate_experiment(config_raw, Source("<bench>"), overrides)
        with tempfile.TemporaryDirectory() as tmp:
            model = build_network(config, 1000 if device != "cpu" else 10)
            ckpt = Path(tmp) / "weights.pt"
            torch.save(checkpoint_layout(model.state_dict()), ckpt)
            run = SampleRun(config, ckpt, Path(tmp) / "out", num, 0, config.sample.batch_size, progress=False)
            started = time.perf_counter()
            run.run()
            elapsed = time.perf_counter() - started
        results[name] = {"images_per_s": num / elapsed, "hours_for_50k": 50_000 / (num / elapsed) / 3600}
    return results


def sample_case(device: str, precision: str, interval: tuple[float, float], toy: bool = False, num: int = 64,
                steps: int = 8) -> dict:
    """`repa sample` with the paper's sampler (SDE, CFG 1.8 on `interval`) on SiT-XL/2 with random
    weights and a random SD-VAE (toy: the quickstart-size SiT, 8 steps, on the CPU): images/s and the
    network evaluations per image it made (conditional rows + unconditional rows, divided by images).
    `steps`: the toy's sampler steps (the paper's 250 otherwise)."""
    import tempfile
    from pathlib import Path

    from repa.config import Source, validate_experiment
    from repa.engine.network import checkpoint_layout
    from repa.engine.build import build_network
    from repa.engine.generate.sampling import SampleRun, nfe_per_sample
    from repa.presets import PAPER_PRESET

    if toy:
        raw = {"data": {"kind": "digits"}, "autoencoder": "identity", "backbone": {"kind": "sit", "depth": 4,
               "hidden_size": 128, "num_heads": 4, "patch_size": 4}, "sample": {"batch_size": 16}}
        overrides = [o for o in PAPER_PRESET if not o.startswith("autoencoder")] + [f"sample.steps={steps}"]
        num, classes = 16, 10
    else:
        raw = {"data": {"kind": "folder", "path": "", "resolution": 256}, "backbone": "SiT-XL/2",
               "autoencoder": {"kind": "sd-vae", "path": _random_sd_vae()},
               "alignment": [{"encoder": "dinov2-vit-b", "depth": 8}], "sample": {"batch_size": num}}
        overrides, classes = [o for o in PAPER_PRESET if not o.startswith("autoencoder")], 1000
    overrides += [f"sample.precision={precision}", f"sample.guidance_interval=[{interval[0]}, {interval[1]}]"]
    config = validate_experiment(raw, Source("<bench>"), overrides)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_network(config, classes)
        checkpoint = Path(tmp) / "weights.pt"
        torch.save(checkpoint_layout(model.state_dict()), checkpoint)
        run = SampleRun(config, checkpoint, Path(tmp) / "out", num, 0, config.sample.batch_size, progress=False)
        counting = _count_rows(rows)
        started = time.perf_counter()
        with counting:
            run.run()
        elapsed = time.perf_counter() - started
    return {"images_per_s": num / elapsed, "nfe_per_image": sum(rows) / num,
            "nfe_per_image_expected": nfe_per_sample(config)}


class _count_rows:
    """Counts the rows every SiT forward evaluates inside `Denoiser.sample` while active (the doubled
    CFG batch counts twice; `repa sample`'s timing forwards before sampling do not count)."""

    def __init__(self, rows: list):
        self.rows = rows

    def __enter__(self):
        from repa.components.backbone.sit import SiT
        from repa.engine.generate.denoiser import Denoiser

        self.forward, self.sample = SiT.forward, Denoiser.sample
        rows, state = self.rows, {"sampling": False}

        def forward(module, x, *args, **kwargs):
            if state["sampling"]:
                rows.append(len(x))
            return self.forward(module, x, *args, **kwargs)

        def sample(denoiser, *args, **kwargs):
            state["sampling"] = True
            try:
                return self.sample(denoiser, *args, **kwargs)
            finally:
                state["sampling"] = False

        SiT.forward, Denoiser.sample = forward, sample
        return self

    def __exit__(self, *exc):
        from repa.components.backbone.sit import SiT
        from repa.engine.generate.denoiser import Denoiser

        SiT.forward, Denoiser.sample = self.forward, self.sample


def _random_sd_vae() -> str:
    """The SD-VAE architecture with random weights (decode cost is what matters here)."""
    import tempfile

    from diffusers.models import AutoencoderKL

    folder = tempfile.mkdtemp(prefix="repa-bench-vae-")
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2).save_pretrained(folder)
    return folder


def bench_digits(**_) -> dict:
    """Train the offline encoder from scratch (no cache) and probe it linearly on held-out digits."""
    import tempfile

    from sklearn.linear_model import LogisticRegression

    from repa.components import digits_models as dm

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory():
        started = time.perf_counter()
        model = dm.train_classifier(dm.DigitsConvEncoder(), seed=0, epochs=20)
        seconds = time.perf_counter() - started
    train, heldout = dm.digits_split("train"), dm.digits_split("heldout")
    with torch.no_grad():
        feats = [model.tokens(dm.normalise(d.images)).mean(1).numpy() for d in (train, heldout)]
    probe = LogisticRegression(max_iter=3000).fit(feats[0], train.labels.numpy())
    return {"device": device_name("cpu"), "train_seconds": seconds, "classifier_heldout_accuracy": dm.heldout_accuracy(model),
            "linear_probe_heldout_accuracy": probe.score(feats[1], heldout.labels.numpy())}
