"""Post-hoc EMA (Karras et al. 2024; NVlabs/edm2 training/phema.py, reconstruct_phema.py): the math
against a transcription of edm2's functions, tracking during training, exact resume, reconstruction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from repa.engine.train import phema
from tests.conftest import run_cli
from tests.test_train import train


# --- edm2's functions, transcribed (NVlabs/edm2 @ 4bf8162, training/phema.py); time in images ---------

def edm2_std_to_exp(std):
    std = np.float64(std)
    tmp = std.flatten() ** -2
    exp = [np.roots([1, 7, 16 - t, 12 - t]).real.max() for t in tmp]
    return np.float64(exp).reshape(std.shape)


def edm2_power_function_correlation(a_ofs, a_std, b_ofs, b_std):
    a_exp = edm2_std_to_exp(a_std)
    b_exp = edm2_std_to_exp(b_std)
    t_ratio = a_ofs / b_ofs
    t_exp = np.where(a_ofs < b_ofs, b_exp, -a_exp)
    t_max = np.maximum(a_ofs, b_ofs)
    num = (a_exp + 1) * (b_exp + 1) * t_ratio ** t_exp
    den = (a_exp + b_exp + 1) * t_max
    return num / den


def edm2_power_function_beta(std, t_next, t_delta):
    return (1 - t_delta / t_next) ** (edm2_std_to_exp(std) + 1)


def edm2_solve_posthoc_coefficients(in_ofs, in_std, out_ofs, out_std):
    in_ofs, in_std = np.broadcast_arrays(in_ofs, in_std)
    out_ofs, out_std = np.broadcast_arrays(out_ofs, out_std)
    rv = lambda x: np.float64(x).reshape(-1, 1)  # noqa: E731
    cv = lambda x: np.float64(x).reshape(1, -1)  # noqa: E731
    A = edm2_power_function_correlation(rv(in_ofs), rv(in_std), cv(in_ofs), cv(in_std))
    B = edm2_power_function_correlation(rv(in_ofs), rv(in_std), cv(out_ofs), cv(out_std))
    X = np.linalg.solve(A, B)
    return X / np.sum(X, axis=0)


def test_widths_and_exponents_are_edm2s():
    stds = np.array([0.01, 0.05, 0.10, 0.2])
    np.testing.assert_allclose(phema.std_to_exp(stds), edm2_std_to_exp(stds), rtol=1e-12)
    np.testing.assert_allclose(phema.exp_to_std(phema.std_to_exp(stds)), stds, rtol=1e-10)
    assert phema.std_to_exp(0.05) == pytest.approx(16.9722, abs=1e-4)  # edm2's defaults
    assert phema.std_to_exp(0.10) == pytest.approx(6.9372, abs=1e-4)


def test_the_decay_in_steps_is_edm2s_in_images():
    batch = 2048
    for std in (0.05, 0.10):
        for step in (1, 2, 10, 100, 12345):
            assert phema.beta(std, step) == pytest.approx(
                float(edm2_power_function_beta(std, step * batch, batch)), rel=1e-12, abs=1e-15)
    assert phema.beta(0.05, 1) == 0.0  # the first step copies the network


def test_reconstruction_coefficients_are_edm2s_and_do_not_depend_on_the_time_unit():
    steps = np.array([100, 200, 300, 400] * 2)
    stds = np.array([0.05] * 4 + [0.10] * 4)
    out = [0.03, 0.05, 0.08, 0.12]
    ours = phema.coefficients(steps, stds, 400, out)
    theirs = edm2_solve_posthoc_coefficients(steps * 2048, stds, 400 * 2048, out)
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours.sum(axis=0), 1.0, rtol=1e-12)
    # a tracked width at the last snapshot is that snapshot alone
    np.testing.assert_allclose(ours[:, 1], np.eye(8)[3], atol=1e-8)


def test_tracked_profiles_follow_edm2s_update():
    """Each profile is edm2's `p_ema.lerp_(p_net, 1 - beta)` after each step, beta from the image count."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    tracked = phema.PowerEMA(net, [0.05, 0.10])
    reference = {std: [p.detach().clone() for p in net.parameters()] for std in (0.05, 0.10)}
    for step in range(1, 30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        tracked.update(net, step, None, frozenset())
        for std, params in reference.items():
            b = float(edm2_power_function_beta(std, step * 32, 32))
            for p_ema, p_net in zip(params, net.parameters()):
                p_ema.lerp_(p_net.detach(), 1 - b)
    for std, profile in zip(tracked.stds, tracked.profiles):
        for mine, theirs in zip(profile.parameters(), reference[std]):
            torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)


# --- during training ---------------------------------------------------------------------------

POSTHOC = ["train.posthoc_ema=[0.05, 0.10]", "train.posthoc_ema_every=1"]


def test_snapshots_resume_exactly_and_reconstruct_the_tracked_widths(tiny_toml, tmp_path):
    experiment = tiny_toml('\n[eval]\nnum_samples = 8\nmetrics = ["digits-fd"]\n')
    train(experiment, "experiment.name=straight", *POSTHOC)
    train(experiment, "experiment.name=split", "train.max_steps=2", *POSTHOC)
    assert "resumed from" in train(experiment, "experiment.name=split", "--resume", *POSTHOC).stderr
    straight, split = tmp_path / "exps" / "straight", tmp_path / "exps" / "split"
    assert sorted(p.name for p in (straight / "phema").glob("*.safetensors")) == [
        f"{s:07d}.safetensors" for s in (1, 2, 3, 4)]
    for step in (1, 2, 3, 4):  # bitwise: the resumed run's profiles are the uninterrupted run's
        a, b = (load_file(run / "phema" / f"{step:07d}.safetensors") for run in (straight, split))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "checkpoints/0000004/phema.safetensors" in json.dumps(
        [str(p.relative_to(straight)) for p in straight.rglob("phema.safetensors")])

    result = run_cli("ema", str(straight), "--std", "0.05", "0.1", "0.07")
    assert result.returncode == 0, result.stderr
    last = load_file(straight / "phema" / "0000004.safetensors")
    for std in ("0.05", "0.1"):
        rebuilt = load_file(straight / "phema" / "reconstructed" / f"0000004-std{std}.safetensors")
        assert rebuilt.keys() == {k.split("/", 1)[1] for k in last if k.startswith(std)}
        for key, value in rebuilt.items():
            torch.testing.assert_close(value, last[f"{std}/{key}"], rtol=0, atol=1e-6)
    between = load_file(straight / "phema" / "reconstructed" / "0000004-std0.07.safetensors")
    key = "final_layer.linear.weight"
    low, high, mid = last[f"0.05/{key}"], last[f"0.1/{key}"], between[key]
    assert not torch.equal(mid, low) and not torch.equal(mid, high)
    # a width between the two tracked ones lies between them (the profiles are nested averages)
    assert ((mid - low).abs() <= (high - low).abs() + 1e-6).float().mean() > 0.99

    # from the 0.10 snapshots alone, 0.05 is an estimate: not the tracked profile, but nearer it than 0.10 is
    alone = run_cli("ema", str(straight), "--std", "0.05", "--inputs", "0.1")
    assert alone.returncode == 0, alone.stderr
    estimate = load_file(straight / "phema" / "reconstructed" / "0000004-std0.05-from0.1.safetensors")[key]
    assert not torch.equal(estimate, low)
    assert (estimate - low).norm() < (high - low).norm()

    at_two = run_cli("ema", str(straight), "--std", "0.05", "--step", "2")
    assert at_two.returncode == 0, at_two.stderr
    two = load_file(straight / "phema" / "reconstructed" / "0000002-std0.05.safetensors")
    torch.testing.assert_close(two[key], load_file(straight / "phema" / "0000002.safetensors")[f"0.05/{key}"],
                               rtol=0, atol=1e-6)


def test_evaluate_scores_a_posthoc_width_apart_from_the_classic_ema(tiny_toml, tmp_path):
    experiment = tiny_toml('\n[eval]\nnum_samples = 8\nmetrics = ["digits-fd"]\n')
    train(experiment, *POSTHOC)
    run = tmp_path / "exps" / "tiny"
    assert run_cli("evaluate", str(run), "--no-progress").returncode == 0
    result = run_cli("evaluate", str(run), "--ema-std", "0.07", "--no-progress")
    assert result.returncode == 0, result.stderr
    again = run_cli("evaluate", str(run), "--ema-std", "0.07", "--no-progress")  # nothing new to score
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r.get("ema_std")) for r in records if "eval" in r]
    assert evals == [(2, None), (4, None), (2, 0.07), (4, 0.07)]
    classic, posthoc = (next(r for r in records if r.get("step") == 4 and "eval" in r and r.get("ema_std") == s)
                        for s in (None, 0.07))
    assert classic["eval_settings"] != posthoc["eval_settings"]
    assert classic["eval"]["digits-fd"] != posthoc["eval"]["digits-fd"]
    assert posthoc["labels"] == "random" and posthoc["allow_tf32"] is True


def test_posthoc_ema_input_errors_are_one_line(tiny_toml, tmp_path):
    experiment = tiny_toml()
    train(experiment)
    run = tmp_path / "exps" / "tiny"
    result = run_cli("ema", str(run), "--std", "0.05")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run}: no post-hoc EMA snapshots in {run / 'phema'}; train with train.posthoc_ema = [0.05, 0.10] "
        "(and train.posthoc_ema_every) to track them")
    wide = run_cli("ema", str(run), "--std", "0.3")
    assert wide.returncode == 2 and "a power-function EMA width is between 0 and 0.2887 (exclusive), got 0.3" in wide.stderr
    bad = run_cli("validate", str(experiment), "--set", "train.posthoc_ema=[0.05, 0.5]")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].endswith(
        "train.posthoc_ema: every width must be between 0 and 0.2887 (exclusive; edm2 tracks 0.05 and 0.10), "
        "got [0.05, 0.5]")
    # resuming with post-hoc EMA a run trained without it: one line naming the checkpoint
    resumed = run_cli("run", str(experiment), "--no-progress", "--resume", "--set", "train.max_steps=6", *[
        a for s in POSTHOC for a in ("--set", s)])
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr
    assert resumed.stderr.strip().splitlines()[-1].startswith(
        f"error: {run / 'checkpoints' / '0000004'}: has no phema.safetensors (written without train.posthoc_ema)")
