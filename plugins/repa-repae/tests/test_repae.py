import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.plugins import load_components
from repa.testing import ObjectiveHarness, check_component

REPAE_TINY = """
[data]
kind = "digits"
resolution = 32

[autoencoder]
kind = "digits-vae"
train = true
epochs = 1

[backbone]
kind = "sit"
depth = 3
hidden_size = 32
num_heads = 2
patch_size = 2

[[alignment]]
encoder = { kind = "given", dim = 12, tokens = 16 }
depth = 2
projector_dim = 24
coeff = 0.5

[[term]]
kind = "repa-e"
vgg_weights = "{vgg}"
lpips_weights = "{lin}"
disc_layers = 2

[sample]
sampler = "euler"
"""


# ---- Transcription of the released code (End2End-Diffusion/REPA-E: train_repae.py's step, models/sit.py's
# forward with its BatchNorm, loss/losses.py, loss/lpips.py, loss/discriminator.py) ----

class ReleasedLPIPS(nn.Module):
    def __init__(self, vgg_state, lin_state):
        super().__init__()
        from torchvision.models import vgg16

        features = vgg16(weights=None)
        features.load_state_dict(vgg_state)
        features = features.features
        self.slices = [nn.Sequential(*[features[i] for i in range(a, b)]) for a, b in
                       ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))]
        self.lins = [nn.Conv2d(c, 1, 1, bias=False) for c in (64, 128, 256, 512, 512)]
        for i, lin in enumerate(self.lins):
            lin.weight.data.copy_(lin_state[f"lin{i}.model.1.weight"])
        self.shift = torch.Tensor([-0.030, -0.088, -0.188])[None, :, None, None]
        self.scale = torch.Tensor([0.458, 0.448, 0.450])[None, :, None, None]

    def forward(self, input, target):
        input = input * 2. - 1.
        target = target * 2. - 1.
        h0, h1 = (input - self.shift) / self.scale, (target - self.shift) / self.scale
        val = 0
        for block, lin in zip(self.slices, self.lins):
            h0, h1 = block(h0), block(h1)
            n0 = h0 / (torch.sqrt(torch.sum(h0 ** 2, dim=1, keepdim=True)) + 1e-10)
            n1 = h1 / (torch.sqrt(torch.sum(h1 ** 2, dim=1, keepdim=True)) + 1e-10)
            val = val + lin((n0 - n1) ** 2).mean([2, 3], keepdim=True)
        return val


def hinge_d_loss(logits_real, logits_fake):
    loss_real = torch.mean(F.relu(1.0 - logits_real))
    loss_fake = torch.mean(F.relu(1.0 + logits_fake))
    return 0.5 * (loss_real + loss_fake)


def mean_flat(x):
    return torch.mean(x, dim=list(range(1, len(x.size()))))


def released_sit(sit, projector, bn_x, t, y, noises, depth, align_only):
    """models/sit.py SiT.forward after `normalized_x = self.bn(x)`: linear path, v-prediction."""
    time_input = t.view(-1, 1, 1, 1)
    model_input = (1 - time_input) * bn_x + time_input * noises
    model_target = -1 * bn_x + 1 * noises
    x = sit.x_embedder(model_input) + sit.pos_embed
    c = sit.t_embedder(t) + sit.y_embedder.embedding_table(y)
    for i, block in enumerate(sit.blocks):
        x = block(x, c)[0]
        if (i + 1) == depth:
            zs_tilde = projector(x)
            if align_only:
                return None, None, zs_tilde
    final = sit.final_layer
    shift, scale = final.adaLN_modulation(c).chunk(2, dim=-1)
    out = sit.unpatchify(final.linear(final.norm_final(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)))
    return out, model_target, zs_tilde


def proj_loss(zs, zs_tilde):
    loss, bsz = 0.0, zs.shape[0]
    for z_j, z_tilde_j in zip(zs, zs_tilde):
        loss += mean_flat(-(F.normalize(z_j, dim=-1) * F.normalize(z_tilde_j, dim=-1)).sum(dim=-1))
    return loss / bsz


def released_step(vae, bn_stats, sit, projector, discriminator, lpips, images, eps, zs, t, noises, y):
    """(vae_loss, d_loss, sit_loss, the BatchNorm's running statistics after the step)."""
    mean, logvar = vae.posterior(images)
    logvar = torch.clamp(logvar, -30.0, 20.0)
    std, var = torch.exp(0.5 * logvar), torch.exp(logvar)
    z = mean + std * eps  # posterior.sample()
    recon = vae.decode(z)
    # VAE step: the generator's losses (configs/l1_lpips_kl_gan.yaml) and the alignment through the frozen SiT
    reconstruction_loss = F.l1_loss(images, recon, reduction="mean") / torch.exp(torch.zeros(()))
    perceptual_loss = lpips(images, recon).mean()
    kl = 0.5 * torch.sum(torch.pow(mean, 2) + var - 1.0 - logvar, dim=[1, 2, 3])
    kl_loss = torch.sum(kl) / kl.shape[0]
    frozen_d = copy.deepcopy(discriminator).requires_grad_(False)
    generator_loss = -torch.mean(frozen_d(recon))
    vae_loss = reconstruction_loss + 1.0 * perceptual_loss + 1e-6 * kl_loss + 0.1 * 1.0 * generator_loss
    frozen_sit, frozen_projector = copy.deepcopy(sit).requires_grad_(False), copy.deepcopy(projector).requires_grad_(False)
    # The VAE steps (its backward) before the SiT step updates the running statistics: its own copy of them.
    bn_eval = F.batch_norm(z, bn_stats[0].clone(), bn_stats[1].clone(), None, None, False, 0.1, 1e-4)
    _, _, zs_tilde = released_sit(frozen_sit, frozen_projector, bn_eval, t, y, noises, 2, align_only=True)
    vae_loss = vae_loss + 1.5 * proj_loss(zs, zs_tilde).mean()
    # Discriminator step
    d_loss = hinge_d_loss(discriminator(images.detach()), discriminator(recon.detach()))
    # SiT step on the detached latents, the BatchNorm in train mode (updating the running statistics)
    running_mean, running_var = bn_stats[0].clone(), bn_stats[1].clone()
    bn_train = F.batch_norm(z.detach(), running_mean, running_var, None, None, True, 0.1, 1e-4)
    out, target, zs_tilde = released_sit(sit, projector, bn_train, t, y, noises, 2, align_only=False)
    sit_loss = mean_flat((out - target) ** 2).mean() + 0.5 * proj_loss(zs, zs_tilde).mean()
    return vae_loss, d_loss, sit_loss, (running_mean, running_var)

# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def lpips_files(tmp_path):
    """Random weights in the release formats: torchvision's vgg16 state dict, LPIPS's vgg.pth."""
    from torchvision.models import vgg16

    torch.manual_seed(3)
    vgg = vgg16(weights=None).state_dict()
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, tmp_path / "vgg16-397923af.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    return tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth"


@pytest.fixture
def harness(given_encoders, write_toml, lpips_files):
    from repa.config import load_experiment

    vgg, lin = lpips_files
    toml = REPAE_TINY.replace("{vgg}", str(vgg)).replace("{lin}", str(lin))
    harness = ObjectiveHarness(load_experiment(write_toml(toml, "repae.toml")), num_classes=10)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in harness.network.named_parameters():
            if name.startswith(("backbone.", "projectors.")) and name != "backbone.pos_embed":
                p.normal_(0, 0.2)
    return harness


def test_registered_by_its_distribution_with_the_released_defaults():
    components = load_components()
    term, vae = components.get("term", "repa-e"), components.get("autoencoder", "e2e-vae")
    assert term.distribution == vae.distribution == "repa-repae"
    params = term.params()
    assert (params.vae_align_coeff, params.perceptual_weight, params.kl_weight, params.gan_weight, params.disc_lr) == \
        (1.5, 1.0, 1e-6, 0.1, 1e-4)
    check_component("autoencoder", "digits-vae", {"train": True, "epochs": 1})


def test_every_loss_and_every_gradient_equal_the_released_step_through_the_objective(harness, lpips_files):
    net, autoencoder = harness.network, harness.autoencoder
    term = harness.term("repa-e_loss")
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    eps, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t, y, zs = torch.rand(4, generator=g), torch.tensor([1, 3, 5, 7]), torch.randn(4, 16, 12, generator=g)
    stats = (autoencoder.norm.running_mean.clone(), autoencoder.norm.running_var.clone())
    from repa.interfaces import EncoderOutput

    parts = harness.loss(images=images, posterior=eps, noise=noise, t=t, y=y, encoders={"given": EncoderOutput(zs)})

    lpips = ReleasedLPIPS(torch.load(lpips_files[0]), torch.load(lpips_files[1]))
    x = images.float() / 127.5 - 1
    vae_loss, d_loss, sit_loss, after = released_step(autoencoder.vae, stats, net.backbone, net.projectors["0"],
                                                      term.discriminator, lpips, x, eps, zs, t, noise, y)
    torch.testing.assert_close(parts.total, vae_loss + d_loss + sit_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.terms["repa-e_loss"].mean(), vae_loss + d_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(autoencoder.norm.running_mean, after[0], rtol=1e-6, atol=1e-6)  # one update, as released
    torch.testing.assert_close(autoencoder.norm.running_var, after[1], rtol=1e-6, atol=1e-6)
    groups = {"vae": (list(autoencoder.vae.parameters()), vae_loss),
              "discriminator": (list(term.discriminator.parameters()), d_loss),
              "sit": ([p for p in net.backbone.parameters() if p.requires_grad] + list(net.projectors.parameters()),
                      sit_loss)}
    everything = [p for params, _ in groups.values() for p in params]
    assert len(everything) == len([p for p in net.parameters() if p.requires_grad])  # every trained parameter
    ours = dict(zip(map(id, everything), torch.autograd.grad(parts.total, everything, retain_graph=True)))
    for name, (params, loss) in groups.items():
        released = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        for p, theirs in zip(params, released):
            theirs = torch.zeros_like(p) if theirs is None else theirs
            torch.testing.assert_close(ours[id(p)], theirs, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_the_diffusion_loss_gives_the_vae_a_zero_gradient_and_the_alignment_reaches_it(harness):
    from repa.interfaces import EncoderOutput

    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    harness.loss(images=images, posterior=torch.randn(2, 4, 8, 8, generator=g), noise=torch.randn(2, 4, 8, 8, generator=g),
                 t=torch.tensor([0.3, 0.8]), y=torch.tensor([1, 2]),
                 encoders={"given": EncoderOutput(torch.randn(2, 16, 12, generator=g))})
    ctx, vae = harness.context, list(harness.autoencoder.vae.parameters())
    diffusion = ((ctx.student.out - ctx.target) ** 2).mean()
    assert all(g is None for g in torch.autograd.grad(diffusion, vae, allow_unused=True, retain_graph=True))
    term = harness.term("repa-e_loss")
    _, scalars = term.loss(ctx)
    encoder = list(harness.autoencoder.vae.encoder.parameters())
    from_alignment = torch.autograd.grad(scalars["vae_alignment"], encoder, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in from_alignment)  # through the frozen SiT to the encoder


def test_missing_e2e_vae_weights_say_where_to_put_them(tmp_path):
    from repa.errors import MissingWeightsError

    entry = load_components().get("autoencoder", "e2e-vae")
    with pytest.raises(MissingWeightsError, match=r"e2e-vae: no diffusers AutoencoderKL in .*huggingface-cli download"):
        entry.build(entry.params(path=str(tmp_path / "vae")))


def test_a_released_e2e_vae_in_diffusers_format_loads_and_decodes_its_own_latents(tmp_path):
    from diffusers.models import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                          norm_num_groups=8)
    model.save_pretrained(tmp_path / "vae")
    torch.save({"latents_scale": torch.full((1, 4, 1, 1), 0.5), "latents_bias": torch.full((1, 4, 1, 1), 0.1)},
               tmp_path / "vae" / "latents-stats.pt")
    entry = load_components().get("autoencoder", "e2e-vae")
    autoencoder = entry.build(entry.params(path=str(tmp_path / "vae"), factor=2))
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        moments = autoencoder.encode(images)
        x = autoencoder.sample(moments, torch.zeros_like(moments[:, :4]))
        latents = model.encode(images.float() / 127.5 - 1).latent_dist.mean
        torch.testing.assert_close(x, (latents - 0.1) / torch.sqrt(torch.tensor(4.0) + 1e-4), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(autoencoder.decode(x), model.decode(x * 2.0 + 0.1).sample, rtol=1e-4, atol=1e-4)
    assert autoencoder.trained_modules() == {}


@pytest.mark.slow
def test_tiny_experiment_trains_end_to_end_and_samples_with_the_trained_vae(tiny_toml, tmp_path):
    from repa.weights import load_file
    from tests.conftest import run_cli

    text = tiny_toml().read_text().replace('kind = "identity"', 'kind = "digits-vae"\ntrain = true\nepochs = 2')
    text = text.replace("resolution = 16", "resolution = 32").replace("patch_size = 4", "patch_size = 1")
    experiment = tmp_path / "repae.toml"
    experiment.write_text(text + '\n[[term]]\nkind = "repa-e"\nperceptual_weight = 0.0\ndisc_layers = 2\n')
    result = run_cli("run", str(experiment), "--no-progress", "--set", "train.sample_every=4")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "exps" / "tiny"
    before, model = load_file(run / "checkpoints" / "0000002" / "model.safetensors"), \
        load_file(run / "checkpoints" / "0000004" / "model.safetensors")
    ema = load_file(run / "checkpoints" / "0000004" / "ema.safetensors")
    vae = [k for k in model if k.startswith("autoencoder.vae.")]
    assert vae and any(not torch.equal(before[k], model[k]) for k in vae)  # the VAE trained
    assert all(torch.equal(model[k], ema[k]) for k in vae)  # and is sampled as trained
    assert not torch.equal(model["autoencoder.norm.running_mean"], ema["autoencoder.norm.running_mean"])  # averaged
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(-1 <= r["repa-e_loss/vae_alignment"] <= 1 and r["repa-e_loss/discriminator"] > 0 for r in records)
    sampled = run_cli("sample", str(experiment), "--num-samples", "2", "--out", str(tmp_path / "s"), "--no-progress")
    assert sampled.returncode == 0, sampled.stderr


def test_the_recipes_validate_with_the_released_settings():
    from pathlib import Path

    from repa.config import load_experiment

    root = Path(__file__).parents[3] / "experiments"
    e2e, ldm = load_experiment(root / "sit_xl_repae.toml"), load_experiment(root / "sit_xl_repae_ldm.toml")
    (term,) = e2e.term
    assert (term.kind, term.params.vae_align_coeff, term.params.gan_weight, term.params.kl_weight) == \
        ("repa-e", 1.5, 0.1, 1e-6)
    assert e2e.autoencoder.params.train and e2e.alignment[0].coeff == 0.5 and e2e.alignment[0].depth == 8
    assert e2e.train.max_steps == 400_000 and e2e.backbone.kind == "SiT-XL/2"
    assert not ldm.autoencoder.params.train and ldm.term == [] and ldm.alignment[0].coeff == 0.5
