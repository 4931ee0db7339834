"""The E2E-VAE from disk: a diffusers AutoencoderKL folder and the latents' statistics file."""

from __future__ import annotations

from pathlib import Path

from repa.errors import MissingWeightsError
from repa.weights import load_file

from repa_repae.vae import DiffusersVAE, EndToEndAutoencoder


def e2e_vae(params) -> EndToEndAutoencoder:
    folder = Path(params.path).expanduser()
    if not (folder / "config.json").is_file():
        raise MissingWeightsError(
            f"e2e-vae: no diffusers AutoencoderKL in {folder} (config.json and diffusion_pytorch_model.safetensors); "
            "download a released E2E-VAE (huggingface-cli download REPA-E/e2e-vavae --local-dir DIR) or save the "
            "SD-VAE there with AutoencoderKL.from_pretrained(...).save_pretrained(DIR), and set autoencoder.path")
    stats = Path(params.stats).expanduser() if params.stats else folder / "latents-stats.pt"
    if not stats.is_file():
        raise MissingWeightsError(
            f"e2e-vae: the latents' statistics {stats} are missing (REPA-E's <vae>-latents-stats.pt, with latents_scale "
            "and latents_bias); put the file there or set autoencoder.stats")
    from diffusers.models import AutoencoderKL

    model = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    autoencoder = EndToEndAutoencoder(DiffusersVAE(model), params.channels, params.train, params.bn_momentum,
                                      params.lr, params.max_grad_norm)
    found = load_file(stats)
    autoencoder.norm.set_statistics(found["latents_scale"], found["latents_bias"])
    return autoencoder
