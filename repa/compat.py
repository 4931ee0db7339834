"""Migration layer for users of the official REPA scripts (sihyun-yu/REPA @ 67f7145: models/sit.py,
models/mmdit.py, samplers.py, samplers_t2i.py, utils.py): same call signatures, our code.

    from repa.compat import official_sit, euler_sampler
    model = official_sit(input_size=32, hidden_size=1152, depth=28, num_heads=16, z_dims=[768], ...)
    x0 = euler_sampler(model, latents, y, num_steps=50, cfg_scale=1.8, guidance_high=0.7)

    from repa.compat import official_mmdit, euler_sampler_t2i
    model = official_mmdit(input_size=32, z_dims=[768], encoder_depth=8)   # train_t2i.py's model
    x0 = euler_sampler_t2i(model, latents, contexts, empty_contexts, num_steps=50, cfg_scale=4.0)

Thin adapters: everything delegates to `repa.components` and `repa.engine`.
"""

from __future__ import annotations

from typing import Sequence

from repa.components.backbone.sit import legacy_to_blocks
from repa.engine.network import Placement, TrainedNetwork, checkpoint_layout, network_layout
from repa.interfaces import TrainedModule

__all__ = ["OfficialLayoutNetwork", "OfficialMMDiTNetwork", "euler_maruyama_sampler", "euler_maruyama_sampler_t2i",
           "euler_sampler", "euler_sampler_t2i", "legacy_to_blocks", "official_mmdit", "official_sit"]


def official_sit(
    input_size: int = 32,
    patch_size: int = 2,
    in_channels: int = 4,
    hidden_size: int = 1152,
    decoder_hidden_size: int | None = None,
    encoder_depth: int = 8,
    depth: int = 28,
    num_heads: int = 16,
    mlp_ratio: float = 4.0,
    class_dropout_prob: float = 0.1,
    num_classes: int = 1000,
    use_cfg: bool = False,
    z_dims: Sequence[int] = (768,),
    projector_dim: int = 2048,
    fused_attn: bool = True,
    qk_norm: bool = False,
    path_type: str = "linear",
):
    """Our SiT and MLP projectors from the official `SiT(...)` keyword arguments; forward(x, t, y)
    -> (out, zs), and state dicts in the official layout (`projectors.N.*` beside the SiT's keys).

    `fused_attn` and `path_type` do not change the model (attention is always SDPA);
    `use_cfg` is implied by class_dropout_prob > 0, as in the official label embedder."""
    from repa.components.backbone.sit import SiT
    from repa.components.projector.mlp import MLPProjector

    if decoder_hidden_size is not None and decoder_hidden_size != hidden_size:
        raise ValueError(
            f"decoder_hidden_size={decoder_hidden_size} differs from hidden_size={hidden_size}: the official "
            "model cannot run that way (its final layer would not match the blocks); leave it unset"
        )
    backbone = SiT(
        input_size=input_size, patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size,
        depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, label_dropout=class_dropout_prob,
        num_classes=num_classes, qk_norm=qk_norm,
    )
    projectors = [MLPProjector(hidden_size, projector_dim, z) for z in z_dims]
    return OfficialLayoutNetwork(backbone, projectors, encoder_depth)


class OfficialLayoutNetwork(TrainedNetwork):
    """SiT plus projectors at one depth, as the official model: forward(x, t, y) -> (out, zs), and
    state_dict / load_state_dict with the official checkpoint keys."""

    def __init__(self, backbone, projectors, encoder_depth: int):
        super().__init__(backbone, [Placement(f"projectors.{k}", TrainedModule(p)) for k, p in enumerate(projectors)])
        self.encoder_depth = encoder_depth

    def denoise(self, x, t, y, extras=()):
        return self._denoise(x, t, y, extras)  # its own call is the official forward

    def forward(self, x, t, y, drop_ids=None):
        output = self.backbone(x, t, y, drop_ids=drop_ids, hidden_depths=[self.encoder_depth])
        hidden = output.hidden[self.encoder_depth]
        return output.out, [projector(hidden) for projector in self.projectors.values()]

    def state_dict(self, *args, **kwargs):
        return checkpoint_layout(super().state_dict(*args, **kwargs))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return super().load_state_dict(network_layout(state_dict, self), strict=strict, assign=assign)


# The official MMDiT's constructor arguments that the official T2I code leaves at these values; others
# select variants it never trains (and we do not build).
_MMDIT_FIXED = {"learn_sigma": False, "adm_in_channels": None, "register_length": 0, "rmsnorm": False,
                "scale_mod_only": False, "swiglu": False, "out_channels": None, "qk_norm": None, "qkv_bias": True,
                "pos_embed_scaling_factor": None, "pos_embed_offset": None}
# Accepted and without effect, as in the official code (it overrides or ignores them).
_MMDIT_IGNORED = ("context_embedder_config", "attn_mode", "pos_embed_max_size", "num_patches", "dtype", "device")


def official_mmdit(
    input_size: int = 32,
    patch_size: int = 2,
    in_channels: int = 4,
    depth: int = 24,
    mlp_ratio: float = 4.0,
    encoder_depth: int = 8,
    z_dims: Sequence[int] = (768,),
    projector_dim: int = 2048,
    **official,
):
    """Our MMDiT and MLP projectors from the official `MMDiT(...)` keyword arguments (models/mmdit.py):
    forward(x, t, context=...) -> (out, zs), state dicts in the official layout. As official: width 32 x
    depth, depth heads, 768-wide contexts of any length (77 from CLIP), a 16x16 position table, no
    label dropout inside the model (the official dataset swaps in the empty context)."""
    from repa.components.backbone.mmdit import MMDiT
    from repa.components.projector.mlp import MLPProjector

    for key, value in official.items():
        if key in _MMDIT_FIXED and value != _MMDIT_FIXED[key]:
            raise ValueError(f"{key}={value!r}: the official T2I code never sets it; only {_MMDIT_FIXED[key]!r} is built")
        if key not in _MMDIT_FIXED and key not in _MMDIT_IGNORED:
            raise TypeError(f"official_mmdit() got an unexpected keyword argument {key!r}")
    backbone = MMDiT(input_size=input_size, patch_size=patch_size, in_channels=in_channels, depth=depth,
                     mlp_ratio=mlp_ratio, context_tokens=77, context_dim=768, label_dropout=0.0)
    projectors = [MLPProjector(backbone.hidden_size, projector_dim, z) for z in z_dims]
    return OfficialMMDiTNetwork(backbone, projectors, encoder_depth)


class OfficialMMDiTNetwork(OfficialLayoutNetwork):
    """The official MMDiT's call: forward(x, t, y=None, context=...) -> (out, zs); contexts of any length."""

    def forward(self, x, t, y=None, context=None, detach=False):
        if context is None:
            raise ValueError("the MMDiT is conditioned on contexts: call model(x, t, context=contexts [B,L,768])")
        self.backbone.context_shape = tuple(context.shape[1:])  # the official model takes any length
        output = self.backbone(x, t, context, hidden_depths=[self.encoder_depth])
        hidden = output.hidden[self.encoder_depth]
        hidden = hidden.detach() if detach else hidden
        return output.out, [projector(hidden) for projector in self.projectors.values()]

    def check_inputs(self, x, t, y):
        self.backbone.context_shape = tuple(y.shape[1:])
        self.backbone.check_inputs(x, t, y)

    def _denoise(self, x, t, y, extras):
        return [self(x, t, context=y)[0]]


def _denoiser(model, cfg_scale, guidance_low, guidance_high, path_type, null=None):
    from repa.components.guidance.cfg import ClassifierFreeGuidance
    from repa.components.path.interpolants import CosinePath, LinearPath
    from repa.components.prediction.targets import VelocityPrediction
    from repa.engine.generate.denoiser import Denoiser

    paths = {"linear": LinearPath, "cosine": CosinePath}
    if path_type not in paths:
        raise ValueError(f"path_type must be 'linear' or 'cosine', got {path_type!r}")
    # Official semantics: guidance only when cfg_scale > 1.
    guidance = ClassifierFreeGuidance(cfg_scale, guidance_low, guidance_high) if cfg_scale > 1.0 else None
    return Denoiser(model, VelocityPrediction(), paths[path_type](), guidance, null=null)


def euler_sampler(
    model, latents, y, num_steps=20, heun=False, cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0,
    path_type="linear",
):
    """The official ODE sampler's signature; returns x0 in float64 as the official does."""
    from repa.components.sampler.integrators import EulerSampler

    denoiser = _denoiser(model, cfg_scale, guidance_low, guidance_high, path_type)
    return denoiser.sample(EulerSampler(num_steps, heun=heun), latents, y)


def euler_maruyama_sampler(
    model, latents, y, num_steps=20, heun=False, cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0,
    path_type="linear",
):
    """The official SDE sampler's signature; noise from torch's global RNG, as official."""
    from repa.components.sampler.integrators import EulerMaruyamaSampler

    denoiser = _denoiser(model, cfg_scale, guidance_low, guidance_high, path_type)
    return denoiser.sample(EulerMaruyamaSampler(num_steps), latents, y)


def euler_sampler_t2i(
    model, latents, y, y_null, num_steps=20, heun=False, cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0,
    path_type="linear",
):
    """samplers_t2i.py's ODE sampler: y contexts [B,L,D], y_null the empty contexts [B,L,D] that
    guidance's unconditional rows see; x0 in float64 as official."""
    from repa.components.sampler.integrators import EulerSampler

    denoiser = _denoiser(model, cfg_scale, guidance_low, guidance_high, path_type, null=y_null)
    return denoiser.sample(EulerSampler(num_steps, heun=heun), latents, y)


def euler_maruyama_sampler_t2i(
    model, latents, y, y_null, num_steps=20, heun=False, cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0,
    path_type="linear",
):
    """samplers_t2i.py's SDE sampler (noise from torch's global RNG, as official)."""
    from repa.components.sampler.integrators import EulerMaruyamaSampler

    denoiser = _denoiser(model, cfg_scale, guidance_low, guidance_high, path_type, null=y_null)
    return denoiser.sample(EulerMaruyamaSampler(num_steps), latents, y)
