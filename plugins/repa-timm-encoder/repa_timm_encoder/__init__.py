"""repa plugin: any timm ViT (by name, e.g. `vit_base_patch16_224.augreg2_in21k_ft_in1k`) as a
REPA alignment encoder, preprocessed with its own pretrained config (mean, std, input size).
Light module: timm is imported only when the encoder's facts or weights are needed."""

from functools import lru_cache
from typing import Literal

from pydantic import Field

from repa.interfaces import EncoderParams
from repa.plugins import hookimpl


@lru_cache(maxsize=None)
def architecture(model: str) -> dict:
    """Facts of a timm model, read from the architecture built on the meta device (no weights)."""
    import timm
    import torch

    with torch.device("meta"):
        net = timm.create_model(model, pretrained=False, num_classes=0)
    cfg = net.pretrained_cfg
    return {"embed_dim": net.embed_dim, "patch": net.patch_embed.patch_size[0], "prefix": net.num_prefix_tokens,
            "input": cfg["input_size"][-1], "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]),
            "hf_hub_id": cfg.get("hf_hub_id")}


class TimmEncoderParams(EncoderParams):
    model: str = Field("vit_small_patch16_224.augreg_in21k", description="timm model name with pretrained tag")
    resize: Literal["pretrained", "native"] = Field(
        "pretrained", description="pretrained: bicubic resize to its input size x resolution/256 (as REPA does for "
        "DINOv2); native: feed the images at their own size")
    weights: str | None = Field(None, description="weights file (default: timm's pretrained weights, HF cache)")

    def input_size(self, resolution: int) -> int:
        return architecture(self.model)["input"] * resolution // 256 if self.resize == "pretrained" else resolution

    def embed_dim(self) -> int:
        return architecture(self.model)["embed_dim"]

    def tokens_for(self, resolution: int) -> int:
        side, patch = self.input_size(resolution), architecture(self.model)["patch"]
        if side % patch:
            raise ValueError(f"{side} px input is not a multiple of {self.model}'s patch size {patch}")
        return (side // patch) ** 2


def build(params, *, resolution):
    from repa_timm_encoder.encoder import TimmEncoder

    return TimmEncoder(params, resolution)


def info(params):
    facts = architecture(params.model)
    return {"dim": facts["embed_dim"], "patch": facts["patch"], "input px @256": params.input_size(256),
            "weight source": f"timm / HF {facts['hf_hub_id']}"}


@hookimpl
def repa_register_encoders(registry):
    registry.add("timm-vit", build, TimmEncoderParams, "any timm ViT by name, preprocessed by its pretrained config",
                 info=info)
