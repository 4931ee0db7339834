"""SiT backbones (Ma et al. 2024), state-dict compatible with the official REPA code
(sihyun-yu/REPA @ 67f7145, models/sit.py)."""

from __future__ import annotations

from pydantic import Field, model_validator

from repa.interfaces import BackboneParams
from repa.plugins import hookimpl


class SiTParams(BackboneParams):
    depth: int = Field(28, ge=1, description="number of SiT blocks")
    hidden_size: int = Field(1152, ge=1)
    num_heads: int = Field(16, ge=1)
    patch_size: int = Field(2, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    qk_norm: bool = Field(False, description="LayerNorm on queries and keys per head")
    in_channels: int | None = Field(None, ge=1, description="default: the autoencoder's latent channels")

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self

    def num_blocks(self) -> int:
        return self.depth

    def takes_extra_tokens(self) -> bool:
        return True

    def gives_attention(self) -> bool:
        return True

    def num_tokens(self, input_size: int) -> int:
        return (input_size // self.patch_size) ** 2

    def input_multiple(self) -> int:
        return self.patch_size

    def label_rows(self, state) -> int | None:
        table = state.get("y_embedder.embedding_table.weight")
        return None if table is None else int(table.shape[0])

    def upgrade_state(self, state, alignment_depths) -> dict:
        """Early official checkpoints keep blocks after the alignment depth in `decoder_blocks`."""
        from repa.components.backbone.sit import legacy_to_blocks

        if not any(k.startswith("decoder_blocks.") for k in state):
            return dict(state)
        return legacy_to_blocks(state, alignment_depths[0] if alignment_depths else 8)


# The official size table (models/sit.py): depth, width, heads.
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCHES = (2, 4, 8)


def preset_params(size: str, patch: int) -> type[SiTParams]:
    depth, width, heads = SIZES[size]
    namespace = {
        "__annotations__": {"depth": int, "hidden_size": int, "num_heads": int, "patch_size": int},
        "depth": Field(depth, ge=1),
        "hidden_size": Field(width, ge=1),
        "num_heads": Field(heads, ge=1),
        "patch_size": Field(patch, ge=1),
        "__module__": __name__,
    }
    return type(f"SiT_{size}_{patch}Params", (SiTParams,), namespace)


def build_sit(params: SiTParams, *, input_size, in_channels, num_classes, label_dropout=0.1, null_label=True,
              grad_checkpointing=False):
    from repa.components.backbone.sit import SiT

    if params.in_channels is not None and params.in_channels != in_channels:
        from repa.errors import ConfigError

        raise ConfigError([f"backbone.in_channels: {params.in_channels} does not match the autoencoder's {in_channels}"])
    return SiT(
        input_size=input_size, patch_size=params.patch_size, in_channels=in_channels,
        hidden_size=params.hidden_size, depth=params.depth, num_heads=params.num_heads,
        mlp_ratio=params.mlp_ratio, label_dropout=label_dropout, num_classes=num_classes,
        qk_norm=params.qk_norm, grad_checkpointing=grad_checkpointing, null_label=null_label,
    )


class MMDiTParams(BackboneParams):
    """The official text-to-image MMDiT (models/mmdit.py): width 32 x depth and depth heads unless set."""

    depth: int = Field(24, ge=1, description="number of joint blocks")
    hidden_size: int | None = Field(None, ge=1, description="default: 32 x depth (official)")
    num_heads: int | None = Field(None, ge=1, description="default: depth (official; head width 32)")
    patch_size: int = Field(2, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    pos_embed_max_size: int | None = Field(
        16, ge=1, description="side of the sin-cos position table, cropped at the centre to the token grid "
        "(official: 16); none = the grid's side")
    in_channels: int | None = Field(None, ge=1, description="default: the autoencoder's latent channels")

    @model_validator(mode="after")
    def _heads_divide_width(self):
        width, heads = self.hidden_size or 32 * self.depth, self.num_heads or self.depth
        if width % heads:
            raise ValueError(f"hidden_size {width} is not divisible by num_heads {heads}")
        return self

    def num_blocks(self) -> int:
        return self.depth

    def num_tokens(self, input_size: int) -> int:
        return (input_size // self.patch_size) ** 2

    def input_multiple(self) -> int:
        return self.patch_size

    def takes_context(self) -> bool:
        return True


def build_mmdit(params: MMDiTParams, *, input_size, in_channels, num_classes, label_dropout=0.1, null_label=True,
                grad_checkpointing=False, conditioning=None):
    from repa.components.backbone.mmdit import MMDiT
    from repa.errors import ConfigError

    if conditioning is None or conditioning.context_shape is None:
        raise ConfigError(['backbone.kind: "mmdit" is conditioned on text; set [conditioning] kind = "text"'])
    if params.in_channels is not None and params.in_channels != in_channels:
        raise ConfigError([f"backbone.in_channels: {params.in_channels} does not match the autoencoder's {in_channels}"])
    tokens, width = conditioning.context_shape
    return MMDiT(
        input_size=input_size, patch_size=params.patch_size, in_channels=in_channels, depth=params.depth,
        hidden_size=params.hidden_size, num_heads=params.num_heads, mlp_ratio=params.mlp_ratio,
        context_tokens=tokens, context_dim=width, pos_embed_max_size=params.pos_embed_max_size,
        label_dropout=label_dropout, null_context=conditioning.null_context, grad_checkpointing=grad_checkpointing,
    )


@hookimpl
def repa_register_backbones(registry):
    registry.add("sit", build_sit, SiTParams, "SiT with custom depth/width/heads/patch")
    registry.add("mmdit", build_mmdit, MMDiTParams,
                 "MMDiT (SD3 joint attention over text and image tokens), as official REPA text-to-image")
    for size, (depth, width, heads) in SIZES.items():
        for patch in PATCHES:
            registry.add(
                f"SiT-{size}/{patch}", build_sit, preset_params(size, patch),
                f"SiT-{size}/{patch}: {depth} blocks, width {width}, {heads} heads, patch {patch}",
            )
