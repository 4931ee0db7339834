"""REPA-E's end-to-end step as one term (End2End-Diffusion/REPA-E, train_repae.py lines 348-437).

REPA-E takes three optimizer steps per batch; one backward of the sum of these losses gives each module
exactly its released gradient, because each loss reaches only its own module:

- the SiT and its projector: the denoising loss and `proj_coeff` x REPA's alignment on the detached
  latents: the engine's student pass and the [[alignment]] entry this term names (not computed here);
- the VAE: L1 + `perceptual_weight` x LPIPS + `kl_weight` x KL + `gan_weight` x the generator's loss
  (the discriminator's weights detached) + `vae_align_coeff` x REPA's alignment through the frozen SiT
  and projector (weights detached, eval mode: no label dropout, the latent norm's running statistics
  from before this step), all on the latents with gradient;
- the discriminator: the hinge loss on the real images and the detached reconstructions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repa.errors import ConfigError
from repa.interfaces import Needs, TeacherNeed, Term, TrainedModule

from repa_repae.losses import PatchDiscriminator, hinge_d_loss, kl_loss, load_lpips
from repa_repae.vae import EndToEndAutoencoder


def frozen(module, *args):
    """`module(*args)` with its weights detached: the gradient reaches the inputs only."""
    weights = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, weights, args)


class REPAETerm(Term):
    def __init__(self, params, facts):
        from repa.components.term.alignment import AlignmentTerm

        known = facts.autoencoder is not None  # None: built for a size estimate, not to train
        if known and (not isinstance(facts.autoencoder, EndToEndAutoencoder) or not facts.autoencoder.trainable):
            raise ConfigError(["term repa-e: needs an autoencoder that trains end to end (autoencoder kind "
                               "\"e2e-vae\" or \"digits-vae\" with train = true)"])
        alignments = [t for t in facts.other_terms if isinstance(t, AlignmentTerm)]
        if params.alignment >= len(alignments):
            raise ConfigError([f"term repa-e: alignment = {params.alignment}, but there are {len(alignments)} "
                               "[[alignment]] entries; it reuses that entry's encoder, depth and projector"])
        self.params, self.alignment = params, alignments[params.alignment]
        self.discriminator = PatchDiscriminator(layers=params.disc_layers)
        self.lpips = load_lpips(params.vgg_weights, params.lpips_weights) if params.perceptual_weight else None
        self.frozen_sit = TeacherNeed(model="online", hidden=(self.alignment.depth,), input_gradient=True,
                                      dropped_labels=False)

    def needs(self) -> Needs:
        return Needs(encoders=(self.alignment.encoder_need,), teachers=(self.frozen_sit,), latent_gradient=True)

    def modules(self) -> dict:
        return {"discriminator": TrainedModule(self.discriminator, lr=self.params.disc_lr, ema=False,
                                               max_grad_norm=self.params.max_grad_norm)}

    def loss(self, ctx):
        ctx.latents(gradient=True)  # this step's sample, with its graph (the autoencoder keeps it in `last`)
        last, params = ctx.autoencoder.last, self.params
        images = ctx.images.float() / 127.5 - 1
        recon = ctx.autoencoder.vae.decode(last.z)
        with torch.autocast(images.device.type, enabled=False):  # the VAE loss in float32, as released
            recon32 = recon.float()
            reconstruction = F.l1_loss(images, recon32)
            perceptual = self.lpips(images, recon32).mean() if self.lpips is not None else recon32.new_zeros(())
            kl = kl_loss(last.mean.float(), last.std.float())
            generator = -torch.mean(frozen(self.discriminator, recon32)) if params.gan_weight else recon32.new_zeros(())
            vae_loss = (reconstruction + params.perceptual_weight * perceptual + params.kl_weight * kl
                        + params.gan_weight * generator)
        normalized = (last.z - last.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
            last.running_var.view(1, -1, 1, 1) + ctx.autoencoder.norm.eps)
        hidden = ctx.teacher(self.frozen_sit, x0=normalized).hidden[self.alignment.depth]
        target = ctx.encoder(self.alignment.encoder_need).tokens
        with torch.no_grad():
            target = self.alignment.transform(target)
        alignment = self.alignment.alignment_loss(frozen(self.alignment.projector, hidden), target).mean()
        vae_loss = vae_loss + params.vae_align_coeff * alignment
        with torch.autocast(images.device.type, enabled=False):
            discriminator = hinge_d_loss(self.discriminator(images), self.discriminator(recon.detach().float())) \
                if params.gan_weight else recon32.new_zeros(())
        total = vae_loss + discriminator
        scalars = {"reconstruction": reconstruction, "perceptual": perceptual, "kl": kl, "generator": generator,
                   "vae_alignment": alignment, "discriminator": discriminator}
        return total.expand(len(images)), scalars
