from pathlib import Path

import pytest
import torch

from repa.errors import MissingWeightsError
from repa.plugins import load_components

MODEL = "vit_small_patch16_224.augreg_in21k"


def random_weights(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model(MODEL, pretrained=False, num_classes=0)
    path = tmp_path / "vit_small.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_registered_by_its_distribution_with_static_facts():
    entry = load_components().get("encoder", "timm-vit")
    assert entry.distribution == "repa-timm-encoder"
    params = entry.params(model=MODEL)
    assert params.embed_dim() == 384 and params.tokens_for(256) == 196 and params.tokens_for(512) == 784
    assert entry.params(model=MODEL, resize="native").tokens_for(256) == 256


def test_loads_weights_and_returns_patch_tokens(tmp_path):
    path, reference = random_weights(tmp_path)
    entry = load_components().get("encoder", "timm-vit")
    encoder = entry.build(entry.params(model=MODEL, weights=str(path), resize="native"), resolution=256)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    x = encoder.preprocess(images)
    expected_input = (images.float() / 255 - torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)) / 0.5
    torch.testing.assert_close(x, expected_input)
    tokens = encoder(x)
    assert tokens.shape == (2, 256, 384) and not encoder.training
    torch.testing.assert_close(encoder.network.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)


def test_missing_weights_are_one_line(tmp_path):
    entry = load_components().get("encoder", "timm-vit")
    with pytest.raises(MissingWeightsError) as info:
        entry.build(entry.params(model=MODEL, weights=str(tmp_path / "nope.pth")), resolution=256)
    assert "\n" not in str(info.value) and "nope.pth" in str(info.value)


def test_the_readme_example_validates_in_the_paper_recipe():
    import re
    from pathlib import Path

    import tomli

    from repa.config import load_experiment

    here = Path(__file__).parents[1]
    block = re.search(r"```toml\n(.*?)```", (here / "README.md").read_text(), re.S).group(1)
    entry = tomli.loads(block)["alignment"][0]
    encoder = "{ " + ", ".join(f'{k} = "{v}"' for k, v in entry["encoder"].items()) + " }"
    config = load_experiment(here.parents[1] / "experiments" / "sit_xl_repa.toml",
                             [f"alignment.encoder={encoder}", f"alignment.depth={entry['depth']}"])
    assert config.alignment[0].encoder.kind == "timm-vit" and config.alignment[0].encoder.params.tokens_for(256) == 256


# The follow-ups' encoders: name -> (timm release, width, patch, tokens at 256 px and 512 px, class token)
FOLLOW_UPS = {
    "dinov3-vit-s16": ("vit_small_patch16_dinov3.lvd1689m", 384, 16, True),
    "dinov3-vit-b16": ("vit_base_patch16_dinov3.lvd1689m", 768, 16, True),
    "dinov3-vit-l16": ("vit_large_patch16_dinov3.lvd1689m", 1024, 16, True),
    "dinov3-vit-h16plus": ("vit_huge_plus_patch16_dinov3.lvd1689m", 1280, 16, True),
    "pe-core-b16": ("vit_pe_core_base_patch16_224.fb", 768, 16, True),
    "pe-core-l14": ("vit_pe_core_large_patch14_336.fb", 1024, 14, True),
    "pe-core-g14": ("vit_pe_core_gigantic_patch14_448.fb", 1536, 14, False),
    "siglip2-vit-b16": ("vit_base_patch16_siglip_256.v2_webli", 768, 16, False),
    "siglip2-vit-l16": ("vit_large_patch16_siglip_256.v2_webli", 1024, 16, False),
    "siglip2-so400m-p16": ("vit_so400m_patch16_siglip_256.v2_webli", 1152, 16, False),
    "aimv2-vit-l14": ("aimv2_large_patch14_224.apple_pt", 1024, 14, False),
    "aimv2-vit-h14": ("aimv2_huge_patch14_224.apple_pt", 1536, 14, False),
}


@pytest.mark.parametrize("name", sorted(FOLLOW_UPS))
def test_follow_up_encoder_facts_and_random_weights_in_the_release_format(name, tmp_path):
    """Registered name -> its timm release: width, 16x16 tokens per 256 px (32x32 at 512), the model's own
    mean/std/interpolation; built at depth 1 from random weights saved as the release's model.safetensors."""
    import timm
    from safetensors.torch import save_file

    from repa_timm_encoder.encoder import TimmEncoder

    release, width, patch, class_token = FOLLOW_UPS[name]
    entry = load_components().get("encoder", name)
    params = entry.params()
    assert entry.distribution == "repa-timm-encoder" and params.model_name() == release
    assert params.embed_dim() == width and params.tokens_for(256) == 256 and params.tokens_for(512) == 1024
    assert params.input_size(256) == 16 * patch and params.has_global_token() == class_token

    side = params.input_size(32)  # 2x2 tokens: tiny
    torch.manual_seed(0)
    reference = timm.create_model(release, pretrained=False, num_classes=0, img_size=side, depth=1).eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "model.safetensors"))
    encoder = TimmEncoder(entry.params(weights=str(tmp_path / "model.safetensors")), 32, depth=1)
    cfg = reference.pretrained_cfg
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = encoder.preprocess(images)
    expected = torch.nn.functional.interpolate(images.float() / 255, side, mode=cfg.get("interpolation", "bicubic"))
    expected = (expected - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    tokens = encoder(x)
    with torch.no_grad():
        full = reference.forward_features(x)
    torch.testing.assert_close(tokens, full[:, reference.num_prefix_tokens:])
    assert tokens.shape == (2, 4, width)


def test_a_missing_follow_up_weights_file_is_one_line(tmp_path):
    entry = load_components().get("encoder", "dinov3-vit-b16")
    with pytest.raises(MissingWeightsError) as info:
        entry.build(entry.params(weights=str(tmp_path / "dinov3.safetensors")), resolution=256)
    assert "\n" not in str(info.value) and str(tmp_path / "dinov3.safetensors") in str(info.value)


def test_a_named_encoder_takes_no_model_it_would_ignore():
    """dinov3-vit-b16 is one release: a `model` key is refused in one located line, not listed, not hashed."""
    from repa.config import load_experiment
    from repa.errors import ConfigError

    entry = load_components().get("encoder", "dinov3-vit-b16")
    assert "model" not in entry.params.model_fields and set(entry.params.model_fields) >= {"resize", "weights"}
    with pytest.raises(ConfigError) as info:
        load_experiment(Path(__file__).parents[3] / "experiments" / "quickstart.toml",
                        ['alignment.encoder={kind="dinov3-vit-b16", model="vit_large_patch14_dinov2.lvd142m"}'])
    assert "alignment[0].encoder.model: unknown key 'model' of encoder 'dinov3-vit-b16'" in str(info.value)
    assert "model" in load_components().get("encoder", "timm-vit").params.model_fields
