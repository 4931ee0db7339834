"""RAE's representation autoencoder (bytetriper/RAE, src/stage1/rae.py): a frozen representation encoder's
tokens, normalised per element by dataset statistics, are the diffusion model's input; a ViT decoder maps
them back to pixels.

encode(uint8) -> the normalised tokens as [B,C,h,w] (the posterior has no spread: moments = [z, 0]);
sample(moments, noise) -> z; decode(z) -> (z * sqrt(var + eps) + mean) -> decoder -> patches -> pixels,
un-normalised by the encoder's mean and std, as [-1, 1]. With `train`, the decoder is a trained module
(its term: repa_rae.term.DecoderTerm); the encoder never trains."""

from __future__ import annotations

import torch
import torch.nn as nn

from repa.interfaces import Autoencoder, TrainedModule

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def drop_final_affine(encoder) -> None:
    """RAE's Dinov2withNorm(normalize=True): the final LayerNorm keeps normalising without scale and shift."""
    norm = getattr(getattr(encoder, "network", None), "norm", None)
    if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine:
        encoder.network.norm = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False).to(
            norm.weight.device)


class RepresentationAutoencoder(Autoencoder):
    def __init__(self, encoder, decoder: nn.Module, mean: torch.Tensor, var: torch.Tensor, eps: float = 1e-5,
                 train: bool = False, noise_tau: float = 0.0, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,
                 lr: float | None = None):
        self.encoder, self.decoder, self.eps = encoder, decoder, eps
        self.stats = nn.Module()  # the normalisation statistics [C,h,w], moved with the autoencoder
        self.stats.register_buffer("mean", mean.float())
        self.stats.register_buffer("var", var.float())
        self.stats.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1))
        self.stats.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1))
        self.trainable, self.noise_tau, self.lr = train, noise_tau, lr
        if not train:
            self.decoder.eval().requires_grad_(False)

    def to(self, device):
        self.encoder.to(device)
        self.decoder.to(device)
        self.stats.to(device)
        return self

    def trained_modules(self) -> dict:
        return {"decoder": TrainedModule(self.decoder, lr=self.lr)} if self.trainable else {}

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's tokens [B,C,h,w] before normalisation (the encoder resizes and normalises the image)."""
        tokens = self.encoder(self.encoder.preprocess(images)).float()
        b, n, c = tokens.shape
        side = int(n ** 0.5)
        return tokens.transpose(1, 2).reshape(b, c, side, side)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.stats.mean) / torch.sqrt(self.stats.var + self.eps)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.normalise(self.tokens(images))
        return torch.cat([z, torch.zeros_like(z)], dim=1)

    def sample(self, moments: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return moments[:, : moments.shape[1] // 2]

    def pixels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Un-normalised tokens [B,C,h,w] -> the decoder's image in [0, 1] (RAE's decode before clamping)."""
        b, c, h, w = tokens.shape
        x = self.decoder.unpatchify(self.decoder(tokens.reshape(b, c, h * w).transpose(1, 2)))
        return x * self.stats.pixel_std + self.stats.pixel_mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        tokens = z * torch.sqrt(self.stats.var + self.eps) + self.stats.mean
        return self.pixels(tokens).clamp(0, 1) * 2 - 1
