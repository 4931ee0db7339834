"""The encoder object: implements repa.interfaces.Encoder with timm."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.errors import MissingWeightsError
from repa_timm_encoder import architecture


def create(params, input_size: int, **overrides) -> nn.Module:
    """The pretrained network at `input_size` (overrides: architecture changes, for tests)."""
    import timm

    model = params.model_name()
    kwargs = dict(num_classes=0, img_size=input_size, pretrained=True, **overrides)
    if params.weights:
        if not Path(params.weights).expanduser().is_file():
            raise MissingWeightsError(f"{model}: weights file {params.weights} does not exist; put the release's "
                                      f"model.safetensors there or leave `weights` unset to use the HF cache")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(Path(params.weights).expanduser()))
    try:
        return timm.create_model(model, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        hub = architecture(model)["hf_hub_id"]
        where = params.weights or f"the Hugging Face cache (repo {hub})"
        raise MissingWeightsError(
            f"{model}: cannot load weights from {where} ({type(exc).__name__}); on a machine with "
            f"internet run `huggingface-cli download {hub}` and copy the cache, or set weights = \"/path/file\""
        ) from None


class TimmEncoder(nn.Module):
    def __init__(self, params, resolution: int, **overrides):
        super().__init__()
        facts = architecture(params.model_name())
        self.resolution, self.input_size = resolution, params.input_size(resolution)
        self.embed_dim, self.prefix, self.params = facts["embed_dim"], facts["prefix"], params
        self.class_token = facts["class_token"]
        self.interpolation = facts["interpolation"] if facts["interpolation"] in ("bicubic", "bilinear") else "bicubic"
        self.register_buffer("mean", torch.tensor(facts["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(facts["std"]).view(1, 3, 1, 1), persistent=False)
        self.network = create(params, self.input_size, **overrides).requires_grad_(False)
        self.weights_file = params.weights or ""
        self.autocast_dtype = None
        super().train(False)

    def train(self, mode=True):
        return super().train(False)  # frozen, eval mode forever

    def tokens_for(self, resolution):
        return self.params.tokens_for(resolution)

    def preprocess(self, images):
        x = images.float() / 255.0
        if x.shape[-1] != self.input_size:  # the model's own interpolation (timm pretrained_cfg)
            x = F.interpolate(x, self.input_size, mode=self.interpolation)
        return (x - self.mean) / self.std

    def preprocessing(self):
        return {"model": self.params.model_name(), "input_size": self.input_size, "interpolation": self.interpolation,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    @torch.no_grad()
    def forward(self, x):
        return self.forward_with_global(x)[0]

    @torch.no_grad()
    def forward_with_global(self, x):
        """-> (patch tokens, the class token after the final norm; None for a model without one, whose
        params say `has_global_token() = False`, so the engine never asks)."""
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            tokens = self.network.forward_features(x)
        return tokens[:, self.prefix:].float(), (tokens[:, 0].float() if self.class_token else None)
