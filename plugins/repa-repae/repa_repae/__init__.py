"""repa plugin: REPA-E, end-to-end tuning of the VAE with the diffusion transformer (Leng et al. 2025,
"REPA-E: Unlocking VAE for End-to-End Tuning of Latent Diffusion Transformers", arXiv 2504.10483; code
End2End-Diffusion/REPA-E).

- autoencoders `e2e-vae` (diffusers AutoencoderKL: the SD-VAE to start from, or a released E2E-VAE) and
  `digits-vae` (a small VAE for the embedded digits, trained on reconstruction on first use), each with
  REPA-E's latent BatchNorm; `train = true` trains it end to end (`trains()`), false keeps it frozen (a
  new SiT on a frozen E2E-VAE, train_ldm_only.py);
- term `repa-e`: the VAE's losses, REPA's alignment reaching the VAE through the frozen SiT, and the
  discriminator (repa_repae.term). It reuses an [[alignment]] entry (REPA-E's own alignment of the SiT).

Written against repa's contract alone (terms, a trainable autoencoder). Light module: torch is imported
in the factories only."""

from pydantic import Field

from repa.interfaces import AutoencoderParams, TermParams
from repa.plugins import hookimpl


class EndToEndParams(AutoencoderParams):
    train: bool = Field(False, description="train it end to end with the backbone (REPA-E); false: frozen")
    bn_momentum: float = Field(0.1, gt=0, le=1, description="the latent BatchNorm's momentum (REPA-E: 0.1)")
    lr: float = Field(1e-4, gt=0, description="the VAE's AdamW learning rate (--vae-learning-rate)")
    max_grad_norm: float = Field(1.0, gt=0, description="the VAE's own gradient clip (REPA-E clips each optimizer)")

    def trains(self) -> bool:
        return self.train


class E2EVAEParams(EndToEndParams):
    path: str = Field(description="a diffusers AutoencoderKL folder: the SD-VAE to start from, or a released E2E-VAE")
    stats: str | None = Field(None, description="the latents' statistics (latents_scale, latents_bias), REPA-E's "
                              "<vae>-latents-stats.pt; default <path>/latents-stats.pt")
    channels: int = Field(4, ge=1, description="latent channels (SD-VAE f8d4: 4)")
    factor: int = Field(8, ge=1, description="downsampling factor (SD-VAE: 8)")

    def downsample_factor(self) -> int:
        return self.factor

    def latent_channels(self) -> int:
        return self.channels


class DigitsVAEParams(EndToEndParams):
    channels: int = Field(4, ge=1, description="latent channels (32x32 digits -> channels x 8 x 8)")
    seed: int = Field(0, ge=0, description="seed of its pretraining on reconstruction (cached per seed)")
    epochs: int = Field(40, ge=1, description="epochs of its pretraining on reconstruction (first use, cached)")

    def downsample_factor(self) -> int:
        return 4

    def latent_channels(self) -> int:
        return self.channels


class REPAEParams(TermParams):
    alignment: int = Field(0, ge=0, description="the [[alignment]] entry (0-based) whose encoder, depth and projector "
                           "REPA-E's alignment uses (its coeff is REPA-E's --proj-coeff, 0.5)")
    vae_align_coeff: float = Field(1.5, ge=0, description="weight of the alignment loss reaching the VAE")
    perceptual_weight: float = Field(1.0, ge=0, description="LPIPS weight (needs VGG16 and LPIPS weights)")
    kl_weight: float = Field(1e-6, ge=0, description="KL weight (summed over C,H,W, averaged over the batch)")
    gan_weight: float = Field(0.1, ge=0, description="the generator's adversarial loss weight (0: no discriminator)")
    disc_lr: float = Field(1e-4, gt=0, description="the discriminator's AdamW learning rate")
    disc_layers: int = Field(3, ge=1, description="the PatchGAN's layers (3: 70x70 patches; 2 for 32 px images)")
    max_grad_norm: float = Field(1.0, gt=0, description="the discriminator's own gradient clip")
    vgg_weights: str | None = Field(None, description="torchvision's vgg16 weights (default: torch hub's cache)")
    lpips_weights: str | None = Field(None, description="LPIPS's vgg.pth (default: <torch hub>/../lpips/vgg.pth)")


def build_e2e_vae(params):
    from repa_repae.loading import e2e_vae

    return e2e_vae(params)


def build_digits_vae(params):
    from repa_repae.digits import digits_vae

    return digits_vae(params)


def build_repae(params, *, facts):
    from repa_repae.term import REPAETerm

    return REPAETerm(params, facts)


@hookimpl
def repa_register_autoencoders(registry):
    registry.add("e2e-vae", build_e2e_vae, E2EVAEParams,
                 "REPA-E: a diffusers AutoencoderKL + latent BatchNorm, trained end to end (train = true) or frozen")
    registry.add("digits-vae", build_digits_vae, DigitsVAEParams,
                 "REPA-E on the digits: a small VAE (pretrained on reconstruction, cached) + latent BatchNorm")


@hookimpl
def repa_register_terms(registry):
    registry.add("repa-e", build_repae, REPAEParams,
                 "REPA-E: the VAE's losses, the alignment reaching the VAE through the frozen SiT, the discriminator")
