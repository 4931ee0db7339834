"""Attention alignment ([[attention]]; HASTE, Wang et al. 2025, loss.py `attn_loss`): the backbone's
attention logits at `blocks` against the encoder's at `encoder_blocks`, block pair by block pair,
averaged over the pairs. The student's first H heads meet the teacher's H (HASTE aligns SiT-XL's first
12 of 16 heads with DINOv2-B's 12); extra tokens of a jointly denoised quantity are cut from the student's."""

from __future__ import annotations

import torch

from repa.interfaces import EncoderNeed, Needs, Term


class AttentionTerm(Term):
    def __init__(self, params, facts):
        self.blocks, self.encoder_blocks = list(params.blocks), list(params.encoder_blocks)
        self.attention_loss = params.loss.build()
        self.encoder_need = EncoderNeed(params.encoder, attention=tuple(self.encoder_blocks))

    def needs(self) -> Needs:
        return Needs(attention=tuple(self.blocks), encoders=(self.encoder_need,))

    def loss(self, ctx) -> torch.Tensor:
        teachers = ctx.encoder(self.encoder_need).attention
        losses = []
        for block, encoder_block in zip(self.blocks, self.encoder_blocks):
            student, teacher = ctx.student.image_attention(block), teachers[encoder_block]
            heads = teacher.shape[1]
            if student.shape[1] < heads or student.shape[2:] != teacher.shape[2:]:
                raise ValueError(f"attention of block {block} is {list(student.shape)} but the teacher's is "
                                 f"{list(teacher.shape)}: the backbone needs at least as many heads and the same tokens")
            losses.append(self.attention_loss(student[:, :heads], teacher))
        return torch.stack(losses).mean(0)
