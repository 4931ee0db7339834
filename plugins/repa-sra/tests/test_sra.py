import json

import pytest
import torch
import torch.nn.functional as F

from repa.plugins import load_components
from repa.testing import ObjectiveHarness, check_component

SRA_TINY = """
[data]
kind = "digits"
resolution = 64

[autoencoder]
kind = "sd-vae"

[backbone]
kind = "sit"
depth = 4
hidden_size = 32
num_heads = 2
patch_size = 2

[[term]]
kind = "sra"
student_block = 2
teacher_block = 3
t_max = 0.2

[sample]
sampler = "euler"
"""


# ---- Transcription of the released code (vvvvvjdy/SRA, SiT-SRA: models/sit.py SiT.forward with `ad` and
# SimpleHead, loss.py SRALoss.__call__ and `criterion`, train.py's total), over the same modules ----

def released_forward(sit, head, x, t, y, ad, training):
    x = sit.x_embedder(x) + sit.pos_embed
    t_embed = sit.t_embedder(t)
    c = t_embed + sit.y_embedder.embedding_table(y)  # labels after token_drop (dropped ones = 1000)
    xr = None
    for i, block in enumerate(sit.blocks):
        x = block(x, c)[0]  # our block returns (x, its attention logits or None)
        if (i + 1) == ad:
            xr = head(x) if training else x
    final = sit.final_layer
    shift, scale = final.adaLN_modulation(c).chunk(2, dim=-1)
    x = final.linear(final.norm_final(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1))
    return sit.unpatchify(x), xr


def mean_flat(x):
    return torch.mean(x, dim=list(range(1, len(x.size()))))


def released_sra_loss(model, head, teacher, images, labels_train, time_input, noises, offsets, t_max=0.2,
                      block_out_s=2, block_out_t=3):
    alpha_t, sigma_t, d_alpha_t, d_sigma_t = 1 - time_input, time_input, -1, 1
    model_input = alpha_t * images + sigma_t * noises
    model_target = d_alpha_t * images + d_sigma_t * noises
    time_input_teacher = time_input - (t_max * offsets)  # t_max * torch.rand_like(time_input)
    time_input_teacher = torch.clamp(time_input_teacher, 0, 1)
    model_output_gen, xr = released_forward(model, head, model_input, time_input.flatten(), labels_train, block_out_s,
                                            training=True)
    alpha_teacher, sigma_teacher = 1 - time_input_teacher, time_input_teacher
    teacher_input = alpha_teacher * images + sigma_teacher * noises
    with torch.no_grad():  # requires_grad(ema, False)
        _, xr_t = released_forward(teacher, None, teacher_input, time_input_teacher.flatten(), labels_train,
                                   block_out_t, training=False)
    denoising_loss = mean_flat((model_output_gen - model_target) ** 2)
    align_loss = 1 - F.cosine_similarity(xr, xr_t)  # loss_type "cos"
    return denoising_loss.mean() + align_loss.mean() * 0.5  # train.py: gen_loss_mean + align_loss_mean


# ----------------------------------------------------------------------------------------------------------


def test_registered_by_its_distribution_with_the_released_defaults_and_keeps_the_contract():
    entry = load_components().get("term", "sra")
    params = entry.params()
    assert entry.distribution == "repa-sra"
    assert (params.student_block, params.teacher_block, params.t_max, params.coeff, params.loss) == \
        (8, 20, 0.2, 0.5, "cosine-tokens")
    check_component("term", "sra", {"student_block": 1, "teacher_block": 2})


@pytest.fixture
def harness(write_toml):
    from repa.config import load_experiment

    harness = ObjectiveHarness(load_experiment(write_toml(SRA_TINY, "sra.toml")), num_classes=10)
    torch.manual_seed(0)
    with torch.no_grad():  # the online model and its EMA differ, every weight at a scale that matters
        for network in (harness.network, harness.ema):
            for name, p in network.named_parameters():
                if name != "backbone.pos_embed":  # the fixed sin-cos positions
                    p.normal_(0, 0.2)
    return harness


def test_loss_and_every_gradient_equal_the_released_code_through_the_objective(harness):
    net, ema = harness.network, harness.ema
    g = torch.Generator().manual_seed(1)
    images, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t, y = torch.rand(4, generator=g), torch.tensor([1, 3, 5, 7])
    drop = torch.tensor([False, True, False, False])
    parts = harness.loss(latents=images, noise=noise, t=t, y=y, drop=drop, step=7)
    term = harness.term("sra_loss")
    offsets = harness.context.rand(term)  # the term's own draws this step
    assert offsets.shape == (4,) and (offsets > 0).all() and (offsets < 1).all()
    labels_train = torch.where(drop, torch.full_like(y, 10), y)
    expected = released_sra_loss(net.backbone, term.head, ema.backbone, images, labels_train, t.view(-1, 1, 1, 1),
                                 noise, offsets.view(-1, 1, 1, 1))
    torch.testing.assert_close(parts.total, expected, rtol=1e-5, atol=1e-5)
    trained = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    ours = torch.autograd.grad(parts.total, [p for _, p in trained])
    theirs = torch.autograd.grad(expected, [p for _, p in trained], allow_unused=True)
    for (name, _), mine, released in zip(trained, ours, theirs):
        torch.testing.assert_close(mine, torch.zeros_like(mine) if released is None else released, rtol=1e-5,
                                   atol=1e-5, msg=name)
    assert any(n.startswith("terms.0.head") for n, _ in trained)
    assert all(p.grad is None for p in ema.parameters())  # the teacher gets nothing


def test_the_teacher_sees_a_lower_noise_level_from_its_own_reproducible_draws(harness):
    g = torch.Generator().manual_seed(2)
    args = dict(latents=torch.randn(4, 4, 8, 8, generator=g), noise=torch.randn(4, 4, 8, 8, generator=g),
                t=torch.tensor([0.05, 0.3, 0.6, 0.95]), y=torch.tensor([0, 1, 2, 3]))
    first = harness.loss(**args, step=3).terms["sra_loss"]
    offsets = harness.context.rand(harness.term("sra_loss"))
    again = harness.loss(**args, step=3).terms["sra_loss"]
    other = harness.loss(**args, step=4).terms["sra_loss"]
    torch.testing.assert_close(first, again, rtol=0, atol=0)  # a function of (seed, step)
    assert not torch.equal(first, other)
    assert not torch.equal(offsets, harness.context.rand(harness.term("sra_loss")))


def test_a_teacher_block_shallower_than_the_students_is_one_line(tiny_toml):
    from tests.conftest import run_cli

    result = run_cli("validate", str(tiny_toml('\n[[term]]\nkind = "sra"\nstudent_block = 2\nteacher_block = 1\n')))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "teacher_block 1 is shallower than student_block 2" in result.stderr


def test_blocks_beyond_the_backbone_are_one_line_before_training(tiny_toml, tmp_path):
    from tests.conftest import run_cli

    result = run_cli("run", str(tiny_toml('\n[[term]]\nkind = "sra"\n')), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "needs blocks [8, 20] but sit has blocks 1..2" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "exps" / "tiny").exists()


def test_the_sra_recipe_validates_with_the_released_settings():
    from pathlib import Path

    from repa.config import load_experiment

    config = load_experiment(Path(__file__).parents[3] / "experiments" / "sit_xl_sra.toml")
    (term,) = config.term
    assert config.alignment == [] and config.backbone.kind == "SiT-XL/2"
    assert (term.kind, term.params.student_block, term.params.teacher_block, term.params.t_max, term.params.coeff) == \
        ("sra", 8, 20, 0.2, 0.5)
    assert (config.sample.sampler.kind, config.sample.steps, config.sample.cfg_scale,
            tuple(config.sample.guidance_interval)) == ("euler-maruyama", 250, 1.8, (0.0, 0.7))


@pytest.mark.slow
def test_tiny_experiment_trains_with_sra(tiny_toml, tmp_path):
    from repa.weights import load_file
    from tests.conftest import run_cli

    experiment = tiny_toml('\n[[term]]\nkind = "sra"\nstudent_block = 1\nteacher_block = 2\n')
    result = run_cli("run", str(experiment), "--no-progress", "--set", "train.sample_every=4")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "exps" / "tiny"
    assert load_file(run / "checkpoints" / "0000004" / "model.safetensors")["terms.0.head.linear1.weight"].shape == (64, 32)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["sra_loss"] < 2 for r in records) and (run / "samples" / "0000004.png").is_file()
