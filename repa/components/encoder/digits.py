"""The offline encoder: a conv net trained by repa on the embedded digits (see digits_models)."""

from __future__ import annotations

from repa.components.digits_models import DigitsConvEncoder, cached_model
from repa.components.encoder.frozen import FrozenEncoder


def digits_tokens(network, x):
    return network.tokens(x)


def build_digits_encoder(spec, params, resolution: int) -> FrozenEncoder:
    spec.tokens_for(resolution)  # raises for resolutions that are not a multiple of 4
    network, path = cached_model("digits-convnet", DigitsConvEncoder, params.seed, params.epochs)
    return FrozenEncoder(spec, network, resolution, digits_tokens, str(path))
