"""The encoder object: implements repa.interfaces.Encoder with timm."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.errors import MissingWeightsError
from repa_timm_encoder import architecture


def create(params, input_size: int) -> nn.Module:
    import timm

    kwargs = dict(num_classes=0, img_size=input_size, pretrained=True)
    if params.weights:
        kwargs["pretrained_cfg_overlay"] = dict(file=params.weights)
    try:
        return timm.create_model(params.model, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        hub = architecture(params.model)["hf_hub_id"]
        where = params.weights or f"the Hugging Face cache (repo {hub})"
        raise MissingWeightsError(
            f"timm-vit {params.model}: cannot load weights from {where} ({type(exc).__name__}); on a machine with "
            f"internet run `huggingface-cli download {hub}` and copy the cache, or set weights = \"/path/file\""
        ) from None


class TimmEncoder(nn.Module):
    def __init__(self, params, resolution: int):
        super().__init__()
        facts = architecture(params.model)
        self.resolution, self.input_size = resolution, params.input_size(resolution)
        self.embed_dim, self.prefix, self.params = facts["embed_dim"], facts["prefix"], params
        self.register_buffer("mean", torch.tensor(facts["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(facts["std"]).view(1, 3, 1, 1), persistent=False)
        self.network = create(params, self.input_size).requires_grad_(False)
        self.weights_file = params.weights or ""
        self.autocast_dtype = None
        super().train(False)

    def train(self, mode=True):
        return super().train(False)  # frozen, eval mode forever

    def tokens_for(self, resolution):
        return self.params.tokens_for(resolution)

    def preprocess(self, images):
        x = images.float() / 255.0
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, self.input_size, mode="bicubic")
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, x):
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            tokens = self.network.forward_features(x)
        return tokens[:, self.prefix:].float()
