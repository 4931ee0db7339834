"""Paths, prediction targets, weightings, alignment losses, and the composed objective against
the official REPA loss values."""

from __future__ import annotations

import math

import pytest
import torch

from repa.components.alignment.losses import CosineAlignment, NTXentAlignment
from repa.components.path.interpolants import CosinePath, LinearPath
from repa.components.prediction.targets import DataPrediction, NoisePrediction, VelocityPrediction
from repa.components.weighting import LogitNormalParams, LognormalParams
from repa.components.weighting.schedules import LogitNormalWeighting, LognormalWeighting, UniformWeighting

PATHS = [LinearPath(), CosinePath()]
TARGETS = [VelocityPrediction(), NoisePrediction(), DataPrediction()]


@pytest.mark.parametrize("path", PATHS, ids=["linear", "cosine"])
def test_path_derivatives_match_finite_differences(path):
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    alpha, sigma, d_alpha, d_sigma = path.coefficients(t)
    a_plus, s_plus, _, _ = path.coefficients(t + h)
    a_minus, s_minus, _, _ = path.coefficients(t - h)
    torch.testing.assert_close(d_alpha, (a_plus - a_minus) / (2 * h), atol=1e-8, rtol=0)
    torch.testing.assert_close(d_sigma, (s_plus - s_minus) / (2 * h), atol=1e-8, rtol=0)
    assert torch.allclose(path.coefficients(torch.zeros(1, dtype=torch.float64))[0], torch.ones(1, dtype=torch.float64))
    assert torch.allclose(path.coefficients(torch.ones(1, dtype=torch.float64))[1], torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize("path", PATHS, ids=["linear", "cosine"])
def test_noise_ratio_inverts_sigma_over_alpha(path):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    alpha, sigma, _, _ = path.coefficients(t)
    torch.testing.assert_close(path.t_from_noise_ratio(sigma / alpha), t)


@pytest.mark.parametrize("path", PATHS, ids=["linear", "cosine"])
@pytest.mark.parametrize("target", TARGETS, ids=["v", "eps", "x0"])
def test_prediction_conversions_are_exact(path, target):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    alpha, sigma, d_alpha, d_sigma = path.broadcast(t, x0)
    x_t = alpha * x0 + sigma * eps
    out = target.target(x0, eps, t, path)
    got_x0, got_eps = target.to_x0_eps(out, x_t, t, path)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)
    # velocity equals the time derivative of x_t along the path (finite differences)
    h = 1e-6
    a_p, s_p, _, _ = path.broadcast(t + h, x0)
    a_m, s_m, _, _ = path.broadcast(t - h, x0)
    fd_velocity = ((a_p - a_m) * x0 + (s_p - s_m) * eps) / (2 * h)
    torch.testing.assert_close(target.to_velocity(out, x_t, t, path), fd_velocity, atol=1e-7, rtol=1e-6)


def test_targets_agree_with_each_other():
    path, g = CosinePath(), torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    alpha, sigma, _, _ = path.broadcast(t, x0)
    x_t = alpha * x0 + sigma * eps
    velocities = [p.to_velocity(p.target(x0, eps, t, path), x_t, t, path) for p in TARGETS]
    for v in velocities[1:]:
        torch.testing.assert_close(v, velocities[0])


def test_weightings_are_reproducible_and_follow_their_laws():
    path = LinearPath()
    uniform = UniformWeighting()
    a = uniform.sample_t(1000, torch.Generator().manual_seed(3), path)
    b = uniform.sample_t(1000, torch.Generator().manual_seed(3), path)
    assert torch.equal(a, b) and 0 <= a.min() and a.max() < 1
    lognormal = LognormalWeighting(LognormalParams())
    g = torch.Generator().manual_seed(5)
    t_linear = lognormal.sample_t(20000, g, LinearPath())
    normal = torch.randn(20000, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(t_linear, normal.exp() / (1 + normal.exp()))  # REPA: sigma / (1 + sigma)
    t_cos = lognormal.sample_t(20000, torch.Generator().manual_seed(5), CosinePath())
    torch.testing.assert_close(t_cos, 2 / math.pi * torch.atan(normal.exp()))
    logit = LogitNormalWeighting(LogitNormalParams(mean=0.5, std=0.8)).sample_t(50000, torch.Generator().manual_seed(2), path)
    z = torch.log(logit / (1 - logit))
    assert abs(z.mean().item() - 0.5) < 0.02 and abs(z.std().item() - 0.8) < 0.02


def test_cosine_alignment_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    expected = -torch.stack([
        torch.stack([torch.dot(p[b, n], z[b, n]) / (p[b, n].norm() * z[b, n].norm()) for n in range(5)]).mean()
        for b in range(3)
    ])
    torch.testing.assert_close(CosineAlignment()(p, z), expected)


def test_nt_xent_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    tau = 0.2
    pn, zn = torch.nn.functional.normalize(p, dim=-1), torch.nn.functional.normalize(z, dim=-1)
    expected = []
    for b in range(2):
        logits = pn[b] @ zn[b].T / tau
        expected.append(torch.stack([-(logits[n, n] - torch.logsumexp(logits[n], 0)) for n in range(4)]).mean())
    torch.testing.assert_close(NTXentAlignment(tau, "image")(p, z), torch.stack(expected))
    aligned = NTXentAlignment(tau)(z.clone(), z)
    assert (aligned < NTXentAlignment(tau)(p, z)).all()


@pytest.mark.parametrize("loss", [CosineAlignment(), NTXentAlignment()], ids=["cosine", "nt-xent"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_alignment_is_float32_and_finite_under_low_precision(loss, dtype):
    # |p|^2 = 8 * 300^2 overflows float16 (max 65504): normalising in fp16 gives inf / NaN.
    p = torch.full((2, 4, 8), 300.0, dtype=dtype)
    z = torch.full((2, 4, 8), 1e-3, dtype=dtype)
    if dtype == torch.float16:
        assert not torch.isfinite((p * p).sum(-1)).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(p, z)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if isinstance(loss, CosineAlignment):
        torch.testing.assert_close(out, torch.full((2,), -1.0))


@pytest.mark.parametrize("path_name", ["linear", "cosine"])
def test_objective_reproduces_the_official_loss(official, official_harness, path_name):
    """The trainer's own objective (step context, the [[alignment]] terms, their projectors) on the official
    inputs gives the official denoising and projection losses."""
    from repa.interfaces import EncoderOutput

    _, io = official
    inputs, expected = io["loss_inputs"], io["loss"][path_name]
    harness = official_harness
    harness.objective.path = {"linear": LinearPath(), "cosine": CosinePath()}[path_name]  # the official path_type
    x_t, target = harness.objective.inputs(inputs["images"], inputs["noise"], inputs["t"])
    torch.testing.assert_close(x_t, expected["model_input"], atol=1e-6, rtol=0)
    torch.testing.assert_close(target, expected["target"], atol=1e-6, rtol=0)
    encoders = {entry.encoder.identity(): EncoderOutput(z) for entry, z in zip(harness.config.alignment, inputs["zs"])}
    harness.network.eval()
    with torch.no_grad():
        parts = harness.loss(latents=inputs["images"], noise=inputs["noise"], t=inputs["t"], y=inputs["y"],
                             encoders=encoders)
    torch.testing.assert_close(parts.denoising, expected["denoising_loss"], atol=1e-5, rtol=0)
    proj_loss = (parts.total - parts.denoising.mean()).item()
    assert abs(proj_loss - expected["proj_loss"].item()) < 1e-6
    assert abs((parts.terms["align_loss_0"].mean() + parts.terms["align_loss_1"].mean()).item() / 2
               - expected["proj_loss"].item()) < 1e-6


def test_stopped_alignment_contributes_nothing_but_keeps_gradients_flowing(official_harness):
    from repa.interfaces import EncoderOutput

    harness = official_harness
    for slot in harness.slots:
        slot.stop_after = 10
    x = torch.randn(2, 4, 8, 8)
    encoders = {entry.encoder.identity(): EncoderOutput(torch.randn(2, 16, dim))
                for entry, dim in zip(harness.config.alignment, (32, 48))}
    args = dict(latents=x, noise=torch.randn_like(x), t=torch.tensor([0.3, 0.7]), y=torch.tensor([1, 2]),
                encoders=encoders)
    assert harness.slots[0].active(9) and not harness.slots[0].active(10)
    late = harness.loss(**args, step=10)
    assert torch.allclose(late.total, late.denoising.mean())
    harness.network.zero_grad()
    late.total.backward()
    assert harness.network.projectors["0"][0].weight.grad is not None
