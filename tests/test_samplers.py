"""Samplers and guidance: official parity, exactness on a Gaussian toy, reproducibility."""

from __future__ import annotations

import pytest
import torch

from repa.compat import euler_maruyama_sampler, euler_sampler
from repa.components.guidance.cfg import ClassifierFreeGuidance
from repa.components.path.interpolants import CosinePath, LinearPath
from repa.components.prediction.targets import DataPrediction, NoisePrediction, VelocityPrediction
from repa.components.sampler.integrators import EulerMaruyamaSampler, EulerSampler
from repa.engine.network import TrainedNetwork
from repa.engine.generate.denoiser import Denoiser
from repa.engine.generate.generation import generate
from repa.interfaces import Backbone, BackboneOutput

FIXTURE_CASES = {
    "ode_euler_cfg4_high07_10steps": dict(cfg_scale=4.0, guidance_high=0.7),
    "ode_heun_cfg1.8_high07_10steps": dict(cfg_scale=1.8, guidance_high=0.7, heun=True),
    "ode_euler_nocfg_10steps": dict(),
}


@pytest.mark.parametrize("case", sorted(FIXTURE_CASES))
def test_ode_samplers_match_the_official_code(official, official_model, case):
    _, io = official
    x0 = euler_sampler(official_model, io["xT"], io["ys"], num_steps=10, **FIXTURE_CASES[case])
    assert x0.dtype == torch.float64
    torch.testing.assert_close(x0, io[case], atol=1e-5, rtol=0)


def test_sde_sampler_matches_a_direct_transcription_of_the_official_loop(official_model, official):
    _, io = official
    torch.manual_seed(0)
    ours = euler_maruyama_sampler(official_model, io["xT"], io["ys"], num_steps=6, cfg_scale=1.8, guidance_high=0.7)
    torch.manual_seed(0)
    # The official loop (samplers.py), written out: linear path, w(t) = 2t, CFG on the drift.
    x = io["xT"].double()
    t_steps = torch.cat([torch.linspace(1.0, 0.04, 6, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])

    def drift(x, t):
        guided = 0.0 <= t <= 0.7
        xin = torch.cat([x, x]) if guided else x
        yin = torch.cat([io["ys"], torch.full_like(io["ys"], 1000)]) if guided else io["ys"]
        tin = torch.full((len(xin),), float(t), dtype=torch.float64)
        v = official_model(xin.float(), tin.float(), yin)[0].double()
        tt = tin.view(-1, 1, 1, 1)
        score = (-(1 - tt) * v - xin) / tt  # get_score_from_velocity, linear path
        d = v - 0.5 * (2 * t) * score
        if guided:
            cond, uncond = d.chunk(2)
            d = uncond + 1.8 * (cond - uncond)
        return d

    with torch.no_grad():
        for t_cur, t_next in zip(t_steps[:-2], t_steps[1:-1]):
            eps = torch.randn_like(x)
            x = x + drift(x, t_cur) * (t_next - t_cur) + torch.sqrt(2 * t_cur) * eps * torch.sqrt(torch.abs(t_next - t_cur))
        x = x + (t_steps[-1] - t_steps[-2]) * drift(x, t_steps[-2])
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)


# ============================================================================
# A 2-D Gaussian toy: the exact velocity field is known in closed form
# ============================================================================

MEAN = torch.tensor([1.5, -0.5], dtype=torch.float64)
COV = torch.tensor([[0.6, 0.25], [0.25, 0.3]], dtype=torch.float64)


class SeededNoise:
    """One generator for the whole batch: fast noise for the statistical toy tests."""

    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)

    def randn_like(self, x):
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype)


def gaussian_velocity(x, t, path):
    """E[dx_t/dt | x_t] for x0 ~ N(MEAN, COV), eps ~ N(0, I) on `path`."""
    alpha, sigma, d_alpha, d_sigma = (c.view(-1, 1, 1) for c in path.coefficients(t))
    eye = torch.eye(2, dtype=torch.float64)
    cov_t = alpha**2 * COV + sigma**2 * eye  # [B,2,2]
    resid = (x - alpha[:, :, 0] * MEAN).unsqueeze(-1)  # [B,2,1]
    solve = torch.linalg.solve(cov_t, resid)
    x0 = MEAN.unsqueeze(-1) + alpha * COV @ solve
    eps = sigma * solve
    return (d_alpha * x0 + d_sigma * eps).squeeze(-1)


@pytest.mark.parametrize("path", [LinearPath(), CosinePath()], ids=["linear", "cosine"])
@pytest.mark.parametrize("sampler", [EulerSampler(100), EulerSampler(50, heun=True), EulerMaruyamaSampler(250)],
                         ids=["euler", "heun", "euler-maruyama"])
def test_samplers_recover_a_gaussian(sampler, path):
    n = 4000
    x1 = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    velocity = lambda x, t, step_t: gaussian_velocity(x, t, path)  # noqa: E731
    x0 = sampler.sample(velocity, x1, path, SeededNoise(1))
    mean, cov = x0.mean(0), torch.cov(x0.T)
    assert (mean - MEAN).abs().max() < 0.05, mean
    assert (cov - COV).abs().max() < 0.05, cov


# ============================================================================
# Guidance, reproducibility, prediction targets
# ============================================================================


class Recorder(torch.nn.Module, Backbone):
    """A fake backbone that records the batch size and time of every call."""

    num_classes, hidden_size = 10, 1

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))  # model sees float64 times
        self.calls = []

    def forward(self, x, t, y, drop_ids=None, hidden_depths=()):
        self.calls.append((len(x), float(t[0])))
        return BackboneOutput(-x * self.w + 0.1 * (y.float() - 5).view(-1, *[1] * (x.ndim - 1)))


def network(backbone):
    """The network the engine samples: the backbone with no terms' modules."""
    return TrainedNetwork(backbone)


def test_guidance_runs_the_doubled_batch_only_inside_the_interval():
    model = Recorder()
    denoiser = Denoiser(network(model), VelocityPrediction(), LinearPath(), ClassifierFreeGuidance(2.0, 0.3, 0.6))
    denoiser.sample(EulerSampler(10), torch.randn(3, 2, 4, 4), torch.tensor([1, 2, 3]))
    for batch, t in model.calls:
        inside = 0.3 <= t <= 0.6
        assert batch == (6 if inside else 3), (batch, t)
    grid = torch.linspace(1, 0, 11, dtype=torch.float64)[:-1]
    assert sum(b == 6 for b, _ in model.calls) == int(((grid >= 0.3) & (grid <= 0.6)).sum()) >= 3


def test_guidance_scale_one_never_runs_the_unconditional_pass():
    model = Recorder()
    Denoiser(network(model), VelocityPrediction(), LinearPath(), ClassifierFreeGuidance(1.0)).sample(
        EulerSampler(5), torch.randn(2, 2, 4, 4), torch.tensor([1, 2]))
    assert {b for b, _ in model.calls} == {2}


def test_guidance_combines_as_cfg():
    cfg = ClassifierFreeGuidance(3.0, 0.0, 1.0)
    cond, uncond = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg.combine(cond, uncond, 0.5).item() == 4.0


class EvaluateBoth(ClassifierFreeGuidance):
    """The unconditional half evaluated at every step and discarded outside the interval: what the
    sampler computed before it skipped that half."""

    def active(self, t):
        return self.scale != 1.0

    def combine(self, cond, uncond, t):
        return super().combine(cond, uncond, t) if self.low <= t <= self.high else cond


def test_skipping_the_unconditional_half_outside_the_interval_changes_no_sample(official_model):
    """The paper's sampler (SDE, CFG 1.8 on [0, 0.7]): 30% of the unconditional evaluations are
    skipped, and the samples equal those of evaluating both halves at every step."""
    labels = torch.arange(4)
    skip = generate(Denoiser(official_model, VelocityPrediction(), LinearPath(), ClassifierFreeGuidance(1.8, 0.0, 0.7)),
                    EulerMaruyamaSampler(10), range(4), labels, seed=0, shape=(4, 8, 8), device="cpu")
    both = generate(Denoiser(official_model, VelocityPrediction(), LinearPath(), EvaluateBoth(1.8, 0.0, 0.7)),
                    EulerMaruyamaSampler(10), range(4), labels, seed=0, shape=(4, 8, 8), device="cpu")
    torch.testing.assert_close(skip, both, atol=1e-5, rtol=0)
    assert not torch.allclose(skip, generate(
        Denoiser(official_model, VelocityPrediction(), LinearPath(), ClassifierFreeGuidance(1.8, 0.0, 1.0)),
        EulerMaruyamaSampler(10), range(4), labels, seed=0, shape=(4, 8, 8), device="cpu"))  # the interval matters


def test_sample_i_depends_only_on_seed_and_i(official_model):
    denoiser = Denoiser(official_model, VelocityPrediction(), LinearPath(), ClassifierFreeGuidance(1.5, 0.0, 0.7))
    sampler = EulerMaruyamaSampler(4)
    labels = torch.arange(6)
    full = generate(denoiser, sampler, range(6), labels, seed=3, shape=(4, 8, 8), device="cpu")
    part = generate(denoiser, sampler, [4, 5], labels[4:], seed=3, shape=(4, 8, 8), device="cpu")
    torch.testing.assert_close(full[4:], part, atol=1e-6, rtol=0)
    other = generate(denoiser, sampler, [4, 5], labels[4:], seed=4, shape=(4, 8, 8), device="cpu")
    assert not torch.allclose(part, other)


def test_sampling_precision_autocasts_the_network_only(official_model):
    """bf16 runs the SiT's matmuls in bf16; the sampler state stays float64 and the result is close."""
    seen = []
    hook = official_model.backbone.blocks[0].attn.qkv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        args = ([0, 1], torch.tensor([3, 7]), 0, (4, 8, 8), "cpu")
        exact = generate(Denoiser(official_model, VelocityPrediction(), LinearPath()), EulerSampler(8), *args)
        fast = generate(Denoiser(official_model, VelocityPrediction(), LinearPath(), autocast_dtype=torch.bfloat16),
                        EulerSampler(8), *args)
    finally:
        hook.remove()
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16
    assert exact.dtype == fast.dtype == torch.float64
    assert not torch.equal(exact, fast)
    torch.testing.assert_close(fast, exact, atol=0.05, rtol=0)


class Oracle(torch.nn.Module, Backbone):
    """Outputs the exact Gaussian-toy prediction in the requested target's parametrisation."""

    num_classes, hidden_size = 1, 1

    def __init__(self, target, path):
        super().__init__()
        self.target, self.path = target, path
        self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x, t, y, drop_ids=None, hidden_depths=()):
        x, t = x.double(), t.double()
        v = gaussian_velocity(x, t, self.path)
        x0, eps = VelocityPrediction().to_x0_eps(v, x, t, self.path)
        return BackboneOutput(self.target.target(x0, eps, t, self.path))


@pytest.mark.parametrize("target", [VelocityPrediction(), NoisePrediction(), DataPrediction()], ids=["v", "eps", "x0"])
@pytest.mark.parametrize("sampler", [EulerSampler(100), EulerSampler(50, heun=True), EulerMaruyamaSampler(250)],
                         ids=["euler", "heun", "euler-maruyama"])
def test_every_prediction_target_works_with_every_sampler(target, sampler):
    """A network predicting eps or x0 (exactly) samples the Gaussian toy through the target's
    conversion to velocity, as well as a velocity network does."""
    path, n = LinearPath(), 3000
    denoiser = Denoiser(network(Oracle(target, path)), target, path)
    x1 = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x0 = denoiser.sample(sampler, x1, torch.zeros(n, dtype=torch.long), SeededNoise(3))
    assert (x0.mean(0) - MEAN).abs().max() < 0.06
    assert (torch.cov(x0.T) - COV).abs().max() < 0.06


def test_steps_below_one_are_rejected():
    for make in (lambda: EulerSampler(0), lambda: EulerMaruyamaSampler(0)):
        with pytest.raises(ValueError, match="steps must be >= 1"):
            make()


def test_guidance_needs_a_null_label():
    from repa.components.backbone.sit import SiT

    model = SiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, label_dropout=0.0)
    denoiser = Denoiser(network(model).eval(), VelocityPrediction(), LinearPath(), ClassifierFreeGuidance(2.0))
    from repa.errors import RepaError

    with pytest.raises(RepaError, match="null label"):
        denoiser.sample(EulerSampler(2), torch.randn(1, 4, 8, 8), torch.tensor([0]))
