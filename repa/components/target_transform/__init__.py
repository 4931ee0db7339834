"""Transforms of the encoder's tokens before the alignment loss. REPA uses them as they are."""

from __future__ import annotations

from repa.interfaces import TargetTransform
from repa.plugins import hookimpl


class Identity(TargetTransform):
    def __call__(self, tokens):
        return tokens


def _identity(params):
    return Identity()


@hookimpl
def repa_register_target_transforms(registry):
    registry.add("identity", _identity, description="the encoder's tokens unchanged (REPA)")
