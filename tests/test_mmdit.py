"""The MMDiT backbone against the official REPA text-to-image code (sihyun-yu/REPA @ 67f7145:
models/mmdit.py, samplers_t2i.py): tests/fixtures/official_tiny_mmdit*.pt, made with the official
constructor at its own (PyTorch default) initialisation; see tests/fixtures/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repa.compat import euler_maruyama_sampler_t2i, euler_sampler_t2i, official_mmdit

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def official():
    saved = torch.load(FIXTURES / "official_tiny_mmdit.pt", weights_only=True)
    model = official_mmdit(**saved["config"]).eval()
    model.load_state_dict(saved["model"])  # strict: the official checkpoint layout
    return model, torch.load(FIXTURES / "official_tiny_mmdit_io.pt", weights_only=True)


def test_forward_and_projections_match_the_official_mmdit(official):
    model, io = official
    with torch.no_grad():
        out, zs = model(io["x"], io["t"], context=io["context"])
    torch.testing.assert_close(out, io["out"], atol=1e-5, rtol=1e-5)
    assert len(zs) == len(io["zs"]) == 2
    for ours, theirs in zip(zs, io["zs"]):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_state_dict_is_the_official_layout(official):
    model, _ = official
    saved = torch.load(FIXTURES / "official_tiny_mmdit.pt", weights_only=True)["model"]
    assert sorted(model.state_dict()) == sorted(saved)


@pytest.mark.parametrize("name, kwargs", [
    ("ode_euler_cfg4_high07_8steps", dict(num_steps=8, cfg_scale=4.0, guidance_high=0.7)),
    ("ode_heun_cfg1.8_low02_high07_8steps", dict(num_steps=8, heun=True, cfg_scale=1.8, guidance_low=0.2,
                                                 guidance_high=0.7)),
    ("ode_euler_nocfg_8steps", dict(num_steps=8)),
])
def test_ode_sampler_matches_official_t2i(official, name, kwargs):
    model, io = official
    x0 = euler_sampler_t2i(model, io["xT"], io["ys"], io["y_null"], **kwargs)
    assert x0.dtype == torch.float64
    torch.testing.assert_close(x0, io[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, kwargs", [
    ("sde_cfg4_high07_8steps_seed5", dict(num_steps=8, cfg_scale=4.0, guidance_high=0.7)),
    ("sde_cosine_cfg2_8steps_seed5", dict(num_steps=8, cfg_scale=2.0, path_type="cosine")),
])
def test_sde_sampler_matches_official_t2i(official, name, kwargs):
    model, io = official
    torch.manual_seed(5)  # the official SDE draws from torch's global RNG
    x0 = euler_maruyama_sampler_t2i(model, io["xT"], io["ys"], io["y_null"], **kwargs)
    torch.testing.assert_close(x0, io[name], atol=1e-5, rtol=1e-5)


def test_guidance_uses_the_given_empty_contexts(official):
    """CFG against y_null: another unconditional context changes the guided samples."""
    model, io = official
    kwargs = dict(num_steps=4, cfg_scale=4.0)
    base = euler_sampler_t2i(model, io["xT"], io["ys"], io["y_null"], **kwargs)
    other = euler_sampler_t2i(model, io["xT"], io["ys"], torch.zeros_like(io["y_null"]), **kwargs)
    assert (base - other).abs().max() > 1e-3


def test_official_variants_it_does_not_build_are_refused():
    with pytest.raises(ValueError, match="swiglu"):
        official_mmdit(input_size=32, depth=2, swiglu=True)
    with pytest.raises(TypeError, match="bogus"):
        official_mmdit(input_size=32, depth=2, bogus=1)


def test_a_smaller_grid_reads_the_centre_of_the_position_table():
    """SD3's crop (official `cropped_pos_embed`): an 8x8 grid sees rows and columns 4..11 of the 16x16 table."""
    from repa.components.backbone.mmdit import MMDiT
    from repa.components.backbone.sit import sincos_2d

    model = MMDiT(input_size=16, patch_size=2, depth=1, context_tokens=3, context_dim=8)
    table = torch.from_numpy(sincos_2d(model.hidden_size, 16)).float().reshape(16, 16, -1)
    torch.testing.assert_close(model.cropped_pos_embed()[0], table[4:12, 4:12].reshape(64, -1))
