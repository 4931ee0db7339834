import math

import pytest
import torch
import torch.nn as nn

from repa.plugins import load_components
from repa.testing import check_component


# ---- Transcription of the released code (End2End-Diffusion/iREPA, ldm/models/sit.py and ldm/utils.py) ----

class ReleasedProjectionLayer(nn.Module):  # projection_layer_type = "conv"
    def __init__(self, hidden_size, z_dim, proj_kwargs_kernel_size):
        super().__init__()
        kernel_size = proj_kwargs_kernel_size
        padding = kernel_size // 2
        self.projection_layer = nn.Conv2d(hidden_size, z_dim, kernel_size=kernel_size, stride=1, padding=padding)

    def forward(self, x, hw=None):
        B, T, D = x.shape
        if hw is None:
            H = W = int(math.isqrt(T))
            assert H * W == T
        else:
            H, W = hw
        x_ = x.reshape(B, H, W, D).permute(0, 3, 1, 2).contiguous()
        y = self.projection_layer(x_)
        y = y.permute(0, 2, 3, 1).contiguous()
        return y.reshape(B, T, -1)


def released_spatial_zscore(feat, alpha=1.0, eps=1e-6):
    mean = feat.mean(dim=1, keepdim=True)
    std = feat.std(dim=1, keepdim=True)
    return (feat - alpha * mean) / (std + eps)

# ----------------------------------------------------------------------------------------------------------


def build(kind, name, **params):
    entry = load_components().get(kind, name)
    return entry, entry.params(**params)


def test_registered_by_its_distribution_with_the_papers_defaults():
    conv, conv_params = build("projector", "conv")
    norm, norm_params = build("target_transform", "spatial-norm")
    assert conv.distribution == norm.distribution == "repa-irepa"
    assert conv_params.kernel_size == 3 and norm_params.gamma == 0.6 and norm_params.eps == 1e-6


@pytest.mark.parametrize("grid,kernel", [((4, 4), 3), ((3, 5), 3), ((4, 4), 1)])
def test_conv_projector_equals_the_released_layer(grid, kernel):
    entry, params = build("projector", "conv", kernel_size=kernel)
    ours = entry.build(params, in_dim=24, out_dim=16, projector_dim=2048, grid=grid)
    released = ReleasedProjectionLayer(24, 16, kernel)
    released.projection_layer.load_state_dict(ours.conv.state_dict())
    hidden = torch.randn(3, grid[0] * grid[1], 24, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(hidden), released(hidden, hw=grid), rtol=1e-5, atol=1e-5)
    # A 3x3 kernel mixes neighbours: moving one token changes its neighbours' projections.
    if kernel == 3:
        moved = hidden.clone()
        moved[:, 0] += 1
        changed = (ours(moved) - ours(hidden)).abs().amax(dim=(0, 2)) > 1e-6
        assert changed[[0, 1, grid[1], grid[1] + 1]].all() and not changed[-1]


def test_spatial_norm_equals_the_released_zscore_and_leaves_its_input():
    entry, params = build("target_transform", "spatial-norm")
    transform = entry.build(params)
    tokens = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1)) * 3 + 5
    before = tokens.clone()
    out = transform(tokens)
    torch.testing.assert_close(out, released_spatial_zscore(tokens, alpha=0.6), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens, before, rtol=0, atol=0)
    full = build("target_transform", "spatial-norm")[0].build(entry.params(gamma=1.0))(tokens)
    assert full.mean(dim=1).abs().max() < 1e-5 and (full.std(dim=1) - 1).abs().max() < 1e-4


def test_both_pass_the_contract_kit():
    check_component("projector", "conv")
    check_component("target_transform", "spatial-norm")


def test_an_even_kernel_is_one_line():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="even"):
        build("projector", "conv", kernel_size=2)


def test_the_irepa_recipe_validates():
    from pathlib import Path

    from repa.config import load_experiment

    root = Path(__file__).parents[3]
    config = load_experiment(root / "experiments" / "sit_xl_irepa.toml")
    (entry,) = config.alignment
    assert entry.projector.kind == "conv" and entry.target_transform.kind == "spatial-norm" and entry.coeff == 1.0


def test_tiny_experiment_trains_with_irepa(tiny_toml, tmp_path):
    """The conv projector and the spatial norm in a real run: the checkpoint holds the conv, the log its loss."""
    import json

    from repa.weights import load_file
    from tests.conftest import run_cli

    experiment = tiny_toml()
    text = experiment.read_text().replace("projector_dim = 32", 'projector = "conv"\ntarget_transform = "spatial-norm"')
    experiment.write_text(text)
    result = run_cli("run", str(experiment), "--no-progress")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "exps" / "tiny"
    weights = load_file(run / "checkpoints" / "0000004" / "model.safetensors")
    assert weights["projectors.0.conv.weight"].shape[1:] == (32, 3, 3)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(-1 <= r["align_loss_0"] <= 1 for r in records)


IREPA_TINY = """
[data]
kind = "digits"
resolution = 64

[autoencoder]
kind = "sd-vae"

[backbone]
kind = "sit"
depth = 3
hidden_size = 32
num_heads = 2
patch_size = 2

[[alignment]]
encoder = { kind = "given", dim = 24, tokens = 16 }
projector = { kind = "conv", kernel_size = 3 }
target_transform = { kind = "spatial-norm", gamma = 0.6 }
depth = 2
coeff = 1.0

[sample]
sampler = "euler"
"""


def released_cosine(zs, zs_tilde):  # ldm/projection_loss.py CosineProjectionLoss
    zs = torch.nn.functional.normalize(zs, dim=-1)
    zs_tilde = torch.nn.functional.normalize(zs_tilde, dim=-1)
    return (-(zs * zs_tilde).sum(dim=-1)).mean()


def test_the_whole_loss_and_every_gradient_equal_the_released_code_through_the_objective(given_encoders, write_toml):
    """A tiny SiT with iREPA's conv projector and spatially normalised target, built as `repa run` builds it,
    through the trainer's own objective, against ldm/loss.py + train.py: denoising.mean() + proj_coeff x the
    cosine projection loss on spatial_zscore(patch tokens, alpha 0.6) of the released ProjectionLayer's output."""
    from repa.config import load_experiment
    from repa.interfaces import EncoderOutput
    from repa.testing import ObjectiveHarness

    harness = ObjectiveHarness(load_experiment(write_toml(IREPA_TINY, "irepa.toml")), num_classes=10)
    net = harness.network.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    released_projector = ReleasedProjectionLayer(32, 24, 3)
    released_projector.projection_layer.load_state_dict(net.projectors["0"].conv.state_dict())
    g = torch.Generator().manual_seed(3)
    x0, noise, t, y = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g), \
        torch.rand(3, generator=g), torch.tensor([1, 5, 9])
    patches = torch.randn(3, 16, 24, generator=g) * 2 + 1

    tt = t.view(-1, 1, 1, 1)
    output = net.backbone((1 - tt) * x0 + tt * noise, t, y, hidden_depths=[2])
    denoising = ((output.out - (noise - x0)) ** 2).mean(dim=(1, 2, 3))
    proj = released_cosine(released_spatial_zscore(patches, alpha=0.6), released_projector(output.hidden[2]))
    expected = denoising.mean() + 1.0 * proj
    backbone = [(n, p) for n, p in net.backbone.named_parameters() if p.requires_grad]
    released = [p for _, p in backbone] + list(released_projector.projection_layer.parameters())
    expected_grads = torch.autograd.grad(expected, released)

    parts = harness.loss(latents=x0, noise=noise, t=t, y=y, encoders={"given": EncoderOutput(patches)})
    torch.testing.assert_close(parts.total, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.terms["align_loss_0"].mean(), proj, rtol=1e-5, atol=1e-5)
    ours = [p for _, p in backbone] + list(net.projectors["0"].conv.parameters())
    names = [n for n, _ in backbone] + ["projectors.0.conv.weight", "projectors.0.conv.bias"]
    assert len(ours) == len([p for p in net.parameters() if p.requires_grad])  # every trained parameter
    for name, mine, theirs in zip(names, torch.autograd.grad(parts.total, ours), expected_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5, msg=name)
