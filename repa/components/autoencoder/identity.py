"""Pixel space: the backbone denoises images scaled to [-1, 1] (no autoencoder)."""

from __future__ import annotations

import torch

from repa.interfaces import Autoencoder


class PixelSpace(Autoencoder):
    latent_channels, downsample_factor = 3, 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W] -> moments [B,6,H,W]: mean = image in [-1,1], std = 0."""
        mean = images.float() / 127.5 - 1
        return torch.cat([mean, torch.zeros_like(mean)], dim=1)

    def sample(self, moments: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return moments[:, :3]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z
