"""The offline encoder: a conv net trained by repa on the embedded digits (see digits_models)."""

from __future__ import annotations

from pathlib import Path

from repa.components.digits_models import DigitsConvEncoder, cached_model
from repa.components.encoder.frozen import FrozenEncoder


def digits_tokens(network, x):
    return network.tokens(x)


def build_digits_encoder(spec, params, resolution: int) -> FrozenEncoder:
    spec.tokens_for(resolution)  # raises for resolutions that are not a multiple of 4
    if params.weights:  # a copy of a trained one (e.g. shared between machines): used as given
        network, path = _from_file(params.weights), params.weights
    else:
        network, path = cached_model("digits-convnet", DigitsConvEncoder, params.seed, params.epochs)
    return FrozenEncoder(spec, network, resolution, digits_tokens, str(path))


def _from_file(weights: str) -> DigitsConvEncoder:
    from repa.errors import MissingWeightsError
    from repa.weights import load_file, load_state_strict

    if not Path(weights).expanduser().is_file():
        raise MissingWeightsError(f"digits-convnet: weights file {weights} does not exist; leave `weights` unset "
                                  "to train the encoder on first use, or copy a trained one there")
    network = DigitsConvEncoder()
    load_state_strict(network, load_file(Path(weights).expanduser()), f"digits-convnet weights {weights}")
    return network.eval().requires_grad_(False)
