import json
import math

import pytest
import torch
import torch.nn.functional as F

from repa.plugins import load_components
from repa.testing import ObjectiveHarness, check_component


# ---- Transcriptions of the released code (bytetriper/RAE: src/stage2/transport/transport.py
# truncated_logitnormal_sample + Transport.sample, integrators.py ode with torchdiffeq's euler,
# src/stage2/models/DDT.py + model_utils.py, src/stage1/decoders/decoder.py, src/stage1/rae.py) ----

def truncated_logitnormal_sample(U, mu, sigma, low=0.0, high=1.0):
    mu, sigma, low, high = (torch.as_tensor(v) for v in (mu, sigma, low, high))
    z_low, z_high = torch.logit(low), torch.logit(high)
    base = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(sigma))
    alpha, beta = (z_low - mu) / sigma, (z_high - mu) / sigma
    cdf_alpha, cdf_beta = base.cdf(alpha), base.cdf(beta)
    U = cdf_alpha + (cdf_beta - cdf_alpha) * U.clamp_(0, 1)
    Z = mu + sigma * base.icdf(U)
    return torch.sigmoid(Z).clamp(low, high)


def released_time(U, shift, mu=0.0, sigma=1.0):
    t = truncated_logitnormal_sample(U, mu, sigma, low=0, high=1 - 1 / 1000)
    return shift * t / (1 + (shift - 1) * t)


def released_ode(x, velocity, num_steps, shift):
    t = 1 - torch.linspace(0, 1 - 1 / 1000, num_steps)
    t = shift * t / (1 + (shift - 1) * t)
    for t_cur, t_next in zip(t[:-1], t[1:]):  # torchdiffeq euler: y + (t1 - t0) * f(t0, y)
        x = x + (t_next - t_cur) * velocity(x, torch.ones(x.size(0)) * t_cur)
    return x


def rotate_half(x):
    x = x.reshape(*x.shape[:-1], -1, 2)
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).reshape(*x.shape[:-2], -1)


def released_rope_tables(dim, pt_seq_len, theta=10000):
    freqs = 1. / (theta ** (torch.arange(0, dim, 2)[:(dim // 2)].float() / dim))
    t = torch.arange(pt_seq_len) / pt_seq_len * pt_seq_len
    freqs = torch.einsum('..., f -> ... f', t, freqs)
    freqs = torch.repeat_interleave(freqs, 2, dim=-1)  # repeat(freqs, '... n -> ... (n r)', r=2)
    a, b = freqs[:, None, :], freqs[None, :, :]
    freqs = torch.cat([a.expand(pt_seq_len, pt_seq_len, -1), b.expand(pt_seq_len, pt_seq_len, -1)], dim=-1)  # broadcat
    return freqs.cos().view(-1, freqs.shape[-1]), freqs.sin().view(-1, freqs.shape[-1])


def rms(norm, x):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x) * norm.weight


def released_block(block, x, c, tables):
    if len(c.shape) < len(x.shape):
        c = c.unsqueeze(1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.adaLN_modulation(c).chunk(6, dim=-1)
    h = rms(block.norm1, x) * (1 + scale_msa) + shift_msa
    B, N, C = h.shape
    qkv = block.attn.qkv(h).reshape(B, N, 3, block.attn.heads, C // block.attn.heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    cos, sin = tables
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
    x = x + block.attn.proj(h) * gate_msa
    h = rms(block.norm2, x) * (1 + scale_mlp) + shift_mlp
    x12 = block.mlp.w12(h)
    x1, x2 = x12.chunk(2, dim=-1)
    return x + block.mlp.w3(F.silu(x1) * x2) * gate_mlp


def released_ditdh(m, x, t, y):
    """DiTwDDTHead.forward in eval mode (labels not dropped)."""
    W = m.t_embedder.W
    tt = t[:, None] * W[None, :] * 2 * torch.pi
    t = m.t_embedder.mlp(torch.cat([torch.sin(tt), torch.cos(tt)], dim=-1))
    y = m.y_embedder.embedding_table(y)
    c = F.silu(t + y)
    s = m.s_embedder.proj(x).flatten(2).transpose(1, 2) + m.pos_embed
    heads0, heads1 = m.blocks[0].attn.heads, m.blocks[-1].attn.heads
    enc = released_rope_tables(m.hidden_size // heads0 // 2, int(math.sqrt(s.shape[1])))
    for i in range(m.depth[0]):
        s = released_block(m.blocks[i], s, c, enc)
    t = t.unsqueeze(1).repeat(1, s.shape[1], 1)
    s = F.silu(t + s)
    s = m.s_projector(s)
    x = m.x_embedder.proj(x).flatten(2).transpose(1, 2)
    dec = released_rope_tables(x.shape[-1] // heads1 // 2, int(math.sqrt(x.shape[1])))
    for i in range(m.depth[0], len(m.blocks)):
        x = released_block(m.blocks[i], x, s, dec)
    shift, scale = m.final_layer.adaLN_modulation(s).chunk(2, dim=-1)
    x = m.final_layer.linear(rms(m.final_layer.norm_final, x) * (1 + scale) + shift)
    return m.unpatchify(x)


def released_decoder(d, hidden_states):
    """GeneralDecoder.forward(drop_cls_token=False).logits with ViTMAELayer (eager attention)."""
    x = d.decoder_embed(hidden_states)
    x = torch.cat([d.trainable_cls_token.expand(x.shape[0], -1, -1), x], dim=1) + d.decoder_pos_embed
    for layer in d.decoder_layers:
        sa = layer.attention.attention
        h = layer.layernorm_before(x)

        def heads(z):
            return z.view(z.size()[:-1] + (sa.heads, sa.head_dim)).permute(0, 2, 1, 3)

        scores = torch.matmul(heads(sa.query(h)), heads(sa.key(h)).transpose(-1, -2)) / math.sqrt(sa.head_dim)
        context = torch.matmul(F.softmax(scores, dim=-1), heads(sa.value(h))).permute(0, 2, 1, 3).contiguous()
        x = layer.attention.output.dense(context.view(context.size()[:-2] + (-1,))) + x
        x = layer.output.dense(F.gelu(layer.intermediate.dense(layer.layernorm_after(x)))) + x
    return d.decoder_pred(d.decoder_norm(x))[:, 1:, :]

# ----------------------------------------------------------------------------------------------------------


def perturbed(module, scale=0.2, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.requires_grad:
                p.normal_(0, scale)
    return module


def test_registered_by_its_distribution_and_keeps_the_contract():
    components = load_components()
    for kind, name in (("backbone", "dit-dh"), ("autoencoder", "rae"), ("weighting", "rae-shifted"),
                       ("sampler", "rae-euler"), ("guidance", "autoguidance"), ("term", "rae-decoder")):
        assert components.get(kind, name).distribution == "repa-rae"
    assert components.get("weighting", "rae-shifted").params().shift() == pytest.approx(math.sqrt(48))
    check_component("backbone", "dit-dh", {"hidden_size": [32, 64], "depth": [2, 1], "num_heads": [2, 4]})
    check_component("weighting", "rae-shifted")
    check_component("sampler", "rae-euler")


def test_training_times_equal_the_released_truncated_logit_normal_then_shift():
    from repa_rae.schedule import ShiftedLogitNormal

    shift = math.sqrt(196_608 / 4096)
    weighting = ShiftedLogitNormal(0.0, 1.0, shift)
    u = torch.rand(4096, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(weighting.from_uniform(u.clone()), released_time(u.clone(), shift), rtol=1e-6, atol=1e-6)
    drawn = weighting.sample_t(64, torch.Generator().manual_seed(5), None)
    torch.testing.assert_close(drawn, released_time(torch.rand(64, generator=torch.Generator().manual_seed(5)), shift))
    assert drawn.max() <= shift * 0.999 / (1 + (shift - 1) * 0.999) + 1e-6
    assert weighting.from_uniform(torch.full((1,), 0.5)).item() > 0.5 + 0.3  # shifted towards noise


@pytest.mark.parametrize("points", [2, 10, 50])
def test_the_sampler_equals_the_released_ode_on_its_shifted_grid(points):
    from repa_rae.schedule import ShiftedEuler

    shift = math.sqrt(8192 / 4096)
    x1 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def field(x, t):
        return x * torch.cos(3 * t).view(-1, 1, 1, 1) - 0.5 * t.view(-1, 1, 1, 1)

    ours = ShiftedEuler(points - 1, shift).sample(lambda x, t, step_t: field(x, t), x1, None, None)
    torch.testing.assert_close(ours, released_ode(x1, lambda x, t: field(x, t.to(x.dtype)), points, shift))


def test_ditdh_forward_equals_the_released_model():
    from repa_rae.ddt import DiTDH

    torch.manual_seed(0)
    model = perturbed(DiTDH(8, 16, 10, hidden_size=(32, 64), depth=(2, 2), num_heads=(2, 4)).eval())
    x, t, y = torch.randn(3, 16, 8, 8), torch.rand(3), torch.tensor([1, 5, 10])
    expected = released_ditdh(model, x, t, y)
    output = model(x, t, y)
    torch.testing.assert_close(output.out, expected, rtol=1e-5, atol=1e-5)
    assert expected.abs().mean() > 0.1  # every part acts


def test_decoder_forward_equals_the_released_general_decoder():
    from repa_rae.decoder import Decoder

    decoder = perturbed(Decoder(24, 16, 32, 2, 4, 64, patch_size=4).eval(), scale=0.5)  # pre-activations of O(1)
    tokens = torch.randn(2, 16, 24)
    torch.testing.assert_close(decoder(tokens), released_decoder(decoder, tokens), rtol=1e-5, atol=1e-5)
    assert decoder.unpatchify(decoder(tokens)).shape == (2, 3, 16, 16)


def test_the_autoencoder_normalises_and_decodes_as_released(tmp_path, given_encoders):
    from repa_rae.decoder import Decoder

    torch.manual_seed(1)
    decoder = perturbed(Decoder(12, 16, 32, 1, 4, 64, patch_size=4), scale=0.5)
    torch.save(decoder.state_dict(), tmp_path / "model.pt")
    mean, var = torch.randn(12, 4, 4), torch.rand(12, 4, 4) + 0.5
    torch.save({"mean": mean, "var": var}, tmp_path / "stat.pt")
    from repa.config import validate_component

    rae = validate_component("autoencoder", "rae", {
        "encoder": {"kind": "given", "dim": 12, "tokens": 16}, "stats": str(tmp_path / "stat.pt"),
        "decoder": str(tmp_path / "model.pt"), "decoder_layout": [32, 1, 4, 64], "decoder_patch": 4, "factor": 4,
        "resolution": 16}, "test").build()
    z_raw = torch.randn(2, 12, 4, 4)
    torch.testing.assert_close(rae.normalise(z_raw), (z_raw - mean) / torch.sqrt(var + 1e-5))
    x = rae.normalise(z_raw)
    # rae.py decode: denormalise, [B,C,h,w] -> [B,N,C], decoder logits, unpatchify, * std + mean
    tokens = (x * torch.sqrt(var + 1e-5) + mean).view(2, 12, 16).transpose(1, 2)
    logits = released_decoder(decoder, tokens)
    b, n, _ = logits.shape
    image = torch.einsum("nhwpqc->nchpwq", logits.reshape(b, 4, 4, 4, 4, 3)).reshape(b, 3, 16, 16)
    image = image * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    torch.testing.assert_close(rae.decode(x), image.clamp(0, 1) * 2 - 1, rtol=1e-5, atol=1e-5)


def test_missing_rae_files_say_where_to_put_them(tmp_path, monkeypatch):
    from repa.config import validate_component
    from repa.errors import MissingWeightsError

    monkeypatch.chdir(tmp_path)
    component = validate_component("autoencoder", "rae", {}, "test")
    with pytest.raises(MissingWeightsError, match=r"rae: the normalisation statistics is not at "
                                                   r"models/stats/dinov2/wReg_base/imagenet1k/stat.pt; hf download"):
        component.build()


RAE_TINY = """
[data]
kind = "digits"
resolution = 64

[autoencoder]
kind = "sd-vae"

[backbone]
kind = "dit-dh"
hidden_size = [32, 64]
depth = [2, 1]
num_heads = [2, 4]

[weighting]
kind = "rae-shifted"
shift_dim = 256

[sample]
sampler = { kind = "rae-euler", shift_dim = 256 }
"""


def test_the_loss_and_every_gradient_through_the_objective_equal_transport_training_losses(write_toml):
    """Linear path, velocity target noise - data, mean_flat of the squared error (transport.training_losses)."""
    from repa.config import load_experiment

    harness = ObjectiveHarness(load_experiment(write_toml(RAE_TINY, "rae.toml")), num_classes=10)
    model = perturbed(harness.network.backbone)
    g = torch.Generator().manual_seed(2)
    x1, x0 = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)  # data, noise (RAE's names)
    t = released_time(torch.rand(3, generator=g), math.sqrt(256 / 4096))
    y = torch.tensor([0, 3, 9])
    harness.network.eval()
    parts = harness.loss(latents=x1, noise=x0, t=t, y=y)
    tt = t.view(-1, 1, 1, 1)
    xt, ut = (1 - tt) * x1 + tt * x0, -1 * x1 + 1 * x0  # ICPlan.plan: alpha_t x1 + sigma_t x0; d_alpha x1 + d_sigma x0
    expected = ((released_ditdh(model, xt, t, y) - ut) ** 2).mean(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(parts.total, expected, rtol=1e-5, atol=1e-5)
    trained = [p for p in model.parameters() if p.requires_grad]
    for ours, theirs in zip(torch.autograd.grad(parts.total, trained), torch.autograd.grad(expected, trained)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_autoguidance_is_weak_plus_scale_times_main_minus_weak_on_the_interval():
    from repa.components.path.interpolants import LinearPath
    from repa.components.prediction.targets import VelocityPrediction
    from repa.engine.generate.denoiser import Denoiser
    from repa.engine.network import TrainedNetwork
    from repa_rae.ddt import DiTDH
    from repa_rae.guidance import AutoGuidance
    from repa_rae.schedule import ShiftedEuler

    torch.manual_seed(0)
    main = TrainedNetwork(perturbed(DiTDH(4, 4, 10, (16, 32), (1, 1), (2, 2)), seed=1)).eval()
    weak = TrainedNetwork(perturbed(DiTDH(4, 4, 10, (16, 32), (1, 1), (2, 2)), seed=2)).eval()
    x1, y = torch.randn(2, 4, 4, 4, dtype=torch.float64), torch.tensor([1, 2])
    sampler = ShiftedEuler(6, 1.5)
    guided = Denoiser(main, VelocityPrediction(), LinearPath(), AutoGuidance(1.42, (0.3, 1.0), weak))
    ours = guided.sample(sampler, x1, y)

    def released(x, t):  # forward_with_autoguidance: where t in [t_min, t_max]
        main_out, weak_out = (m.backbone(x.float(), t.float(), y).out.double() for m in (main, weak))
        inside = ((t >= 0.3) & (t <= 1.0)).view(-1, 1, 1, 1)
        return torch.where(inside, weak_out + 1.42 * (main_out - weak_out), main_out)

    with torch.no_grad():
        expected = released_ode(x1, released, 7, 1.5)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    unguided = Denoiser(main, VelocityPrediction(), LinearPath(), None).sample(sampler, x1, y)
    assert (ours - unguided).abs().max() > 1e-3


def test_the_rae_recipe_validates_with_the_released_settings():
    from pathlib import Path

    from repa.config import load_experiment

    config = load_experiment(Path(__file__).parents[3] / "experiments" / "ditdh_xl_rae.toml")
    assert config.backbone.kind == "DiTDH-XL" and config.autoencoder.kind == "rae"
    assert config.weighting.kind == "rae-shifted" and config.weighting.params.shift() == pytest.approx(math.sqrt(48))
    assert config.sample.sampler.kind == "rae-euler" and config.sample.steps == 49
    assert (config.optim.params.lr, tuple(config.optim.params.betas)) == (2e-4, (0.9, 0.95))
    assert config.train.global_batch_size == 1024 and config.train.ema_decay == 0.9995


@pytest.mark.slow
def test_tiny_experiment_trains_on_the_digits_representations_and_samples(tmp_path):
    from tests.conftest import run_cli

    text = (__import__("pathlib").Path(__file__).parents[3] / "experiments" / "quickstart_rae.toml").read_text()
    experiment = tmp_path / "rae.toml"
    experiment.write_text(text)
    result = run_cli("run", str(experiment), "--no-progress", "--set", f"experiment.output_dir={tmp_path / 'exps'}",
                     "--set", "train.max_steps=3", "--set", "train.sample_images=10", "--set", "sample.steps=3",
                     "--set", "autoencoder.epochs=2")
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "exps").iterdir())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and (run / "samples" / "0000003.png").is_file()
