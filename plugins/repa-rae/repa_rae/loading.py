"""RAE's released autoencoder from disk: the representation encoder (a registered encoder, DINOv2-B with
registers by default), the statistics file (`stat.pt`: mean and var [C,h,w]) and the decoder (`model.pt`)."""

from __future__ import annotations

from pathlib import Path

from repa.errors import MissingWeightsError
from repa.weights import load_file, load_state_strict

from repa_rae.autoencoder import RepresentationAutoencoder, drop_final_affine
from repa_rae.decoder import SIZES, Decoder

RELEASES = "hf download nyu-visionx/RAE-collections --local-dir models"


def _required(path: str | None, what: str, default: str) -> Path:
    found = Path(path or default).expanduser()
    if not found.is_file():
        raise MissingWeightsError(f"rae: the {what} is not at {found}; {RELEASES} (it is {default}), or set "
                                  f"autoencoder.{'stats' if 'statistics' in what else 'decoder'}")
    return found


def rae(params, resolution: int = 256) -> RepresentationAutoencoder:
    stats = load_file(_required(params.stats, "normalisation statistics", "models/stats/dinov2/wReg_base/imagenet1k/stat.pt"))
    weights = _required(params.decoder, "decoder", "models/decoders/dinov2/wReg_base/ViTXL_n08/model.pt")
    encoder = params.encoder.build(resolution=resolution)
    if params.normalize:
        drop_final_affine(encoder)
    dim, tokens = params.encoder.params.embed_dim(), params.encoder.params.tokens_for(resolution)
    width, depth, heads, mlp = params.decoder_layout or SIZES[params.decoder_size]
    decoder = Decoder(dim, tokens, width, depth, heads, mlp, patch_size=params.decoder_patch)
    load_state_strict(decoder, load_file(weights), f"rae decoder {weights}")
    return RepresentationAutoencoder(encoder, decoder, stats["mean"], stats["var"], params.eps, params.train,
                                     params.noise_tau, lr=params.lr)
