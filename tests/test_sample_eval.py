"""`repa sample` and `repa evaluate`: ADM metrics against closed forms and brute force, the
Inception port, sampling determinism over processes, official checkpoints, run evaluation."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from repa.components.metric.adm import inception_score, manifold_radii, precision_recall
from repa.components.metric.frechet import frechet_distance, gaussian_stats
from repa.components.metric.inception import InceptionFeatures, fid_inception, resize_bilinear_tf1
from repa.errors import MissingWeightsError
from tests.conftest import run_cli

# ============================================================================
# Metrics on synthetic data
# ============================================================================


def test_frechet_distance_of_two_known_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2  # |dmu|^2 + sum (sqrt a - sqrt b)^2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-9)
    rotation = linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    assert frechet_distance(mu1 @ rotation, rotation.T @ s1 @ rotation, mu2 @ rotation, rotation.T @ s2 @ rotation) \
        == pytest.approx(expected, abs=1e-8)


def test_frechet_distance_with_rank_deficient_covariances():
    v = np.array([[1.0], [2.0], [-1.0]])
    rank_one = v @ v.T  # FD(N(0, vv^T), N(0, vv^T)) = 0; FD to N(0, 0) = tr(vv^T)
    assert frechet_distance(np.zeros(3), rank_one, np.zeros(3), rank_one) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(np.ones(3), rank_one, np.zeros(3), np.zeros((3, 3))) == pytest.approx(3 + 6.0, abs=1e-6)
    assert frechet_distance(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.diag([4.0, 0.0])) == pytest.approx(1.0)


def test_frechet_distance_retries_with_an_offset_when_the_root_is_not_finite(monkeypatch):
    from repa.components.metric import frechet

    calls = []

    def sqrtm(matrix):
        calls.append(matrix.copy())
        return np.full_like(matrix, np.nan) if len(calls) == 1 else linalg.sqrtm(matrix)

    monkeypatch.setattr(frechet, "_sqrtm", sqrtm)
    with pytest.warns(UserWarning, match="singular product"):
        value = frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
    np.testing.assert_allclose(calls[1], (np.eye(2) * (1 + 1e-6)) @ (np.eye(2) * (1 + 1e-6)))
    assert value == pytest.approx(0.0, abs=1e-5)


def test_frechet_distance_rejects_a_large_imaginary_square_root(monkeypatch):
    from repa.components.metric import frechet

    monkeypatch.setattr(frechet, "_sqrtm", lambda m: np.eye(2) * (1 + 0.5j))
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_gaussian_stats_are_float64_with_ddof_one():
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))
    assert mu.dtype == np.float64


def test_inception_score_against_a_direct_computation():
    logits = np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for part in (p[:5], p[5:10], p[10:]):
        py = part.mean(0)
        scores.append(np.exp(np.mean([np.sum(q * (np.log(q) - np.log(py))) for q in part])))
    assert inception_score(logits, split_size=5) == pytest.approx(np.mean(scores), rel=1e-5)
    assert inception_score(np.zeros((10, 7), np.float32)) == pytest.approx(1.0)


def brute_precision_recall(ref, samples, k=3):
    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]

    r_ref, r_s = radii(ref), radii(samples)
    d = ((ref[:, None] - samples[None]) ** 2).sum(-1)
    precision = np.mean([(d[:, j] <= r_ref).any() for j in range(len(samples))])
    recall = np.mean([(d[i] <= r_s).any() for i in range(len(ref))])
    return precision, recall


def test_precision_recall_against_brute_force():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(60, 8)).astype(np.float32)
    samples = (rng.normal(size=(50, 8)) * 1.3 + 0.7).astype(np.float32)
    expected = brute_precision_recall(ref.astype(np.float64), samples.astype(np.float64))
    assert precision_recall(ref, samples, k=3, batch=16) == pytest.approx(expected)
    assert manifold_radii(ref, 3, batch=7) == pytest.approx(np.sort(((ref[:, None] - ref[None]) ** 2).sum(-1), 1)[:, 3],
                                                            rel=1e-2)
    assert precision_recall(ref, ref) == (1.0, 1.0)


# ============================================================================
# The Inception port
# ============================================================================


def test_tf1_bilinear_resize():
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    out = resize_bilinear_tf1(x, 4)
    # TF1 align_corners=False: src = dst * in/out = dst / 2, edges clamp to the last pixel
    expected = torch.tensor([[0.0, 5.0, 10.0, 10.0], [10.0, 15.0, 20.0, 20.0], [20.0, 25.0, 30.0, 30.0],
                             [20.0, 25.0, 30.0, 30.0]])
    torch.testing.assert_close(out[0, 0], expected)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A random network saved as pytorch-fid's pt_inception-2015-12-05 file (no num_batches_tracked)."""
    torch.manual_seed(0)
    net = fid_inception()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path


def test_inception_loads_the_real_file_format_and_gives_adm_features(inception_weights):
    extractor = InceptionFeatures(inception_weights, device="cpu")
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    feats = extractor(images, batch_size=2)
    assert feats["pool"].shape == (3, 2048) and feats["spatial"].shape == (3, 2023)
    assert feats["logits"].shape == (3, 1008)
    np.testing.assert_allclose(feats["logits"], feats["pool"] @ extractor.net.fc.weight.numpy().T, rtol=1e-4, atol=1e-4)
    assert (feats["pool"] >= 0).all()  # average of ReLU outputs


def test_missing_inception_weights_say_what_to_download(tmp_path, monkeypatch):
    from repa.plugins import get_components

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from repa.components.metric import adm

    adm._extractor.cache_clear()
    metric = get_components().get("metric", "fid").build()
    with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth") as info:
        metric.features(np.zeros((1, 8, 8, 3), np.uint8))
    assert "\n" not in str(info.value)


def test_adm_metrics_end_to_end_with_a_reference_batch(inception_weights, tmp_path):
    """The CLI path (npz reading, reference statistics, feature sharing) against a direct computation."""
    import shutil

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(inception_weights, hub / inception_weights.name)
    rng = np.random.default_rng(3)
    ref_images = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    sample_images = np.clip(ref_images[:6].astype(int) + rng.integers(-60, 60, (6, 32, 32, 3)), 0, 255).astype(np.uint8)
    extractor = InceptionFeatures(inception_weights, device="cpu")
    ref, smp = extractor(ref_images), extractor(sample_images)
    # ADM reference batches carry precomputed statistics: they, not arr_0, define FID and sFID
    mu_s, sigma_s = gaussian_stats(ref["spatial"][:7])
    reference = tmp_path / "ref.npz"
    np.savez(reference, arr_0=ref_images, mu=ref["pool"].mean(0), sigma=np.cov(ref["pool"], rowvar=False),
             mu_s=mu_s, sigma_s=sigma_s)
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=sample_images)
    result = run_cli("evaluate", str(samples), "--reference", str(reference), "--metrics",
                     "fid,sfid,is,precision,recall", env={"TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 0, result.stderr
    row = result.stdout.strip().splitlines()[-2]
    got = [float(v) for v in row.strip("│ ").split("│")]
    precision, recall = precision_recall(ref["pool"], smp["pool"])
    expected = [frechet_distance(*gaussian_stats(smp["pool"]), ref["pool"].mean(0), np.cov(ref["pool"], rowvar=False)),
                frechet_distance(*gaussian_stats(smp["spatial"]), mu_s, sigma_s),
                inception_score(smp["logits"]), precision, recall]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert got[1] != pytest.approx(frechet_distance(*gaussian_stats(smp["spatial"]), *gaussian_stats(ref["spatial"])),
                                   rel=1e-3)  # the file's mu_s/sigma_s were used, not arr_0's


def test_a_folder_of_real_images_becomes_an_adm_reference_batch(inception_weights, tmp_path):
    """Mixed sizes are ADM-center-cropped; the .npz holds statistics over all images and a subset."""
    from PIL import Image

    from repa.components.dataset.crop import center_crop_arr

    rng = np.random.default_rng(5)
    folder = tmp_path / "real"
    folder.mkdir()
    sizes = [(40, 48), (32, 32), (70, 35), (36, 60), (50, 50)]
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "ref.npz"
    result = run_cli("preprocess", "reference", str(folder), str(out), "--resolution", "32", "--keep", "3",
                     "--weights", str(inception_weights))
    assert result.returncode == 0, result.stderr
    crops = np.stack([center_crop_arr(Image.open(folder / f"{i}.png").convert("RGB"), 32) for i in range(5)])
    feats = InceptionFeatures(inception_weights, device="cpu")(crops)
    with np.load(out) as ref:
        assert ref["arr_0"].shape == (3, 32, 32, 3)
        assert all(any((kept == crop).all() for crop in crops) for kept in ref["arr_0"])
        np.testing.assert_allclose(ref["mu"], feats["pool"].mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ref["sigma"], np.cov(feats["pool"], rowvar=False), rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(ref["mu_s"], feats["spatial"].mean(0), rtol=1e-4, atol=1e-5)
    # the folder itself is a reference too: FID against it equals FID against the batch's statistics
    from repa.components.metric.adm import reference_features

    streamed = reference_features(folder, lambda images: InceptionFeatures(inception_weights, device="cpu")(images), 32)
    np.testing.assert_allclose(streamed["pool"], feats["pool"], rtol=1e-5, atol=1e-6)
    (folder / "broken.png").write_bytes(b"\x89PNG not an image")
    result = run_cli("preprocess", "reference", str(folder), str(out), "--resolution", "32",
                     "--weights", str(inception_weights))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {folder / 'broken.png'}: unreadable image")


# ============================================================================
# Sampling
# ============================================================================


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step tiny run (its checkpoint is what we sample from)."""
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("run")
    experiment = root / "exp.toml"
    experiment.write_text(TINY.replace("{out}", str(root / "exps")) + '\n[eval]\nnum_samples = 12\n'
                          'metrics = ["digits-fd", "digits-accuracy"]\n')
    result = run_cli("run", str(experiment), "--no-progress", "--set", "train.max_steps=2")
    assert result.returncode == 0, result.stderr
    return experiment, root / "exps" / "tiny"


def sample(experiment, out, *extra):
    result = run_cli("sample", str(experiment), "--num-samples", "10", "--batch-size", "4", "--out", str(out),
                     "--no-progress", *extra)
    assert result.returncode == 0, result.stderr
    with np.load(out / "samples.npz") as data:
        return data["arr_0"], data["labels"]


def test_sample_writes_pngs_and_an_adm_npz(trained_run, tmp_path):
    experiment, run = trained_run
    images, labels = sample(experiment, tmp_path / "s", "--checkpoint", str(run), "--labels", "balanced")
    assert images.shape == (10, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [i % 10 for i in range(10)]
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 10
    info = json.loads((tmp_path / "s" / "sample_info.json").read_text())
    assert info["step"] == 2 and info["sample"]["sampler"]["kind"] == "euler"
    settings = json.loads((tmp_path / "s" / "settings.json").read_text())
    assert settings["labels"] == "balanced" and settings["sample"]["allow_tf32"] is True  # as generate.py's --tf32
    _, file_labels = sample(experiment, tmp_path / "f", "--checkpoint", str(run), "--set", 'sample.labels="balanced"')
    assert file_labels.tolist() == labels.tolist()
    _, random_labels = sample(experiment, tmp_path / "r", "--checkpoint", str(run))
    assert json.loads((tmp_path / "r" / "settings.json").read_text())["labels"] == "random"
    assert random_labels.tolist() != labels.tolist()


def test_sampling_an_experiment_draws_from_its_own_run(trained_run, tmp_path):
    experiment, run = trained_run
    result = run_cli("sample", str(experiment), "--num-samples", "4", "--batch-size", "4", "--out",
                     str(tmp_path / "s"), "--no-progress")
    assert result.returncode == 0, result.stderr
    latest = run / "checkpoints" / "0000002"
    assert f"repa: sampling from {latest}, the latest checkpoint of {run}" in result.stderr
    info = json.loads((tmp_path / "s" / "sample_info.json").read_text())
    assert info["step"] == 2 and info["checkpoint"] == str(latest)
    assert result.stdout.splitlines()[-1] == f"next: repa evaluate {tmp_path / 's' / 'samples.npz'} --experiment {experiment}"
    untrained = run_cli("sample", str(experiment), "--set", "experiment.name=untrained", "--num-samples", "4",
                        "--out", str(tmp_path / "u"), "--no-progress")
    assert untrained.returncode == 1 and "Traceback" not in untrained.stderr
    assert untrained.stderr.strip().splitlines()[-1] == (
        f"error: {experiment}: its run {run.parent / 'untrained'} has no checkpoint yet; train it first "
        f"(repa run {experiment}) or pass --checkpoint")


def test_sampling_resumes_and_is_deterministic(trained_run, tmp_path):
    experiment, run = trained_run
    first, _ = sample(experiment, tmp_path / "s", "--checkpoint", str(run))
    for i in (1, 7):
        (tmp_path / "s" / "images" / f"{i:06d}.png").unlink()
    again, _ = sample(experiment, tmp_path / "s", "--checkpoint", str(run))
    np.testing.assert_array_equal(first, again)
    other = run_cli("sample", str(experiment), "--checkpoint", str(run), "--out", str(tmp_path / "s"),
                    "--num-samples", "10", "--labels", "balanced", "--no-progress")
    assert other.returncode == 1
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 's'}: holds samples drawn with other settings (labels differ); choose another --out, "
        "or delete the folder to redraw them")


def test_one_and_two_processes_give_identical_images(trained_run, tmp_path):
    experiment, run = trained_run
    one, labels_one = sample(experiment, tmp_path / "one", "--checkpoint", str(run), "--set", "sample.sampler=euler-maruyama")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "repa.cli", "sample", str(experiment), "--num-samples", "10", "--batch-size", "4",
               "--out", str(tmp_path / "two"), "--checkpoint", str(run), "--no-progress",
               "--set", "sample.sampler=euler-maruyama"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / "two" / "samples.npz") as data:
        np.testing.assert_array_equal(data["arr_0"], one)
        np.testing.assert_array_equal(data["labels"], labels_one)


def test_an_official_training_checkpoint_samples(trained_run, tmp_path):
    from repa.weights import load_file

    experiment, run = trained_run
    ema = load_file(run / "checkpoints" / "0000002" / "ema.safetensors")
    official = tmp_path / "0000002.pt"
    torch.save({"model": ema, "ema": ema, "opt": {}, "args": argparse.Namespace(exp_name="x"), "steps": 2}, official)
    ours, _ = sample(experiment, tmp_path / "ours", "--checkpoint", str(run))
    theirs, _ = sample(experiment, tmp_path / "theirs", "--checkpoint", str(official))
    np.testing.assert_array_equal(ours, theirs)
    bare = tmp_path / "last.pt"
    torch.save(ema, bare)
    np.testing.assert_array_equal(sample(experiment, tmp_path / "bare", "--checkpoint", str(bare))[0], ours)


def test_released_checkpoint_offline_says_what_to_download(tmp_path):
    result = run_cli("sample", "--num-samples", "1", "--out", str(tmp_path / "x"), "--no-progress",
                     env={"REPA_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: released SiT-XL/2 REPA checkpoint not found at")
    assert "dl.dropboxusercontent.com" in line and str(tmp_path / "cache") in line


def test_evaluate_a_run_appends_results_once(trained_run):
    experiment, run = trained_run
    result = run_cli("evaluate", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "digits-fd" in result.stdout and "digits-accuracy" in result.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2]
    assert evals[0]["num_samples"] == 12 and evals[0]["sampler"] == "euler" and evals[0]["steps"] == 2
    assert 0 <= evals[0]["eval"]["digits-accuracy"] <= 1 and evals[0]["eval"]["digits-fd"] > 0
    again = run_cli("evaluate", str(run), "--no-progress")
    assert again.returncode == 0
    assert len([line for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]) == 1
    folders = sorted((run / "eval").iterdir())
    other_metric = run_cli("evaluate", str(run), "--no-progress", "--set", 'eval.metrics=["digits-accuracy"]')
    assert other_metric.returncode == 0, other_metric.stderr
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert len(evals) == 2 and list(evals[1]["eval"]) == ["digits-accuracy"]
    assert evals[1]["eval"]["digits-accuracy"] == evals[0]["eval"]["digits-accuracy"]  # the same samples, rescored
    assert sorted((run / "eval").iterdir()) == folders


def test_class_count_of_a_checkpoint_comes_from_the_dataset_not_the_label_dropout(tiny_toml):
    from repa.config import load_experiment
    from repa.engine.network import checkpoint_layout
    from repa.engine.build import build_network
    from repa.engine.generate.sampling import load_model
    from repa.errors import CheckpointError

    no_dropout = checkpoint_layout(build_network(load_experiment(tiny_toml(), ["train.label_dropout=0"]), 10).state_dict())
    model = load_model(load_experiment(tiny_toml()), no_dropout, "ckpt.pt")  # the experiment says dropout 0.1
    assert model.num_classes == 10 and not model.has_null_label
    with_null = checkpoint_layout(build_network(load_experiment(tiny_toml()), 10).state_dict())
    model = load_model(load_experiment(tiny_toml(), ["train.label_dropout=0"]), with_null, "ckpt.pt")
    assert model.num_classes == 10 and model.has_null_label
    wrong = checkpoint_layout(build_network(load_experiment(tiny_toml()), 12).state_dict())
    with pytest.raises(CheckpointError, match=r"ckpt.pt: the label embedding has 13 rows but data.num_classes is 10"):
        load_model(load_experiment(tiny_toml()), wrong, "ckpt.pt")


def test_batch_size_auto_and_compiled_blocks_draw_the_same_images(trained_run, tmp_path):
    """Samples depend on (seed, index) only: an automatic batch size (64 on a CPU) and regionally
    compiled blocks draw the images a fixed batch of 4 draws (compiled: up to one grey level)."""
    experiment, run = trained_run
    fixed, labels = sample(experiment, tmp_path / "a", "--checkpoint", str(run))
    auto, auto_labels = sample(experiment, tmp_path / "b", "--checkpoint", str(run), "--batch-size", "auto")
    np.testing.assert_array_equal(fixed, auto)
    assert labels.tolist() == auto_labels.tolist()
    compiled, _ = sample(experiment, tmp_path / "c", "--checkpoint", str(run), "--set", "sample.compile=true")
    assert np.abs(compiled.astype(int) - fixed.astype(int)).max() <= 1


# ============================================================================
# Folders held by one process at a time
# ============================================================================

HOLD = """
import sys, time
from repa.engine.locks import EvaluateLock, FolderLock, RunLock
lock = {"run": lambda f: RunLock(f), "evaluate": lambda f: EvaluateLock(f),
        "sample": lambda f: FolderLock(f, "repa sample", "")}[sys.argv[1]](sys.argv[2])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def held(kind: str, folder):
    """Another process holding `folder` as `kind` (run, evaluate, sample) does."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def _refused(result) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


def test_a_second_sampler_into_one_folder_is_refused_and_the_first_ones_files_untouched(trained_run, tmp_path):
    import socket

    experiment, _ = trained_run
    out = tmp_path / "samples"
    with held("sample", out) as pid:
        result = run_cli("sample", str(experiment), "--num-samples", "4", "--out", str(out), "--no-progress")
        assert _refused(result).startswith(f"error: {out}: in use by repa sample PID {pid} on {socket.gethostname()}")
        assert "choose another --out" in result.stderr
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    sample(experiment, out)  # the holder gone, the folder is free


def test_evaluate_is_refused_while_the_run_trains_or_is_evaluated_and_training_while_it_is_evaluated(trained_run):
    experiment, run = trained_run
    records = (run / "metrics.jsonl").read_text()
    with held("run", run) as pid:
        line = _refused(run_cli("evaluate", str(run), "--no-progress"))
        assert line.startswith(f"error: {run}: in use by repa run PID {pid} ") and "evaluate the run when it stops" in line
    with held("evaluate", run) as pid:
        line = _refused(run_cli("evaluate", str(run), "--no-progress"))
        assert line.startswith(f"error: {run}: in use by repa evaluate PID {pid} ") and "wait for it to finish" in line
        line = _refused(run_cli("run", str(experiment), "--no-progress", "--set", "train.max_steps=4", "--resume"))
        assert line.startswith(f"error: {run}: in use by repa evaluate PID {pid} ")
    assert (run / "metrics.jsonl").read_text() == records  # no record from the refused commands


def test_sample_without_out_draws_beside_the_run_and_says_where(trained_run, tmp_path):
    experiment, run = trained_run
    result = run_cli("sample", str(experiment), "--num-samples", "2", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (out,) = (run / "sampled").iterdir()
    latest = sorted(p.name for p in (run / "checkpoints").iterdir())[-1]
    assert out.name.startswith(f"{latest}-euler-2-cfg") and (out / "samples.npz").is_file()
    assert f"into {out}" in result.stderr and list(tmp_path.iterdir()) == []  # nothing in the working folder


def test_sampling_says_the_measured_rate_after_the_first_batch(trained_run, tmp_path):
    experiment, _ = trained_run
    result = run_cli("sample", str(experiment), "--num-samples", "8", "--batch-size", "4", "--out",
                     str(tmp_path / "s"), "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"repa: measured [\d.]+ img/s on the first batch; 4 images left, about \dm\d\ds", result.stderr)


def test_digits_spread_says_how_much_samples_vary_against_real_digits():
    from repa.components.digits_models import digits_split
    from repa.config import validate_component
    from repa.engine.generate.evaluation import evaluate_images

    real = digits_split("heldout").images.permute(0, 2, 3, 1).numpy()
    spread = [validate_component("metric", "digits-spread", {}, "eval.metrics")]
    assert evaluate_images(spread, real, None, None)["digits-spread"] == pytest.approx(1.0, rel=1e-9)
    # one real digit per class, repeated: good digits without variety within a class
    labels = digits_split("heldout").labels.numpy()
    one_each = np.stack([real[np.flatnonzero(labels == k)[0]] for k in range(10)])
    repeated = np.repeat(one_each, 20, axis=0)
    narrow = evaluate_images(spread, repeated, None, None)["digits-spread"]
    assert 0.2 < narrow < 1.0  # the spread between classes remains, the one within each is gone
    assert evaluate_images(spread, np.repeat(real[:1], 50, axis=0), None, None)["digits-spread"] == pytest.approx(0, abs=1e-9)
