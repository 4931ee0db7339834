"""The wrapper every encoder runs in: REPA preprocessing (official code: sihyun-yu/REPA @ 67f7145, train.py
`preprocess_raw_image`), frozen weights, eval mode forever, no gradients, autocast inside,
float32 tokens out."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.components.encoder.specs import EncoderSpec
from repa.precision import autocast_to
from repa.interfaces import Encoder


class FrozenEncoder(nn.Module, Encoder):
    def __init__(self, spec: EncoderSpec, network: nn.Module, resolution: int,
                 tokens: Callable[[nn.Module, torch.Tensor], torch.Tensor], weights_file: str = ""):
        super().__init__()
        self.spec, self.network, self.resolution, self._tokens = spec, network, resolution, tokens
        self.embed_dim, self.weights_file = spec.embed_dim, weights_file
        self.autocast_dtype: torch.dtype | None = None  # set by the engine to match mixed precision
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        network.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        # The official code leaves MAE and I-JEPA in train mode; an encoder here never leaves eval.
        return super().train(False)

    def tokens_for(self, resolution: int) -> int:
        return self.spec.tokens_for(resolution)

    def preprocessing(self) -> dict:
        spec = self.spec
        return {"mean": list(spec.mean), "std": list(spec.std), "resize": spec.resize,
                "input_size": spec.input_size(self.resolution)}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,R,R] in [0,255] -> the encoder's normalised input (REPA's preprocess_raw_image)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != self.resolution:
            raise ValueError(
                f"{self.spec.name} expects uint8 images [B, 3, {self.resolution}, {self.resolution}], "
                f"got {list(images.shape)}"
            )
        x = images.float() / 255.0
        size = self.spec.input_size(self.resolution)
        if self.spec.normalize_first:
            x = (x - self.mean) / self.std
        if size != x.shape[-1]:
            x = F.interpolate(x, size, mode="bicubic")
        if not self.spec.normalize_first:
            x = (x - self.mean) / self.std
        return x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input -> patch tokens [B, T, D] in float32 (CLS and registers removed)."""
        with autocast_to(x.device.type, self.autocast_dtype):
            tokens = self._tokens(self.network, x)
        return tokens[:, self.spec.prefix_tokens:].float()

    @torch.no_grad()
    def forward_with_global(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (patch tokens, global token [B, D]): the class token after the final norm (DINOv2's
        x_norm_clstoken, which REG denoises), or the mean token for the digits convnet."""
        where = self.spec.global_token
        if where is None:
            raise NotImplementedError(f"{self.spec.name} has no class token")
        with autocast_to(x.device.type, self.autocast_dtype):
            tokens = self._tokens(self.network, x)
        patches = tokens[:, self.spec.prefix_tokens:].float()
        return patches, tokens[:, 0].float() if where == "class" else patches.mean(1)

    @torch.no_grad()
    def forward_with_attention(self, x: torch.Tensor, depths) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> (patch tokens, pre-softmax attention logits [B,H,T,T] of blocks `depths` between the patch
        tokens, float32), as HASTE's modified DINOv2 returns them (q k^T / sqrt(d), prefix tokens removed).
        The digits convnet has no attention: its one "block" is its tokens' affinities z_i.z_j / sqrt(D)."""
        if self.spec.family == "digits":
            tokens = self(x)
            return tokens, [(tokens @ tokens.transpose(1, 2) / tokens.shape[-1] ** 0.5)[:, None] for _ in depths]
        logits, hooks = {}, []
        for depth in depths:
            attention = self.network.blocks[depth - 1].attn
            hooks.append(attention.register_forward_pre_hook(
                lambda module, args, depth=depth: logits.__setitem__(depth, _attention_logits(module, args[0]))))
        try:
            with autocast_to(x.device.type, self.autocast_dtype):
                tokens = self._tokens(self.network, x)
        finally:
            for hook in hooks:
                hook.remove()
        prefix = self.spec.prefix_tokens
        return tokens[:, prefix:].float(), [logits[d][:, :, prefix:, prefix:].float() for d in depths]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self(self.preprocess(images))


def _attention_logits(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm Attention's pre-softmax logits for its input x [B,N,C]: (q * scale) k^T, [B,H,N,N]."""
    batch, tokens, _ = x.shape
    qkv = attention.qkv(x).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attention.q_norm(qkv[0]), attention.k_norm(qkv[1])
    return (q * attention.scale) @ k.transpose(-2, -1)
