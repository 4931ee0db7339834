"""Fault injection: every fault ends in one line, the documented exit code, and loses nothing.

kill -9 at random points, a held run folder, a full disk (a small tmpfs in a private mount
namespace, where the machine allows one), corrupt checkpoint state, symlink loops, hostile
configs and names."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repa.config import load_experiment
from repa.errors import ConfigError
from repa.weights import load_file
from tests.conftest import ROOT, run_cli

TRACEBACK = "Traceback (most recent call last)"


def errors_of(path, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides)
    return info.value.lines


def cli(*args, expect: int):
    result = run_cli(*args)
    assert result.returncode == expect, result.stderr[-3000:]
    assert TRACEBACK not in result.stderr
    return result


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def run_args(experiment, *sets) -> list[str]:
    args = ["run", str(experiment), "--no-progress"]
    for s in sets:
        args += [s] if s.startswith("--") else ["--set", s]
    return args


def weights(run: Path, step: int, which: str) -> dict:
    return load_file(run / "checkpoints" / f"{step:07d}" / f"{which}.safetensors")


def losses(run: Path) -> list:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


# ============================================================================
# Hostile configs: one located line at validation, before anything is written
# ============================================================================


@pytest.mark.parametrize("name", ["../../esc", "..", ".", "/tmp/abs", "a/b", "a\\b", "two\nlines", "tab\there"])
def test_experiment_name_is_one_folder_name(tiny_toml, name):
    (line,) = errors_of(tiny_toml(), [f"experiment.name={json.dumps(name)}"])
    assert "experiment.name:" in line
    assert ("one folder name" in line) or ("control characters" in line)


@pytest.mark.parametrize("override, key", [
    ("optim.lr=inf", "optim.lr"), ("optim.weight_decay=nan", "optim.weight_decay"),
    ("optim.betas=[inf, 0.999]", "optim.betas[0]"), ("alignment[0].coeff=inf", "alignment[0].coeff"),
    ("sample.cfg_scale=inf", "sample.cfg_scale"), ("train.ema_decay=nan", "train.ema_decay"),
])
def test_non_finite_numbers_are_refused(tiny_toml, override, key):
    (line,) = errors_of(tiny_toml(), [override])
    assert line.startswith(f"--set {override}: {key}: ") and "finite number" in line, line


def test_non_finite_number_in_the_file_is_located_at_its_line(write_toml, tiny_toml):
    text = tiny_toml().read_text().replace("[train]\n", "[optim]\nlr = nan\n\n[train]\n")
    path = write_toml(text, "nan.toml")
    lineno = text.splitlines().index("lr = nan") + 1
    assert errors_of(path) == [f"{path}:{lineno}: optim.lr: must be a finite number, got nan"]


@pytest.mark.parametrize("written, expected", [
    ("max_steps = true", "train.max_steps: expected an integer, got true"),
    ("keep_checkpoints = false", "train.keep_checkpoints: expected an integer, got false"),
    ("ema_decay = true", "train.ema_decay: expected a number, got true"),
])
def test_booleans_in_the_file_are_not_numbers(write_toml, tiny_toml, written, expected):
    text = tiny_toml().read_text().replace("[train]\n", f"[train]\n{written}\n")
    path = write_toml(text.replace("max_steps = 4\n", "") if "max_steps" in written else text, "bool.toml")
    lineno = path.read_text().splitlines().index(written) + 1
    assert errors_of(path) == [f"{path}:{lineno}: {expected}"]


def test_booleans_in_component_params_are_not_numbers(write_toml, tiny_toml):
    text = tiny_toml().read_text().replace("[train]\n", "[optim]\nlr = true\nbetas = [true, 0.9]\n\n[train]\n")
    path = write_toml(text, "bool.toml")
    assert [line.split(": ", 1)[1] for line in errors_of(path)] == [
        "optim.lr: expected a number, got true", "optim.betas: expected a number, got [true, 0.9]"]
    assert errors_of(tiny_toml(), ["train.max_steps=true"]) == [
        "--set train.max_steps=true: train.max_steps: expected an integer, got 'true'"]


@pytest.mark.parametrize("arg", ["train..max_steps=5", "alignment[0.depth=3", "alignment]0[.depth=3", ".train=1",
                                 "train.=1", "train max_steps=1", "[0]=1"])
def test_malformed_set_keys_are_refused(tiny_toml, arg):
    (line,) = errors_of(tiny_toml(), [arg])
    assert line.startswith(f"--set {arg}: ") and "is not a key path" in line


def test_well_formed_set_keys_still_work(tiny_toml):
    config = load_experiment(tiny_toml(), ["alignment[0].depth=2", "alignment.0.coeff=0.25", "train.max_steps=3"])
    assert (config.alignment[0].depth, config.alignment[0].coeff, config.train.max_steps) == (2, 0.25, 3)


def test_deeply_nested_toml_is_one_line(write_toml):
    path = write_toml("x = " + "[" * 5000 + "]" * 5000 + "\n", "deep.toml")
    (line,) = errors_of(path)
    assert line.startswith(f"{path}: values nested more than 16 levels deep")
    shallow = write_toml("[data]\nkind = 'digits'\nx = " + "[" * 40 + "]" * 40 + "\n", "deep2.toml")
    assert "nested more than 16 levels" in errors_of(shallow)[0]


def test_alignment_entries_are_bounded_by_what_the_backbone_can_use(tiny_toml):
    entry = '\n[[alignment]]\nencoder = { kind = "digits-convnet", epochs = 2 }\ndepth = 2\nprojector_dim = 32\n'
    lines = errors_of(tiny_toml(entry * 10_000))
    assert len(lines) == 1 and "10001 entries, but 2 blocks x 1 distinct encoder(s) allow at most 2" in lines[0]
    (line,) = errors_of(tiny_toml(entry * 2))
    assert "3 entries, but 2 blocks x 1 distinct encoder(s) allow at most 2" in line
    assert len(load_experiment(tiny_toml(entry)).alignment) == 2  # depth 1 and depth 2: both usable


def test_output_dir_that_is_a_file_is_one_line_and_creates_nothing(tiny_toml, tmp_path):
    blocker = tmp_path / "exps"
    blocker.write_text("not a folder")
    result = cli(*run_args(tiny_toml()), expect=1)
    assert last_line(result) == (f"error: {tiny_toml()}: experiment.output_dir: {blocker} is a file, not a folder; "
                                 "choose another experiment.output_dir or move the file")
    assert blocker.read_text() == "not a folder"


# ============================================================================
# Disk writes: the storage layer
# ============================================================================


def test_a_refused_write_is_one_line_and_removes_its_temporary_files(tmp_path):
    from repa.storage import StorageError, writing

    tmp = tmp_path / ".tmp-0000004"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"half")
    with pytest.raises(StorageError) as info:
        with writing(tmp, needed=3 * 2**20, temporary=[tmp]):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))
    assert str(info.value).startswith(f"{tmp / 'model.safetensors'}: cannot write: no space left on the device "
                                      "(3.0 MiB needed, ")
    assert str(info.value).endswith("free); free some space or write elsewhere")
    assert not tmp.exists()

    class SafetensorError(Exception):
        """Stands for safetensors' Rust writer error, which reports errno only in its text."""

    with pytest.raises(StorageError, match="permission denied"):
        with writing(tmp_path / "x.safetensors"):
            raise SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)")
    with pytest.raises(ValueError):  # anything else is not a storage fault
        with writing(tmp_path / "y"):
            raise ValueError("a bug")


def test_torch_save_on_a_full_disk_is_a_storage_error(tmp_path, monkeypatch):
    """torch.save says "file write failed" without an errno; with no room left it was a full disk."""
    from repa import storage

    monkeypatch.setattr(storage, "free_bytes", lambda path: 4096)
    with pytest.raises(storage.StorageError, match="optimizer.pt: cannot write: no space left on the device"):
        with storage.writing(tmp_path / "optimizer.pt", needed=10 * 2**20):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
    monkeypatch.setattr(storage, "free_bytes", lambda path: 2**40)
    with pytest.raises(RuntimeError):  # room to spare: some other failure, shown as it is
        with storage.writing(tmp_path / "optimizer.pt", needed=10 * 2**20):
            raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")


def test_resumed_record_drops_the_steps_it_will_redo_and_a_line_cut_by_a_kill(tmp_path):
    from repa.engine.record import RunRecord, read_records

    record = RunRecord(tmp_path)
    for step in (1, 2, 3, 4):
        record.log(step, {"loss": float(step)})
    with open(record.path, "a") as f:
        f.write('{"step": 5, "lo')  # the kill came mid-line
    assert [r["step"] for r in read_records(tmp_path)] == [1, 2, 3, 4]
    record.rewind(2)
    assert [r["step"] for r in read_records(tmp_path)] == [1, 2]
    assert record.path.read_text().endswith("\n")


# ============================================================================
# Runs: locks, kills, corrupt state, non-finite gradients
# ============================================================================

pytest_slow = pytest.mark.slow


HOLDER = textwrap.dedent("""
    import sys, time
    from repa.engine.locks import RunLock
    RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
""")


@pytest_slow
def test_a_held_run_folder_is_refused_and_a_killed_holder_does_not_block(tiny_toml, tmp_path):
    run = tmp_path / "exps" / "tiny"
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cli(*run_args(tiny_toml()), expect=1)
        import socket

        assert last_line(result).startswith(f"error: {run}: in use by repa run PID {holder.pid} on "
                                            f"{socket.gethostname()} (since ")
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of the refused run
    finally:
        holder.kill()  # kill -9: the kernel drops the lock, the file stays
        holder.wait()
    from repa.engine.locks import RunLock

    lock = RunLock(run)
    lock.acquire()  # the stale file does not block
    lock.release()


@pytest_slow
def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(tiny_toml, tmp_path):
    """Kills land before the first checkpoint (the resume starts fresh), between checkpoints and
    during checkpoint writes; every resume continues to bitwise the same weights and losses."""
    experiment = tiny_toml()
    sets = ["train.max_steps=12", "train.checkpoint_every=3", "train.keep_checkpoints=2"]
    cli(*run_args(experiment, "experiment.name=straight", *sets), expect=0)
    straight, split = tmp_path / "exps" / "straight", tmp_path / "exps" / "split"
    rng = random.Random(20261201)
    kills = 0
    for attempt in range(4):
        args = run_args(experiment, "experiment.name=split", *sets, *(["--resume"] if attempt else []))
        process = subprocess.Popen([sys.executable, "-m", "repa.cli", *args], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        at_step, delay = rng.randint(0, 10), rng.uniform(0.0, 0.3)
        if _wait_for_step(split, at_step, process) and process.poll() is None:
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            kills += process.wait() == -signal.SIGKILL
        else:
            process.wait()
        process.stderr.close()
    assert kills >= 2  # the test killed something (on a slow machine it may finish first)
    cli(*run_args(experiment, "experiment.name=split", *sets, "--resume"), expect=0)
    for which in ("model", "ema"):
        a, b = weights(straight, 12, which), weights(split, 12, which)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), which
    assert losses(split) == losses(straight)  # records of redone steps were dropped, not duplicated


def _wait_for_step(run: Path, step: int, process, timeout: float = 120) -> bool:
    """Until metrics.jsonl records `step` (0: the run folder exists), or the process ends."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        path = run / "metrics.jsonl"
        if (step == 0 and (run / "log.txt").is_file()) or (path.is_file() and path.read_text().count("\n") >= step > 0):
            return True
        time.sleep(0.02)
    return False


@pytest_slow
def test_resume_after_a_kill_before_the_first_checkpoint_starts_fresh(tiny_toml, tmp_path):
    run = tmp_path / "exps" / "tiny"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # what the killed run had logged
    result = cli(*run_args(tiny_toml(), "train.max_steps=2", "--resume"), expect=0)
    assert f"no checkpoint in {run / 'checkpoints'} yet (the run stopped before its first); starting from step 0" in result.stderr
    assert [step for step, _ in losses(run)] == [1, 2] and losses(run)[0][1] != 9.0


@pytest_slow
def test_resume_never_starts_over_checkpoints_that_all_fail_to_verify(tiny_toml, tmp_path):
    run = tmp_path / "exps" / "tiny"
    (run / "checkpoints" / "0000004").mkdir(parents=True)  # e.g. copied without its manifest
    (run / "checkpoints" / "0000004" / "model.safetensors").write_bytes(b"weights")
    result = cli(*run_args(tiny_toml(), "--resume"), expect=1)
    assert last_line(result) == (f"error: {run / 'checkpoints'}: no checkpoint verifies (see the lines above); "
                                 "restore one, or move the folder away to start this run again")
    assert (run / "checkpoints" / "0000004" / "model.safetensors").read_bytes() == b"weights"


@pytest_slow
def test_finite_loss_with_an_infinite_gradient_is_a_non_finite_step(tiny_toml, tmp_path):
    result = cli(*run_args(tiny_toml(), "alignment[0].coeff=1e38", "train.max_nonfinite_steps=2"), expect=1)
    assert "non-finite gradient norm at step 1; update skipped (1 in a row)" in result.stderr  # steps count from 1
    assert last_line(result).startswith("error: 2 non-finite steps (loss or gradient) in a row at step 2")
    log = (tmp_path / "exps" / "tiny" / "log.txt").read_text().splitlines()
    assert log[-1].split(" ", 2)[2] == last_line(result)  # the error that ended the run, in its log too


@pytest_slow
def test_entries_with_one_encoder_share_it(tiny_toml, tmp_path):
    from repa.engine.train.trainer import Trainer

    entry = '\n[[alignment]]\nencoder = { kind = "digits-convnet", epochs = 2 }\ndepth = 2\nprojector_dim = 32\n'
    config = load_experiment(tiny_toml(entry))
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.setup()
    needs = [need for slot in trainer.objective.slots for need in slot.term.needs().encoders]
    assert len(needs) == 2 and len(trainer.encoders) == 1  # two entries read one encoder, built once
    assert not (tmp_path / "run").exists()  # setup writes nothing


# ============================================================================
# A full disk: a small tmpfs in a private mount namespace
# ============================================================================


def _can_mount_tmpfs() -> str | None:
    if not shutil.which("unshare"):
        return "no unshare(1) on this machine"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs here: {probe.stderr.strip()[:120]}"


def _in_tmpfs(script: str, mount: Path, size: str) -> subprocess.CompletedProcess:
    """Run a shell script with a `size` tmpfs at `mount`, in a private mount namespace."""
    mount.mkdir(parents=True, exist_ok=True)
    body = f"mount -t tmpfs -o size={size} tmpfs {mount} && {script}"
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", body],
                          capture_output=True, text=True, timeout=300, env=os.environ)


@pytest_slow
def test_disk_full_during_training_is_one_line_and_keeps_the_earlier_checkpoint(tiny_toml, tmp_path):
    reason = _can_mount_tmpfs()
    if reason:
        pytest.skip(reason)
    disk = tmp_path / "disk"
    experiment = tiny_toml().read_text().replace(str(tmp_path / "exps"), str(disk))
    (tmp_path / "disk.toml").write_text(experiment)
    repa = f"{sys.executable} -m repa.cli run {tmp_path / 'disk.toml'} --no-progress"
    # full, but for 256 KiB: the log, config and metrics lines fit; the ~1 MiB checkpoint does not
    fill = f"dd if=/dev/zero of={disk}/filler bs=64k 2>/dev/null; truncate -s -256K {disk}/filler; "
    script = (f"{repa} --set train.max_steps=2 > /dev/null 2>&1 && {fill}"
              f"{repa} --set train.max_steps=4 --resume; echo rc=$?; ls -A {disk}/tiny/checkpoints; "
              f"{sys.executable} -c 'from repa.engine.checkpoint import verify; from pathlib import Path; "
              f"verify(Path(\"{disk}/tiny/checkpoints/0000002\")); print(\"verified\")'")
    result = _in_tmpfs(script, disk, "4m")
    out, err = result.stdout, result.stderr
    assert "rc=1" in out, err[-3000:]
    assert TRACEBACK not in err and "Logging error" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, err[-2000:]
    assert error_lines[0].startswith(f"error: {disk}/tiny/checkpoints: cannot write: no space left on the device (")
    assert "needed" in error_lines[0] and "free some space or write elsewhere" in error_lines[0]
    listed = out.split("rc=1")[1].split()
    assert listed[:2] == ["0000002", "verified"]  # no .tmp-*; the step-2 checkpoint verifies


def test_a_checkpoint_write_failing_midway_leaves_no_temporary_folder_and_keeps_the_last_one(tmp_path, monkeypatch):
    """The disk fills while the files are written (after the space check passed)."""
    from types import SimpleNamespace

    from repa.engine import checkpoint as ckpt
    from repa.engine.train.parallel import DDPStrategy
    from repa.engine.train.run_checkpoints import Counters, RunCheckpoints
    from repa.storage import StorageError

    acc = SimpleNamespace(is_main_process=True, process_index=0, num_processes=1, scaler=None,
                          wait_for_everyone=lambda: None, unwrap_model=lambda model, **_: model)
    config = load_experiment(ROOT / "experiments" / "quickstart.toml")
    model = torch.nn.Linear(4, 4)
    ema = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoints = RunCheckpoints(config, acc, DDPStrategy(acc), tmp_path / "checkpoints")
    first = checkpoints.save(model, ema, optimizer, Counters(step=2))
    saved = ckpt._save_tensors

    def disk_fills(tensors, path):
        saved(tensors, path)
        raise type("SafetensorError", (Exception,), {})(
            f'Error while serializing: I/O error: No space left on device (os error 28) at path "{path}"')

    monkeypatch.setattr(ckpt, "_save_tensors", disk_fills)
    with pytest.raises(StorageError, match=r"\.tmp-0000004: cannot write: no space left on the device \(\d"):
        checkpoints.save(model, ema, optimizer, Counters(step=4))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["0000002"]
    ckpt.verify(first)


@pytest_slow
def test_disk_full_during_preprocess_is_one_line(tmp_path):
    reason = _can_mount_tmpfs()
    if reason:
        pytest.skip(reason)
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src / f"{i}.png")
    disk = tmp_path / "disk"
    script = (f"{sys.executable} -m repa.cli preprocess images {tmp_path / 'src'} {disk}/out --resolution 64 "
              f"--workers 1; echo rc=$?; find {disk} -name '*.tmp' | wc -l")
    result = _in_tmpfs(script, disk, "64k")
    assert "rc=1" in result.stdout and result.stdout.split("rc=1")[1].split()[0] == "0", result.stderr[-2000:]
    assert TRACEBACK not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error")]
    assert line.startswith(f"error: {disk}/out/images/") and "no space left on the device" in line


# ============================================================================
# repa preprocess images and symlinks
# ============================================================================


def test_symlink_loops_dangling_links_and_links_back_into_the_source(tmp_path):
    from repa.engine.prep import preprocess

    src = tmp_path / "src"
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(src / cls / f"{i}.png")
    (src / "a" / "loop.png").symlink_to("loop.png")  # refers to itself
    (src / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (src / "everything").symlink_to(".")  # would make a class of every image
    (src / "again").symlink_to(src / "a")  # the same class twice
    (src / "spin").symlink_to("spin")  # a folder-level loop
    summary = preprocess.preprocess_images(src, tmp_path / "dest", 16, workers=1, progress=False)
    assert summary.written == 4
    reasons = dict(summary.skipped)
    assert set(reasons) == {str(src / "a" / "loop.png"), str(src / "b" / "gone.png"), str(src / "everything"),
                            str(src / "again"), str(src / "spin")}
    assert "holds SRC itself" in reasons[str(src / "everything")]
    assert "same folder as class 'a'" in reasons[str(src / "again")]
    labels = json.loads((tmp_path / "dest" / "images" / "dataset.json").read_text())["labels"]
    assert sorted(label for _, label in labels) == [0, 0, 1, 1]
