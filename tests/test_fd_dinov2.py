"""FD-DINOv2 held to a transcription of NVlabs/edm2's feature extraction (calculate_metrics.py
`DINOv2Detector`, resize_mode 'torch') and of the torch.hub DINOv2 forward it runs
(facebookresearch/dinov2 vision_transformer.py: prepare_tokens_with_masks, interpolate_pos_encoding,
Block, Attention, LayerScale; output x_norm_clstoken), with random weights in the hub release format.
ViT-S/14 keeps the test fast: the code path is ViT-L's (edm2's choice), only the widths differ."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from repa.errors import RepaError

WIDTH, DEPTH, HEADS, PATCH, GRID = 384, 12, 6, 14, 37  # dinov2_vits14: 518 px pretraining, 37 x 37 patches


def release_state(seed: int = 0) -> dict:
    """A dinov2_vits14_pretrain.pth-shaped state dict: linear weights at the init scale (trunc normal
    0.02), layer-scale gammas and norms at trained-model scale (so every block matters)."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    state = {"cls_token": normal(1, 1, WIDTH), "pos_embed": normal(1, 1 + GRID * GRID, WIDTH),
             "mask_token": torch.zeros(1, WIDTH), "patch_embed.proj.weight": normal(WIDTH, 3, PATCH, PATCH),
             "patch_embed.proj.bias": normal(WIDTH), "norm.weight": 1 + normal(WIDTH, std=0.1),
             "norm.bias": normal(WIDTH)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": 1 + normal(WIDTH, std=0.1), b + "norm1.bias": normal(WIDTH),
            b + "attn.qkv.weight": normal(3 * WIDTH, WIDTH), b + "attn.qkv.bias": normal(3 * WIDTH),
            b + "attn.proj.weight": normal(WIDTH, WIDTH), b + "attn.proj.bias": normal(WIDTH),
            b + "ls1.gamma": 0.1 + 0.9 * torch.rand(WIDTH, generator=g),
            b + "norm2.weight": 1 + normal(WIDTH, std=0.1), b + "norm2.bias": normal(WIDTH),
            b + "mlp.fc1.weight": normal(4 * WIDTH, WIDTH), b + "mlp.fc1.bias": normal(4 * WIDTH),
            b + "mlp.fc2.weight": normal(WIDTH, 4 * WIDTH), b + "mlp.fc2.bias": normal(WIDTH),
            b + "ls2.gamma": 0.1 + 0.9 * torch.rand(WIDTH, generator=g),
        })
    return state


# --- the transcription ---------------------------------------------------------------------------

def edm2_preprocess(x: torch.Tensor) -> torch.Tensor:
    """DINOv2Detector.__call__ before the model: NCHW uint8 -> normalised float32 224 px."""
    x = F.interpolate(x.to(torch.float32), size=(224, 224), mode="bicubic", antialias=True)
    x = x.to(torch.float32) / 255
    x = x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, -1, 1, 1)
    return x / torch.tensor([0.229, 0.224, 0.225]).reshape(1, -1, 1, 1)


def hub_interpolate_pos_encoding(state, npatch: int, w: int, h: int) -> torch.Tensor:
    pos_embed = state["pos_embed"].float()
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // PATCH, h // PATCH
    M = int(math.sqrt(N))
    sx, sy = float(w0 + 0.1) / M, float(h0 + 0.1) / M  # interpolate_offset = 0.1
    patch_pos_embed = F.interpolate(patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
                                    mode="bicubic", antialias=False, scale_factor=(sx, sy))
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def hub_forward(state, x: torch.Tensor) -> torch.Tensor:
    """DinoVisionTransformer.forward -> head(x_norm_clstoken), head = Identity."""
    B, _, w, h = x.shape
    x = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((state["cls_token"].expand(B, -1, -1), x), dim=1)
    x = x + hub_interpolate_pos_encoding(state, x.shape[1] - 1, w, h)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        y = F.layer_norm(x, (WIDTH,), state[b + "norm1.weight"], state[b + "norm1.bias"], eps=1e-6)
        N, C = y.shape[1], WIDTH
        qkv = F.linear(y, state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"])
        qkv = qkv.reshape(B, N, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (C // HEADS) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(B, N, C)
        y = F.linear(y, state[b + "attn.proj.weight"], state[b + "attn.proj.bias"])
        x = x + y * state[b + "ls1.gamma"]
        y = F.layer_norm(x, (WIDTH,), state[b + "norm2.weight"], state[b + "norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"])),
                     state[b + "mlp.fc2.weight"], state[b + "mlp.fc2.bias"])
        x = x + y * state[b + "ls2.gamma"]
    x = F.layer_norm(x, (WIDTH,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    return x[:, 0]


def edm2_features(state, images_nhwc: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
    with torch.no_grad():
        return hub_forward(state, edm2_preprocess(x)).to(torch.float64).numpy()


def edm2_fd(a: np.ndarray, b: np.ndarray) -> float:
    """calculate_metrics.py: float64 sums -> mu, unbiased sigma; FD with scipy's sqrtm, real part."""
    def stats(f):
        mu = f.sum(0) / len(f)
        return mu, (f.T @ f - np.outer(mu, mu) * len(f)) / (len(f) - 1)

    (mu1, s1), (mu2, s2) = stats(a), stats(b)
    s = scipy.linalg.sqrtm(np.dot(s1, s2))  # edm2 passes disp=False (deprecated in SciPy): the root alone
    s = s[0] if isinstance(s, tuple) else s
    return float(np.real(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - s * 2)))


# --- the tests -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(release_state(), path)
    return path


def images(count: int, seed: int, side: int = 40) -> np.ndarray:
    """Smooth random images (a coarse grid upsampled): features vary with content, not only noise."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (count, 3, 5, 5)).astype(np.float32))
    fine = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    noisy = fine + torch.from_numpy(rng.normal(0, 12, fine.shape).astype(np.float32))
    return noisy.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def metric(release_file, **params):
    from repa.config import validate_component

    return validate_component("metric", "fd-dinov2", {"size": "s", "weights": str(release_file), **params},
                              "eval.metrics").build()


def test_features_are_edm2s_dinov2_detector(release_file):
    samples = images(6, seed=1)
    ours = metric(release_file, batch_size=4).features(samples)["dinov2"]
    theirs = edm2_features(release_state(), samples)
    assert ours.shape == (6, WIDTH) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert np.abs(theirs).mean() > 0.1  # features at a scale where the tolerance means something


def test_fd_dinov2_score_is_edm2s_against_an_npz_reference(release_file, tmp_path):
    from repa.engine.generate.evaluation import evaluate_images
    from repa.config import validate_component

    samples, real = images(24, seed=2), images(24, seed=3, side=48)
    reference = tmp_path / "ref.npz"
    np.savez(reference, arr_0=real)
    component = validate_component("metric", "fd-dinov2", {"size": "s", "weights": str(release_file)}, "eval.metrics")
    ours = evaluate_images([component], samples, None, str(reference))["fd-dinov2"]
    state = release_state()
    theirs = edm2_fd(edm2_features(state, samples), edm2_features(state, real))
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert ours > 1  # different images: a distance well above numerical noise


def test_a_reference_with_stored_statistics_is_read_not_recomputed(release_file, tmp_path):
    from repa.components.metric import dinov2

    stored = tmp_path / "stats.npz"
    np.savez(stored, arr_0=images(2, seed=4), mu_dinov2=np.zeros(WIDTH), sigma_dinov2=np.eye(WIDTH))
    ref = dinov2._reference(str(stored), "l", str(release_file), 4, 256)  # ViT-L statistics, stored
    assert np.array_equal(ref["mu"], np.zeros(WIDTH)) and np.array_equal(ref["sigma"], np.eye(WIDTH))
    broken = tmp_path / "broken.npz"
    np.savez(broken, arr_0=images(2, seed=4), mu_dinov2=np.full(WIDTH, np.nan), sigma_dinov2=np.eye(WIDTH))
    with pytest.raises(RepaError, match="mu_dinov2 / sigma_dinov2 are not finite"):
        dinov2._reference(str(broken), "l", None, 4, 256)


def test_missing_weights_say_where_to_put_the_file(tmp_path, monkeypatch):
    from repa.components.metric import dinov2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(RepaError) as caught:
        dinov2.locate("l", None)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("fd-dinov2: DINOv2 ViT-L/14 weights not found; looked in: ")
    assert ("Download https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth and save it as "
            f"{tmp_path / 'torch' / 'hub' / 'checkpoints' / 'dinov2_vitl14_pretrain.pth'}") in message
    assert 'eval.metrics = [{ kind = "fd-dinov2", weights = "/path/to/dinov2_vitl14_pretrain.pth" }]' in message
