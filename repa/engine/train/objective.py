"""The training objective, composed from the configured components (REPA Eq. 9):

    L = E_t[ w(t) |f(x_t, t, y) - target|^2 ] + sum_k coeff_k * align_k(h_phi_k(h_t), y*_k) / n
        [ + coeff_J * E_t[ w(t) |g(z_t, ...) - target_z|^2 ] ]

        [ + sum_a coeff_a * mean_pairs attn_a(A_student[block], A_teacher[encoder block]) ]

The first bracketed term is a quantity denoised jointly with the image ([[joint]], `repa.interfaces.Joint`;
REG, Wu et al. 2025, loss.py `denoising_loss_cls`): z0 is noised by the same path at the same t.
The second is attention alignment ([[attention]], `repa.interfaces.AttentionLoss`; HASTE, Wang et
al. 2025, loss.py `attn_loss`): the backbone's attention logits against the encoder's, block pair by
block pair, averaged over the pairs.

The weighting gives t, the path x_t, the prediction target what to regress, each alignment
entry (`repa.engine.network.AlignmentTerm`) its loss on its projector's output. With
reduction "mean" the alignment sum is divided by the number of entries, the official
normalisation (sihyun-yu/REPA @ 67f7145, loss.py: sum over encoders and batch / (n * B)).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from repa.engine.network import AlignmentTerm
from repa.interfaces import AttentionLoss, Path, Prediction, Weighting


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.ndim)))


@dataclass
class LossParts:
    total: torch.Tensor  # scalar to backpropagate
    denoising: torch.Tensor  # [B] per-sample
    alignment: list[torch.Tensor]  # [B] per entry (zeros if inactive)
    joint: torch.Tensor | None = None  # [B] the joint quantity's denoising loss, when there is one
    attention: list[torch.Tensor | None] = field(default_factory=list)  # [B] per [[attention]] term; None: off


@dataclass
class AttentionTerm:
    """One [[attention]] entry: its loss over the pairs (blocks[i], the teacher's logits i)."""
    loss: AttentionLoss
    coeff: float
    blocks: list[int]
    stop_after: int | None = None

    def active(self, step: int) -> bool:
        return self.coeff > 0 and (self.stop_after is None or step < self.stop_after)

    def __call__(self, student: dict[int, torch.Tensor], teachers: list[torch.Tensor]) -> torch.Tensor:
        """Per-sample loss [B], the mean over the block pairs; the student's first H heads meet the
        teacher's H (HASTE aligns SiT-XL's first 12 of 16 heads with DINOv2-B's 12)."""
        losses = []
        for block, teacher in zip(self.blocks, teachers):
            heads = teacher.shape[1]
            if student[block].shape[1] < heads or student[block].shape[2:] != teacher.shape[2:]:
                raise ValueError(f"attention of block {block} is {list(student[block].shape)} but the teacher's is "
                                 f"{list(teacher.shape)}: the backbone needs at least as many heads and the same tokens")
            losses.append(self.loss(student[block][:, :heads], teacher))
        return torch.stack(losses).mean(0)


@dataclass
class AttentionBatch:
    """The teachers' attention logits per [[attention]] term (None: the term is off), and the backbone's recorder."""
    teachers: list[list[torch.Tensor] | None]
    record: Callable  # record(depths) -> context manager yielding the list the forward fills


@dataclass
class JointBatch:
    """The joint quantity's clean value z0 [B,K,D], its noise [B,K,D] and its loss coefficient."""
    clean: torch.Tensor
    noise: torch.Tensor
    coeff: float
    aligned_entry: int | None  # the alignment entry whose target gets z0 in front (REG), or None


class Objective:
    def __init__(self, path: Path, prediction: Prediction, weighting: Weighting,
                 terms: list[AlignmentTerm], reduction: str = "mean", attention_terms: list[AttentionTerm] = ()):
        self.path, self.prediction, self.weighting, self.terms = path, prediction, weighting, terms
        self.reduction, self.attention_terms = reduction, list(attention_terms)

    def attention_depths(self, step: int) -> list[int]:
        """The backbone blocks whose attention the active [[attention]] terms read at `step`."""
        return sorted({block for term in self.attention_terms if term.active(step) for block in term.blocks})

    def inputs(self, x0, noise, t):
        """x_t and the regression target."""
        alpha, sigma, _, _ = self.path.broadcast(t, x0)
        return alpha * x0 + sigma * noise, self.prediction.target(x0, noise, t, self.path)

    def __call__(self, model, x0, noise, t, y, targets: list[torch.Tensor], step: int, drop_ids=None,
                 joint: JointBatch | None = None, attention: AttentionBatch | None = None) -> LossParts:
        x_t, target = self.inputs(x0, noise, t)
        depths = self.attention_depths(step) if attention is not None else []
        with attention.record(depths) if depths else contextlib.nullcontext([]) as recorded:
            if joint is None:
                out, projected = model(x_t, t, y, drop_ids=drop_ids)
            else:
                z_t, z_target = self.inputs(joint.clean, joint.noise, t)
                out, projected, z_out = model(x_t, t, y, drop_ids=drop_ids, joint_state=z_t)
        denoising = mean_flat((out.float() - target.float()) ** 2) * self.weighting.loss_weight(t).float()
        per_entry, total = [], denoising.mean()
        joint_loss = None
        if joint is not None:
            joint_loss = mean_flat((z_out.float() - z_target.float()) ** 2) * self.weighting.loss_weight(t).float()
            total = total + joint.coeff * joint_loss.mean()
        for k, (term, z_tilde, z) in enumerate(zip(self.terms, projected, targets)):
            loss = term(z_tilde, z, joint.clean if joint is not None and joint.aligned_entry == k else None)
            per_entry.append(loss.detach())
            # An inactive term still enters with weight 0, so every projector gets a gradient
            # (DDP requires it) and switching a term off changes nothing else.
            scale = term.coeff / (len(self.terms) if self.reduction == "mean" else 1) if term.active(step) else 0.0
            total = total + scale * loss.mean()
        # Without a [[joint]]'s extra tokens (they come first): the teacher's tokens are the image's.
        extra = joint.clean.shape[1] if joint is not None else 0
        student = {d: logits[:, :, extra:, extra:] for d, logits in zip(depths, recorded)}
        per_attention = []
        for term, teachers in zip(self.attention_terms, attention.teachers if attention is not None else []):
            if teachers is None:  # switched off (stop_after): neither recorded nor computed, as HASTE's phase II
                per_attention.append(None)
                continue
            loss = term(student, teachers)
            per_attention.append(loss.detach())
            total = total + term.coeff * loss.mean()
        return LossParts(total, denoising.detach(), per_entry, None if joint_loss is None else joint_loss.detach(),
                         per_attention)
