"""repa plugin: relational alignment. Instead of matching each projected token to its target
token (REPA's cosine), match the token-to-token similarity structure (the Gram matrices of the
normalised tokens), as relational follow-ups to REPA do. Light module: torch is imported in
the factory only."""

from pydantic import Field

from repa.interfaces import Params
from repa.plugins import hookimpl


class GramParams(Params):
    cosine_weight: float = Field(0.0, ge=0, description="also add REPA's per-token cosine term with this weight")


def build_gram(params):
    from repa_gram.loss import GramAlignment

    return GramAlignment(params.cosine_weight)


@hookimpl
def repa_register_alignment_losses(registry):
    registry.add("gram", build_gram, GramParams, "match token-token cosine similarities (Gram matrices)")
