"""CLIP ViT-L/14's text tower: captions -> [77, 768], every token's hidden state after the final
LayerNorm. That is `CLIPTextModel(...).last_hidden_state`, which U-ViT's COCO preprocessing stores and
the official REPA text-to-image code trains on (FrozenCLIPEmbedder: openai/clip-vit-large-patch14,
max_length 77, padding "max_length", whose pad token is <|endoftext|>).

Weights: an open_clip checkpoint (the Hugging Face file of timm/vit_large_patch14_clip_224.openai) or
OpenAI's TorchScript ViT-L-14.pt; only the text tower's tensors are read (no code is unpickled)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from repa.errors import RepaError
from repa.interfaces import TextEncoder

HF_REPO = "timm/vit_large_patch14_clip_224.openai"
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
END_OF_TEXT = 49407  # <|endoftext|>: HF's CLIP tokenizer pads with it where open_clip pads with 0


def find_weights(configured: str | None) -> Path:
    from repa.weights import hf_cached_file, hf_repo_dir

    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise RepaError(f"text_encoder.weights: {configured} does not exist; give the CLIP checkpoint's path")
        return path
    found = hf_cached_file(HF_REPO, HF_FILES)
    if found is None:
        raise RepaError(
            f"CLIP ViT-L/14 text weights not found: put {HF_FILES[1]} from huggingface.co/{HF_REPO} under "
            f"{hf_repo_dir(HF_REPO)}/snapshots/main/, or set text_encoder.weights = \"PATH\" (open_clip or "
            "OpenAI ViT-L-14.pt checkpoint)")
    return found


def text_tower_state(state: dict) -> dict:
    """A whole CLIP state dict -> the text tower's (open_clip TextTransformer keys)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias",
                                                                                         "input_resolution",
                                                                                         "context_length",
                                                                                         "vocab_size")}


def build_text_tower(model: str, quick_gelu: bool = True):
    """open_clip's TextTransformer for `model`, returning every token (output_tokens)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, _build_text_tower

    config = open_clip.get_model_config(model)
    text_cfg = CLIPTextCfg(**{**config["text_cfg"], "output_tokens": True})
    return _build_text_tower(config["embed_dim"], text_cfg, quick_gelu=quick_gelu)


def pad_after_end(tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ids [N,L] (0 after <|endoftext|>) -> HF's (<|endoftext|> there): the contexts' padded
    positions then hold what the official data holds."""
    positions = torch.arange(tokens.shape[1])[None]
    end = (tokens == END_OF_TEXT).int().argmax(dim=1, keepdim=True)
    return torch.where(positions > end, torch.full_like(tokens, END_OF_TEXT), tokens)


class ClipTextEncoder(TextEncoder):
    def __init__(self, params):
        import open_clip

        from repa.weights import load_file, load_state_strict, unwrap_state_dict

        self.tokens, self.width = params.context_shape()
        path = find_weights(params.weights)
        self.tower = build_text_tower(params.model).eval().requires_grad_(False)
        state = text_tower_state(unwrap_state_dict(load_file(path, torchscript_tensors=True),
                                                   keys=("state_dict", "model")))
        load_state_strict(self.tower, state, str(path))
        self.tokenizer = open_clip.get_tokenizer(params.model)
        self.weights_file = str(path)

    def to(self, device) -> "ClipTextEncoder":
        self.tower.to(device)
        return self

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        ids = pad_after_end(self.tokenizer(list(captions), context_length=self.tokens))
        device = next(self.tower.parameters()).device
        _, tokens = self.tower(ids.to(device))
        return tokens.float()
