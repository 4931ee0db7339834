"""REPA-E's VAE on the embedded digits: a small VAE, trained first on reconstruction (L1 + 1e-6 KL, as REPA-E's
VAE loss without its perceptual and adversarial parts) on first use and cached beside repa's own digits
networks, then trained end to end (train = true) or kept frozen (the comparison)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from repa.console import status
from repa.storage import write_atomic, writing
from repa.weights import cache_dir, digits_recipe_digest

from repa_repae.losses import kl_loss
from repa_repae.vae import DigitsVAE, EndToEndAutoencoder

log = logging.getLogger("repa")


def _path(params) -> Path:
    digest = hashlib.blake2b((Path(__file__).read_bytes() + (Path(__file__).parent / "vae.py").read_bytes()
                              + digits_recipe_digest().encode()), digest_size=4).hexdigest()
    return cache_dir() / "digits" / f"digits-vae-c{params.channels}-seed{params.seed}-e{params.epochs}-{digest}.safetensors"


@torch.enable_grad()
def pretrain(vae: DigitsVAE, seed: int, epochs: int, advance=lambda: None, batch: int = 128, lr: float = 2e-3) -> None:
    from repa.components.digits_models import digits_split, normalise

    data = digits_split("train")
    x = normalise(data.images)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * ((len(x) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    vae.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            images = x[order[start:start + batch]]
            mean, logvar = vae.posterior(images)
            std = torch.exp(0.5 * logvar)
            z = mean + std * torch.randn(mean.shape, generator=generator)
            loss = F.l1_loss(vae.decode(z), images) + 1e-6 * kl_loss(mean, std)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        advance()
    vae.eval()


@torch.no_grad()
def latent_statistics(vae: DigitsVAE) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents_scale, latents_bias) of the posterior means over the training digits (REPA-E's stats file)."""
    from repa.components.digits_models import digits_split, normalise

    mean, _ = vae.posterior(normalise(digits_split("train").images))
    return mean.var(dim=(0, 2, 3)).rsqrt(), mean.mean(dim=(0, 2, 3))


def digits_vae(params) -> EndToEndAutoencoder:
    from safetensors.torch import load_file, save_file

    with torch.random.fork_rng():  # the initial weights from the seed; the caller's RNG untouched
        torch.manual_seed(params.seed)
        vae = DigitsVAE(params.channels)
    path = _path(params)
    with writing(path.parent) if not path.is_file() else contextlib.nullcontext():  # a read-only cache: read only
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w") if not path.is_file() else contextlib.nullcontext()
    with lock:
        if not isinstance(lock, contextlib.nullcontext):
            fcntl.flock(lock, fcntl.LOCK_EX)  # several processes train it once
        if not path.is_file():
            log.info("repa: training the digits VAE on reconstruction (once; cached at %s)", path)
            with torch.random.fork_rng(), status("training the digits VAE, epoch", total=params.epochs) as advance:
                pretrain(vae, params.seed, params.epochs, advance)
            scale, bias = latent_statistics(vae)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with writing(path, temporary=[tmp]):
                save_file({**{f"vae.{k}": v.contiguous() for k, v in vae.state_dict().items()},
                           "latents_scale": scale, "latents_bias": bias}, str(tmp))
                os.replace(tmp, path)
            write_atomic(path.with_suffix(".json"), json.dumps({"seed": params.seed, "epochs": params.epochs}))
    state = load_file(str(path))
    vae.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("vae.")})
    autoencoder = EndToEndAutoencoder(vae, params.channels, params.train, params.bn_momentum, params.lr,
                                      params.max_grad_norm)
    autoencoder.norm.set_statistics(state["latents_scale"], state["latents_bias"])
    return autoencoder
