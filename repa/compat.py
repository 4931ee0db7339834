"""Migration layer for users of the official REPA scripts (sihyun-yu/REPA @ 67f7145: models/sit.py,
samplers.py, utils.py): same call signatures, our code.

    from repa.compat import official_sit, euler_sampler
    model = official_sit(input_size=32, hidden_size=1152, depth=28, num_heads=16, z_dims=[768], ...)
    x0 = euler_sampler(model, latents, y, num_steps=50, cfg_scale=1.8, guidance_high=0.7)

Thin adapters: everything delegates to `repa.components` and `repa.engine`.
"""

from __future__ import annotations

from typing import Sequence

from repa.components.backbone.sit import legacy_to_blocks
from repa.engine.network import Placement, TrainedNetwork, checkpoint_layout, network_layout
from repa.interfaces import TrainedModule

__all__ = ["OfficialLayoutNetwork", "euler_maruyama_sampler", "euler_sampler", "legacy_to_blocks", "official_sit"]


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


def _denoiser(model, cfg_scale, guidance_low, guidance_high, path_type):
    from repa.components.guidance.cfg import ClassifierFreeGuidance
    from repa.components.path.interpolants import CosinePath, LinearPath
    from repa.components.prediction.targets import VelocityPrediction
    from repa.engine.generate.denoiser import Denoiser

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
