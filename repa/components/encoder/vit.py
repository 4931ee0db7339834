"""Building the ViT encoders with timm and loading each family's official release format, as the
official code's `utils.load_encoders` does (sihyun-yu/REPA @ 67f7145, utils.py)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch.nn as nn

from repa.components.encoder.frozen import FrozenEncoder
from repa.components.encoder.specs import EncoderSpec
from repa.errors import CheckpointError
from repa.weights import load_file, load_state_strict, strip_prefix

# ============================================================================
# Architecture
# ============================================================================


def build_vit(spec: EncoderSpec, input_size: int, **overrides) -> nn.Module:
    """The randomly initialised network for `spec` at `input_size` (overrides: tests shrink depth)."""
    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer

    arch = {**spec.arch, **overrides}
    if arch.get("mlp_layer") == "swiglu_packed":
        arch["mlp_layer"] = SwiGLUPacked
    return VisionTransformer(
        img_size=input_size, patch_size=spec.patch_size, num_classes=0, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), **arch,
    )


def vit_tokens(network, x):
    return network.forward_features(x)


# ============================================================================
# Official release formats -> timm state dict
# ============================================================================


def _mocov3_state(obj) -> dict:
    """RCG/MoCo v3 release: {"state_dict": {"module.base_encoder.*", "module.momentum_encoder.*", ...}};
    fixes the norm13/fc13/norm14/fc14 key bug of the released ViT-L, drops the projection head."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    renames = {"blocks.13.norm13": "blocks.13.norm1", "blocks.13.mlp.fc13": "blocks.13.mlp.fc1",
               "blocks.14.norm14": "blocks.14.norm2", "blocks.14.mlp.fc14": "blocks.14.mlp.fc2"}
    out = {}
    for key, value in state.items():
        if not key.startswith("module.base_encoder."):
            continue
        key = key[len("module.base_encoder."):]
        for old, new in renames.items():
            key = key.replace(old, new)
        if "head" not in key and key.split(".")[0] != "fc":
            out[key] = value
    return out


def _unwrap(key: str):
    def unwrap(obj):
        if not (isinstance(obj, dict) and key in obj):
            raise CheckpointError(f"expected a dict with {key!r} (the official release format), got keys {list(obj)[:6]}")
        return strip_prefix(obj[key], ("module.",))

    return unwrap


STATE_READERS = {
    "dinov2": lambda obj: obj,  # hub .pth (bare, with mask_token) or timm/HF safetensors
    "mocov3": _mocov3_state,
    "mae": _unwrap("model"),
    "ijepa": _unwrap("encoder"),  # the context encoder, as REPA uses
    "dinov1": lambda obj: obj,  # bare teacher backbone
}


def load_vit_weights(spec: EncoderSpec, network: nn.Module, path: Path) -> None:
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state = STATE_READERS[spec.family](load_file(path))
    except CheckpointError as exc:
        raise CheckpointError(f"{spec.name}: {path}: {exc}") from None
    # timm's filter converts DINOv2 hub keys (mask_token, w12/w3, register tokens) and resamples the
    # positional embedding to this input's grid (bicubic, antialias), exactly REPA's resample_abs_pos_embed.
    state = checkpoint_filter_fn(state, network)
    load_state_strict(network, state, f"{spec.name} weights {path}")


def build_vit_encoder(spec: EncoderSpec, resolution: int, path: Path | None, **overrides) -> FrozenEncoder:
    network = build_vit(spec, spec.input_size(resolution), **overrides)
    if path is not None:
        load_vit_weights(spec, network, path)
    if spec.family == "mae":
        network.norm = nn.Identity()  # REPA's MAE features are taken before the final norm
    return FrozenEncoder(spec, network, resolution, vit_tokens, str(path or ""))
