"""The built-in training terms. `[[alignment]]`, `[[joint]]` and `[[attention]]` in an experiment are
written for these; `[[term]] kind = "..."` takes them and any term a plugin registers.

Light module: pydantic only; torch is imported in the factories."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from repa.interfaces import TermParams
from repa.plugins import hookimpl
from repa.plugins.component import Component, Kind


class AlignmentParams(TermParams):
    """REPA (Yu et al. 2024, Sec. 3.2): the backbone's hidden state after block `depth`, through a projector,
    aligned with a frozen encoder's tokens on the clean image. One [[alignment]] entry."""

    encoder: Annotated[Component, Kind("encoder")]
    loss: Annotated[Component, Kind("alignment_loss", default="cosine")]
    projector: Annotated[Component, Kind("projector", default="mlp")]
    target_transform: Annotated[Component, Kind("target_transform", default="identity")]
    depth: int = Field(8, ge=1, description="align the output of this block (1-based)")
    coeff: float = Field(0.5, ge=0, description="lambda: weight of this alignment loss")
    projector_dim: int = Field(2048, ge=1, description="width of the projector's hidden layers (mlp: 3-layer SiLU MLP)")
    stop_after: int | None = Field(
        None, ge=0, description="switch this alignment off after this many steps (HASTE); none = never")
    features: str = Field("online", description='"online" (run the encoder every step) or the path of a feature cache')


class JointTermParams(TermParams):
    """A quantity denoised jointly with the image ([[joint]]; REG's class token): its modules (a `joint`
    component) and the encoder whose outputs give its clean value."""

    quantity: Annotated[Component, Kind("joint")]
    encoder: Annotated[Component, Kind("encoder")]
    features: str = Field("online", description="the encoder runs online (a feature cache holds patch tokens only)")


class AttentionTermParams(TermParams):
    """Attention alignment ([[attention]]; HASTE): the backbone's attention logits at `blocks` against the
    encoder's at `encoder_blocks`, pair by pair, with an attention loss."""

    loss: Annotated[Component, Kind("attention_loss")]
    encoder: Annotated[Component, Kind("encoder")]
    blocks: list[int] = Field(description="the backbone's blocks (1-based) whose attention is aligned")
    encoder_blocks: list[int] = Field(description="the encoder's blocks (1-based), one per entry of `blocks`")


def build_alignment(params, *, facts):
    from repa.components.term.alignment import AlignmentTerm

    return AlignmentTerm(params, facts)


def build_joint(params, *, facts):
    from repa.components.term.joint import JointTerm

    return JointTerm(params, facts)


def build_attention(params, *, facts):
    from repa.components.term.attention import AttentionTerm

    return AttentionTerm(params, facts)


@hookimpl
def repa_register_terms(registry):
    registry.add("alignment", build_alignment, AlignmentParams,
                 "REPA: a block's hidden state, projected, aligned with a frozen encoder's tokens ([[alignment]])")
    registry.add("joint", build_joint, JointTermParams,
                 "a quantity denoised jointly with the image as extra tokens, from an encoder's outputs ([[joint]])")
    registry.add("attention", build_attention, AttentionTermParams,
                 "the backbone's attention logits aligned with an encoder's, block pair by pair ([[attention]])")
