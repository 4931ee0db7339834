"""Frozen vision encoders that give REPA its alignment targets (REPA Sec. 4.1, Table 2)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from repa.components.encoder.specs import SPECS, EncoderSpec, present_file
from repa.interfaces import EncoderParams
from repa.plugins import hookimpl


class PretrainedEncoderParams(EncoderParams):
    spec: ClassVar[EncoderSpec]
    weights: str | None = Field(None, description="weights file; default: the encoder's usual places")

    def embed_dim(self) -> int:
        return self.spec.embed_dim

    def tokens_for(self, resolution: int) -> int:
        return self.spec.tokens_for(resolution)

    def has_global_token(self) -> bool:
        return self.spec.global_token is not None

    def gives_attention(self) -> bool:
        return self.spec.attention_blocks is not None

    def num_blocks(self) -> int | None:
        return self.spec.attention_blocks


def params_for(spec: EncoderSpec) -> type[PretrainedEncoderParams]:
    name = "".join(part.capitalize() for part in spec.name.replace("-", "_").split("_")) + "Params"
    return type(name, (PretrainedEncoderParams,), {"spec": spec, "__module__": __name__})


class DigitsEncoderParams(PretrainedEncoderParams):
    spec: ClassVar[EncoderSpec] = SPECS["digits-convnet"]
    seed: int = Field(0, ge=0, description="training seed of the offline encoder")
    epochs: int = Field(20, ge=1, description="training epochs on the digits train split")


def info(params: PretrainedEncoderParams) -> dict:
    spec = params.spec
    found = present_file(spec, params.weights) if spec.family != "digits" else _digits_cached(params)
    return {
        "dim": spec.embed_dim,
        "patch": spec.patch_size,
        "input px @256": spec.input_size(256) if spec.family != "digits" else "256 (trained at 32)",
        "weight source": spec.source,
        "weights here": f"yes ({found})" if found else "no",
    }


def build_encoder(params: PretrainedEncoderParams, *, resolution: int, **overrides):
    """The frozen encoder for images of `resolution` px (overrides: architecture changes for tests)."""
    from repa.components.encoder.download import locate_weights

    spec = params.spec
    if spec.family == "digits":
        from repa.components.encoder.digits import build_digits_encoder

        return build_digits_encoder(spec, params, resolution)
    path = locate_weights(spec, params.weights)
    if spec.family == "clip":
        from repa.components.encoder.clip import build_clip_encoder

        return build_clip_encoder(spec, resolution, path, **overrides)
    from repa.components.encoder.vit import build_vit_encoder

    return build_vit_encoder(spec, resolution, path, **overrides)


def _digits_cached(params):
    from repa.weights import digits_model_path

    path = digits_model_path("digits-convnet", params.seed, params.epochs)
    return path if path.is_file() else None


@hookimpl
def repa_register_encoders(registry):
    for spec in SPECS.values():
        if spec.family == "digits":
            registry.add(spec.name, build_encoder, DigitsEncoderParams,
                         "offline conv encoder trained by repa on the embedded digits, 128-d tokens", info=info)
            continue
        registry.add(
            spec.name, build_encoder, params_for(spec),
            f"{spec.family} ViT/{spec.patch_size}, {spec.embed_dim}-d tokens", info=info,
        )
