"""What a person sees: listings that fit the terminal, the live training display and its ETA,
plain lines without a terminal, next-step hints, readable grids, the shared-machine warning."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import run_cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def squeeze(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("kind", [None, "encoder", "guidance"])
def test_plugins_fit_80_columns_and_lose_no_text(kind):
    from repa.cli_tables import _kind, describe_params
    from repa.plugins import get_components

    result = run_cli("plugins", *([kind] if kind else []), env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0] == ("repa components" if kind is None else f"repa {kind} components")
    shown = squeeze(result.stdout)
    components = get_components()
    for name in _kind(kind):
        for entry in components[name]:
            for text in (entry.name, entry.distribution, entry.description, describe_params(entry)):
                assert squeeze(text) in shown, (name, entry.name, text)
    if kind == "guidance":
        assert "only for t in [low, high]" in " ".join(result.stdout.split())  # markup does not eat it
    if kind == "encoder":  # every encoder, a plugin's included, has every fact
        blocks = re.split(r"\n  (?=\S)", result.stdout.split("encoder (", 1)[1])[1:]
        assert len(blocks) == len(components["encoder"])
        assert all(all(fact in squeeze(b) for fact in ("weightshere:", "dim:", "tokensat256px:")) for b in blocks)


def test_a_component_key_with_a_default_shows_it_not_required():
    from repa.cli_tables import describe_params
    from repa.plugins import get_components

    components = get_components()
    assert describe_params(components["conditioning"].get("text")) == "text_encoder='clip-vit-l14'"
    alignment = describe_params(components["term"].get("alignment"))
    assert "encoder (required)" in alignment and "loss='cosine'" in alignment and "projector='mlp'" in alignment


def test_written_to_a_pipe_every_line_is_whole():
    """No terminal and no COLUMNS: a description or a facts line is one line, never cut mid-word."""
    from repa.cli_tables import describe_params
    from repa.plugins import get_components

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run([sys.executable, "-m", "repa.cli", "plugins", "encoder"], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for entry in get_components()["encoder"]:
        assert f"    parameters: {describe_params(entry)}" in lines, entry.name
    assert any(line.startswith("    dim: ") and "weights here: " in line for line in lines)


def test_training_under_a_terminal_shows_a_consistent_eta_and_every_grid_and_checkpoint(tiny_toml, tmp_path):
    args = ["run", str(tiny_toml()), "--set", "train.max_steps=60", "--set", "backbone.hidden_size=256",
            "--set", "train.global_batch_size=32", "--set", "train.checkpoint_every=30", "--set",
            "train.sample_every=30", "--set", "train.log_every=30"]
    text = _in_a_terminal([sys.executable, "-m", "repa.cli", *args])
    frames = [(int(step), float(rate), int(h) * 3600 + int(m) * 60 + int(s)) for step, rate, h, m, s in
              re.findall(r"(\d+)/60 .*?([\d.]+) steps/s eta (\d+):(\d\d):(\d\d)", text)]
    warm = [f for f in frames if f[0] >= 10 and f[0] < 60]
    assert warm, text[-2000:]
    for step, rate, eta in warm:
        expected = (60 - step) / rate
        assert expected / 2 - 1 <= eta <= 2 * expected + 1, (step, rate, eta)  # the shown second is rounded
    run = tmp_path / "exps" / "tiny"
    for step in (30, 60):
        assert f"repa: samples at step {step}: {run / 'samples' / f'{step:07d}.png'}" in text
        assert f"repa: checkpoint at step {step}: {run / 'checkpoints' / f'{step:07d}'}" in text
    assert f"next: repa sample {tiny_toml()}" in " ".join(text.split())


def _in_a_terminal(command: list[str]) -> str:
    """Run `command` with a pseudo-terminal as its stdout and stderr; its output without colours."""
    master, slave = pty.openpty()
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(timeout=300) == 0, output.decode(errors="replace")[-3000:]
    return ANSI.sub("", output.decode(errors="replace")).replace("\r", "\n")


def test_without_a_terminal_training_prints_plain_lines(tiny_toml):
    result = run_cli("run", str(tiny_toml()), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^step 4/4: loss \d\.\d{4}, align -?\d\.\d{4}, [\d.]+ steps/s, eta 0:00:00$", result.stderr, re.M)
    assert "━" not in result.stderr  # no bar characters in a log


def test_progress_lines_show_the_latest_steps_losses_not_the_last_records(tiny_toml, tmp_path):
    """A run shorter than log_every logs no record before its end: its lines still show losses, the last
    step's own (the record at the end averages all 4 steps)."""
    result = run_cli("run", str(tiny_toml()), "--no-progress", "--set", "train.log_every=100")
    assert result.returncode == 0, result.stderr
    shown = re.search(r"^step 4/4: loss (\d\.\d{4}), align", result.stderr, re.M)
    assert shown, result.stderr[-2000:]
    from repa.engine.record import read_records

    (record,) = read_records(tmp_path / "exps" / "tiny")  # the window of steps 1-4
    assert record["step"] == 4 and float(shown.group(1)) != round(record["loss"], 4)
    run_cli("run", str(tiny_toml()), "--no-progress", "--set", "experiment.name=each")  # log_every = 1
    step_4 = read_records(tmp_path / "exps" / "each")[-1]
    assert step_4["step"] == 4 and float(shown.group(1)) == round(step_4["loss"], 4)


def test_a_run_failing_before_step_1_leaves_nothing(tiny_toml, tmp_path):
    missing = tmp_path / "nowhere"
    result = run_cli("run", str(tiny_toml()), "--no-progress", "--set", f'data={{ kind = "folder", path = "{missing}", '
                     'resolution = 16, num_classes = 10, latents = "" }')
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(missing) in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "exps").exists()


def test_sample_grids_are_readable_and_labelled_by_class():
    from repa.engine.generate.generation import LABEL_BAND, image_grid
    from repa.engine.train.grids import class_columns

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8)
    grid = image_grid(images, **class_columns(20, 10))
    cell, pad = 64, 2
    assert grid.shape == (LABEL_BAND + 2 * (cell + pad) + pad, 10 * (cell + pad) + pad, 3)
    first = grid[LABEL_BAND + pad : LABEL_BAND + pad + cell, pad : pad + cell]
    assert np.array_equal(first, images[0].repeat(4, axis=0).repeat(4, axis=1))  # nearest neighbour, exact
    twelfth = grid[LABEL_BAND + 2 * pad + cell :][:cell, pad + (cell + pad) : pad + (cell + pad) + cell]
    assert np.array_equal(twelfth, images[11].repeat(4, axis=0).repeat(4, axis=1))  # row 2, column 1: class 1
    for k in range(10):  # a dark label above every column
        band = grid[:LABEL_BAND, pad + k * (cell + pad) : pad + k * (cell + pad) + cell]
        assert band.min() < 128, k
    assert class_columns(64, 1000) == {}  # ImageNet: a square grid, too many classes for a row
    assert class_columns(64, 1) == {}  # unconditional: a square grid, not one 64-cell column
    assert image_grid(images[:4], min_cell=64).shape == (2 * 66 + 2, 2 * 66 + 2, 3)


def test_eta_is_remaining_steps_over_the_shown_rate_and_moves_smoothly():
    from repa.console import StepClock

    clock = StepClock()
    for _ in range(50):
        clock.add(0.2)
    assert clock.rate() == pytest.approx(5.0) and clock.eta(100) == pytest.approx(20.0)
    clock.add(0.25)  # a slower step moves it a little, not 100x
    assert 20.0 < clock.eta(100) < 21.0
