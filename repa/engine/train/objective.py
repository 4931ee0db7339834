"""The training objective, composed from the configured components (REPA Eq. 9 and its follow-ups):

    L = E_t[ w(t) |f(x_t, t, y) - target|^2 ] + sum over active terms of coeff_i * mean_B loss_i(ctx)

The weighting gives t, the path x_t, the prediction target what to regress; every other part of the
loss is a term (`repa.interfaces.Term`): REPA's alignment per [[alignment]] entry (with reduction
"mean" its coefficient is divided by the number of entries, the official normalisation:
sihyun-yu/REPA @ 67f7145, loss.py: sum over encoders and batch / (n * B)), a [[joint]] quantity's
denoising loss, an [[attention]] alignment, any [[term]]. The objective knows none of them by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from repa.errors import ContractError
from repa.interfaces import Path, Prediction, Weighting


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.ndim)))


@dataclass
class TermSlot:
    """A built term in the objective: the name its loss is logged under, its coefficient and schedule,
    its section in the network, its extra-token module and how messages name it."""

    term: object
    name: str
    coeff: float
    label: str
    stop_after: int | None = None
    section: str | None = None
    joint: object = None  # term.extra_tokens()
    modules: dict = field(default_factory=dict)  # name -> TrainedModule, placed at `section`
    rank: int = 3  # losses are summed by rank, then in order: 0 joint, 1 alignment, 2 attention, 3 [[term]]

    def active(self, step: int) -> bool:
        return self.coeff > 0 and (self.stop_after is None or step < self.stop_after)

    def computed(self, step: int) -> bool:
        """An inactive term that owns modules still runs with weight 0 (every trained parameter gets a
        gradient, as DDP requires, and switching a term off changes nothing else); one without is skipped."""
        return self.active(step) or bool(self.modules)


@dataclass
class LossParts:
    total: torch.Tensor  # scalar to backpropagate
    denoising: torch.Tensor  # [B] per-sample
    terms: dict = field(default_factory=dict)  # logged name -> [B] (or scalar) detached


class Objective:
    def __init__(self, path: Path, prediction: Prediction, weighting: Weighting, slots: list[TermSlot] = ()):
        self.path, self.prediction, self.weighting = path, prediction, weighting
        self.slots = sorted(slots, key=lambda slot: slot.rank)  # stable: within a rank, in build order

    def computed(self, step: int) -> list[TermSlot]:
        return [slot for slot in self.slots if slot.computed(step)]

    def inputs(self, x0, noise, t):
        """x_t and the regression target."""
        alpha, sigma, _, _ = self.path.broadcast(t, x0)
        return alpha * x0 + sigma * noise, self.prediction.target(x0, noise, t, self.path)

    def __call__(self, network, ctx, check: bool = False) -> LossParts:
        """Inside the trained network's call: the student's pass, the denoising loss, every computed term.
        check: each term's loss is held to its contract (shape [B], float, finite) with one line."""
        ctx.run_student(network)
        out, target = ctx.student.out, ctx.target
        denoising = mean_flat((out.float() - target.float()) ** 2) * self.weighting.loss_weight(ctx.t).float()
        total, logged = denoising.mean(), {}
        for slot in sorted(ctx.slots, key=lambda slot: slot.rank):
            loss, scalars = split_scalars(slot.term.loss(ctx))
            if check:
                check_loss(slot, loss, ctx.t.shape[0])
            logged[slot.name] = loss.detach()
            logged.update({f"{slot.name}/{k}": v.detach() for k, v in scalars.items()})
            total = total + (slot.coeff if slot.active(ctx.step) else 0.0) * loss.mean()
        return LossParts(total, denoising.detach(), logged)


def split_scalars(result) -> tuple[torch.Tensor, dict]:
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
        return result
    return result, {}


def check_loss(slot: TermSlot, loss, batch: int) -> None:
    problem = None
    if not isinstance(loss, torch.Tensor):
        problem = f"loss(ctx) returned {type(loss).__name__}"
    elif tuple(loss.shape) != (batch,):
        problem = f"loss(ctx) returned shape {list(loss.shape)}"
    elif not loss.is_floating_point() or not math.isfinite(float(loss.detach().float().sum())):
        problem = "loss(ctx) is not a finite float tensor"
    if problem:
        raise ContractError(f"{slot.label}: {problem}; a term returns a per-sample loss [B] (here [{batch}]) "
                            "or (loss [B], {name: scalar})")
