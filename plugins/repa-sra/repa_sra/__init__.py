"""repa plugin: SRA, self-representation alignment (Jiang et al. 2025, "No Other Representation Component
Is Needed: Diffusion Transformers Can Provide Representation Guidance by Themselves", arXiv 2505.02831;
code vvvvvjdy/SRA). No external encoder: the student's hidden state after an early block, through a
small head, is aligned with the EMA model's hidden state after a later block, evaluated at a lower noise
level (t minus U(0, t_max), the same image, noise and labels).

One term, `sra`, written against repa's term contract alone (`repa.interfaces.Term`): the teacher is the
step context's EMA pass. Light module: torch is imported in the factory only."""

from typing import Literal

from pydantic import Field, model_validator

from repa.interfaces import TermParams
from repa.plugins import hookimpl

LOSSES = ("cosine-tokens", "smooth-l1", "mse", "l1")


class SRAParams(TermParams):
    coeff: float = Field(0.5, ge=0, description="weight of the alignment loss (released, cos loss: 0.5)")
    student_block: int = Field(8, ge=1, description="the student's block (1-based) whose output is aligned (XL: 8)")
    teacher_block: int = Field(20, ge=1, description="the EMA teacher's block it is aligned with (XL: 20)")
    t_max: float = Field(0.2, ge=0, le=1, description="the teacher's t is the student's minus U(0, t_max), clamped")
    loss: Literal[LOSSES] = Field(
        "cosine-tokens", description='"cosine-tokens" (released default: 1 - cos over the tokens, per channel); '
        '"smooth-l1" (the paper, beta 0.05), "mse", "l1"')

    @model_validator(mode="after")
    def _teacher_deeper(self):
        if self.teacher_block < self.student_block:
            raise ValueError(f"teacher_block {self.teacher_block} is shallower than student_block "
                             f"{self.student_block}; SRA aligns an early block with a later one")
        return self


def build_sra(params, *, facts):
    from repa_sra.term import SRATerm

    return SRATerm(params, facts.hidden_size)


@hookimpl
def repa_register_terms(registry):
    registry.add("sra", build_sra, SRAParams,
                 "SRA: a block's output, through a head, aligned with the EMA model's later block at a lower t")
