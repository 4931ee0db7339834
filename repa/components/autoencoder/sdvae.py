"""SD-VAE (diffusers AutoencoderKL), used as REPA does (sihyun-yu/REPA @ 67f7145, train.py): moments are stored
once, latents are drawn from them at every step (mean + std * noise), then scaled by 0.18215."""

from __future__ import annotations

import torch

from repa.components.autoencoder.locate import sd_vae_missing, sd_vae_present, sd_vae_repo
from repa.errors import MissingWeightsError
from repa.interfaces import Autoencoder
from repa.weights import hub_offline, reachable


def load_autoencoder_kl(params):
    from diffusers.models import AutoencoderKL

    from repa.console import status

    directory = sd_vae_present(params)
    if directory is not None:
        with status(f"loading the SD-VAE from {directory}"):
            return AutoencoderKL.from_pretrained(str(directory), local_files_only=True)
    if not params.path and not hub_offline() and reachable("huggingface.co"):
        with status(f"downloading the SD-VAE {sd_vae_repo(params)} from the Hugging Face hub (once)"):
            return AutoencoderKL.from_pretrained(sd_vae_repo(params))
    raise MissingWeightsError(sd_vae_missing(params))


class SDVAE(Autoencoder):
    latent_channels, downsample_factor = 4, 8

    def __init__(self, params, vae=None):
        self.scale, self.shift = params.scale, params.shift
        self.vae = (vae or load_autoencoder_kl(params)).eval().requires_grad_(False)

    def to(self, device):
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W] -> moments [B,8,H/8,W/8] (mean, std), input scaled to [-1,1] as official."""
        x = images.to(torch.float32) / 127.5 - 1
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        return torch.cat([dist.mean, dist.std], dim=1).float()

    def sample(self, moments: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, std = moments.chunk(2, dim=1)
        return (mean + std * noise) * self.scale + self.shift

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        latents = (z - self.shift) / self.scale
        return self.vae.decode(latents.to(self.vae.dtype)).sample.float()
