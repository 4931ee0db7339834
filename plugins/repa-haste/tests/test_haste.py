import json

import pytest
import torch
import torch.nn as nn

from repa.interfaces import EncoderOutput
from repa.plugins import load_components
from repa.testing import ObjectiveHarness, check_component


# ---- Transcription of the released code (NUS-HPC-AI-Lab/HASTE: models/sit.py Attention.forward with
# return_act, modify_dinov2/layers/attention.py, loss.py attn_loss) ----

def haste_sit_attention_logits(attn, x):
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scale = attn.head_dim ** -0.5
    return (q * scale) @ k.transpose(-2, -1)


def haste_dinov2_attention_logits(attn, x):
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
    attn_logits = q @ k.transpose(-2, -1)
    return attn_logits[:, :, 1:, 1:]  # remove class token


def haste_attn_loss(zs_tilde, zs, tokens, teacher_heads, pairs):
    attn_loss = 0.0
    for i, j in pairs:  # released: for i in range(4, 8): zs_tilde[i] <-> zs[i + 4]
        zsi = (zs_tilde[i])[:, :teacher_heads, :, :].reshape(-1, tokens)
        zs_j = zs[j].reshape(-1, tokens).softmax(dim=-1)
        attn_loss += -(zs_j * torch.log(zsi.softmax(dim=-1))).sum(dim=-1).mean()
    return attn_loss / len(pairs)

# ----------------------------------------------------------------------------------------------------------


def test_registered_by_its_distribution_with_the_released_defaults_and_keeps_the_contract():
    entry = load_components().get("attention_loss", "haste")
    params = entry.params()
    assert entry.distribution == "repa-haste"
    assert (params.blocks, params.encoder_blocks, params.coeff) == ([5, 6, 7, 8], [9, 10, 11, 12], 0.5)
    check_component("attention_loss", "haste")


HASTE_TINY = """
[data]
kind = "digits"
resolution = 64

[autoencoder]
kind = "sd-vae"

[backbone]
kind = "sit"
depth = 3
hidden_size = 32
num_heads = 4
patch_size = 2

[[alignment]]
encoder = { kind = "given", dim = 24, tokens = 16, blocks = 3 }
depth = 2
projector_dim = 16

[[attention]]
kind = "haste"
blocks = [1, 2]
encoder_blocks = [2, 3]

[sample]
sampler = "euler"
"""


def mean_flat(x):
    return torch.mean(x, dim=list(range(1, len(x.size()))))


def test_loss_and_every_gradient_equal_the_released_code_through_the_objective(given_encoders, write_toml):
    """Student: a tiny SiT (4 heads) built as `repa run` builds it, its attention at blocks 1-2; teacher: a tiny
    DINOv2-style ViT (2 heads, class token) at blocks 2-3. The trainer's own objective (denoising + REPA at
    block 2 + HASTE's attention term) against the released losses (loss.py: denoising, proj_loss, attn_loss
    over the pairs and heads [:, :2]), and every parameter's gradient."""
    from timm.models.vision_transformer import VisionTransformer

    from repa.config import load_experiment

    harness = ObjectiveHarness(load_experiment(write_toml(HASTE_TINY, "haste.toml")), num_classes=10)
    net = harness.network.eval()
    sit, projector = net.backbone, net.projectors["0"]
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=2, num_classes=0).eval()
    g = torch.Generator().manual_seed(1)
    x0, noise, t, y = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g), \
        torch.rand(3, generator=g), torch.tensor([1, 2, 3])
    released_teacher = {}
    hooks = [vit.blocks[i].attn.register_forward_pre_hook(
        lambda m, a, i=i: released_teacher.__setitem__(i, haste_dinov2_attention_logits(m, a[0]))) for i in range(3)]
    with torch.no_grad():
        patches = vit.forward_features(torch.randn(3, 3, 16, 16, generator=g))[:, 1:]
    for hook in hooks:
        hook.remove()

    # Released: train.py / loss.py of HASTE on the same modules (linear path, v-prediction).
    released_student = {}
    hooks = [sit.blocks[i].attn.register_forward_pre_hook(
        lambda m, a, i=i: released_student.__setitem__(i, haste_sit_attention_logits(m, a[0]))) for i in range(3)]
    tt = t.view(-1, 1, 1, 1)
    output = sit((1 - tt) * x0 + tt * noise, t, y, hidden_depths=[2])
    for hook in hooks:
        hook.remove()
    denoising = mean_flat((output.out - (noise - x0)) ** 2)
    z_tilde = torch.nn.functional.normalize(projector(output.hidden[2]), dim=-1)
    proj = mean_flat(-(torch.nn.functional.normalize(patches, dim=-1) * z_tilde).sum(dim=-1)).sum() / 3
    attn = haste_attn_loss(released_student, released_teacher, 16, 2, [(0, 1), (1, 2)])
    expected = denoising.mean() + 0.5 * proj + 0.5 * attn
    trained = [p for p in net.parameters() if p.requires_grad]
    expected_grads = torch.autograd.grad(expected, trained)

    teacher = EncoderOutput(patches, attention={2: released_teacher[1], 3: released_teacher[2]})
    parts = harness.loss(latents=x0, noise=noise, t=t, y=y, encoders={"given": teacher})
    torch.testing.assert_close(parts.terms["attention_loss_0"].mean(), attn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.total, expected, rtol=1e-5, atol=1e-5)
    for (name, _), ours, theirs in zip([(n, p) for n, p in net.named_parameters() if p.requires_grad],
                                       torch.autograd.grad(parts.total, trained), expected_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5, msg=name)


def test_the_backbone_returns_the_released_attention_logits():
    from repa.components.backbone.sit import SiT

    torch.manual_seed(0)
    sit = SiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=4, num_classes=10).eval()
    with torch.no_grad():
        for p in sit.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    released = {}
    hooks = [sit.blocks[i].attn.register_forward_pre_hook(
        lambda m, a, i=i: released.__setitem__(i, haste_sit_attention_logits(m, a[0]))) for i in range(3)]
    x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([1, 2, 3])
    output = sit(x, t, y, attention_blocks=[1, 3])
    for hook in hooks:
        hook.remove()
    assert sorted(output.attention) == [1, 3]
    torch.testing.assert_close(output.attention[1], released[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.attention[3], released[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.out, sit(x, t, y).out)  # keeping the logits changes nothing else


def test_frozen_encoder_gives_the_released_dinov2_attention_logits():
    """dinov2-vit-b's architecture at depth 2 with random weights: forward_with_attention equals the
    released modified DINOv2's logits (q scaled, class token removed) and the tokens of forward."""
    from repa.components.encoder.specs import SPECS
    from repa.components.encoder.vit import build_vit_encoder

    torch.manual_seed(0)
    encoder = build_vit_encoder(SPECS["dinov2-vit-b"], 32, None, depth=2)
    x = encoder.preprocess(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    released = {}
    hook = encoder.network.blocks[1].attn.register_forward_pre_hook(
        lambda m, a: released.__setitem__(1, haste_dinov2_attention_logits(m, a[0])))
    tokens, (logits,) = encoder.forward_with_attention(x, [2])
    hook.remove()
    torch.testing.assert_close(logits, released[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens, encoder(x), rtol=0, atol=0)
    assert logits.shape == (2, 12, tokens.shape[1], tokens.shape[1])


def test_tiny_experiment_trains_with_holistic_alignment_and_stops_it(tiny_toml, tmp_path):
    """digits-convnet has no attention: its one "block" is its tokens' affinities (the README says so)."""
    from tests.conftest import run_cli

    experiment = tiny_toml('\n[[attention]]\nkind = "haste"\nblocks = [1, 2]\nencoder_blocks = [1, 1]\n'
                           'stop_after = 2\n')
    result = run_cli("run", str(experiment), "--no-progress")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "exps" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    # On for steps 1-2; after stop_after it is not computed at all (HASTE's phase II), so not logged.
    assert [r["step"] for r in records if "attention_loss_0" in r] == [1, 2]
    # a cross-entropy over 16 keys: log(16) when the student's rows are uniform
    assert all(0 < r["attention_loss_0"] < 2 * torch.log(torch.tensor(16.0)).item() for r in records[:2])


def test_with_reg_and_gradient_checkpointing_the_image_tokens_attention_is_aligned(tiny_toml, tmp_path):
    """REG's extra token is left out of the student's logits (the teacher has the image tokens only), and
    the recorded blocks run without gradient checkpointing (their recomputation would not record)."""
    from tests.conftest import run_cli

    experiment = tiny_toml('\n[[attention]]\nkind = "haste"\nblocks = [1, 2]\nencoder_blocks = [1, 1]\n'
                           '\n[[joint]]\nkind = "reg"\n')
    result = run_cli("run", str(experiment), "--no-progress", "--set", "train.grad_checkpointing=true")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "exps" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["attention_loss_0"] > 0 and r["joint_loss"] > 0 for r in records)


def test_a_teacher_with_more_heads_than_the_backbone_is_one_line_before_training(tiny_toml):
    from repa.config import load_experiment
    from repa.engine.build import build_network, probe_attention
    from repa.errors import ConfigError

    config = load_experiment(tiny_toml('\n[[attention]]\nkind = "haste"\nblocks = [1]\nencoder_blocks = [1]\n'))

    class EightHeads:  # a teacher with 8 heads over the 16 tokens; the tiny SiT has 2
        def preprocess(self, images):
            return images.float()

        def forward_with_attention(self, x, depths):
            return None, [torch.zeros(1, 8, 16, 16) for _ in depths]

    with pytest.raises(ConfigError, match=r"attention\[0\]: sit's attention is 2 heads x 16 tokens but "
                                          r"digits-convnet's is 8 heads x 16 tokens"):
        probe_attention(config, build_network(config, 10), [EightHeads()])


@pytest.mark.parametrize("extra,expected", [
    ('[[attention]]\nkind = "haste"\n', "attention[0].blocks: [5, 6, 7, 8]: sit has blocks 1..2"),
    ('[[attention]]\nkind = "haste"\nblocks = [1]\nencoder_blocks = [1, 1]\n', "2 encoder blocks for 1 backbone blocks"),
    ('[[attention]]\nkind = "haste"\nblocks = [1]\nencoder_blocks = [3]\n', "[3]: digits-convnet has blocks 1..1"),
    ('[[attention]]\nkind = "haste"\nblocks = [1]\nencoder_blocks = [1]\n[train]\n', None),
])
def test_misconfigured_attention_is_one_line(tiny_toml, extra, expected):
    from tests.conftest import run_cli

    if expected is None:  # with train.compile
        result = run_cli("validate", str(tiny_toml("\n" + extra.replace("[train]\n", ""))), "--set", "train.compile=true")
        expected = "train.compile: True: recording attention for [[attention]] is not compiled"
    else:
        result = run_cli("validate", str(tiny_toml("\n" + extra)))
    assert result.returncode != 0 and expected in result.stderr and "Traceback" not in result.stderr


def test_the_haste_recipe_validates_with_the_released_settings():
    from pathlib import Path

    from repa.config import load_experiment

    config = load_experiment(Path(__file__).parents[3] / "experiments" / "sit_xl_haste.toml")
    (term,) = config.attention
    assert (term.params.blocks, term.params.encoder_blocks, term.params.coeff) == ([5, 6, 7, 8], [9, 10, 11, 12], 0.5)
    assert term.params.stop_after == config.alignment[0].stop_after == 250_000
    assert (config.sample.cfg_scale, tuple(config.sample.guidance_interval)) == (1.65, (0.0, 0.72))
