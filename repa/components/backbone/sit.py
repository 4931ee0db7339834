"""SiT: a DiT-style transformer on latent patches that returns its hidden states at chosen depths.

Official code: sihyun-yu/REPA @ 67f7145, `models/sit.py`. Parameter names and shapes are the
official ones, so official checkpoints load with strict=True (their `projectors.N.*` keys belong
to the engine's projectors, `repa.engine.network`). Differences, all deliberate:
- attention is `F.scaled_dot_product_attention` (no timm dependency; qk-norm works);
- the final layer's width is the model width (the official S presets crash on a
  hard-coded decoder width of 768);
- the projectors are not part of the backbone, and each can sit at its own depth (official: all
  inside SiT, at `encoder_depth`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from repa.interfaces import Backbone, BackboneOutput

# ============================================================================
# Embeddings: patches, timesteps, class labels
# ============================================================================


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, (H/p)(W/p), D] by a strided convolution (names as timm's PatchEmbed)."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (input_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t (GLIDE), then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def sinusoidal(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t):
        return self.mlp(self.sinusoidal(t, self.frequency_embedding_size).to(t.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding; row `num_classes` is the null label used by classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float, null_label: bool):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(null_label), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels, drop_ids=None):
        """drop_ids [B] bool: which labels to replace by the null label (None: keep all)."""
        if drop_ids is not None:
            labels = torch.where(drop_ids, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


# ============================================================================
# Transformer block with adaLN-Zero conditioning
# ============================================================================


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention; parameter names as timm's Attention (qkv, proj, q_norm, k_norm)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        # timm's Attention(qk_norm=True), which the official code uses: LayerNorm with its default eps.
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, keep_logits: bool = False):
        """-> (output, pre-softmax logits q k^T / sqrt(d) [B,H,T,T] when keep_logits, else None)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        # HASTE: the logits are computed beside the fused kernel, as its SiT does
        logits = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1) if keep_logits else None
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim)), logits


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c, keep_logits: bool = False):
        """-> (x after the block, its attention logits when keep_logits, else None)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        attended, logits = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), keep_logits)
        x = x + gate_msa.unsqueeze(1) * attended
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)), logits


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c, extra: int = 0):
        """-> the image tokens' output; with `extra` leading tokens, also those tokens normalised and
        conditioned, before the output projection (REG's FinalLayer reads its class token there)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        x = modulate(self.norm_final(x), shift, scale)
        return (self.linear(x[:, extra:]), x[:, :extra]) if extra else self.linear(x)


# ============================================================================
# SiT
# ============================================================================


class SiT(nn.Module, Backbone):
    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        label_dropout: float = 0.1,
        num_classes: int = 1000,
        qk_norm: bool = False,
        grad_checkpointing: bool = False,
        null_label: bool | None = None,
    ):
        """null_label: whether the label table has the null row (default: when label_dropout > 0)."""
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not a multiple of the patch size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by the number of heads {num_heads}")
        self.input_size, self.in_channels, self.out_channels = input_size, in_channels, in_channels
        self.patch_size, self.num_classes, self.label_dropout = patch_size, num_classes, label_dropout
        self.hidden_size, self.grad_checkpointing = hidden_size, grad_checkpointing

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        null_label = label_dropout > 0 if null_label is None else null_label
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, label_dropout, null_label)
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(SiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def has_null_label(self) -> bool:
        return self.y_embedder.embedding_table.num_embeddings > self.num_classes

    def shard_units(self) -> list:
        return list(self.blocks)

    def initialize_weights(self):
        """As official: xavier linears, frozen 2-D sin-cos positions, zeroed adaLN and output (DiT Sec. 3.2)."""

        def basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        grid = int(self.x_embedder.num_patches**0.5)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_2d(self.pos_embed.shape[-1], grid)).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for module in [*(b.adaLN_modulation[-1] for b in self.blocks), self.final_layer.adaLN_modulation[-1]]:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x):
        """[B, T, p*p*C] -> [B, C, H, W]."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def check_inputs(self, x, t, y, labels: bool = True):
        """Shapes, and (labels=True) the label range including the null label when there is one."""
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"SiT expects inputs [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(f"t and y must be [B]={x.shape[0]}, got t {list(t.shape)} and y {list(y.shape)}")
        if not labels:
            return
        top = self.num_classes if self.has_null_label else self.num_classes - 1
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > top):
            raise ValueError(f"labels must lie in 0..{top} ({self.num_classes} classes"
                             f"{', null label ' + str(self.null_label) if self.has_null_label else ''}), "
                             f"got {int(y.min())}..{int(y.max())}")

    def forward(self, x, t, y, drop_ids=None, hidden_depths=(), attention_blocks=(), extra_tokens=None):
        """x [B,C,H,W], t [B], y [B] -> BackboneOutput: out [B,C,H,W], the image tokens' hidden states after
        blocks `hidden_depths`, the attention logits of `attention_blocks` (`repa.interfaces.BackboneOutput`).

        In train mode without `drop_ids`, labels are dropped with probability `label_dropout`
        (torch's global RNG, as official); the engine passes `drop_ids` for reproducibility.
        extra_tokens [B,K,D]: put before the image tokens without positional embedding (REG's class
        token has a zero row there); their hidden states and final output come back beside the image's."""
        # Shapes always; the label range only outside training and compilation (reading the
        # labels' range syncs a GPU; the engine's data loader already guarantees it).
        self.check_inputs(x, t, y, labels=not (self.training or torch.compiler.is_compiling()))
        for kind, blocks in (("hidden state", hidden_depths), ("attention", attention_blocks)):
            for depth in blocks:
                if not 1 <= depth <= len(self.blocks):
                    raise ValueError(f"{kind} of block {depth} requested; SiT has blocks 1..{len(self.blocks)}")
        if self.training and drop_ids is None and self.label_dropout > 0:
            drop_ids = torch.rand(y.shape[0], device=y.device) < self.label_dropout
        if not self.training:
            drop_ids = None
        x = self.x_embedder(x) + self.pos_embed
        extra = 0 if extra_tokens is None else extra_tokens.shape[1]
        if extra:
            x = torch.cat([extra_tokens.to(x.dtype), x], dim=1)
        c = self.t_embedder(t) + self.y_embedder(y, drop_ids)
        wanted, logged, hidden, attention = set(hidden_depths), set(attention_blocks), {}, {}
        for i, block in enumerate(self.blocks):
            keep = i + 1 in logged
            # A block whose attention is kept runs without checkpointing: its logits are an output.
            if self.grad_checkpointing and self.training and not keep:
                x, _ = checkpoint(block, x, c, use_reentrant=False)
            else:
                x, logits = block(x, c, keep)
                if keep:
                    attention[i + 1] = logits
            if i + 1 in wanted:  # keep only what was asked for (sampling asks for nothing)
                hidden[i + 1] = x
        output = BackboneOutput(out=None, hidden={d: hidden[d][:, extra:] for d in hidden_depths},
                                attention=attention, extra_tokens=extra)
        if not extra:
            output.out = self.unpatchify(self.final_layer(x, c))
            return output
        out, output.extra = self.final_layer(x, c, extra)
        output.out = self.unpatchify(out)
        output.extra_hidden = {d: hidden[d][:, :extra] for d in hidden_depths}
        return output


def legacy_to_blocks(state: dict, encoder_depth: int) -> dict:
    """Early official checkpoints split the blocks into `blocks` and `decoder_blocks`
    (official utils.load_legacy_checkpoints): decoder block i is block i + encoder_depth."""
    out = {}
    for key, value in state.items():
        if key.startswith("decoder_blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{int(index) + encoder_depth}.{rest}"
        out[key] = value
    return out


# ============================================================================
# Fixed 2-D sin-cos positional embedding (MAE's, as used by DiT/SiT)
# ============================================================================


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_size: int) -> np.ndarray:
    """[grid*grid, dim]: first half encodes the column index, second half the row (as official)."""
    grid_w, grid_h = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    return np.concatenate([sincos_1d(dim // 2, grid_w), sincos_1d(dim // 2, grid_h)], axis=1)
