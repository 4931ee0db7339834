"""Autoencoders: images <-> the space the backbone denoises (SD-VAE latents, or pixels)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from repa.interfaces import AutoencoderParams
from repa.plugins import hookimpl


class SDVAEParams(AutoencoderParams):
    variant: Literal["ft-mse", "ft-ema"] = Field("ft-mse", description="stabilityai/sd-vae-<variant>")
    path: str | None = Field(None, description="local directory made by save_pretrained (default: HF cache)")
    scale: float = Field(0.18215, description="latent scale (SD-VAE's)")
    shift: float = Field(0.0, description="latent shift")

    def downsample_factor(self) -> int:
        return 8

    def latent_channels(self) -> int:
        return 4


class IdentityParams(AutoencoderParams):
    def downsample_factor(self) -> int:
        return 1

    def latent_channels(self) -> int:
        return 3


def _sd_vae(params):
    from repa.components.autoencoder.sdvae import SDVAE

    return SDVAE(params)


def _identity(params):
    from repa.components.autoencoder.identity import PixelSpace

    return PixelSpace()


def _sd_vae_info(params):
    from repa.components.autoencoder.locate import sd_vae_present

    return {"weights here": "yes" if sd_vae_present(params) else "no"}


@hookimpl
def repa_register_autoencoders(registry):
    registry.add(
        "sd-vae", _sd_vae, SDVAEParams, "Stable Diffusion VAE (diffusers AutoencoderKL), 8x down, 4 channels",
        info=_sd_vae_info,
    )
    registry.add("identity", _identity, IdentityParams, "pixel space: images scaled to [-1, 1]")
