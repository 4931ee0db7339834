"""repa plugin: RAE, diffusion transformers with representation autoencoders (Zheng et al. 2025, "Diffusion
Transformers with Representation Autoencoders", arXiv 2510.11690; code bytetriper/RAE).

- autoencoder `rae`: a frozen representation encoder (DINOv2-B with registers, final LayerNorm without
  affine), its tokens normalised per element, and a ViT decoder (the released weights); `digits-rae`: the
  same on the embedded digits with `digits-convnet` and a small decoder trained on first use;
- backbone `dit-dh` (presets `DiTDH-XL`, `DiTDH-S`): a DiT with the wide, shallow DDT head;
- weighting `rae-shifted` and sampler `rae-euler`: the dimension-dependent noise-schedule shift
  s = sqrt(dim / 4096), in training (on a truncated logit-normal t) and on the sampler's grid;
- guidance `autoguidance`: by a weaker network (RAE samples with DiT^DH-S at 14 epochs);
- term `rae-decoder`: the decoder's reconstruction loss on noised tokens (decoder training).

Written against repa's contract alone. Light module: torch is imported in the factories only."""

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from repa.interfaces import AutoencoderParams, BackboneParams, GuidanceParams, Params, TermParams
from repa.plugins import hookimpl
from repa.plugins.component import Component, Kind


# ============================================================================
# Backbone: DiT^DH
# ============================================================================


class DiTDHParams(BackboneParams):
    hidden_size: list[int] = Field([1152, 2048], description="[backbone width, head width]")
    depth: list[int] = Field([28, 2], description="[backbone blocks, head blocks]")
    num_heads: list[int] = Field([16, 16], description="[backbone heads, head heads]")
    patch_size: int = Field(1, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    qk_norm: bool = False
    rope: bool = True
    pos_embed: bool = True

    @model_validator(mode="after")
    def _pairs(self):
        for name in ("hidden_size", "depth", "num_heads"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name} must be [backbone, head], got {getattr(self, name)}")
        if any(w % h or (w // h) % 4 for w, h in zip(self.hidden_size, self.num_heads)):
            raise ValueError(f"each width must split into heads whose size is a multiple of 4 (2-D rotary), got "
                             f"{self.hidden_size} / {self.num_heads}")
        return self

    def num_blocks(self) -> int:
        return self.depth[0]  # the backbone's blocks (the head's have another width)

    def num_tokens(self, input_size: int) -> int:
        return (input_size // self.patch_size) ** 2

    def input_multiple(self) -> int:
        return self.patch_size

    def label_rows(self, state) -> int | None:
        table = state.get("y_embedder.embedding_table.weight")
        return None if table is None else int(table.shape[0])


PRESETS = {"DiTDH-XL": ([1152, 2048], [28, 2], [16, 16]), "DiTDH-S": ([384, 2048], [12, 2], [6, 16])}


def _preset(widths, depths, heads):
    namespace = {"__annotations__": {"hidden_size": list[int], "depth": list[int], "num_heads": list[int]},
                 "hidden_size": Field(widths), "depth": Field(depths), "num_heads": Field(heads), "__module__": __name__}
    return type(f"DiTDH_{widths[0]}Params", (DiTDHParams,), namespace)


def build_ditdh(params, *, input_size, in_channels, num_classes, label_dropout=0.1, null_label=True,
                grad_checkpointing=False):
    from repa_rae.ddt import DiTDH

    return DiTDH(input_size, in_channels, num_classes, params.hidden_size, params.depth, params.num_heads,
                 params.patch_size, params.mlp_ratio, params.qk_norm, params.rope, params.pos_embed, null_label,
                 label_dropout)


# ============================================================================
# Autoencoders
# ============================================================================


class RAEBase(AutoencoderParams):
    eps: float = Field(1e-5, gt=0, description="added to the variance when normalising the tokens")
    noise_tau: float = Field(0.8, ge=0, description="decoder training: tokens noised with sigma ~ tau * U(0, 1)")
    train: bool = Field(False, description="train the decoder (term rae-decoder); the encoder never trains")
    lr: float | None = Field(None, gt=0, description="the decoder's learning rate (default: optim.lr)")

    def trains(self) -> bool:
        return self.train


class RAEParams(RAEBase):
    encoder: Annotated[Component, Kind("encoder", default="dinov2reg-vit-b")]
    normalize: bool = Field(True, description="the encoder's final LayerNorm without scale and shift (RAE's)")
    stats: str | None = Field(None, description="stat.pt (mean, var [C,h,w]); default: the released path under models/")
    decoder: str | None = Field(None, description="the decoder's model.pt; default: the released ViT-XL under models/")
    decoder_size: str = Field("XL", description="B, L or XL (ViT-XL: width 1152, 28 layers, 16 heads)")
    decoder_layout: list[int] | None = Field(None, description="[width, layers, heads, MLP width] instead of a size")
    decoder_patch: int = Field(16, ge=1, description="pixels per token side (256 px / 16 tokens)")
    factor: int = Field(16, ge=1, description="image side / token grid side (256 px -> 16x16 tokens)")
    resolution: int = Field(256, ge=16, description="the images' side (the encoder is built for it)")

    @field_validator("decoder_size")
    @classmethod
    def _size(cls, size):
        from repa_rae.decoder import SIZES

        if size not in SIZES:
            raise ValueError(f"must be one of {sorted(SIZES)}, got {size!r}")
        return size

    def downsample_factor(self) -> int:
        return self.factor

    def latent_channels(self) -> int:
        return self.encoder.params.embed_dim()


class DigitsRAEParams(RAEBase):
    encoder: Annotated[Component, Kind("encoder", default="digits-convnet")]
    width: int = Field(128, ge=8, description="decoder width")
    depth: int = Field(2, ge=1, description="decoder layers")
    heads: int = Field(4, ge=1, description="decoder heads")
    seed: int = Field(0, ge=0, description="seed of the decoder's training on first use")
    epochs: int = Field(30, ge=1, description="epochs of the decoder's training on first use (cached)")

    def downsample_factor(self) -> int:
        return 4  # digits-convnet: an 8x8 token grid at 32 px

    def latent_channels(self) -> int:
        return self.encoder.params.embed_dim()


def build_rae(params):
    from repa_rae.loading import rae

    return rae(params, resolution=params.resolution)


def build_digits_rae(params):
    from repa_rae.digits import digits_rae

    return digits_rae(params)


# ============================================================================
# Schedule, sampler, guidance, decoder term
# ============================================================================


class ShiftParams(Params):
    shift_dim: int = Field(196_608, ge=1, description="C*H*W of the latents (768 x 16 x 16 for DINOv2-B at 256 px)")
    shift_base: int = Field(4096, ge=1, description="the base dimension of the shift s = sqrt(dim / base)")

    def shift(self) -> float:
        return (self.shift_dim / self.shift_base) ** 0.5


class ShiftedWeightingParams(ShiftParams):
    mean: float = Field(0.0, description="logit-normal mean")
    std: float = Field(1.0, gt=0, description="logit-normal standard deviation")


class AutoguidanceParams(GuidanceParams):
    weak: str = Field(description="the weak network: a run or checkpoint folder (RAE: DiT^DH-S at 14 epochs)")

    def uses_null_label(self) -> bool:
        return False


class DecoderTermParams(TermParams):
    noise_tau: float = Field(0.8, ge=0, description="tokens noised with sigma ~ tau * U(0, 1) (RAE: 0.8)")


def build_weighting(params):
    from repa_rae.schedule import ShiftedLogitNormal

    return ShiftedLogitNormal(params.mean, params.std, params.shift())


def build_sampler(params, *, steps):
    from repa_rae.schedule import ShiftedEuler

    return ShiftedEuler(steps, params.shift())


def build_autoguidance(params, *, scale, interval, load_network=None):
    from repa_rae.guidance import build

    return build(params, scale, interval, load_network)


def build_decoder_term(params, *, facts):
    from repa_rae.term import DecoderTerm

    return DecoderTerm(params, facts)


@hookimpl
def repa_register_backbones(registry):
    registry.add("dit-dh", build_ditdh, DiTDHParams, "RAE's DiT^DH: a DiT with a wide, shallow DDT head")
    for name, (widths, depths, heads) in PRESETS.items():
        registry.add(name, build_ditdh, _preset(widths, depths, heads),
                     f"{name}: widths {widths}, blocks {depths}, heads {heads}")


@hookimpl
def repa_register_autoencoders(registry):
    registry.add("rae", build_rae, RAEParams, "RAE: a frozen representation encoder's normalised tokens, a ViT decoder")
    registry.add("digits-rae", build_digits_rae, DigitsRAEParams,
                 "RAE on the digits: digits-convnet's tokens and a small decoder trained on first use")


@hookimpl
def repa_register_weightings(registry):
    registry.add("rae-shifted", build_weighting, ShiftedWeightingParams,
                 "RAE: truncated logit-normal t, shifted by s = sqrt(dim / base)")


@hookimpl
def repa_register_samplers(registry):
    registry.add("rae-euler", build_sampler, ShiftParams, "RAE: Euler on the shifted grid from 1 to shift(1e-3)")


@hookimpl
def repa_register_guidances(registry):
    registry.add("autoguidance", build_autoguidance, AutoguidanceParams,
                 "guidance by a weaker network: weak + scale (main - weak) on the interval")


@hookimpl
def repa_register_terms(registry):
    registry.add("rae-decoder", build_decoder_term, DecoderTermParams,
                 "RAE's decoder training: L1 reconstruction from noised encoder tokens")
