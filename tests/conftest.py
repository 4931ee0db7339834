"""Shared fixtures: the official-code reference tensors, a CLI runner, tiny experiment files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"  # tensors computed with the official code; see its README.md


@pytest.fixture(scope="session", params=["official_tiny_sit", "official_tiny_sit_scaled"])
def official(request):
    """(tiny SiT checkpoint, io tensors) computed with the official REPA code, twice: the shared fixture and
    one whose adaLN and output layers have full-scale weights (tests/fixtures/README.md), where a change of
    any operation (a GELU flavour) moves the outputs far beyond the tolerances."""
    import torch

    model = torch.load(FIXTURES / f"{request.param}.pt", weights_only=True)
    io = torch.load(FIXTURES / f"{request.param}_io.pt", weights_only=True)
    return model, io


@pytest.fixture(scope="session")
def official_model(official):
    from repa.compat import official_sit

    checkpoint, _ = official
    model = official_sit(**checkpoint["config"])
    model.load_state_dict(checkpoint["ema"], strict=True)
    return model.eval()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """All tests of a run share one repa cache: the offline digits models train once per run."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base  # pytest-xdist workers
    monkeypatch.setenv("REPA_CACHE", str(shared / "repa-cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # A fixed thread count: tests compare runs bit for bit, and the thread policy (repa.threads, tested on its
    # own) would follow whatever else the machine is doing. The cores, as PyTorch's default.
    if "OMP_NUM_THREADS" not in os.environ:
        monkeypatch.setenv("REPA_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                               else os.cpu_count() or 1))


def run_cli(*args, env=None, cwd=None, timeout=600):
    """Run `python -m repa.cli ...` in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "repa.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def write_toml(tmp_path):
    def write(text: str, name: str = "exp.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


TINY = """
[experiment]
name = "tiny"
output_dir = "{out}"
seed = 0

[data]
kind = "digits"
resolution = 16

[autoencoder]
kind = "identity"

[backbone]
kind = "sit"
depth = 2
hidden_size = 32
num_heads = 2
patch_size = 4

[[alignment]]
encoder = { kind = "digits-convnet", epochs = 2 }
depth = 1
projector_dim = 32

[train]
global_batch_size = 8
max_steps = 4
log_every = 1
sample_every = 1000
checkpoint_every = 2
sample_images = 4
num_workers = 0
mixed_precision = "no"

[sample]
sampler = "euler"
steps = 2
"""


@pytest.fixture
def tiny_toml(write_toml, tmp_path):
    """A complete, fast experiment (digits 16 px, 2-block SiT) writing under tmp_path/exps."""
    return lambda extra="": write_toml(TINY.replace("{out}", str(tmp_path / "exps")) + extra)


@pytest.fixture
def given_encoders():
    """The registries with the test-only "given" encoder kind (tests/given_encoder.py) for this test."""
    from repa.plugins import load_components, set_components

    set_components(load_components(plugins=["tests.given_encoder"]))
    yield
    set_components(None)


OFFICIAL_TINY = """
[data]
kind = "digits"
resolution = 64

[autoencoder]
kind = "sd-vae"

[backbone]
kind = "sit"
depth = 4
hidden_size = 64
num_heads = 4
patch_size = 2

[[alignment]]
encoder = { kind = "given", dim = 32, tokens = 16 }
depth = 2
projector_dim = 128
coeff = 1.0

[[alignment]]
encoder = { kind = "given", dim = 48, tokens = 16 }
depth = 2
projector_dim = 128
coeff = 1.0

[sample]
sampler = "euler"
"""


@pytest.fixture
def official_harness(official, given_encoders, write_toml):
    """The official tiny SiT (fixture weights) with its two projectors as [[alignment]] entries, in a
    repa.testing.ObjectiveHarness: the trainer's own objective on the official inputs."""
    from repa.config import load_experiment
    from repa.engine.network import network_layout
    from repa.testing import ObjectiveHarness

    checkpoint, _ = official
    harness = ObjectiveHarness(load_experiment(write_toml(OFFICIAL_TINY, "official.toml")), num_classes=1000)
    harness.network.load_state_dict(network_layout(checkpoint["ema"], harness.network), strict=True)
    return harness


TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


@pytest.fixture
def tiny_clip(monkeypatch, tmp_path):
    """ViT-L-14's text tower at a tiny width: an open_clip CLIP with random weights saved as the Hugging Face
    release file in a fresh cache; open_clip's config of ViT-L-14 is the tiny one while the test runs."""
    import json

    import open_clip
    import torch

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(open_clip, "get_model_config", lambda name: json.loads(json.dumps(TINY_CLIP)))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**json.loads(json.dumps(TINY_CLIP)), quick_gelu=True)
    folder = tmp_path / "hub" / "models--timm--vit_large_patch14_clip_224.openai" / "snapshots" / "abc"
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return model
