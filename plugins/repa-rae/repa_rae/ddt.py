"""DiT^DH: a DiT with a wide, shallow head (bytetriper/RAE, src/stage2/models/DDT.py DiTwDDTHead and
model_utils.py). Parameter names are the released ones, so released checkpoints load strictly.

The backbone (`blocks[:depth[0]]`, width hidden_size[0]) reads the noisy tokens and (t, y); its output,
plus the time embedding through SiLU, conditions the head (`blocks[depth[0]:]`, width hidden_size[1])
token by token through adaLN, and the head reads the noisy tokens again through its own embedding.
Blocks: RMSNorm, SwiGLU, 2-D rotary positions (EVA's) on queries and keys, adaLN-Zero."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.interfaces import Backbone, BackboneOutput


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


def rotate_half(x):
    """Pairs (x_2i, x_2i+1) -> (-x_2i+1, x_2i) (EVA's rotate_half)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class Rotary2D(nn.Module):
    """EVA's VisionRotaryEmbeddingFast(dim, pt_seq_len=side), theta 10000: the first half of each head's
    channels rotates with the row, the second with the column."""

    def __init__(self, dim: int, side: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        positions = torch.arange(side) / side * side
        freqs = torch.einsum("i,f->if", positions, freqs).repeat_interleave(2, dim=-1)  # [side, dim]
        grid = torch.cat([freqs[:, None, :].expand(side, side, -1), freqs[None, :, :].expand(side, side, -1)], dim=-1)
        self.register_buffer("freqs_cos", grid.cos().reshape(side * side, -1))
        self.register_buffer("freqs_sin", grid.sin().reshape(side * side, -1))

    def forward(self, t):
        return t * self.freqs_cos + rotate_half(t) * self.freqs_sin


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(self, x, rope=None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q).to(v.dtype), rope(k).to(v.dtype)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Block(nn.Module):
    """LightningDDTBlock: adaLN-Zero with 6 modulations, per sample (c [B,D]) or per token (c [B,L,D])."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, swiglu: bool = True):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, heads, qk_norm)
        self.mlp = SwiGLU(dim, int(2 / 3 * int(dim * mlp_ratio))) if swiglu else nn.Sequential(
            nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(approximate="tanh"), nn.Linear(int(dim * mlp_ratio), dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, rope=None):
        if c.ndim < x.ndim:
            c = c.unsqueeze(1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope=rope)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm_final, self.linear = RMSNorm(dim), nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    """timm's PatchEmbed: a strided convolution, flattened to tokens."""

    def __init__(self, size: int, patch: int, channels: int, dim: int):
        super().__init__()
        self.patch_size, self.num_patches = (patch, patch), (size // patch) ** 2
        self.proj = nn.Conv2d(channels, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class GaussianFourierEmbedding(nn.Module):
    """t in [0, 1] -> [sin, cos](2 pi t W), W ~ N(0, 1) fixed, through a 2-layer MLP."""

    def __init__(self, dim: int, size: int = 256):
        super().__init__()
        self.W = nn.Parameter(torch.normal(0, 1.0, (size,)), requires_grad=False)
        self.mlp = nn.Sequential(nn.Linear(2 * size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        t = t[:, None] * self.W[None, :].detach() * 2 * torch.pi
        return self.mlp(torch.cat([torch.sin(t), torch.cos(t)], dim=-1))


def sincos_2d(dim: int, side: int) -> np.ndarray:
    """RAE's get_2d_sincos_pos_embed: [side*side, dim], the first half from the row grid."""
    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)), axis=0)
    return np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], axis=1)


class DiTDH(nn.Module, Backbone):
    def __init__(self, input_size: int, in_channels: int, num_classes: int, hidden_size=(1152, 2048),
                 depth=(28, 2), num_heads=(16, 16), patch_size: int = 1, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 rope: bool = True, pos_embed: bool = True, null_label: bool = True, label_dropout: float = 0.1):
        super().__init__()
        self.num_classes, self.hidden_size, self.in_channels = num_classes, hidden_size[0], in_channels
        self.depth, self.label_dropout = tuple(depth), label_dropout
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size[1])
        self.s_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size[0])
        self.s_projector = nn.Linear(hidden_size[0], hidden_size[1]) if hidden_size[0] != hidden_size[1] else nn.Identity()
        self.t_embedder = GaussianFourierEmbedding(hidden_size[0])
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + int(null_label), hidden_size[0])
        self.final_layer = FinalLayer(hidden_size[1], patch_size * patch_size * in_channels)
        side = input_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, hidden_size[0]), requires_grad=False) \
            if pos_embed else None
        self.enc_feat_rope = Rotary2D(hidden_size[0] // num_heads[0] // 2, side) if rope else None
        self.dec_feat_rope = Rotary2D(hidden_size[1] // num_heads[1] // 2, side) if rope else None
        self.blocks = nn.ModuleList(
            Block(hidden_size[0] if i < depth[0] else hidden_size[1], num_heads[0] if i < depth[0] else num_heads[1],
                  mlp_ratio, qk_norm) for i in range(depth[0] + depth[1]))
        self.initialize_weights()

    def initialize_weights(self):
        """As released (xavier_uniform_init=False): PyTorch's defaults, then these."""
        for embed in (self.x_embedder, self.s_embedder):
            w = embed.proj.weight.data
            nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
            nn.init.constant_(embed.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.pos_embed is not None:
            side = int(self.s_embedder.num_patches ** 0.5)
            self.pos_embed.data.copy_(torch.from_numpy(sincos_2d(self.pos_embed.shape[-1], side)).float().unsqueeze(0))
        for module in [*(b.adaLN_modulation[-1] for b in self.blocks), self.final_layer.adaLN_modulation[-1],
                       self.final_layer.linear]:
            nn.init.constant_(module.weight, 0)
            nn.init.constant_(module.bias, 0)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

    @property
    def has_null_label(self) -> bool:
        return self.y_embedder.embedding_table.num_embeddings > self.num_classes

    def shard_units(self) -> list:
        return list(self.blocks)

    def unpatchify(self, x):
        c, p = self.in_channels, self.x_embedder.patch_size[0]
        h = w = int(x.shape[1] ** 0.5)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, p, c))
        return x.reshape(x.shape[0], c, h * p, h * p)

    def forward(self, x, t, y, drop_ids=None, hidden_depths=(), attention_blocks=(), extra_tokens=None):
        """The released forward; hidden states: the backbone's tokens after its blocks 1..depth[0] (width
        hidden_size[0]; the head's blocks have another width)."""
        for depth in hidden_depths:
            if not 1 <= depth <= self.depth[0]:
                raise ValueError(f"hidden state of block {depth} requested; DiT^DH's backbone has blocks 1..{self.depth[0]}")
        if self.training and drop_ids is None and self.label_dropout > 0:
            drop_ids = torch.rand(y.shape[0], device=y.device) < self.label_dropout
        if self.training and drop_ids is not None:
            y = torch.where(drop_ids, torch.full_like(y, self.num_classes), y)
        t_embed = self.t_embedder(t)
        c = F.silu(t_embed + self.y_embedder.embedding_table(y))
        s = self.s_embedder(x)
        if self.pos_embed is not None:
            s = s + self.pos_embed
        wanted, hidden = set(hidden_depths), {}
        for i in range(self.depth[0]):
            s = self.blocks[i](s, c, self.enc_feat_rope)
            if i + 1 in wanted:
                hidden[i + 1] = s
        s = F.silu(t_embed.unsqueeze(1).repeat(1, s.shape[1], 1) + s)
        s = self.s_projector(s)
        h = self.x_embedder(x)
        for i in range(self.depth[0], len(self.blocks)):
            h = self.blocks[i](h, s, self.dec_feat_rope)
        out = self.unpatchify(self.final_layer(h, s))
        return BackboneOutput(out, {d: hidden[d] for d in hidden_depths})
