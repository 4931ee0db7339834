"""`repa run`: exact resume, 1 vs 2 processes, interruption, faults, outputs, trackers, caches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from repa.weights import load_file
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def weights(run: Path, step: int, which: str = "model") -> dict:
    return load_file(run / "checkpoints" / f"{step:07d}" / f"{which}.safetensors")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def train(experiment, *sets, expect=0):
    args = ["run", str(experiment), "--no-progress"]
    for s in sets:
        args += [s] if s.startswith("--") else ["--set", s]
    result = run_cli(*args)
    assert result.returncode == expect, result.stderr
    return result


def test_run_writes_what_a_researcher_watches(tiny_toml, tmp_path):
    experiment = tiny_toml()
    train(experiment, "train.sample_every=2")
    run = tmp_path / "exps" / "tiny"
    records = metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("loss", "denoising_loss", "align_loss_0", "grad_norm", "lr", "steps_per_s", "images_per_s",
                "peak_memory_gb"):
        assert all(isinstance(r[key], float) for r in records), key
    assert all(-1 <= r["align_loss_0"] <= 1 for r in records)  # a negative cosine similarity
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "0000001.png", "0000002.png", "0000004.png", "ground_truth.png"]
    from PIL import Image

    # 4 samples of 16 px: a 2x2 grid of cells upscaled 4x (nearest neighbour) to 64 px, 2 px apart
    assert Image.open(run / "samples" / "0000002.png").size == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2)
    assert (run / "config.resolved.toml").read_text().startswith("# config hash ")
    log_lines = (run / "log.txt").read_text().splitlines()
    assert "run tiny" in log_lines[0] and "done at step 4" in log_lines[-2]
    assert log_lines[-1].split(" ", 2)[2].startswith("next: repa sample ")
    assert sum(" step 4: loss " in line for line in log_lines) == 1  # a metrics line per log_every
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000002", "0000004"]
    ema, model = weights(run, 4, "ema"), weights(run, 4, "model")
    assert not torch.equal(ema["final_layer.linear.weight"], model["final_layer.linear.weight"])


def test_resume_is_exact(tiny_toml, tmp_path):
    experiment = tiny_toml()
    train(experiment, "experiment.name=straight")
    train(experiment, "experiment.name=split", "train.max_steps=2")
    result = train(experiment, "experiment.name=split", "--resume")
    assert "resumed from" in result.stderr
    for which in ("model", "ema"):
        assert_same_weights(weights(tmp_path / "exps" / "straight", 4, which), weights(tmp_path / "exps" / "split", 4, which))
    straight, split = metrics(tmp_path / "exps" / "straight"), metrics(tmp_path / "exps" / "split")
    assert [r["loss"] for r in straight] == [r["loss"] for r in split]


def test_corrupt_latest_checkpoints_fall_back_to_the_newest_usable_one(tiny_toml, tmp_path):
    from repa.engine import checkpoint as ckpt

    experiment = tiny_toml()
    train(experiment, "train.max_steps=6", "train.checkpoint_every=2")
    checkpoints = tmp_path / "exps" / "tiny" / "checkpoints"
    (checkpoints / "0000006" / "model.safetensors").write_bytes(b"truncated")
    (checkpoints / "0000004" / "state.json").write_text("{not json")  # written wrong, recorded as written:
    (checkpoints / "0000004" / "manifest.json").unlink()
    ckpt.write_manifest(checkpoints / "0000004")
    result = train(experiment, "train.max_steps=8", "--resume")
    assert "checkpoint 0000006 is unusable" in result.stderr and "resumed from" in result.stderr
    assert "checkpoint 0000004 is unusable" in result.stderr and "state.json: not valid JSON" in result.stderr
    assert "0000002" in result.stderr.split("resumed from")[1].splitlines()[0]
    assert "Traceback" not in result.stderr


def test_keep_every_keeps_a_curves_checkpoints_beside_the_last_ones(tiny_toml, tmp_path):
    experiment = tiny_toml()
    train(experiment, "train.max_steps=10", "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.keep_every=4")
    kept = sorted(p.name for p in (tmp_path / "exps" / "tiny" / "checkpoints").iterdir())
    assert kept == ["0000004", "0000008", "0000010"]  # 4 and 8 kept for the curve; 8 and 10 are the last two


def test_evaluation_during_training_logs_each_step_of_the_curve_once_across_a_kill(tiny_toml, tmp_path):
    experiment = tiny_toml('\n[eval]\nmetrics = ["digits-fd", "digits-accuracy"]\nevery = 2\nevery_num_samples = 20\n')
    straight, split = tmp_path / "exps" / "straight", tmp_path / "exps" / "split"
    result = train(experiment, "experiment.name=straight", "train.ema_decay=0.5")
    assert "repa: evaluation at step 4: digits-fd " in result.stderr
    train(experiment, "experiment.name=split", "train.max_steps=2", "train.ema_decay=0.5")
    # killed during the evaluation of step 2, after its checkpoint: no record of it
    lines = (split / "metrics.jsonl").read_text().splitlines(keepends=True)
    (split / "metrics.jsonl").write_text("".join(line for line in lines if '"during_training"' not in line))
    train(experiment, "experiment.name=split", "--resume", "train.ema_decay=0.5")

    def curve(run):
        return [(r["step"], r["eval"]) for r in metrics(run) if r.get("during_training")]

    assert [step for step, _ in curve(straight)] == [2, 4]
    assert curve(split) == curve(straight)  # each step once, the same figures as the run never killed
    assert curve(straight)[0][1] != curve(straight)[1][1]  # the EMA moved: two different points
    record = next(r for r in metrics(straight) if r.get("during_training"))
    assert record["num_samples"] == 20 and record["labels"] == "balanced" and record["eval_seconds"] > 0
    training = [r for r in metrics(straight) if "steps_per_s" in r]
    assert [r["step"] for r in training] == [1, 2, 3, 4]  # the evaluations are records of their own
    no_metrics = run_cli("validate", str(tiny_toml()), "--set", "eval.every=2")
    assert no_metrics.returncode == 2 and no_metrics.stderr.strip().splitlines()[-1].endswith(
        'eval: every needs eval.metrics (e.g. metrics = ["fid"], or ["digits-fd"] on the digits)')


def test_existing_run_needs_resume(tiny_toml):
    experiment = tiny_toml()
    train(experiment, "train.max_steps=2")
    result = train(experiment, "train.max_steps=2", expect=1)
    assert "already has checkpoints; pass --resume" in result.stderr


def test_uneven_batch_split_is_an_error(tiny_toml):
    result = train(tiny_toml(), "train.global_batch_size=9", "train.grad_accum_steps=2", expect=2)
    assert ("train.global_batch_size: 9 does not split evenly over 1 process(es) x train.grad_accum_steps=2; "
            "use a multiple of 2") in result.stderr


def test_uneven_split_over_launched_processes_is_a_validation_error(tiny_toml, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # what torchrun / accelerate launch export
    result = run_cli("validate", str(tiny_toml()), "--set", "train.global_batch_size=8")
    assert result.returncode == 2
    assert "does not split evenly over 3 process(es) x train.grad_accum_steps=1; use a multiple of 3" in result.stderr
    from repa.config import load_experiment

    # sampling and evaluation on 3 processes do not care how training split its batch
    assert load_experiment(tiny_toml(), ["train.global_batch_size=8"]).train.global_batch_size == 8


def test_gradient_accumulation_equals_the_full_batch(tiny_toml, tmp_path):
    experiment = tiny_toml()
    train(experiment, "experiment.name=full", "train.max_steps=2")
    train(experiment, "experiment.name=accum", "train.max_steps=2", "train.grad_accum_steps=2")
    assert_same_weights(weights(tmp_path / "exps" / "full", 2), weights(tmp_path / "exps" / "accum", 2), atol=2e-6)


def test_evaluation_samples_are_shared_out_and_put_back_in_order():
    from repa.engine.train.evals import reassemble, shares

    for n, processes in ((7, 2), (10, 3), (4, 4), (5, 1)):
        per, indices = shares(n, processes)
        assert all(len(mine) == per for mine in indices) and sorted(set(sum(indices, []))) == list(range(n))
        gathered = np.array([i for mine in indices for i in mine])  # each "sample" is its own index
        assert reassemble(gathered, indices, n).tolist() == list(range(n))


def test_two_processes_equal_one(tiny_toml, tmp_path):
    experiment = tiny_toml('\n[eval]\nmetrics = ["digits-fd"]\nevery = 3\nevery_num_samples = 7\n')
    train(experiment, "experiment.name=one", "train.max_steps=3", "train.checkpoint_every=3")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "repa.cli", "run", str(experiment), "--no-progress", "--set", "experiment.name=two",
               "--set", "train.max_steps=3", "--set", "train.checkpoint_every=3"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "exps" / "two"
    assert sorted(p.name for p in (run / "checkpoints" / "0000003").glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    assert "on 2 process(es)" in (run / "log.txt").read_text()
    ranks = [load_file(run / "checkpoints" / "0000003" / f"rng-{r}.pt")["parameters"] for r in (0, 1)]
    assert ranks[0] == ranks[1]  # both processes hold identical weights
    assert_same_weights(weights(tmp_path / "exps" / "one", 3), weights(run, 3), atol=1e-5)
    # the evaluation at step 3: 7 samples drawn 4 + 3 by the two processes, scored once, as one process scores them
    (one,), (two,) = ([r for r in metrics(tmp_path / "exps" / name) if r.get("during_training")] for name in ("one", "two"))
    assert two["step"] == 3 and two["num_samples"] == 7
    assert two["eval"]["digits-fd"] == pytest.approx(one["eval"]["digits-fd"], rel=1e-3)


def torchrun(experiment, *sets):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "repa.cli",
               "run", str(experiment), "--no-progress"]
    for s in sets:
        command += [s] if s.startswith("--") else ["--set", s]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_fsdp_over_two_processes_resumes_and_equals_one_process(tiny_toml, tmp_path):
    experiment = tiny_toml()
    train(experiment, "experiment.name=one", "train.max_steps=4", "train.checkpoint_every=2")
    sets = ("experiment.name=fsdp", "train.distributed=fsdp", "train.checkpoint_every=2")
    torchrun(experiment, *sets, "train.max_steps=2")
    result = torchrun(experiment, *sets, "train.max_steps=4", "--resume")
    assert "resumed from" in result.stderr
    run = tmp_path / "exps" / "fsdp"
    ranks = [load_file(run / "checkpoints" / "0000004" / f"rng-{r}.pt")["parameters"] for r in (0, 1)]
    assert ranks[0] == ranks[1]
    for which in ("model", "ema"):  # gathered full state dicts, the same names and values as DDP's
        assert_same_weights(weights(tmp_path / "exps" / "one", 4, which), weights(run, 4, which), atol=1e-5)


def test_fsdp_refuses_fp16(tiny_toml):
    result = train(tiny_toml(), "train.distributed=fsdp", "train.mixed_precision=fp16", expect=2)
    assert "train.distributed: fsdp runs in float32 or bf16" in result.stderr


@pytest.mark.parametrize("signum,workers", [(signal.SIGINT, 0), (signal.SIGTERM, 2)], ids=["ctrl-c", "sigterm-workers"])
def test_interruption_finishes_the_step_and_leaves_a_resumable_checkpoint(tiny_toml, tmp_path, signum, workers):
    experiment = tiny_toml()
    run = tmp_path / "exps" / "tiny"
    process = subprocess.Popen(
        [sys.executable, "-m", "repa.cli", "run", str(experiment), "--no-progress", "--set", "train.max_steps=100000",
         "--set", "train.checkpoint_every=100000", "--set", f"train.num_workers={workers}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and len(metrics(run)) >= 3):
        time.sleep(0.2)
    os.killpg(process.pid, signum)  # as a terminal's Ctrl-C or a scheduler does: the whole process group
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    resume_line = next(line for line in stderr.splitlines() if "Resume with:" in line)
    assert resume_line.endswith(f"repa run {experiment} --set train.max_steps=100000 --set train.checkpoint_every=100000 "
                                f"--set train.num_workers={workers} --resume")
    assert "Resume with:" in (run / "log.txt").read_text().splitlines()[-1]
    (checkpoint,) = (run / "checkpoints").iterdir()
    step = int(checkpoint.name)
    assert step >= 3 and json.loads((checkpoint / "state.json").read_text())["step"] == step
    result = train(experiment, f"train.max_steps={step + 1}", "--resume")
    assert f"resumed from {checkpoint} at step {step}" in result.stderr


def test_ctrl_c_under_torchrun_checkpoints_every_process(tiny_toml, tmp_path):
    """torchrun forwards the signal to both workers; they agree to stop after the same step."""
    experiment = tiny_toml()
    run = tmp_path / "exps" / "tiny"
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "repa.cli", "run",
         str(experiment), "--no-progress", "--set", "train.max_steps=100000", "--set", "train.checkpoint_every=100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and len(metrics(run)) >= 3):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=180)
    (checkpoint,) = (run / "checkpoints").iterdir()
    assert sorted(p.name for p in checkpoint.glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"], stderr[-2000:]
    step = int(checkpoint.name)
    assert step >= 3 and "Resume with: repa run" in stderr
    ranks = [load_file(checkpoint / f"rng-{r}.pt")["parameters"] for r in (0, 1)]
    assert ranks[0] == ranks[1]


def test_non_finite_losses_stop_with_a_diagnostic_checkpoint(tiny_toml, tmp_path):
    result = train(tiny_toml(), "optim.lr=1e30", "train.max_steps=50", "train.max_nonfinite_steps=3", expect=1)
    assert "non-finite steps (loss or gradient) in a row" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 3 non-finite steps (loss or gradient) in a row") and "diagnostic-" in last
    run = tmp_path / "exps" / "tiny"
    (diagnostic,) = (run / "checkpoints").glob("diagnostic-*")
    assert (diagnostic / "model.safetensors").is_file()
    again = train(tiny_toml(), "optim.lr=1e30", "train.max_steps=50", "train.max_nonfinite_steps=3", "--resume", expect=1)
    assert again.stderr.strip().splitlines()[-1] == last  # same divergence, the diagnostic replaced
    from repa.engine.checkpoint import verify

    verify(diagnostic)


def test_missing_encoder_weights_are_reported_before_the_first_step(tiny_toml, tmp_path):
    result = run_cli("run", str(tiny_toml()), "--set", 'alignment.encoder="mocov3-vit-s"', "--set",
                     "data.resolution=64", "--set", "backbone.patch_size=16", "--no-progress",
                     env={"TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: mocov3-vit-s: weights not found") and "Traceback" not in result.stderr
    assert not (tmp_path / "exps" / "tiny" / "metrics.jsonl").exists()


def test_wandb_offline_tracker(tiny_toml, tmp_path):
    train(tiny_toml('\n[tracker]\nkind = "wandb"\nproject = "repa-tests"\n'), "train.max_steps=2",
          "train.sample_every=1")
    run = tmp_path / "exps" / "tiny"
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))
    assert len(metrics(run)) == 2  # metrics.jsonl is written besides


def test_cached_features_train_like_online_features(tiny_toml, tmp_path):
    experiment = tiny_toml()
    cache = tmp_path / "cache"
    result = run_cli("preprocess", "features", str(experiment), str(cache), "--encoder", "digits-convnet")
    assert result.returncode == 0, result.stderr
    train(experiment, "experiment.name=online", "train.max_steps=2")
    train(experiment, "experiment.name=cached", "train.max_steps=2", f'alignment.features="{cache}"')
    online, cached = metrics(tmp_path / "exps" / "online"), metrics(tmp_path / "exps" / "cached")
    for a, b in zip(online, cached):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["align_loss_0"] - b["align_loss_0"]) < 1e-5
    refused = train(experiment, "experiment.name=refused", f'alignment.features="{cache}"',
                    'alignment.encoder={ kind = "digits-convnet", epochs = 3 }', expect=1)
    assert "features.json: encoder_params is" in refused.stderr and "rebuild it" in refused.stderr
