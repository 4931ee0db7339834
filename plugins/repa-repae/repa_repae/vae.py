"""REPA-E's autoencoders: a VAE whose latents pass through a BatchNorm without affine parameters
(End2End-Diffusion/REPA-E, models/sit.py: `BatchNorm2d(C, eps=1e-4, momentum=0.1, affine=False)`, the first
operation of its SiT's forward), moved here beside the VAE so that any backbone gets it.

encode(images) -> the posterior's (mean, std); sample(moments, noise) -> BN(mean + std * noise): batch
statistics (and a running-statistics update) while training, the running statistics otherwise;
decode(x) -> VAE.decode(x / rsqrt(running_var) + running_mean) (generate.py `denormalize_latents`).
While training, `last` keeps what REPA-E's VAE step reads of this step's latents: the sample z (with
its graph), the posterior's mean and standard deviation, and the running statistics from before this step's
update (its alignment pass normalises z with them, the SiT in eval mode)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from repa.interfaces import Autoencoder, TrainedModule


@dataclass
class LastSample:
    z: torch.Tensor  # [B,C,h,w] mean + std * noise, with its graph to the VAE
    mean: torch.Tensor
    std: torch.Tensor
    running_mean: torch.Tensor  # before this step's update
    running_var: torch.Tensor


class LatentNorm(nn.BatchNorm2d):
    def __init__(self, channels: int, momentum: float = 0.1):
        super().__init__(channels, eps=1e-4, momentum=momentum, affine=False, track_running_stats=True)

    def set_statistics(self, latents_scale: torch.Tensor, latents_bias: torch.Tensor) -> None:
        """REPA-E's initialisation from a `-latents-stats.pt` file: mean = bias, var = 1 / scale^2."""
        with torch.no_grad():
            self.running_mean.copy_(latents_bias.flatten())
            self.running_var.copy_((1.0 / latents_scale.flatten()).pow(2))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.running_var.rsqrt().view(1, -1, 1, 1)  # generate.py: x / latents_scale + latents_bias
        return x / scale.to(x.dtype) + self.running_mean.view(1, -1, 1, 1).to(x.dtype)


class EndToEndAutoencoder(Autoencoder):
    """`vae` gives `posterior(x in [-1, 1]) -> (mean, logvar)` and `decode(z) -> [-1, 1]`."""

    def __init__(self, vae: nn.Module, channels: int, train: bool, momentum: float = 0.1, lr: float | None = None,
                 max_grad_norm: float | None = None):
        self.vae, self.norm = vae, LatentNorm(channels, momentum)
        self.trainable, self.lr, self.max_grad_norm = train, lr, max_grad_norm
        self.last: LastSample | None = None
        if not train:
            self.vae.eval().requires_grad_(False)
            self.norm.eval()

    def to(self, device):
        self.vae.to(device)
        self.norm.to(device)
        return self

    def trained_modules(self) -> dict:
        if not self.trainable:
            return {}
        # REPA-E: the VAE has its own AdamW and clip, and is sampled as trained (no EMA); the latent norm's
        # statistics are part of its SiT, which the EMA averages (float buffers included).
        return {"vae": TrainedModule(self.vae, lr=self.lr, max_grad_norm=self.max_grad_norm, ema=False),
                "norm": TrainedModule(self.norm)}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.vae.posterior(images.float() / 127.5 - 1)
        return torch.cat([mean, torch.exp(0.5 * logvar)], dim=1)

    def sample(self, moments: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, std = moments.chunk(2, dim=1)
        z = mean + std * noise
        if self.norm.training:
            self.last = LastSample(z, mean, std, self.norm.running_mean.clone(), self.norm.running_var.clone())
        return self.norm(z)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.norm.denormalize(x))


# ============================================================================
# The VAEs: diffusers' AutoencoderKL (SD-VAE, the released E2E-VAEs) and a small one for the digits
# ============================================================================


class DiffusersVAE(nn.Module):
    """diffusers.AutoencoderKL as REPA-E's AutoencoderKL (encoder, quant_conv -> mean and clamped
    log-variance; post_quant_conv, decoder)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def posterior(self, x):
        moments = self.model.quant_conv(self.model.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def decode(self, z):
        return self.model.decoder(self.model.post_quant_conv(z))


class DigitsVAE(nn.Module):
    """A small VAE for the embedded digits: 32x32x3 -> C x 8 x 8 and back (stand-in for the SD-VAE)."""

    def __init__(self, channels: int = 4, width: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1), nn.SiLU(), nn.Conv2d(width, width, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(width, width, 4, 2, 1), nn.SiLU(), nn.Conv2d(width, 2 * channels, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, width, 1), nn.SiLU(), nn.ConvTranspose2d(width, width, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(width, width, 4, 2, 1), nn.SiLU(), nn.Conv2d(width, 3, 3, 1, 1))

    def posterior(self, x):
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def decode(self, z):
        return self.decoder(z)
