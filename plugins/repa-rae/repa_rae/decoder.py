"""RAE's ViT decoder (bytetriper/RAE, src/stage1/decoders/decoder.py GeneralDecoder, HF ViT-MAE layers):
tokens [B,N,C] -> decoder_embed -> [trainable cls, tokens] + fixed 2-D sin-cos positions -> pre-LN ViT-MAE
layers (LayerNorm eps 1e-12, exact GELU, qkv bias) -> decoder_norm -> decoder_pred -> drop cls ->
patches [B,N,p*p*3]. Parameter names are the released ones (`decoder_layers.{i}.attention.attention.query`, ...)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Released decoder sizes (configs/decoder/ViT{B,L,XL}/config.json): width, layers, heads, MLP width.
SIZES = {"B": (768, 12, 12, 3072), "L": (1024, 24, 16, 4096), "XL": (1152, 28, 16, 4096)}


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (layer(x).view(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)
                   for layer in (self.query, self.key, self.value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        return torch.matmul(F.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).reshape(b, n, c)


class Layer(nn.Module):
    """ViTMAELayer: x + attn(LN(x)); then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp: int, eps: float = 1e-12):
        super().__init__()
        self.attention = nn.Module()
        self.attention.attention = SelfAttention(dim, heads)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(dim, dim)
        self.intermediate, self.output = nn.Module(), nn.Module()
        self.intermediate.dense, self.output.dense = nn.Linear(dim, mlp), nn.Linear(mlp, dim)
        self.layernorm_before, self.layernorm_after = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        x = self.attention.output.dense(self.attention.attention(self.layernorm_before(x))) + x
        return self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x)))) + x


def sincos_with_cls(dim: int, side: int) -> np.ndarray:
    """[1 + side*side, dim]: zeros for the class token, then MAE's 2-D sin-cos."""
    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)), axis=0)
    grid = grid.reshape(2, 1, side, side)
    return np.concatenate([np.zeros([1, dim]), np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], 1)], 0)


class Decoder(nn.Module):
    def __init__(self, latent_dim: int, num_patches: int, width: int, depth: int, heads: int, mlp: int,
                 patch_size: int = 16, channels: int = 3):
        super().__init__()
        self.patch_size, self.channels, self.num_patches = patch_size, channels, num_patches
        self.decoder_embed = nn.Linear(latent_dim, width)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, width), requires_grad=False)
        self.decoder_layers = nn.ModuleList(Layer(width, heads, mlp) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(width, eps=1e-12)
        self.decoder_pred = nn.Linear(width, patch_size ** 2 * channels)
        self.trainable_cls_token = nn.Parameter(torch.zeros(1, 1, width))
        side = int(num_patches ** 0.5)
        self.decoder_pos_embed.data.copy_(torch.from_numpy(sincos_with_cls(width, side)).float().unsqueeze(0))

    def forward(self, tokens):
        """tokens [B,N,latent_dim] -> patches [B,N,p*p*channels]."""
        x = self.decoder_embed(tokens)
        x = torch.cat([self.trainable_cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.decoder_pos_embed
        for layer in self.decoder_layers:
            x = layer(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def unpatchify(self, patches):
        b, n, _ = patches.shape
        side, p = int(n ** 0.5), self.patch_size
        x = torch.einsum("nhwpqc->nchpwq", patches.reshape(b, side, side, p, p, self.channels))
        return x.reshape(b, self.channels, side * p, side * p)
