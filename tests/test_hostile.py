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
