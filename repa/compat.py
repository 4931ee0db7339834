"""Migration layer for users of the official REPA scripts: same call signatures, our code.

    from repa.compat import official_sit, euler_sampler
    model = official_sit(input_size=32, hidden_size=1152, depth=28, num_heads=16, z_dims=[768], ...)
    x0 = euler_sampler(model, latents, y, num_steps=50, cfg_scale=1.8, guidance_high=0.7)

Thin adapters: everything delegates to `repa.components` and `repa.engine`.
"""

from __future__ import annotations

from typing import Sequence


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
    """Our SiT from the official `SiT(...)` keyword arguments; forward(x, t, y) -> (out, zs).

    `fused_attn` and `path_type` do not change the model (attention is always SDPA);
    `use_cfg` is implied by class_dropout_prob > 0, as in the official label embedder."""
    from repa.components.backbone.sit import SiT

    if decoder_hidden_size is not None and decoder_hidden_size != hidden_size:
        raise ValueError(
            f"decoder_hidden_size={decoder_hidden_size} differs from hidden_size={hidden_size}: the official "
            "model cannot run that way (its final layer would not match the blocks); leave it unset"
        )
    return SiT(
        input_size=input_size, patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size,
        depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, label_dropout=class_dropout_prob,
        num_classes=num_classes, qk_norm=qk_norm,
        projections=[(encoder_depth, projector_dim, z) for z in z_dims],
    )


def _denoiser(model, cfg_scale, guidance_low, guidance_high, path_type):
    from repa.components.guidance.cfg import ClassifierFreeGuidance
    from repa.components.path.interpolants import CosinePath, LinearPath
    from repa.components.prediction.targets import VelocityPrediction
    from repa.engine.denoiser import Denoiser

    paths = {"linear": LinearPath, "cosine": CosinePath}
    if path_type not in paths:
        raise ValueError(f"path_type must be 'linear' or 'cosine', got {path_type!r}")
    # Official semantics: guidance only when cfg_scale > 1.
    guidance = ClassifierFreeGuidance(cfg_scale, guidance_low, guidance_high) if cfg_scale > 1.0 else None
    return Denoiser(model, VelocityPrediction(), paths[path_type](), guidance)


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


def legacy_to_blocks(state: dict, encoder_depth: int) -> dict:
    """Early official checkpoints split the blocks into `blocks` and `decoder_blocks`
    (utils.load_legacy_checkpoints): decoder block i is block i + encoder_depth."""
    out = {}
    for key, value in state.items():
        if key.startswith("decoder_blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{int(index) + encoder_depth}.{rest}"
        out[key] = value
    return out
