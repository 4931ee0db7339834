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
