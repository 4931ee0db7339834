"""RAE on the embedded digits: `digits-convnet` is the representation encoder (its 8x8 grid of 128-d tokens at
32 px), its tokens' per-element statistics over the training digits normalise them, and a small ViT
decoder (width 128, 2 layers, 4 heads, patch 4) is trained on first use to reconstruct the digits from the
noised tokens (RAE's decoder objective, L1, tau 0.8) and cached beside repa's own digits networks."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path

import torch

from repa.console import status
from repa.storage import writing
from repa.weights import cache_dir, digits_recipe_digest

from repa_rae.autoencoder import RepresentationAutoencoder
from repa_rae.decoder import Decoder

log = logging.getLogger("repa")
DIGITS_PIXELS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the decoder's pixel space: [-1, 1] as [0, 1] mapped


def _path(params) -> Path:
    files = [Path(__file__), Path(__file__).parent / "decoder.py", Path(__file__).parent / "autoencoder.py"]
    digest = hashlib.blake2b(b"".join(f.read_bytes() for f in files) + digits_recipe_digest().encode(),
                             digest_size=4).hexdigest()
    return cache_dir() / "digits" / f"digits-rae-w{params.width}-d{params.depth}-seed{params.seed}-e{params.epochs}-{digest}.safetensors"


def build_decoder(params, latent_dim: int, tokens: int) -> Decoder:
    return Decoder(latent_dim, tokens, params.width, params.depth, params.heads, 2 * params.width, patch_size=4)


@torch.enable_grad()
def pretrain(rae: RepresentationAutoencoder, images: torch.Tensor, seed: int, epochs: int, tau: float,
             advance=lambda: None, batch: int = 128, lr: float = 1e-3) -> None:
    generator = torch.Generator().manual_seed(seed)
    decoder = rae.decoder.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * ((len(images) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch):
            chunk = images[order[start:start + batch]]
            tokens = rae.tokens(chunk)
            sigma = tau * torch.rand(len(chunk), 1, 1, 1, generator=generator)
            tokens = tokens + sigma * torch.randn(tokens.shape, generator=generator)
            loss = (rae.pixels(tokens) - chunk.float() / 255).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        advance()


def digits_rae(params) -> RepresentationAutoencoder:
    from safetensors.torch import load_file, save_file

    from repa.components.digits_models import digits_split

    encoder = params.encoder.build(resolution=32)
    dim, tokens = params.encoder.params.embed_dim(), params.encoder.params.tokens_for(32)
    with torch.random.fork_rng():
        torch.manual_seed(params.seed)
        decoder = build_decoder(params, dim, tokens)
    zeros = torch.zeros(dim, int(tokens ** 0.5), int(tokens ** 0.5))
    rae = RepresentationAutoencoder(encoder, decoder, zeros, torch.ones_like(zeros), train=True,
                                    pixel_mean=DIGITS_PIXELS[0], pixel_std=DIGITS_PIXELS[1])
    path = _path(params)
    with writing(path.parent) if not path.is_file() else contextlib.nullcontext():  # a read-only cache: read only
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w") if not path.is_file() else contextlib.nullcontext()
    with lock:
        if not isinstance(lock, contextlib.nullcontext):
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            images = digits_split("train").images
            log.info("repa: training the digits RAE decoder (once; cached at %s)", path)
            with torch.random.fork_rng(), status("training the digits RAE decoder, epoch", total=params.epochs) as advance:
                pretrain(rae, images, params.seed, params.epochs, params.noise_tau, advance)
            z = rae.tokens(images)  # RAE's statistics: per element [C,h,w] over the training images
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with writing(path, temporary=[tmp]):
                save_file({**{f"decoder.{k}": v.contiguous() for k, v in decoder.state_dict().items()},
                           "mean": z.mean(0).contiguous(), "var": z.var(0, unbiased=False).contiguous()}, str(tmp))
                os.replace(tmp, path)
    state = load_file(str(path))
    decoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})
    return RepresentationAutoencoder(encoder, decoder, state["mean"], state["var"], params.eps, params.train,
                                     params.noise_tau, DIGITS_PIXELS[0], DIGITS_PIXELS[1], params.lr)
