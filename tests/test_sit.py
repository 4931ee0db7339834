"""The SiT backbone: official parity, presets, checkpoint formats, precision, compile, bad inputs."""

from __future__ import annotations

import argparse
import shutil

import pytest
import torch

from repa.compat import official_sit
from repa.components.backbone import SIZES, preset_params
from repa.components.backbone.sit import SiT
from repa.errors import CheckpointError
from repa.weights import load_file, load_state_strict, strip_prefix, unwrap_state_dict

def official_count(depth: int, width: int, patch: int, channels: int = 4, side: int = 32, classes: int = 1000) -> int:
    """Parameters of the official models/sit.py SiT (no projector), from its layer shapes:
    PatchEmbed, TimestepEmbedder (256 -> D -> D), LabelEmbedder (classes + 1 null rows), fixed
    pos_embed, per block qkv/proj/fc1/fc2/adaLN (18 D^2 + 15 D), FinalLayer (linear + adaLN)."""
    d, tokens, out = width, (side // patch) ** 2, patch * patch * channels
    embed = d * channels * patch * patch + d + 256 * d + d + d * d + d + (classes + 1) * d + tokens * d
    blocks = depth * (18 * d * d + 15 * d)
    final = d * out + out + 2 * d * d + 2 * d
    return embed + blocks + final


def test_official_count_formula_is_anchored_on_the_published_xl2_number():
    assert official_count(28, 1152, 2) == 675_111_184


def test_forward_matches_the_official_code(official, official_model):
    _, io = official
    with torch.no_grad():
        out, zs = official_model(io["x"], io["t"], io["y"])
    torch.testing.assert_close(out, io["out"], atol=1e-5, rtol=0)
    for mine, theirs in zip(zs, io["zs"]):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


def build_preset(name, **kwargs):
    size, patch = name[4:].split("/")
    p = preset_params(size, int(patch))()
    return SiT(input_size=32, patch_size=p.patch_size, in_channels=4, hidden_size=p.hidden_size, depth=p.depth,
               num_heads=p.num_heads, **kwargs)


PRESETS = [f"SiT-{size}/{patch}" for size in SIZES for patch in (2, 4, 8)]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_with_the_official_parameter_count(name):
    size, patch = name[4:].split("/")
    depth, width, _ = SIZES[size]
    with torch.device("meta"):
        model = build_preset(name)
    assert sum(p.numel() for p in model.parameters()) == official_count(depth, width, int(patch))
    assert model.x_embedder.num_patches == (32 // int(patch)) ** 2
    params = preset_params(size, int(patch))()
    assert params.num_tokens(32) == model.x_embedder.num_patches and params.num_blocks() == depth


def aligned(backbone, projections):
    """backbone + MLP projectors at `projectors.<k>`: (depth, projector_dim, out_dim) per alignment entry."""
    from repa.components.projector.mlp import MLPProjector
    from repa.engine.network import Placement, TrainedNetwork
    from repa.interfaces import TrainedModule

    network = TrainedNetwork(backbone, [Placement(f"projectors.{k}", TrainedModule(MLPProjector(backbone.hidden_size, p, z)))
                                        for k, (_, p, z) in enumerate(projections)])
    network.depths = [d for d, _, _ in projections]
    return network


def project(model, x, t, y):
    """(out, [each projector on its depth's hidden state]) as REPA's alignment terms compute them."""
    output = model.backbone(x, t, y, hidden_depths=sorted(set(model.depths)))
    return output.out, [model.projectors[str(k)](output.hidden[d]) for k, d in enumerate(model.depths)]


def test_xl2_with_one_768d_projector_has_the_official_count():
    with torch.device("meta"):
        model = aligned(build_preset("SiT-XL/2"), [(8, 2048, 768)])
    assert sum(p.numel() for p in model.parameters()) == 683_242_512


def test_small_presets_and_qk_norm_run():
    """Both crash in the official code (decoder width 768; timm's qk-norm assert)."""
    backbone = SiT(input_size=8, patch_size=2, in_channels=4, hidden_size=384, depth=1, num_heads=6, qk_norm=True)
    model = aligned(backbone, [(1, 64, 16)]).eval()
    out, feats = project(model, torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 1000]))
    assert out.shape == (2, 4, 8, 8) and feats[0].shape == (2, 16, 16)
    assert "blocks.0.attn.q_norm.weight" in backbone.state_dict()


def test_projectors_at_different_depths():
    backbone = SiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=2)
    model = aligned(backbone, [(1, 16, 8), (3, 16, 12)]).eval()
    hidden = {}
    for i in (0, 2):
        backbone.blocks[i].register_forward_hook(lambda m, inp, out, i=i: hidden.__setitem__(i, out))
    _, (f1, f3) = project(model, torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2]))
    torch.testing.assert_close(f1, model.projectors["0"](hidden[0][0]))
    torch.testing.assert_close(f3, model.projectors["1"](hidden[2][0]))


def test_backbone_returns_the_hidden_states_asked_for_in_that_order():
    backbone = SiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=2).eval()
    hidden = {}
    for i in range(3):
        backbone.blocks[i].register_forward_hook(lambda m, inp, out, i=i: hidden.__setitem__(i + 1, out))
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2])
    output = backbone(x, t, y, hidden_depths=[3, 1])
    assert list(output.hidden) == [3, 1] and [s.shape for s in output.hidden.values()] == [(2, 16, 32)] * 2
    torch.testing.assert_close(output.hidden[3], hidden[3][0])
    torch.testing.assert_close(output.hidden[1], hidden[1][0])
    torch.testing.assert_close(backbone(x, t, y).out, output.out)
    assert backbone(x, t, y).hidden == {} and backbone(x, t, y).attention == {}
    with pytest.raises(ValueError, match=r"block 4 requested; SiT has blocks 1..3"):
        backbone(x, t, y, hidden_depths=[4])


def test_official_layout_round_trips_through_the_trained_network(official):
    from repa.engine.network import TrainedNetwork, checkpoint_layout, network_layout

    checkpoint, _ = official
    model = official_sit(**checkpoint["config"])
    network = TrainedNetwork(model.backbone, model.placements)
    nested = network_layout(checkpoint["ema"], network)
    assert "backbone.blocks.0.attn.qkv.weight" in nested and "projectors.1.4.weight" in nested
    assert checkpoint_layout(nested).keys() == checkpoint["ema"].keys()
    network.load_state_dict(nested, strict=True)


def test_a_backbone_with_a_submodule_called_backbone_round_trips():
    """E.g. a plugin wrapping a timm model as `self.backbone`: its keys start with `backbone.` too."""
    from repa.engine.network import checkpoint_layout, network_layout

    class Wrapper(SiT):
        def __init__(self):
            super().__init__(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2)
            self.backbone = torch.nn.Linear(3, 3)

    torch.manual_seed(0)
    saved = checkpoint_layout(aligned(Wrapper(), [(1, 16, 8)]).state_dict())
    assert "backbone.weight" in saved and "projectors.0.0.weight" in saved
    fresh = aligned(Wrapper(), [(1, 16, 8)])
    fresh.load_state_dict(network_layout(saved, fresh), strict=True)
    torch.testing.assert_close(fresh.backbone.backbone.weight, saved["backbone.weight"])


def test_label_dropout_replaces_labels_by_the_null_class():
    model = SiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=10)
    model.final_layer.linear.weight.data.normal_()
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3)
    model.train()
    dropped = model(x, t, torch.tensor([1, 2, 3]), drop_ids=torch.tensor([True, False, True])).out
    model.eval()
    expected = model(x, t, torch.tensor([10, 2, 10])).out
    torch.testing.assert_close(dropped, expected)
    assert model.null_label == 10


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runs_under_autocast(official_model, official, dtype):
    _, io = official
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out, zs = official_model(io["x"], io["t"], io["y"])
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - io["out"]).abs().max() < 0.05


def test_activation_checkpointing_gives_the_same_gradients(official):
    checkpoint, io = official
    grads = []
    for flag in (False, True):
        model = official_sit(**checkpoint["config"])
        model.load_state_dict(checkpoint["ema"])
        model.backbone.grad_checkpointing = flag
        model.train()
        out, zs = model(io["x"], io["t"], io["y"], drop_ids=torch.zeros(3, dtype=torch.bool))
        (out.square().mean() + zs[0].mean()).backward()
        grads.append(model.backbone.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def _compiler_available() -> str | None:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        return "no C compiler for torch.compile's CPU backend"
    return None


def test_torch_compile(official, official_model):
    reason = _compiler_available()
    if reason:
        pytest.skip(reason)
    _, io = official
    compiled = torch.compile(official_model)
    with torch.no_grad():
        out, _ = compiled(io["x"], io["t"], io["y"])
    torch.testing.assert_close(out, io["out"], atol=1e-5, rtol=0)


def test_bad_inputs_are_named(official_model):
    model = official_model.eval()  # called directly, as a migrating user does
    with pytest.raises(ValueError, match=r"expects inputs \[B, 4, 8, 8\], got \[2, 4, 16, 16\]"):
        model(torch.randn(2, 4, 16, 16), torch.rand(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in 0..1000"):
        model(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 1001]))
    with pytest.raises(ValueError, match=r"labels must lie in 0..1000"):
        model(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([-1, 0]))


def test_width_must_divide_into_heads():
    from repa.compat import official_sit

    with pytest.raises(ValueError, match="hidden size 30 is not divisible by the number of heads 4"):
        official_sit(input_size=8, patch_size=2, in_channels=4, hidden_size=30, depth=2, num_heads=4)


def test_migration_samplers_reject_misspelt_arguments(official_model):
    from repa.compat import euler_sampler

    with pytest.raises(TypeError, match="cfg_scal"):
        euler_sampler(official_model.eval(), torch.randn(1, 4, 8, 8), torch.tensor([0]), num_steps=2, cfg_scal=4.0)


# ============================================================================
# Checkpoint formats
# ============================================================================


def _load(path, model):
    state = strip_prefix(unwrap_state_dict(load_file(path)))
    load_state_strict(model, state, str(path))
    return model


@pytest.mark.parametrize("layout", ["official_training", "bare_ema", "ddp_prefixed", "safetensors"])
def test_checkpoint_layouts_load(official, official_model, tmp_path, layout):
    from safetensors.torch import save_file

    checkpoint, io = official
    ema = checkpoint["ema"]
    path = tmp_path / ("ckpt.safetensors" if layout == "safetensors" else "ckpt.pt")
    if layout == "official_training":
        torch.save({"model": ema, "ema": ema, "opt": {}, "args": argparse.Namespace(model="SiT-XL/2"), "steps": 5}, path)
    elif layout == "bare_ema":
        torch.save(ema, path)
    elif layout == "ddp_prefixed":
        torch.save({"model": {f"module.{k}": v for k, v in ema.items()}}, path)
    else:
        save_file({k: v.contiguous() for k, v in ema.items()}, str(path))
    model = _load(path, official_sit(**checkpoint["config"]).eval())
    with torch.no_grad():
        torch.testing.assert_close(model(io["x"], io["t"], io["y"])[0], io["out"], atol=1e-5, rtol=0)


class Custom:  # an arbitrary pickled object: must never be unpickled
    pass


def test_arbitrary_pickles_are_refused_with_a_conversion_hint(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"ema": {}, "payload": Custom()}, path)
    with pytest.raises(CheckpointError, match=r"safe loading refuses.*weights_only=False"):
        load_file(path)


def test_shape_mismatch_names_the_key_and_both_shapes(official, tmp_path):
    checkpoint, _ = official
    config = dict(checkpoint["config"], z_dims=[32, 64])
    with pytest.raises(CheckpointError, match=r"projectors.1.4.weight: shape \[48, 128\] in the file, \[64, 128\] in the model"):
        load_state_strict(official_sit(**config), checkpoint["ema"], "ckpt.pt")


def test_truncated_file_is_reported(tmp_path, official):
    checkpoint, _ = official
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint["ema"], path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_file(path)
