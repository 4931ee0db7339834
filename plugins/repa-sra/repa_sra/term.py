"""SRA's term (vvvvvjdy/SRA, SiT-SRA/loss.py SRALoss and models/sit.py SimpleHead)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.interfaces import Needs, TeacherNeed, Term


class SimpleHead(nn.Module):
    """The student's head: Linear(D, 2D), SiLU, Linear(2D, D), per token; xavier weights, zero biases (as
    the released SiT initialises every Linear)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear1, self.act, self.linear2 = nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width)
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x):
        return self.linear2(self.act(self.linear1(x)))


def alignment_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample loss [B] whose batch mean is the released scalar (loss.py `criterion`)."""
    student, teacher = student.float(), teacher.float()
    if kind == "cosine-tokens":  # 1 - F.cosine_similarity(a, b): dim=1 of [B,T,D] is the token axis
        return (1 - F.cosine_similarity(student, teacher, dim=1)).mean(dim=1)
    if kind == "smooth-l1":
        return F.smooth_l1_loss(student, teacher, beta=0.05, reduction="none").mean(dim=(1, 2))
    if kind == "mse":
        return F.mse_loss(student, teacher, reduction="none").mean(dim=(1, 2))
    return F.l1_loss(student, teacher, reduction="none").mean(dim=(1, 2))


class SRATerm(Term):
    def __init__(self, params, width: int):
        self.params = params
        self.head = SimpleHead(width)
        self.teacher = TeacherNeed(model="ema", hidden=(params.teacher_block,))

    def needs(self) -> Needs:
        return Needs(hidden=(self.params.student_block,), teachers=(self.teacher,))

    def modules(self) -> dict:
        return {"head": self.head}

    def loss(self, ctx) -> torch.Tensor:
        # The teacher: the EMA model in eval mode, the student's latents, noise and dropped labels, at
        # t - U(0, t_max) clamped to [0, 1] (a fresh offset per sample), without gradient.
        t_teacher = torch.clamp(ctx.t - self.params.t_max * ctx.rand(self), 0, 1)
        teacher = ctx.teacher(self.teacher, t=t_teacher).hidden[self.params.teacher_block]
        student = self.head(ctx.student.hidden[self.params.student_block])
        return alignment_loss(self.params.loss, student, teacher)
