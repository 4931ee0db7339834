"""Alignment losses between projected backbone tokens and encoder tokens (REPA Sec. 3.2)."""

from pydantic import Field

from repa.interfaces import Params
from repa.plugins import hookimpl


class NTXentParams(Params):
    temperature: float = Field(0.1, gt=0, description="softmax temperature")
    negatives: str = Field(
        "image", pattern="^(image|batch)$", description="negatives: other patches of the same image, or of the batch"
    )


def _cosine(params):
    from repa.components.alignment.losses import CosineAlignment

    return CosineAlignment()


def _nt_xent(params):
    from repa.components.alignment.losses import NTXentAlignment

    return NTXentAlignment(params.temperature, params.negatives)


@hookimpl
def repa_register_alignment_losses(registry):
    registry.add("cosine", _cosine, description="negative cosine similarity per patch, mean over patches (REPA)")
    registry.add("nt-xent", _nt_xent, NTXentParams, "patch-wise InfoNCE: the same patch is the positive")
