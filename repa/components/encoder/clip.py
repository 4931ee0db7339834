"""CLIP ViT-L/14 through open_clip: transformer outputs before ln_post and the projection."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from repa.components.encoder.frozen import FrozenEncoder
from repa.components.encoder.specs import EncoderSpec
from repa.weights import load_file, load_state_strict

# OpenAI's weights were trained with QuickGELU; plain 'ViT-L-14' would silently use GELU.
ARCH = "ViT-L-14-quickgelu"


def build_visual(depth: int | None = None) -> nn.Module:
    """open_clip's vision tower only (the text tower is never used); `depth` shrinks it for tests."""
    import open_clip
    from open_clip.model import _build_vision_tower

    cfg = open_clip.get_model_config(ARCH)
    vision = dict(cfg["vision_cfg"], **({"layers": depth} if depth else {}))
    return _build_vision_tower(cfg["embed_dim"], vision, quick_gelu=cfg["quick_gelu"])


def clip_tokens(visual, x):
    """REPA's UpdatedVisionTransformer: conv1 -> [CLS] + positions -> ln_pre -> transformer."""
    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(visual.patch_dropout(x))
    if getattr(visual.transformer, "batch_first", True):
        return visual.transformer(x)
    return visual.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)


def resample_positions(visual, grid: int) -> None:
    from timm.layers import resample_abs_pos_embed

    pos = visual.positional_embedding.data.unsqueeze(0)
    if pos.shape[1] - 1 != grid * grid:
        visual.positional_embedding = nn.Parameter(resample_abs_pos_embed(pos, [grid, grid], num_prefix_tokens=1)[0])


def load_clip_weights(visual, path: Path, source: str) -> None:
    state = load_file(path, torchscript_tensors=True)  # OpenAI's release is TorchScript: its tensors only
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    load_state_strict(visual, state, source)


def build_clip_encoder(spec: EncoderSpec, resolution: int, path: Path | None, depth: int | None = None) -> FrozenEncoder:
    visual = build_visual(depth)
    if path is not None:
        load_clip_weights(visual, path, f"{spec.name} weights {path}")
    resample_positions(visual, spec.input_size(resolution) // spec.patch_size)
    return FrozenEncoder(spec, visual, resolution, clip_tokens, str(path or ""))
