"""Conditionings: what the network is conditioned on.

- `class` (the default): class labels [B]; the null label is `num_classes` (the backbone's).
- `text`: contexts [B,L,D] from a text encoder, or read from the data's cache (the official COCO
  layout); the null context is the empty caption's (the data's `empty_context.npy` when it has one).
"""

from __future__ import annotations

from typing import Annotated

from repa.config.component import Component, Kind
from repa.interfaces import ConditioningParams
from repa.plugins import hookimpl


class ClassParams(ConditioningParams):
    pass


class TextParams(ConditioningParams):
    # encodes captions the data gives as text, the empty caption, and prompts (`repa sample --prompt`)
    text_encoder: Annotated[Component, Kind("text_encoder", default="clip-vit-l14")]

    def context_shape(self) -> tuple[int, int]:
        return self.text_encoder.params.context_shape()


def build_class(params: ClassParams, *, num_classes: int, dataset=None):
    from repa.components.conditioning.conditionings import ClassConditioning

    return ClassConditioning(num_classes)


def build_text(params: TextParams, *, num_classes: int = 0, dataset=None):
    from repa.components.conditioning.conditionings import TextConditioning

    return TextConditioning(params, dataset)


@hookimpl
def repa_register_conditionings(registry):
    registry.add("class", build_class, ClassParams, "class labels (the null label num_classes for guidance)")
    registry.add("text", build_text, TextParams,
                 "captions through a text encoder, or contexts cached with the data (official COCO layout)")
