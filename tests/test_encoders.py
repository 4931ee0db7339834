"""Every encoder: random weights saved in its official release format, loaded by the real
loader; dims, token counts at 256 and 512 px, frozen/eval, preprocessing numerics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from repa.components.encoder import params_for
from repa.components.encoder.specs import SPECS
from repa.components.encoder.vit import _mocov3_state, build_vit
from repa.errors import MissingWeightsError
from repa.plugins import get_components
from repa.weights import reachable

PRETRAINED = sorted(n for n, s in SPECS.items() if s.family != "digits")
SMALL_DEPTH = 1  # every test file keeps the real widths, key names and positional-embedding sizes


def timm_state(spec, img_size):
    """A randomly initialised network of `spec` at the resolution its weights were released at."""
    torch.manual_seed(0)
    net = build_vit(spec, img_size, depth=SMALL_DEPTH)
    for p in net.parameters():
        p.data.normal_(0, 0.02)
    return {k: v.clone() for k, v in net.state_dict().items()}


def dinov2_hub_format(spec):
    """facebookresearch/dinov2 .pth: 518 px (pos_embed [1,1370,D] incl. the class position),
    mask_token, register_tokens, SwiGLU w12/w3 for ViT-g."""
    state = timm_state(spec, 518)
    d = spec.embed_dim
    if "reg_token" in state:  # timm stores registers and class position differently
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat([torch.zeros(1, 1, d), state["pos_embed"]], dim=1)
    state["mask_token"] = torch.zeros(1, d)
    return {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3") if spec.name.endswith("-g") else k: v
            for k, v in state.items()}


def release_file(spec, tmp_path):
    """Write the encoder's official release format; returns the path."""
    path = tmp_path / f"{spec.name}.pth"
    if spec.family == "dinov2":
        torch.save(dinov2_hub_format(spec), path)
    elif spec.family == "mocov3":
        state = {f"module.base_encoder.{k}": v for k, v in timm_state(spec, 224).items()}
        state.update({"module.base_encoder.head.0.weight": torch.zeros(4, spec.embed_dim),
                      "module.momentum_encoder.cls_token": torch.zeros(1, 1, spec.embed_dim),
                      "module.predictor.0.weight": torch.zeros(4, 4)})
        torch.save({"state_dict": state, "epoch": 300, "arch": "vit"}, path)
    elif spec.family == "mae":
        torch.save({"model": timm_state(spec, 224)}, path)
    elif spec.family == "ijepa":
        encoder = {f"module.{k}": v for k, v in timm_state(spec, 224).items()}
        torch.save({"encoder": encoder, "predictor": {}, "target_encoder": encoder, "epoch": 300}, path)
    elif spec.family == "dinov1":
        torch.save(timm_state(spec, 224), path)
    elif spec.family == "clip":
        from safetensors.torch import save_file

        from repa.components.encoder.clip import build_visual

        torch.manual_seed(0)
        visual = build_visual(depth=SMALL_DEPTH)
        state = {f"visual.{k}": v.clone() for k, v in visual.state_dict().items()}
        state["token_embedding.weight"] = torch.zeros(8, 4)  # the text tower is in the real file too
        path = tmp_path / "open_clip_model.safetensors"
        save_file(state, str(path))
    return path


def build(name, resolution, weights):
    params = params_for(SPECS[name])(weights=str(weights))
    return get_components().get("encoder", name).build(params, resolution=resolution, depth=SMALL_DEPTH)


@pytest.mark.parametrize("name", PRETRAINED)
def test_encoder_loads_its_release_format(name, tmp_path):
    spec = SPECS[name]
    weights = release_file(spec, tmp_path)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    encoder = build(name, 256, weights)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.network.training
    tokens = encoder.encode(images)
    assert tokens.shape == (2, 256, spec.embed_dim) and tokens.dtype == torch.float32
    assert encoder.tokens_for(256) == 256 and encoder.tokens_for(512) == 1024
    assert params_for(spec)().embed_dim() == spec.embed_dim
    tokens.sum()  # no graph: the encoder runs under no_grad
    assert not tokens.requires_grad
    big = build(name, 512, weights)
    assert big.encode(torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8)).shape == (1, 1024, spec.embed_dim)
    from repa.testing import check_component  # and the whole encoder contract (repa.testing)

    check_component("encoder", name, {"weights": str(weights)}, resolution=256, depth=SMALL_DEPTH)


@pytest.mark.parametrize("resolution", [256, 512])
@pytest.mark.parametrize("name", PRETRAINED)
def test_preprocessing_is_repas(name, resolution, tmp_path):
    """REPA's preprocess_raw_image, written out per family (224 * resolution // 256 where it resizes)."""
    spec = SPECS[name]
    encoder = build(name, resolution, release_file(spec, tmp_path))
    images = torch.randint(0, 256, (2, 3, resolution, resolution), dtype=torch.uint8)
    x = images.float() / 255.0
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    size = 224 * (resolution // 256)
    if spec.family == "clip":
        expected = (F.interpolate(x, size, mode="bicubic") - mean) / std
    elif spec.family in ("mocov3", "mae", "dinov1"):
        expected = (x - mean) / std
    else:  # dinov2 (with or without registers), jepa: normalise, then resize
        assert spec.family in ("dinov2", "ijepa"), spec.family
        expected = F.interpolate((x - mean) / std, size, mode="bicubic")
    torch.testing.assert_close(encoder.preprocess(images), expected)
    if spec.family == "clip":
        assert spec.mean == (0.48145466, 0.4578275, 0.40821073)
    else:
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


def test_dinov2_tokens_are_normalised_patch_tokens_without_cls_and_registers(tmp_path):
    from timm.layers import resample_abs_pos_embed

    spec = SPECS["dinov2reg-vit-s"]
    hub = dinov2_hub_format(spec)
    torch.save(hub, tmp_path / "w.pth")
    encoder = build("dinov2reg-vit-s", 256, tmp_path / "w.pth")
    net = encoder.network
    # REPA resamples the 37x37 hub grid to 16x16 (bicubic, antialias) -- class position excluded here
    expected_pos = resample_abs_pos_embed(hub["pos_embed"][:, 1:], [16, 16], num_prefix_tokens=0)
    torch.testing.assert_close(net.pos_embed, expected_pos)
    x = encoder.preprocess(torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8))
    # direct computation of the hub forward: [cls + pos0, registers, patches + pos] -> blocks -> norm
    patches = net.patch_embed(x) + net.pos_embed
    tokens = torch.cat([hub["cls_token"] + hub["pos_embed"][:, :1], hub["register_tokens"], patches], dim=1)
    for block in net.blocks:
        tokens = block(tokens)
    torch.testing.assert_close(encoder(x), net.norm(tokens)[:, 5:])


def test_mae_features_skip_the_final_norm(tmp_path):
    spec = SPECS["mae-vit-l"]
    encoder = build("mae-vit-l", 256, release_file(spec, tmp_path))
    x = torch.randn(1, 3, 256, 256)
    net = encoder.network
    tokens = net._pos_embed(net.patch_embed(x))
    for block in net.blocks:
        tokens = block(tokens)
    torch.testing.assert_close(encoder(x), tokens[:, 1:])


def test_mocov3_release_key_bugs_are_fixed():
    state = {"module.base_encoder.blocks.13.norm13.weight": 1, "module.base_encoder.blocks.13.mlp.fc13.bias": 2,
             "module.base_encoder.blocks.14.norm14.weight": 3, "module.base_encoder.blocks.14.mlp.fc14.weight": 4,
             "module.base_encoder.head.0.weight": 5, "module.momentum_encoder.cls_token": 6}
    assert _mocov3_state({"state_dict": state}) == {
        "blocks.13.norm1.weight": 1, "blocks.13.mlp.fc1.bias": 2, "blocks.14.norm2.weight": 3,
        "blocks.14.mlp.fc2.weight": 4}


def test_dinov2_is_found_in_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    target = tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    target.parent.mkdir(parents=True)
    torch.save(dinov2_hub_format(SPECS["dinov2-vit-s"]), target)
    encoder = get_components().get("encoder", "dinov2-vit-s").build(resolution=256, depth=SMALL_DEPTH)
    assert encoder.weights_file == str(target)


def test_clip_is_found_in_the_hugging_face_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snapshot = tmp_path / "hf" / "hub" / "models--timm--vit_large_patch14_clip_224.openai" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    release_file(SPECS["clip-vit-L"], tmp_path).rename(snapshot / "open_clip_model.safetensors")
    encoder = get_components().get("encoder", "clip-vit-L").build(resolution=256, depth=SMALL_DEPTH)
    assert encoder.weights_file.endswith("abc123/open_clip_model.safetensors")


def test_clip_accepts_openais_torchscript_release_where_clip_load_puts_it(tmp_path, monkeypatch):
    """The official code's clip.load("ViT-L/14") caches OpenAI's TorchScript archive in ~/.cache/clip."""
    import warnings

    from repa.components.encoder.clip import build_visual

    class OpenAIRelease(torch.nn.Module):  # OpenAI's file holds the whole CLIP; its vision keys are visual.*
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)  # the same weights as release_file's open_clip file
            self.visual = build_visual(depth=SMALL_DEPTH)

        def forward(self, x):
            return self.visual(x)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    archive = tmp_path / "cache" / "clip" / "ViT-L-14.pt"
    archive.parent.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; OpenAI's file is TorchScript all the same
        torch.jit.save(torch.jit.trace(OpenAIRelease().eval(), torch.randn(1, 3, 224, 224), check_trace=False), archive)
    encoder = get_components().get("encoder", "clip-vit-L").build(resolution=256, depth=SMALL_DEPTH)
    assert encoder.weights_file == str(archive)
    reference = build("clip-vit-L", 256, release_file(SPECS["clip-vit-L"], tmp_path))
    images = torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8)
    torch.testing.assert_close(encoder.encode(images), reference.encode(images))


@pytest.mark.parametrize("name", ["dinov2-vit-b", "mocov3-vit-l", "clip-vit-L", "jepa-vit-h"])
def test_missing_weights_say_where_to_put_what(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with pytest.raises(MissingWeightsError) as info:
        get_components().get("encoder", name).build(resolution=256)
    assert time.monotonic() - started < 5  # HF_HUB_OFFLINE is set by the test fixture: no network wait
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}: weights not found")
    spec = SPECS[name]
    if spec.default_file:
        assert str(tmp_path / spec.default_file.removeprefix("./")) in message and spec.url in message
    if spec.hub_file:
        assert str(tmp_path / "torch" / "hub" / "checkpoints" / spec.hub_file) in message and spec.url in message
    if spec.family == "clip":
        assert "huggingface-cli download timm/vit_large_patch14_clip_224.openai" in message
        assert str(Path.home() / ".cache" / "clip" / "ViT-L-14.pt") in message or "clip/ViT-L-14.pt" in message


def test_a_missing_explicit_clip_file_names_the_file_to_fetch(tmp_path):
    params = params_for(SPECS["clip-vit-L"])(weights=str(tmp_path / "clip.safetensors"))
    with pytest.raises(MissingWeightsError) as info:
        get_components().get("encoder", "clip-vit-L").build(params, resolution=256)
    assert str(info.value) == (
        f"clip-vit-L: weights file {tmp_path / 'clip.safetensors'} does not exist; save open_clip_model.safetensors "
        "from the Hugging Face repo timm/vit_large_patch14_clip_224.openai (`huggingface-cli download "
        "timm/vit_large_patch14_clip_224.openai open_clip_model.safetensors`) there")


def test_network_probe_says_no_for_an_unreachable_host():
    assert reachable("repa-no-such-host.invalid", 443, timeout=0.5) is False


def test_token_count_mismatch_is_a_validation_error(write_toml):
    from repa.config import load_experiment
    from repa.errors import ConfigError

    path = write_toml("""
        [data]
        kind = "folder"
        path = "x"
        [backbone]
        kind = "SiT-XL/4"
        [[alignment]]
        encoder = "dinov2-vit-b"
        """)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    (line,) = info.value.lines
    assert "dinov2-vit-b gives 256 tokens at 256 px but SiT-XL/4 has 64 (32x32 input / patch 4)" in line


def test_every_resolution_is_checked_at_validation():
    assert SPECS["dinov2-vit-b"].tokens_for(512) == 1024 and SPECS["mae-vit-l"].tokens_for(512) == 1024
    with pytest.raises(ValueError, match="multiple of 16"):
        SPECS["dinov2-vit-b"].tokens_for(200)


def test_offline_digits_encoder_is_useful_and_cached():
    """Linear probe (logistic regression on mean-pooled tokens) on the held-out digits."""
    from sklearn.linear_model import LogisticRegression

    from repa.components.digits_models import digits_split

    from repa.components import digits_models

    encoder = get_components().get("encoder", "digits-convnet").build(resolution=32)
    assert Path(encoder.weights_file).is_file()
    with pytest.MonkeyPatch.context() as patch:  # the second use loads the cache, never retrains
        patch.setattr(digits_models, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
        again = get_components().get("encoder", "digits-convnet").build(resolution=32)
    x = digits_split("heldout").images[:4]
    torch.testing.assert_close(again.encode(x), encoder.encode(x))
    train, heldout = digits_split("train"), digits_split("heldout")
    features = [encoder.encode(d.images).mean(1).numpy() for d in (train, heldout)]
    probe = LogisticRegression(max_iter=2000).fit(features[0], train.labels.numpy())
    accuracy = probe.score(features[1], heldout.labels.numpy())
    assert accuracy > 0.95, accuracy
    assert encoder.encode(train.images[:2]).shape == (2, 64, 128)


def test_offline_digits_encoder_loads_an_explicit_weights_file(tmp_path):
    from safetensors.torch import save_file

    from repa.components.encoder import DigitsEncoderParams
    from repa.errors import MissingWeightsError

    cached = get_components().get("encoder", "digits-convnet").build(resolution=32)
    path = tmp_path / "digits.safetensors"
    save_file({k: v * 2 for k, v in cached.network.state_dict().items()}, str(path))
    explicit = get_components().get("encoder", "digits-convnet").build(DigitsEncoderParams(weights=str(path)), resolution=32)
    assert explicit.weights_file == str(path)
    torch.testing.assert_close(explicit.network.head.weight, 2 * cached.network.head.weight)
    with pytest.raises(MissingWeightsError, match="digits-convnet: weights file .*nope.safetensors does not exist"):
        get_components().get("encoder", "digits-convnet").build(DigitsEncoderParams(weights="nope.safetensors"), resolution=32)


def test_offline_digits_networks_are_deterministic_from_their_seed(tmp_path, monkeypatch):
    """Two fresh trainings (separate caches) give the same weights; the caller's RNG is untouched."""
    from repa.components.digits_models import DigitsConvEncoder, cached_model

    trained = []
    for cache in ("a", "b"):
        monkeypatch.setenv("REPA_CACHE", str(tmp_path / cache))
        torch.manual_seed(1234)
        model, path = cached_model("digits-convnet", DigitsConvEncoder, seed=3, epochs=1)
        after = torch.rand(1)
        torch.manual_seed(1234)
        assert torch.equal(after, torch.rand(1))
        trained.append(model.state_dict())
    for key in trained[0]:
        torch.testing.assert_close(trained[0][key], trained[1][key], atol=0, rtol=0, msg=key)
    assert "-seed3-e1-" in path.name  # the name carries the recipe digest
