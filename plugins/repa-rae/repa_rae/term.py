"""RAE's decoder training (bytetriper/RAE, src/train_stage1.py) as a term: the frozen encoder's tokens, noised
with sigma ~ tau * U(0, 1) per sample (rae.py `noising`, tau 0.8), are decoded and compared with the image
(L1, `rec_loss = (recon - images).abs().mean()`). The released recipe adds LPIPS (1.0) and a GAN with a
frozen DINO-S/8 discriminator and an adaptive weight; those are not part of this term."""

from __future__ import annotations

import torch

from repa.errors import ConfigError
from repa.interfaces import Term

from repa_rae.autoencoder import RepresentationAutoencoder


class DecoderTerm(Term):
    def __init__(self, params, facts):
        known = facts.autoencoder is not None  # None: built for a size estimate, not to train
        if known and (not isinstance(facts.autoencoder, RepresentationAutoencoder) or not facts.autoencoder.trainable):
            raise ConfigError(["term rae-decoder: needs a representation autoencoder with train = true"])
        self.noise_tau = params.noise_tau

    def loss(self, ctx) -> torch.Tensor:
        rae = ctx.autoencoder
        tokens = rae.tokens(ctx.images)
        sigma = self.noise_tau * ctx.rand(self).view(-1, 1, 1, 1)
        tokens = tokens + sigma * ctx.randn(self, *tokens.shape[1:])  # raw tokens: decoder training uses no stats
        recon = rae.pixels(tokens)
        images = ctx.images.float() / 255
        return (recon.float() - images).abs().mean(dim=(1, 2, 3))
