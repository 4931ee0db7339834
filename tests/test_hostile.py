"""Hostile artifacts: files that would run code, or reach outside their folder, when repa reads them.

A TorchScript archive runs its `__setstate__` under torch.jit.load; the one built here creates a file
(torch.from_file with shared=True) when that happens, so 'no file appeared' proves nothing ran."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Tuple

import pytest
import torch
import torch.nn as nn

from repa.errors import CheckpointError
from repa.weights import file_digest, load_file, read_torchscript_tensors
from tests.conftest import run_cli

TRACEBACK = "Traceback (most recent call last)"


class Planted(nn.Module):
    """Its TorchScript `__setstate__` creates the file at `self.path` when the archive is loaded."""

    def __init__(self, path: str):
        super().__init__()
        self.register_buffer("w", torch.ones(2))
        self.path = path

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return (self.w, self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
        self.w = state[0]
        self.path = state[1]
        self.training = state[2]
        self.w = self.w + torch.from_file(self.path, True, 16)[:2] * 0


def planted_archive(archive: Path, marker: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.script(Planted(str(marker))).save(str(archive))
    return archive


def test_the_planted_archive_does_write_when_torch_jit_loads_it(tmp_path):
    """The probe itself works: without repa's guard this file is written (so its absence below means something)."""
    marker = tmp_path / "written"
    archive = planted_archive(tmp_path / "planted.pt", marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(archive))
    assert marker.is_file()


def test_load_file_refuses_torchscript_without_running_it(tmp_path):
    marker = tmp_path / "written"
    archive = planted_archive(tmp_path / "planted.pt", marker)
    with pytest.raises(CheckpointError) as info:
        load_file(archive)
    assert str(info.value).startswith(f"{archive}: is a TorchScript archive, which carries code")
    assert not marker.exists()
    assert read_torchscript_tensors(archive) == {}  # its state is a tuple: no module attributes to read
    assert not marker.exists()


def test_torchscript_tensors_are_read_exactly_without_its_code(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(3, 4)
            self.blocks = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2).half())
            self.register_buffer("mask", torch.triu(torch.ones(3, 3)))

        def forward(self, x):
            return self.blocks[0](self.stem(x)) + self.mask.sum()

    net = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, torch.randn(2, 3), check_trace=False).save(str(tmp_path / "net.pt"))
    tensors = read_torchscript_tensors(tmp_path / "net.pt")
    expected = net.state_dict()
    assert tensors.keys() == expected.keys()
    for key, value in expected.items():
        assert tensors[key].dtype == value.dtype and torch.equal(tensors[key], value), key


def test_a_pickle_global_inside_a_torchscript_archive_is_refused(tmp_path):
    """data.pkl naming anything but modules, tensors and OrderedDict (here os.system) is refused by name."""
    import zipfile

    archive = planted_archive(tmp_path / "planted.pt", tmp_path / "written")
    hostile = tmp_path / "hostile.pt"
    payload = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."  # os.system("true")
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(hostile, "w") as target:
        for name in source.namelist():
            target.writestr(name, payload if name.endswith("/data.pkl") else source.read(name))
    with pytest.raises(CheckpointError, match=r"refers to os\.system; only module attributes and tensors are read"):
        read_torchscript_tensors(hostile)


def _one_line_error(result, code: int) -> str:
    assert result.returncode == code, result.stderr[-2000:]
    assert TRACEBACK not in result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_sample_checkpoint_that_is_torchscript_runs_nothing(tiny_toml, tmp_path):
    marker = tmp_path / "written"
    archive = planted_archive(tmp_path / "model.pt", marker)
    result = run_cli("sample", str(tiny_toml()), "--checkpoint", str(archive), "--num-samples", "2",
                     "--out", str(tmp_path / "samples"), "--no-progress")
    line = _one_line_error(result, 1)
    assert "is a TorchScript archive, which carries code" in line and str(archive) in line
    assert not marker.exists()


def _replace_in_checkpoint(folder: Path, name: str, archive: Path) -> None:
    """Put `archive` in the checkpoint as `name`, with the manifest updated so it verifies."""
    (folder / name).write_bytes(archive.read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest[name] = {"bytes": (folder / name).stat().st_size, "blake2b": file_digest(folder / name)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rng-0.pt", "optimizer.pt"])
def test_torchscript_inside_a_checkpoint_folder_runs_nothing_on_resume(tiny_toml, tmp_path, name):
    experiment = tiny_toml()
    run = tmp_path / "exps" / "tiny"
    first = run_cli("run", str(experiment), "--no-progress", "--set", "train.max_steps=2")
    assert first.returncode == 0, first.stderr[-2000:]
    folder = run / "checkpoints" / "0000002"
    marker = tmp_path / "written"
    _replace_in_checkpoint(folder, name, planted_archive(tmp_path / "planted.pt", marker))
    explicit = run_cli("run", str(experiment), "--no-progress", "--set", "train.max_steps=4", "--resume", str(folder))
    line = _one_line_error(explicit, 1)
    assert line == (f"error: {folder / name}: is a TorchScript archive, which carries code that loading it would run; "
                    "repa never loads one as a checkpoint or weights file. Use a safetensors file or a torch.save'd "
                    "state dict")
    latest = run_cli("run", str(experiment), "--no-progress", "--set", "train.max_steps=4", "--resume")
    _one_line_error(latest, 1)  # the only checkpoint is unusable: nothing to start over
    assert "is a TorchScript archive" in latest.stderr
    assert not marker.exists()


# ============================================================================
# Manifests that point outside their folder: refused before anything is opened
# ============================================================================


@pytest.mark.parametrize("entry", ["../../../../etc/shadow", "/etc/shadow", "sub/../../x.pt"])
def test_a_checkpoint_manifest_naming_a_file_outside_its_folder_is_refused_unopened(tmp_path, monkeypatch, entry):
    from repa.engine import checkpoint as ckpt

    folder = tmp_path / "checkpoints" / "0000002"
    folder.mkdir(parents=True)
    manifest = {name: {"bytes": 1, "blake2b": "x"} for name in ckpt.FILES}
    manifest[entry] = {"bytes": 1, "blake2b": "x"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    opened = []
    monkeypatch.setattr(ckpt, "file_digest", lambda path, *a, **k: opened.append(str(path)) or "")
    with pytest.raises(CheckpointError) as info:
        ckpt.verify(folder)
    assert f"entry {entry!r}" in str(info.value) and "refused" in str(info.value)
    assert opened == []


def test_a_checkpoint_manifest_entry_linked_outside_is_refused(tmp_path):
    from repa.engine import checkpoint as ckpt

    folder = tmp_path / "0000002"
    folder.mkdir()
    (tmp_path / "secret").write_text("x")
    (folder / "optimizer.pt").symlink_to(tmp_path / "secret")
    (folder / "manifest.json").write_text(json.dumps({name: {"bytes": 1, "blake2b": "x"} for name in ckpt.FILES}))
    with pytest.raises(CheckpointError, match=r"entry 'optimizer.pt' leads outside its folder"):
        ckpt.verify(folder)


def test_a_packed_manifest_naming_a_shard_outside_its_folder_is_refused_unopened(tmp_path, monkeypatch):
    import numpy as np

    from repa.errors import DataError
    from repa.packs import read_manifest

    (tmp_path / "outside").mkdir()
    np.save(tmp_path / "outside" / "x.npy", np.zeros(3))
    root = tmp_path / "pack"
    root.mkdir()
    manifest = {"format": "repa-packed", "count": 1, "complete": True,
                "shards": [{"count": 1, "files": {"images": {"name": "../outside/x.npy", "bytes": 1}}}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("a shard outside the folder was opened"))
    with pytest.raises(DataError, match=r"entry '../outside/x.npy' names a path outside its folder"):
        read_manifest(root)


# ============================================================================
# A read-only shared cache that holds the networks is read, not refused
# ============================================================================


def test_a_cached_digits_network_loads_from_a_cache_it_cannot_write(monkeypatch):
    import builtins

    from repa.components import digits_models as dm

    model, path = dm.cached_model("digits-convnet", dm.DigitsConvEncoder, 0, 2)
    real_open = builtins.open

    def read_only(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    again, same = dm.cached_model("digits-convnet", dm.DigitsConvEncoder, 0, 2)
    assert same == path and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# ============================================================================
# Preemption signals: each stops training with a checkpoint; during setup, one line and nothing written
# ============================================================================


def _wait_for(path: Path, process, timeout: float = 120) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        if path.is_file() and path.read_text().count("\n") >= 2:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGUSR1", "SIGUSR2", "SIGHUP"])
def test_a_preemption_signal_stops_with_a_checkpoint_and_the_run_resumes(tiny_toml, tmp_path, name):
    import signal
    import subprocess
    import sys

    experiment = tiny_toml()
    args = [sys.executable, "-m", "repa.cli", "run", str(experiment), "--no-progress", "--set", "train.max_steps=100000",
            "--set", "train.checkpoint_every=100000"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "exps" / "tiny"
    assert _wait_for(run / "metrics.jsonl", process)
    process.send_signal(getattr(signal, name))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert f"{name} received; finishing this step and writing a checkpoint" in stderr and TRACEBACK not in stderr
    assert "Resume with: repa run" in stderr
    log = (run / "log.txt").read_text()
    assert f"{name} received" in log and "stopped at step" in log
    assert any(p.name.isdigit() for p in (run / "checkpoints").iterdir())


@pytest.mark.slow
def test_sigterm_while_the_run_is_built_is_one_line_and_writes_nothing(tiny_toml, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    experiment = tiny_toml()
    env = {**__import__("os").environ, "REPA_CACHE": str(tmp_path / "fresh-cache")}  # the encoder trains on first use
    process = subprocess.Popen([sys.executable, "-m", "repa.cli", "run", str(experiment), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(4)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == ("error: SIGTERM received while the run was being built; stopped before "
                                               "training, nothing was written")
    assert not (tmp_path / "exps" / "tiny").exists()


# ============================================================================
# One line where a traceback was, and no silent garbage
# ============================================================================


@pytest.mark.slow
def test_a_term_raising_inside_a_step_checkpoints_the_last_step_and_is_one_line(tiny_toml, tmp_path):
    (tmp_path / "flaky_term.py").write_text("""
import torch
from repa.interfaces import Term, TermParams
from repa.plugins import hookimpl


class Flaky(Term):
    def loss(self, ctx):
        if ctx.step == 3:
            raise MemoryError("out of memory in the plugin")
        return torch.zeros(len(ctx.t))


@hookimpl
def repa_register_terms(registry):
    registry.add("flaky", lambda params, *, facts: Flaky(), TermParams)
""")
    experiment = tiny_toml('\n[[term]]\nkind = "flaky"\n')
    result = run_cli("-p", "flaky_term", "run", str(experiment), "--no-progress", "--set", "train.max_steps=6",
                     "--set", "train.checkpoint_every=100", env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    run = tmp_path / "exps" / "tiny"
    line = _one_line_error(result, 1)
    assert line.startswith("error: step 4 failed: MemoryError: out of memory in the plugin; the state after step 3 is in ")
    assert (run / "checkpoints" / "0000003" / "ema.safetensors").is_file()
    from repa.engine import checkpoint as ckpt

    ckpt.verify(run / "checkpoints" / "0000003")


def test_evaluate_refuses_unreadable_or_meaningless_sample_files_in_one_line(tmp_path):
    import numpy as np

    cases = {
        "empty.npz": ({}, "no 'arr_0'"),
        "objects.npz": ({"arr_0": np.array([object(), 1], dtype=object)}, "not a readable .npz of arrays"),
        "flat.npz": ({"arr_0": np.zeros((4, 8, 8), dtype=np.uint8)}, "expected uint8 [N, H, W, 3]"),
        "none.npz": ({"arr_0": np.zeros((0, 8, 8, 3), dtype=np.uint8)}, "with N >= 1"),
        "negative.npz": ({"arr_0": np.zeros((2, 8, 8, 3), dtype=np.uint8), "labels": np.array([1, -5])}, "labels hold -5"),
        "strings.npz": ({"arr_0": np.zeros((2, 8, 8, 3), dtype=np.uint8), "labels": np.array(["a", "b"])},
                        "expected integers [2]"),
    }
    for name, (arrays, expected) in cases.items():
        np.savez(tmp_path / name, **arrays)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "flat.npz").read_bytes()[:80])
    cases["cut.npz"] = (None, "not a readable .npz of arrays (BadZipFile")
    for name, (_, expected) in cases.items():
        result = run_cli("evaluate", str(tmp_path / name), "--metrics", "digits-fd")
        assert expected in _one_line_error(result, 1), name


def test_digits_accuracy_refuses_labels_that_are_not_digits(tmp_path):
    import numpy as np

    np.savez(tmp_path / "s.npz", arr_0=np.zeros((2, 32, 32, 3), dtype=np.uint8), labels=np.array([3, 999]))
    result = run_cli("evaluate", str(tmp_path / "s.npz"), "--metrics", "digits-accuracy")
    assert "digits-accuracy: the samples' labels hold 999; the digits are classes 0..9" in _one_line_error(result, 1)


def test_a_reference_that_is_not_finite_is_refused(tmp_path, monkeypatch):
    import numpy as np

    from repa.components.metric import adm
    from repa.errors import DataError

    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((2, 8, 8, 3), dtype=np.uint8), mu=np.full(4, np.nan), sigma=np.eye(4))
    fake = {"pool": np.zeros((2, 4)), "spatial": np.zeros((2, 4))}
    monkeypatch.setattr(adm, "_extractor", lambda weights: (lambda images, batch: fake))  # no Inception weights here
    adm._reference.cache_clear()
    with pytest.raises(DataError, match=r"ref.npz: mu is not a finite float array"):
        adm._reference(str(tmp_path / "ref.npz"), None, 2, 8)


def test_sample_arguments_out_of_range_are_one_line():
    for args, expected in ((["--num-samples", "0"], "must be at least 1, got 0"),
                           (["--num-samples", "-5"], "must be at least 1, got -5"),
                           (["--seed", str(2 ** 70)], "argument --seed: must be between 0 and")):
        result = run_cli("sample", *args)
        assert result.returncode == 2 and expected in result.stderr and TRACEBACK not in result.stderr


def test_a_cache_that_is_a_file_and_a_run_without_checkpoints_are_one_line(tiny_toml, tmp_path):
    (tmp_path / "cache").write_text("")
    result = run_cli("run", str(tiny_toml()), "--no-progress", env={"REPA_CACHE": str(tmp_path / "cache")})
    assert "the repa cache (REPA_CACHE, else $XDG_CACHE_HOME/repa) is a file" in _one_line_error(result, 1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.resolved.toml").write_text(tiny_toml().read_text() + '\n[eval]\nmetrics = ["digits-fd"]\n')
    result = run_cli("evaluate", str(run))
    assert _one_line_error(result, 1).startswith(f"error: {run}: no checkpoint to evaluate")


def test_metrics_with_a_byte_that_is_not_utf8_still_read(tmp_path):
    from repa.engine.record import RunRecord, read_records

    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \xff}\n{"step": 3, "loss": 3.0}\n')
    assert [r["step"] for r in read_records(tmp_path)] == [1, 3]
    RunRecord(tmp_path).rewind(2)
    assert [r["step"] for r in read_records(tmp_path)] == [1]


def test_a_checkpoint_folder_not_named_by_digits_is_not_a_step(tmp_path):
    from repa.engine import checkpoint as ckpt
    from repa.engine.generate.sampling import folder_step

    for name in ("0000002", "0000010", "latest", "²"):
        (tmp_path / name).mkdir()
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["0000002", "0000010"]
    assert folder_step(tmp_path / "diagnostic-0000005") == 5 and folder_step(tmp_path / "latest") is None


# ============================================================================
# Caches and packs record what made them: other settings are refused, changed sources redone
# ============================================================================


def test_features_for_other_encoder_settings_are_refused_and_the_cache_kept(tiny_toml, tmp_path):
    experiment, cache = tiny_toml(), tmp_path / "cache"
    assert run_cli("preprocess", "features", str(experiment), str(cache), "--encoder", "digits-convnet").returncode == 0
    record, tokens = (cache / "features.json").read_bytes(), (cache / "tokens-00000.npy").read_bytes()
    other = run_cli("preprocess", "features", str(experiment), str(cache), "--encoder", "digits-convnet",
                    "--set", 'alignment.encoder={ kind = "digits-convnet", epochs = 3 }')
    line = _one_line_error(other, 1)
    assert str(cache) in line and "encoder_params" in line and "'epochs': 2" in line and "delete" in line
    assert (cache / "features.json").read_bytes() == record and (cache / "tokens-00000.npy").read_bytes() == tokens
    again = run_cli("preprocess", "features", str(experiment), str(cache), "--encoder", "digits-convnet")
    assert again.returncode == 0 and ": 0 samples" in again.stdout  # the same settings: nothing to redo


def _images_folder(root: Path, count: int, resolution: int = 16) -> Path:
    """The official layout's images/ with dataset.json, as `preprocess images` writes it."""
    import numpy as np
    from PIL import Image

    (root / "images" / "00000").mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = []
    for i in range(count):
        name = f"00000/img{i:08d}.png"
        Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(root / "images" / name)
        labels.append([name, i % 3])
    (root / "images" / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root


def test_pack_redoes_the_shard_whose_source_image_changed_and_keeps_the_others(tmp_path):
    import os

    import numpy as np
    from PIL import Image

    from repa.engine.prep.preprocess import pack

    src = _images_folder(tmp_path / "src", 10)
    dest = tmp_path / "packed"
    assert pack(src, dest, 16, shard_size=4, workers=0, progress=False, num_classes=3) == 10
    first_shard = (dest / "images-00000.npy").read_bytes()
    changed = np.full((16, 16, 3), 7, dtype=np.uint8)
    path = src / "images" / "00000" / "img00000005.png"
    Image.fromarray(changed).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # even within one clock tick
    assert pack(src, dest, 16, shard_size=4, workers=0, progress=False, num_classes=3) == 6  # shards 1 and 2
    assert (dest / "images-00000.npy").read_bytes() == first_shard
    np.testing.assert_array_equal(np.load(dest / "images-00001.npy")[1], changed.transpose(2, 0, 1))
    assert pack(src, dest, 16, shard_size=4, workers=0, progress=False, num_classes=3) == 0


def test_pack_into_a_folder_made_with_other_settings_is_refused(tmp_path):
    from repa.engine.prep.preprocess import pack
    from repa.errors import DataError

    src = _images_folder(tmp_path / "src", 4)
    dest = tmp_path / "packed"
    pack(src, dest, 16, shard_size=4, workers=0, progress=False, num_classes=3)
    manifest = (dest / "manifest.json").read_bytes()
    with pytest.raises(DataError, match=r"packed: holds a packed dataset made with other settings "
                                        r"\(num_classes differ: num_classes was 3\)"):
        pack(src, dest, 16, shard_size=4, workers=0, progress=False, num_classes=10)
    assert (dest / "manifest.json").read_bytes() == manifest


# ============================================================================
# Images that decode to too many bytes, and workers that die
# ============================================================================


@pytest.mark.slow
def test_a_16_bit_bomb_under_pillows_pixel_limit_is_skipped_from_its_header(tmp_path, monkeypatch):
    """The review's bomb: 13000 x 13000 16-bit, a few hundred KB of PNG, under Pillow's pixel limit."""
    from PIL import Image, ImageFile

    from repa.engine.prep.preprocess import crop_one

    Image.new("I;16", (13000, 13000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 2**20 and 13000**2 < Image.MAX_IMAGE_PIXELS * 2
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the bomb was decoded"))
    index, reason, fault = crop_one((0, str(tmp_path / "bomb.png"), str(tmp_path / "out" / "0.png"), 16, "adm"))
    assert fault is None and reason == ("13000x13000 I;16 decodes to 322 MiB, over the 256 MiB bound "
                                        "(a decompression bomb?)")


def test_wide_greyscale_converts_in_bands_exactly_as_at_once():
    import numpy as np

    from repa.components.dataset.crop import _to_8bit

    rng = np.random.default_rng(0)
    for mode, values in (("I;16", rng.integers(0, 65536, (37, 11)).astype(np.uint16)),
                         ("F", rng.random((37, 11), dtype=np.float32)), ("I", rng.integers(0, 256, (37, 11)))):
        whole = _to_8bit(values, mode, rows_at_once=10**9)
        np.testing.assert_array_equal(_to_8bit(values, mode, rows_at_once=4), whole)
        if mode == "I;16":
            np.testing.assert_array_equal(whole, np.rint(values / 257.0).astype(np.uint8))


def _within(seconds: float, call):
    """call() in a thread: a hang fails the test instead of stalling the suite."""
    import threading

    box = {}
    thread = threading.Thread(target=lambda: box.update(result=call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: hung"
    return box["result"]


def test_a_job_whose_worker_dies_is_retried_alone_and_reported_when_it_kills_it_again(tmp_path):
    from repa.engine.prep.preprocess import map_in_processes
    from tests.dying_worker import square_or_die

    results = {}
    jobs = [(i, str(tmp_path)) for i in range(10)]
    _within(300, lambda: map_in_processes(square_or_die, jobs, 2, lambda r: results.__setitem__(*r),
                                          died=lambda job: (job[0], "died")))
    assert results == {**{i: i * i for i in range(10) if i != 3}, 3: "died"}


def test_an_image_whose_worker_dies_is_listed_in_skipped_and_the_rest_are_written(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from repa.engine.prep import preprocess
    from tests.dying_worker import crop_or_die

    src = tmp_path / "src" / "n01"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "killer.png", "c.png", "d.png"):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(src / name)
    monkeypatch.setattr(preprocess, "crop_one", crop_or_die)  # the workers import it by name
    summary = _within(300, lambda: preprocess.preprocess_images(tmp_path / "src", tmp_path / "out", 16, workers=2,
                                                               progress=False))
    assert summary.written == 4 and summary.skipped == [(str(src / "killer.png"), preprocess.WORKER_DIED)]
    images = tmp_path / "out" / "images"
    assert (images / "skipped.txt").read_text() == f"{src / 'killer.png'}\t{preprocess.WORKER_DIED}\n"
    assert len(json.loads((images / "dataset.json").read_text())["labels"]) == 4
    assert not list(images.rglob("*.tmp"))


def test_file_names_that_are_not_utf8_are_cropped_or_listed_as_the_disk_holds_them(tmp_path):
    import os

    import numpy as np
    from PIL import Image

    src = tmp_path / "src" / "n01"
    src.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(os.fsencode(src) + b"/caf\xe9.png")
    (Path(os.fsdecode(os.fsencode(src) + b"/bad\xff.png"))).write_bytes(b"not an image")
    result = run_cli("preprocess", "images", str(tmp_path / "src"), str(tmp_path / "out"), "--resolution", "16",
                     "--workers", "1")
    assert result.returncode == 0 and TRACEBACK not in result.stderr, result.stderr[-2000:]
    assert "1 written, 0 already there, 1 skipped" in result.stdout
    assert f"skipped {src}/bad\\xff.png: UnidentifiedImageError" in result.stdout
    listed = (tmp_path / "out" / "images" / "skipped.txt").read_bytes()
    assert listed.startswith(os.fsencode(src) + b"/bad\xff.png\tUnidentifiedImageError")
