"""The training step on the device's terms: it never waits for the device outside logging steps,
skips a non-finite step on the device, and computes what the step before it computed."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from repa.config import load_experiment

# Every way a tensor's value reaches the host: each one waits for the device to finish.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def counting_host_reads(monkeypatch):
    calls = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    try:
        yield calls
    finally:
        monkeypatch.undo()


def _trainer(tiny_toml, tmp_path, *sets):
    from repa.engine.train.data import StepBatchSampler, make_loader
    from repa.engine.train.trainer import Trainer

    config = load_experiment(tiny_toml(), list(sets))
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.setup()
    train = config.train
    sampler = StepBatchSampler(len(trainer.dataset), train.global_batch_size, 0, 1, train.grad_accum_steps,
                               config.experiment.seed, 0, train.max_steps)
    batches = iter(make_loader(trainer.dataset, sampler, 0, False))
    return trainer, sampler, lambda: [next(batches) for _ in range(train.grad_accum_steps)]


@pytest.mark.parametrize("sets", [(), ("train.grad_accum_steps=2",)])
def test_a_training_step_never_reads_the_device(tiny_toml, tmp_path, monkeypatch, sets):
    trainer, sampler, batch = _trainer(tiny_toml, tmp_path, *sets)
    trainer.train_step(batch(), sampler)  # the first step builds the optimizer's state
    micro = batch()
    with counting_host_reads(monkeypatch) as calls:
        values, code = trainer.train_step(micro, sampler)
    assert calls == []
    assert all(v.device == trainer.device and v.ndim == 0 for v in values.values()) and code.ndim == 0
    assert int(code) == 0 and trainer.counters.step == 2


def test_a_non_finite_step_is_skipped_on_the_device(tiny_toml, tmp_path, monkeypatch):
    """A gradient made infinite by the loss: weights, AdamW moments and step count, and the EMA stay
    as they were, without the step reading anything; the outcome says why."""
    trainer, sampler, batch = _trainer(tiny_toml, tmp_path)
    trainer.train_step(batch(), sampler)
    model, ema = trainer._unwrapped(), trainer.ema
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in ema.state_dict().items()}
    first = min(trainer.optimizer.state_dict()["state"])  # the first parameter with a state (pos_embed is fixed)
    moments = {k: v.clone() for k, v in trainer.optimizer.state_dict()["state"][first].items()}
    trainer.objective.slots[0].coeff = 1e38  # finite loss, infinite gradient norm
    micro = batch()
    with counting_host_reads(monkeypatch) as calls:
        values, code = trainer.train_step(micro, sampler)
    assert calls == []
    assert int(code) == 2 and not torch.isfinite(values["grad_norm"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in ema.state_dict().items())
    after = trainer.optimizer.state_dict()["state"][first]
    assert all(torch.equal(moments[k], after[k]) for k in moments)  # step count included
    trainer.objective.slots[0].coeff = 0.5
    values, code = trainer.train_step(batch(), sampler)
    assert int(code) == 0 and int(trainer.optimizer.state_dict()["state"][first]["step"]) == 2


def _losses_and_weights(tiny_toml, tmp_path, *sets, steps=4):
    trainer, sampler, batch = _trainer(tiny_toml, tmp_path, *sets)
    losses = [float(trainer.train_step(batch(), sampler)[0]["loss"]) for _ in range(steps)]
    return (losses, {k: v.clone() for k, v in trainer._unwrapped().state_dict().items()},
            {k: v.clone() for k, v in trainer.ema.state_dict().items()})


def test_the_fused_step_computes_what_the_previous_step_computed(tiny_toml, tmp_path):
    """Against the step before this work (foreach AdamW, EMA outside the skip): the EMA update is
    bitwise the same; the fused AdamW kernel rounds differently, within the stated tolerance."""
    from repa.engine.train.ema import make_ema, update_ema

    losses, weights, ema = _losses_and_weights(tiny_toml, tmp_path / "a")
    old_losses, old_weights, old_ema = _losses_and_weights(tiny_toml, tmp_path / "b", "optim.fused=false")
    assert losses[0] == old_losses[0]  # the same initial weights and draws
    torch.testing.assert_close(losses, old_losses, rtol=1e-5, atol=1e-6)
    for key in weights:
        torch.testing.assert_close(weights[key], old_weights[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ema[key], old_ema[key], rtol=1e-5, atol=1e-6)
    # the EMA update alone: bitwise equal to the unconditional one when the step is kept
    model = torch.nn.Linear(16, 8)
    old, new = make_ema(model), make_ema(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    update_ema(old, model, 0.9999)
    update_ema(new, model, 0.9999, torch.tensor(True))
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    update_ema(new, model, 0.9999, torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


def test_the_ema_update_meets_the_fused_multi_tensor_kernels_conditions():
    """On CUDA a _foreach_ op runs as one fused kernel only when every tensor-list operand matches the
    first list tensor for tensor in shape (else: one kernel per parameter). Recorded on the CPU: every
    _foreach_ call of a skippable EMA update, and that a skipped step leaves the EMA bitwise as it is."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from repa.engine.train.ema import make_ema, update_ema

    class ForeachCalls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.startswith("_foreach"):
                self.calls.append((func.__name__, [a for a in args if isinstance(a, (list, tuple))]))
            return func(*args, **(kwargs or {}))

    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    ema = make_ema(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with ForeachCalls() as recorded:
        update_ema(ema, model, 0.999, torch.tensor(False))
    assert len(recorded.calls) >= 2  # the update is multi-tensor operations, not a loop over parameters
    for name, lists in recorded.calls:
        shapes = [[tuple(t.shape) for t in tensors] for tensors in lists]
        assert all(s == shapes[0] for s in shapes), f"{name}: operand shapes differ per tensor: {shapes}"
    assert all(torch.equal(ema.state_dict()[k], before[k]) for k in before)


def test_the_gpu_script_runs_dry_on_the_cpu(tmp_path):
    """benchmarks/gpu.sh --dry-run: every eager case at toy size, the table and the JSON, so the GPU
    script cannot rot between the sessions that have a GPU."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # The script's `python` is this interpreter's, whether or not its environment is activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    result = subprocess.run(["bash", str(root / "benchmarks" / "gpu.sh"), "--dry-run", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PATH": path})
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    rows = {row["case"]: row for row in figures["rows"]}
    trained = [r for r in rows.values() if r["case"].startswith("train") and "skipped" not in r]
    assert len(trained) == 2 and all(r["images_per_s"] > 0 and r["tflops_per_step"] > 0 for r in trained)
    assert sum("skipped" in r for r in rows.values()) == 2  # the compiled cases, listed
    sampled = {c: r for c, r in rows.items() if c.startswith("sample")}
    assert len(sampled) == 4
    for case, row in sampled.items():  # evaluations as counted equal the expected; [0, 0.7] skips some
        assert row["nfe_per_image"] == pytest.approx(row["nfe_per_image_expected"], rel=0.15), case
    fp32 = {c.split(" on ")[1]: r["nfe_per_image"] for c, r in sampled.items() if "fp32" in c}
    assert fp32["[0.0, 0.7]"] < fp32["[0.0, 1.0]"]
    assert rows[next(c for c in rows if c.startswith("packed"))]["samples_per_s"] > 0
    assert "written:" in result.stdout and "case" in result.stdout


def test_the_learning_rate_schedule_is_a_function_of_the_step(tiny_toml, tmp_path):
    from repa.engine.train.trainer import learning_rate

    assert [learning_rate(1.0, s, 10, "constant", 0) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [learning_rate(1.0, s, 10, "constant", 4) for s in (0, 1, 3, 4)] == [0.25, 0.5, 1.0, 1.0]
    cosine = [learning_rate(2.0, s, 10, "cosine", 2) for s in range(10)]
    assert cosine[:3] == [1.0, 2.0, 2.0] and cosine[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:]))
    trainer, sampler, batch = _trainer(tiny_toml, tmp_path, "train.lr_schedule=cosine", "train.warmup_steps=1")
    lrs = []
    for _ in range(4):
        trainer.train_step(batch(), sampler)
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    base = trainer.config.optim.params.lr
    assert lrs == [learning_rate(base, s, 4, "cosine", 1) for s in range(4)] and lrs[0] == base
