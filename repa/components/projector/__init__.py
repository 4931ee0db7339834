"""REPA's projector h_phi (Sec. 3.2): hidden states of the backbone -> the encoder's width."""

from __future__ import annotations

from repa.interfaces import Params
from repa.plugins import hookimpl


def _mlp(params: Params, *, in_dim: int, out_dim: int, projector_dim: int, grid: tuple[int, int]):
    from repa.components.projector.mlp import MLPProjector

    return MLPProjector(in_dim, projector_dim, out_dim)


@hookimpl
def repa_register_projectors(registry):
    registry.add("mlp", _mlp, description="REPA's 3-layer SiLU MLP, width [[alignment]].projector_dim, per token")
