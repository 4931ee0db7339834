"""Where SD-VAE weights are looked for (no network, no heavy imports)."""

from __future__ import annotations

from pathlib import Path

from repa.weights import hf_cached_file, hf_repo_dir


def sd_vae_repo(params) -> str:
    return f"stabilityai/sd-vae-{params.variant}"


def sd_vae_present(params) -> Path | None:
    """The directory to load from, if the weights are on this machine."""
    if params.path:
        directory = Path(params.path).expanduser()
        return directory if (directory / "config.json").is_file() else None
    config = hf_cached_file(sd_vae_repo(params), ("config.json",))
    if config is None:
        return None
    weights = [f for f in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin") if (config.parent / f).is_file()]
    return config.parent if weights else None


def sd_vae_missing(params) -> str:
    repo = sd_vae_repo(params)
    if params.path:
        return (
            f"sd-vae ({params.variant}): {params.path} has no config.json; save the model there with "
            f"AutoencoderKL.from_pretrained('{repo}').save_pretrained('{params.path}') on a machine with internet"
        )
    cache = hf_repo_dir(repo)
    return (
        f"sd-vae ({params.variant}): weights not found in the Hugging Face cache ({cache}); on a machine with "
        f"internet run `huggingface-cli download {repo}` and copy that folder here, or save it with "
        f"save_pretrained and set autoencoder.path"
    )
