"""repa plugin: any timm ViT (by name, e.g. `vit_base_patch16_224.augreg2_in21k_ft_in1k`) as a
REPA alignment encoder, preprocessed with its own pretrained config (mean, std, input size).
Light module: timm is imported only when the encoder's facts or weights are needed."""

import abc
from functools import lru_cache
from typing import ClassVar, Literal

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
            "interpolation": cfg.get("interpolation", "bicubic"), "hf_hub_id": cfg.get("hf_hub_id"),
            "class_token": getattr(net, "cls_token", None) is not None}


# The encoders REPA's follow-ups align with (iREPA, REG, HASTE and later work), by the names the
# follow-ups' code uses, each a timm release. "grid" sizing keeps 16x16 tokens per 256 px (SiT-*/2's
# grid): the input side is patch x resolution / 16, 256 px for patch 16 and 224 px for patch 14.
FOLLOW_UP_ENCODERS = {
    "dinov3-vit-s16": "vit_small_patch16_dinov3.lvd1689m",
    "dinov3-vit-b16": "vit_base_patch16_dinov3.lvd1689m",
    "dinov3-vit-l16": "vit_large_patch16_dinov3.lvd1689m",
    "dinov3-vit-h16plus": "vit_huge_plus_patch16_dinov3.lvd1689m",
    "pe-core-b16": "vit_pe_core_base_patch16_224.fb",
    "pe-core-l14": "vit_pe_core_large_patch14_336.fb",
    "pe-core-g14": "vit_pe_core_gigantic_patch14_448.fb",
    "siglip2-vit-b16": "vit_base_patch16_siglip_256.v2_webli",
    "siglip2-vit-l16": "vit_large_patch16_siglip_256.v2_webli",
    "siglip2-so400m-p16": "vit_so400m_patch16_siglip_256.v2_webli",
    "aimv2-vit-l14": "aimv2_large_patch14_224.apple_pt",
    "aimv2-vit-h14": "aimv2_huge_patch14_224.apple_pt",
}


class TimmViTParams(EncoderParams):
    """What every timm ViT encoder takes; which model it is, each subclass says (model_name)."""

    resize: Literal["pretrained", "native", "grid"] = Field(
        "pretrained", description="pretrained: resize to its input size x resolution/256 (as REPA does for "
        "DINOv2); native: feed the images at their own size; grid: patch x resolution/16 (16x16 tokens per 256 px)")
    weights: str | None = Field(None, description="weights file (default: timm's pretrained weights, HF cache)")

    @abc.abstractmethod
    def model_name(self) -> str:
        """The timm model this entry builds (`TimmEncoderParams.model`, or a named encoder's own)."""

    def input_size(self, resolution: int) -> int:
        facts = architecture(self.model_name())
        if self.resize == "grid":
            return facts["patch"] * resolution // 16
        return facts["input"] * resolution // 256 if self.resize == "pretrained" else resolution

    def embed_dim(self) -> int:
        return architecture(self.model_name())["embed_dim"]

    def tokens_for(self, resolution: int) -> int:
        side, patch = self.input_size(resolution), architecture(self.model_name())["patch"]
        if side % patch or (self.resize == "grid" and resolution % 16):
            raise ValueError(f"{resolution} px gives a {side} px input to {self.model_name()} (patch {patch}); use a "
                             f"resolution that is a multiple of 16")
        return (side // patch) ** 2

    def has_global_token(self) -> bool:
        return architecture(self.model_name())["class_token"]


class TimmEncoderParams(TimmViTParams):
    model: str = Field("vit_small_patch16_224.augreg_in21k", description="timm model name with pretrained tag")

    def model_name(self) -> str:
        return self.model


class NamedEncoderParams(TimmViTParams):
    """A follow-up's encoder by its registered name: the timm release and "grid" sizing are fixed (it
    takes no `model`: a parameter it would ignore is refused, not listed and not hashed)."""

    release: ClassVar[str]
    resize: Literal["grid"] = Field("grid", description="16x16 tokens per 256 px, as SiT-*/2 at 256 px")

    def model_name(self) -> str:
        return self.release


def named_params(name: str, release: str) -> type[NamedEncoderParams]:
    return type(name.replace("-", "_") + "_params", (NamedEncoderParams,), {"release": release, "__module__": __name__})


def build(params, *, resolution):
    from repa_timm_encoder.encoder import TimmEncoder

    return TimmEncoder(params, resolution)


def info(params):
    facts = architecture(params.model_name())
    return {"dim": facts["embed_dim"], "patch": facts["patch"], "input px @256": params.input_size(256),
            "tokens at 512 px": params.tokens_for(512),  # (at 256 px: repa's own line)
            "weight source": f"timm / HF {facts['hf_hub_id']}"}


@hookimpl
def repa_register_encoders(registry):
    registry.add("timm-vit", build, TimmEncoderParams, "any timm ViT by name, preprocessed by its pretrained config",
                 info=info)
    for name, release in FOLLOW_UP_ENCODERS.items():
        registry.add(name, build, named_params(name, release), f"timm {release}, preprocessed by its own config",
                     info=info)
