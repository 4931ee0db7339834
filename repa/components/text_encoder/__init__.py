"""Text encoders: captions -> contexts [L, D] (every token's last hidden state).

- `clip-vit-l14`: CLIP ViT-L/14's text tower (OpenAI weights, through open_clip), what the official
  REPA text-to-image data holds (U-ViT's COCO preprocessing: `last_hidden_state`, [77, 768]).
- `digits-words`: a fixed table of random word vectors plus positions for the digits captions; no
  download, no training, no language: it knows only the captions' words.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from repa.interfaces import TextEncoderParams
from repa.plugins import hookimpl


class ClipTextParams(TextEncoderParams):
    model: str = Field("ViT-L-14", description="open_clip architecture of the text tower")
    weights: str | None = Field(
        None, description="the CLIP checkpoint (open_clip_pytorch_model.bin, .safetensors, or OpenAI's ViT-L-14.pt); "
        "default: the Hugging Face cache of timm/vit_large_patch14_clip_224.openai")

    def context_shape(self) -> tuple[int, int]:
        import open_clip

        config = open_clip.get_model_config(self.model)
        if config is None:
            raise ValueError(f"open_clip has no architecture {self.model!r}")
        return config["text_cfg"].get("context_length", 77), config["text_cfg"]["width"]


class DigitsWordsParams(TextEncoderParams):
    tokens: int = Field(8, ge=2, description="context length: captions of up to this many words")
    width: int = Field(64, ge=2, description="width of the word vectors (even)")
    seed: int = Field(0, ge=0, description="seed of the fixed random word table")

    @field_validator("width")
    @classmethod
    def _even(cls, width):
        if width % 2:
            raise ValueError(f"must be even (half of it encodes the position), got {width}")
        return width

    def context_shape(self) -> tuple[int, int]:
        return self.tokens, self.width


def build_clip(params: ClipTextParams):
    from repa.components.text_encoder.clip import ClipTextEncoder

    return ClipTextEncoder(params)


def build_digits_words(params: DigitsWordsParams):
    from repa.components.text_encoder.words import DigitsWords

    return DigitsWords(params)


@hookimpl
def repa_register_text_encoders(registry):
    registry.add("clip-vit-l14", build_clip, ClipTextParams,
                 "CLIP ViT-L/14 text tower (OpenAI weights via open_clip): [77, 768] per caption, as the official T2I data")
    registry.add("digits-words", build_digits_words, DigitsWordsParams,
                 "fixed random word vectors + positions for the digits captions (offline, no language model)")
