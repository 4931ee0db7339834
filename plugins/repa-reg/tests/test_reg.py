import json

import pytest
import torch
import torch.nn.functional as F

from repa.engine.generate.denoiser import Denoiser
from repa.interfaces import EncoderOutput
from repa.plugins import load_components
from repa.testing import ObjectiveHarness, check_component

WIDTH, HIDDEN, DEPTH, CLASSES = 12, 32, 2, 10


def build(kind, name, **kwargs):
    entry = load_components().get(kind, name)
    return entry.build(entry.params(), **kwargs)


REG_TINY = f"""
[data]
kind = "digits"
resolution = 64

[autoencoder]
kind = "sd-vae"

[backbone]
kind = "sit"
depth = 3
hidden_size = {HIDDEN}
num_heads = 2
patch_size = 2

[[alignment]]
encoder = {{ kind = "given", dim = {WIDTH}, tokens = 16 }}
depth = {DEPTH}
projector_dim = 24

[[joint]]
kind = "reg"

[sample]
sampler = "euler"
"""


@pytest.fixture
def harness(given_encoders, write_toml):
    """A tiny SiT + MLP projector at block DEPTH + REG's class token, built as `repa run` builds them
    (repa.testing.ObjectiveHarness), every weight random at a scale that makes every part matter."""
    from repa.config import load_experiment

    harness = ObjectiveHarness(load_experiment(write_toml(REG_TINY, "reg.toml")), num_classes=CLASSES)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in harness.network.parameters():
            if p.requires_grad:  # not the frozen sin-cos positions
                p.normal_(0, 0.2)
    return harness


# ---- Transcription of the released code (Martinser/REG: models/sit.py SiT.forward, loss.py SILoss,
# samplers.py euler_maruyama_sampler), over the same modules: linear path, v-prediction ----

def reg_forward(net, x, t, y, cls_token):
    sit, joint, projector = net.backbone, net.joint, net.projectors["0"]
    x = sit.x_embedder(x)
    cls_token = joint.cls_projectors2(cls_token)
    cls_token = joint.wg_norm(cls_token)
    cls_token = cls_token.unsqueeze(1)
    x = torch.cat((cls_token, x), dim=1)
    pos_embed = torch.cat([torch.zeros(1, 1, HIDDEN), sit.pos_embed], dim=1)  # sincos with extra_tokens=1
    x = x + pos_embed
    N, T, D = x.shape
    t_embed = sit.t_embedder(t)
    y = sit.y_embedder.embedding_table(y)  # LabelEmbedder(train=False)
    c = t_embed + y
    for i, block in enumerate(sit.blocks):
        x = block(x, c)[0]  # our block returns (x, its attention logits or None)
        if (i + 1) == DEPTH:
            zs = [projector(x.reshape(-1, D)).reshape(N, T, -1)]
    final = sit.final_layer
    shift, scale = final.adaLN_modulation(c).chunk(2, dim=-1)
    x = final.norm_final(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
    cls_out = joint.linear_cls(x[:, 0]).unsqueeze(1)
    x = final.linear(x[:, 1:])
    return sit.unpatchify(x), zs, cls_out.squeeze(1)


def mean_flat(x):
    return torch.mean(x, dim=list(range(1, len(x.size()))))


def reg_loss(net, images, y, zs, cls_token, time_input, noises, noises_cls, proj_coeff=0.5, cls=0.03):
    alpha_t, sigma_t, d_alpha_t, d_sigma_t = 1 - time_input, time_input, -1, 1
    model_input = alpha_t * images + sigma_t * noises
    cls_input = alpha_t.squeeze(-1).squeeze(-1) * cls_token + sigma_t.squeeze(-1).squeeze(-1) * noises_cls
    model_target = d_alpha_t * images + d_sigma_t * noises
    cls_target = d_alpha_t * cls_token + d_sigma_t * noises_cls
    model_output, zs_tilde, cls_output = reg_forward(net, model_input, time_input.flatten(), y, cls_input)
    denoising_loss = mean_flat((model_output - model_target) ** 2)
    denoising_loss_cls = mean_flat((cls_output - cls_target) ** 2)
    proj_loss = 0.0
    bsz = zs[0].shape[0]
    for z, z_tilde in zip(zs, zs_tilde):
        for z_j, z_tilde_j in zip(z, z_tilde):
            z_tilde_j = F.normalize(z_tilde_j, dim=-1)
            z_j = F.normalize(z_j, dim=-1)
            proj_loss += mean_flat(-(z_j * z_tilde_j).sum(dim=-1))
    proj_loss /= len(zs) * bsz
    # train.py: loss_mean + proj_loss_mean * proj_coeff + loss_mean_cls * cls
    return denoising_loss.mean() + proj_loss.mean() * proj_coeff + denoising_loss_cls.mean() * cls, denoising_loss_cls


def reg_score(vt, xt, t):
    t = t.view(t.size(0), *([1] * (xt.ndim - 1)))
    alpha_t, d_alpha_t = 1 - t, torch.ones_like(xt) * -1
    sigma_t, d_sigma_t = t, torch.ones_like(xt)
    reverse_alpha_ratio = alpha_t / d_alpha_t
    var = sigma_t ** 2 - reverse_alpha_ratio * d_sigma_t * sigma_t
    return (reverse_alpha_ratio * vt - xt) / var


def reg_euler_maruyama(net, latents, y, cls_latents, eps, cls_eps, num_steps, cfg_scale, guidance_high):
    y_null = torch.full_like(y, CLASSES)
    _dtype = latents.dtype
    t_steps = torch.linspace(1.0, 0.04, num_steps, dtype=torch.float64)
    t_steps = torch.cat([t_steps, torch.tensor([0.0], dtype=torch.float64)])
    x_next, cls_x_next = latents.to(torch.float64), cls_latents.to(torch.float64)

    def drift(x_cur, cls_x_cur, t_cur):
        guided = cfg_scale > 1.0 and t_cur <= guidance_high and t_cur >= 0.0
        model_input = torch.cat([x_cur] * 2) if guided else x_cur
        cls_model_input = torch.cat([cls_x_cur] * 2) if guided else cls_x_cur
        y_cur = torch.cat([y, y_null]) if guided else y
        time_input = torch.ones(model_input.size(0), dtype=torch.float64) * t_cur
        diffusion = 2 * t_cur
        v_cur, _, cls_v_cur = reg_forward(net, model_input.to(_dtype), time_input.to(_dtype), y_cur,
                                          cls_model_input.to(_dtype))
        v_cur, cls_v_cur = v_cur.to(torch.float64), cls_v_cur.to(torch.float64)
        d_cur = v_cur - 0.5 * diffusion * reg_score(v_cur, model_input, time_input)
        cls_d_cur = cls_v_cur - 0.5 * diffusion * reg_score(cls_v_cur, cls_model_input, time_input)
        if guided:
            d_cond, d_uncond = d_cur.chunk(2)
            d_cur = d_uncond + cfg_scale * (d_cond - d_uncond)
            c_cond, c_uncond = cls_d_cur.chunk(2)
            cls_d_cur = c_uncond + cfg_scale * (c_cond - c_uncond)  # cls_cfg_scale = cfg_scale (eval.sh)
        return d_cur, cls_d_cur

    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-2], t_steps[1:-1])):
        dt = t_next - t_cur
        x_cur, cls_x_cur = x_next, cls_x_next
        d_cur, cls_d_cur = drift(x_cur, cls_x_cur, t_cur)
        diffusion = 2 * t_cur
        x_next = x_cur + d_cur * dt + torch.sqrt(diffusion) * eps[i] * torch.sqrt(torch.abs(dt))
        cls_x_next = cls_x_cur + cls_d_cur * dt + torch.sqrt(diffusion) * cls_eps[i] * torch.sqrt(torch.abs(dt))
    t_cur, t_next = t_steps[-2], t_steps[-1]
    d_cur, _ = drift(x_next, cls_x_next, t_cur)
    return x_next + (t_next - t_cur) * d_cur

# ----------------------------------------------------------------------------------------------------------


def test_registered_by_its_distribution_with_regs_coefficient_and_keeps_the_contract():
    entry = load_components().get("joint", "reg")
    assert entry.distribution == "repa-reg" and entry.params().coeff == 0.03 and entry.params().source == 0
    joint = check_component("joint", "reg")
    assert joint.tokens == 1 and joint.aligned


def test_training_loss_and_every_gradient_equal_the_released_code(harness):
    """Through the trainer's own objective (step context, the [[alignment]] and [[joint]] terms)."""
    net = harness.network
    g = torch.Generator().manual_seed(1)
    images, noises = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    cls_token, noises_cls = torch.randn(3, WIDTH, generator=g), torch.randn(3, WIDTH, generator=g)
    patches = torch.randn(3, 16, WIDTH, generator=g)
    t, y = torch.rand(3, generator=g), torch.tensor([0, 4, 9])
    zs = [torch.cat([cls_token.unsqueeze(1), patches], dim=1)]  # train.py: [x_norm_clstoken, patch tokens]
    net.eval()  # both sides without label dropout
    expected, expected_cls = reg_loss(net, images, y, zs, cls_token, t.view(-1, 1, 1, 1), noises, noises_cls)
    expected_grads = torch.autograd.grad(expected, [p for p in net.parameters() if p.requires_grad])

    parts = harness.loss(latents=images, noise=noises, t=t, y=y, extra_noise=[noises_cls.unsqueeze(1)],
                         encoders={"given": EncoderOutput(patches, cls_token)})
    torch.testing.assert_close(parts.total, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.terms["joint_loss"], expected_cls, rtol=1e-5, atol=1e-5)
    assert expected_cls.min() > 1e-3  # the class token's term is not trivially zero here
    grads = torch.autograd.grad(parts.total, [p for p in net.parameters() if p.requires_grad])
    for (name, _), ours, theirs in zip([(n, p) for n, p in net.named_parameters() if p.requires_grad], grads,
                                       expected_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5, msg=name)


def test_sampling_integrates_the_class_token_as_the_released_sampler(harness):
    net, steps = harness.network.eval(), 6
    g = torch.Generator().manual_seed(2)
    x1, z1 = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 1, WIDTH, generator=g)
    eps = [torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(steps - 1)]
    cls_eps = [torch.randn(2, WIDTH, generator=g, dtype=torch.float64) for _ in range(steps - 1)]
    y = torch.tensor([3, 7])
    expected = reg_euler_maruyama(net, x1, y, z1.squeeze(1), eps, cls_eps, steps, cfg_scale=2.3, guidance_high=0.5)

    class Recorded:  # the joint's start, then the step noises, packed as the sampler state is
        def __init__(self):
            self.step = 0

        def randn_like(self, x):
            if x.ndim == 3:
                return z1.to(x.dtype)
            noise = torch.cat([eps[self.step].flatten(1), cls_eps[self.step]], dim=1)
            self.step += 1
            return noise.to(x.dtype)

    sampler = build("sampler", "euler-maruyama", steps=steps)
    guidance = build("guidance", "cfg", scale=2.3, interval=(0.0, 0.5))
    denoiser = Denoiser(net, build("prediction", "v"), build("path", "linear"), guidance)
    images = denoiser.sample(sampler, x1, y, noise=Recorded())
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)
    assert [z.shape for z in denoiser.last_joint] == [(2, 1, WIDTH)]
    # The class token steers the image: another start for it gives other images.
    other = Denoiser(net, build("prediction", "v"), build("path", "linear"), guidance)
    z1 = z1 + 1
    assert (other.sample(sampler, x1, y, noise=Recorded()) - images).abs().max() > 1e-3


def test_tiny_experiment_trains_and_samples_with_reg(tiny_toml, tmp_path):
    from repa.weights import load_file
    from tests.conftest import run_cli

    experiment = tiny_toml('\n[[joint]]\nkind = "reg"\ncoeff = 0.03\n')
    result = run_cli("run", str(experiment), "--no-progress", "--set", "train.sample_every=4")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "exps" / "tiny"
    weights = load_file(run / "checkpoints" / "0000004" / "ema.safetensors")
    assert weights["joint.cls_projectors2.weight"].shape == (32, 128)  # digits-convnet's 128-d mean token
    assert weights["joint.linear_cls.weight"].abs().max() > 0  # the class token's head trained
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["joint_loss"] > 0 for r in records)
    assert (run / "samples" / "0000004.png").is_file()
    sampled = run_cli("sample", str(run / "config.resolved.toml"), "--num-samples", "4", "--out",
                      str(tmp_path / "samples"), "--no-progress", "--set", "sample.steps=3")
    assert sampled.returncode == 0, sampled.stderr
    assert len(list((tmp_path / "samples" / "images").glob("*.png"))) == 4


@pytest.mark.parametrize("extra,expected", [
    ('[[joint]]\nkind = "reg"\nsource = 3\n', "joint[0].source: 3, but there are 1 [[alignment]] entries"),
    ('[[joint]]\nkind = "reg"\n[[joint]]\nkind = "reg"\n', "one jointly denoised quantity per experiment"),
])
def test_misconfigured_joint_is_one_line(tiny_toml, extra, expected):
    from tests.conftest import run_cli

    result = run_cli("validate", str(tiny_toml("\n" + extra)))
    assert result.returncode != 0 and expected in result.stderr and "Traceback" not in result.stderr


def test_an_encoder_without_a_class_token_is_one_line(tiny_toml):
    from tests.conftest import run_cli

    experiment = tiny_toml('\n[[joint]]\nkind = "reg"\n')
    text = experiment.read_text().replace('encoder = { kind = "digits-convnet", epochs = 2 }', 'encoder = "jepa-vit-h"')
    experiment.write_text(text)
    result = run_cli("validate", str(experiment))
    assert "jepa-vit-h has no global (class) token, which [[joint]] reg needs" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_reg_recipe_validates_with_the_released_settings():
    from pathlib import Path

    from repa.config import load_experiment

    config = load_experiment(Path(__file__).parents[3] / "experiments" / "sit_xl_reg.toml")
    (joint,) = config.joint
    assert (joint.kind, joint.params.coeff, joint.params.source) == ("reg", 0.03, 0)
    assert config.alignment[0].encoder.kind == "dinov2-vit-b" and config.alignment[0].depth == 8
    assert (config.sample.cfg_scale, tuple(config.sample.guidance_interval), config.sample.steps) == (2.3, (0.0, 0.85), 250)


def test_a_grid_projector_on_the_entry_reg_aligns_with_is_one_line_before_training(tiny_toml, tmp_path):
    """REG aligns its class token with the entry: a conv projector (iREPA) cannot take 1 + 16 tokens."""
    from tests.conftest import run_cli

    experiment = tiny_toml('\n[[joint]]\nkind = "reg"\n')
    experiment.write_text(experiment.read_text().replace("projector_dim = 32", 'projector = "conv"'))
    result = run_cli("run", str(experiment), "--no-progress")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "alignment[0].projector: [[joint]] reg aligns its 1 token(s) with this entry, so its projector sees 17 " \
           "tokens" in result.stderr and not (tmp_path / "exps" / "tiny").exists()
