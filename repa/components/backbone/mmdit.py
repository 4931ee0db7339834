"""MMDiT: SD3's joint-attention transformer (Esser et al. 2024), as the official REPA text-to-image
code has it (sihyun-yu/REPA @ 67f7145, `models/mmdit.py`, `train_t2i.py`).

Two streams, the image tokens and the context tokens (text), each with its own adaLN-modulated
block; every block attends over both together (context first). Parameter and buffer names are the
official ones, so `{"model": state_dict}` checkpoints of `train_t2i.py` load with strict=True (their
`projectors.N.*` keys belong to the engine's projectors). As official:
- width 32 x depth and one head per block unless set (head width 32);
- the positional embedding is a frozen 2-D sin-cos table of pos_embed_max_size^2 positions (16: the
  official code forces it), cropped at the centre to the token grid;
- default PyTorch initialisation (the official model has no initialisation of its own: adaLN and
  output layers start non-zero);
- the last block's context stream only feeds the attention (no output, no MLP).
Differences, deliberate: the context width is a parameter (official: 768, hard-coded), hidden states
can be read after any block (official: after `encoder_depth` only), and a dropped condition becomes
the null context (the empty caption's) inside forward, as the official dataset does before it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from repa.components.backbone.sit import Mlp, PatchEmbed, TimestepEmbedder, modulate, sincos_2d
from repa.interfaces import Backbone, BackboneOutput


class JointAttention(nn.Module):
    """One stream's projections: qkv in, proj out (absent in the last block's context stream)."""

    def __init__(self, dim: int, num_heads: int, has_output: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        if has_output:
            self.proj = nn.Linear(dim, dim)

    def split(self, x):
        """[B,T,D] -> q, k, v each [B,H,T,D/H]."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)


class StreamBlock(nn.Module):
    """One stream of a joint block (official `DismantledBlock`): adaLN modulation before the shared
    attention, gated residual attention output and MLP after it. `pre_only`: the stream only gives
    keys, queries and values (the last block's context stream)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, pre_only: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = JointAttention(hidden_size, num_heads, has_output=not pre_only)
        if not pre_only:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, (2 if pre_only else 6) * hidden_size))

    def pre_attention(self, x, c):
        """-> (q, k, v, what post_attention needs)."""
        mods = self.adaLN_modulation(c).chunk(2 if self.pre_only else 6, dim=-1)
        q, k, v = self.attn.split(modulate(self.norm1(x), mods[0], mods[1]))
        return q, k, v, (x, *mods[2:])

    def post_attention(self, attended, x, gate_msa, shift_mlp, scale_mlp, gate_mlp):
        x = x + gate_msa.unsqueeze(1) * self.attn.proj(attended)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class JointBlock(nn.Module):
    """Context and image streams attending together over cat(context, image) (official `block_mixing`)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, last: bool):
        super().__init__()
        self.context_block = StreamBlock(hidden_size, num_heads, mlp_ratio, pre_only=last)
        self.x_block = StreamBlock(hidden_size, num_heads, mlp_ratio)

    def forward(self, context, x, c):
        """-> (context after the block, None after the last one; x after the block)."""
        cq, ck, cv, context_rest = self.context_block.pre_attention(context, c)
        xq, xk, xv, x_rest = self.x_block.pre_attention(x, c)
        q, k, v = (torch.cat(pair, dim=2) for pair in ((cq, xq), (ck, xk), (cv, xv)))
        attended = F.scaled_dot_product_attention(q, k, v)
        batch, heads, tokens, head_dim = attended.shape
        attended = attended.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
        length = context.shape[1]
        context_out = None if self.context_block.pre_only else \
            self.context_block.post_attention(attended[:, :length], *context_rest)
        return context_out, self.x_block.post_attention(attended[:, length:], *x_rest)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class MMDiT(nn.Module, Backbone):
    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        depth: int = 24,
        hidden_size: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        context_tokens: int = 77,
        context_dim: int = 768,
        pos_embed_max_size: int | None = 16,
        label_dropout: float = 0.1,
        null_context: torch.Tensor | Callable[[], torch.Tensor] | None = None,
        grad_checkpointing: bool = False,
    ):
        """hidden_size / num_heads default to the official 32 x depth / depth; null_context [L,D]: the
        unconditional context, or a function giving it on first need (the engine's gives the empty
        caption's: reading it may encode "" or read the data); default zeros."""
        super().__init__()
        hidden_size = 32 * depth if hidden_size is None else hidden_size
        num_heads = depth if num_heads is None else num_heads
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not a multiple of the patch size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by the number of heads {num_heads}")
        grid = input_size // patch_size
        max_size = grid if pos_embed_max_size is None else pos_embed_max_size
        if grid > max_size:
            raise ValueError(f"a {grid}x{grid} token grid exceeds pos_embed_max_size {max_size}")
        self.input_size, self.in_channels, self.out_channels = input_size, in_channels, in_channels
        self.patch_size, self.hidden_size, self.label_dropout = patch_size, hidden_size, label_dropout
        self.grid, self.pos_embed_max_size, self.grad_checkpointing = grid, max_size, grad_checkpointing
        self.context_shape = (context_tokens, context_dim)
        self.num_classes = 0  # conditioned on contexts, not labels

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.context_embedder = nn.Linear(context_dim, hidden_size)
        # A buffer in the state dict, as official (max_size^2 positions; cropped to the grid in forward).
        self.register_buffer("pos_embed", torch.from_numpy(sincos_2d(hidden_size, max_size)).float().unsqueeze(0))
        self.joint_blocks = nn.ModuleList(
            JointBlock(hidden_size, num_heads, mlp_ratio, last=i == depth - 1) for i in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._null_source = torch.zeros(context_tokens, context_dim) if null_context is None else null_context
        self._null = None  # not in the state dict: official checkpoints have no such key

    def null_condition(self, y):
        if self._null is None:
            null = self._null_source() if callable(self._null_source) else self._null_source
            if tuple(null.shape) != self.context_shape:
                raise ValueError(f"null context {list(null.shape)} does not match contexts {list(self.context_shape)}")
            self._null = null.float()
        return self._null.to(y.device, y.dtype).expand(y.shape[0], *self.context_shape)

    def shard_units(self) -> list:
        return list(self.joint_blocks)

    def cropped_pos_embed(self) -> torch.Tensor:
        """The centre grid x grid of the max_size x max_size table (official `cropped_pos_embed`)."""
        size, grid = self.pos_embed_max_size, self.grid
        top = (size - grid) // 2
        table = self.pos_embed.reshape(1, size, size, -1)[:, top:top + grid, top:top + grid]
        return table.reshape(1, grid * grid, -1)

    def unpatchify(self, x):
        c, p, h = self.out_channels, self.patch_size, self.grid
        x = x.reshape(x.shape[0], h, h, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, h * p)

    def check_inputs(self, x, t, y):
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"MMDiT expects inputs [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
        contexts = (x.shape[0], *self.context_shape)
        if t.shape != (x.shape[0],) or tuple(y.shape) != contexts:
            raise ValueError(f"MMDiT expects t [B]={x.shape[0]} and contexts {list(contexts)}, got t "
                             f"{list(t.shape)} and y {list(y.shape)} (is the experiment's conditioning text?)")

    def forward(self, x, t, y, drop_ids=None, hidden_depths=(), attention_blocks=(), extra_tokens=None):
        """x [B,C,H,W], t [B], y contexts [B,L,D] -> BackboneOutput: out [B,C,H,W] and the image tokens'
        hidden states after blocks `hidden_depths`. Rows with drop_ids (train mode) see the null context;
        in train mode without drop_ids they are drawn with probability label_dropout (torch's global RNG)."""
        self.check_inputs(x, t, y)
        if attention_blocks or extra_tokens is not None:
            raise ValueError("MMDiT gives no attention logits and takes no extra tokens")
        for depth in hidden_depths:
            if not 1 <= depth <= len(self.joint_blocks):
                raise ValueError(f"hidden state of block {depth} requested; MMDiT has blocks 1..{len(self.joint_blocks)}")
        if self.training and drop_ids is None and self.label_dropout > 0:
            drop_ids = torch.rand(y.shape[0], device=y.device) < self.label_dropout
        if self.training and drop_ids is not None:
            y = torch.where(drop_ids[:, None, None], self.null_condition(y), y)
        x = self.x_embedder(x) + self.cropped_pos_embed()
        c = self.t_embedder(t)
        context = self.context_embedder(y.to(x.dtype))
        hidden = {}
        for i, block in enumerate(self.joint_blocks):
            if self.grad_checkpointing and self.training:
                context, x = checkpoint(block, context, x, c, use_reentrant=False)
            else:
                context, x = block(context, x, c)
            if i + 1 in hidden_depths:
                hidden[i + 1] = x
        return BackboneOutput(out=self.unpatchify(self.final_layer(x, c)), hidden=hidden)
