"""`digits-words`: the offline text encoder of the text-to-image quickstart.

Each word of the digits captions has a fixed random vector (seeded); a context is the caption's word
vectors plus 1-D sin-cos positions, padded with the padding word's vector to `tokens`. It is
deterministic and needs nothing downloaded. It is not a language model: the network learns what the
words mean from the captions; a word outside VOCABULARY is refused."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from repa.components.backbone.sit import sincos_1d
from repa.interfaces import TextEncoder

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ATTRIBUTE_WORDS = ("thick", "thin", "slanted", "upright", "small", "large")
VOCABULARY = ("<pad>", "a", "an", *DIGIT_WORDS, *ATTRIBUTE_WORDS)


def words_of(caption: str) -> list[str]:
    return re.findall(r"[a-z]+", caption.lower())


class DigitsWords(TextEncoder):
    def __init__(self, params):
        self.tokens, self.width = params.context_shape()
        g = torch.Generator().manual_seed(params.seed)
        self.table = torch.randn(len(VOCABULARY), self.width, generator=g)
        self.index = {word: i for i, word in enumerate(VOCABULARY)}
        self.positions = torch.from_numpy(sincos_1d(self.width, np.arange(self.tokens, dtype=np.float64))).float()

    def ids(self, caption: str) -> list[int]:
        words = words_of(caption)
        unknown = [w for w in words if w not in self.index]
        if unknown:
            raise ValueError(f"digits-words: {unknown[0]!r} in {caption!r} is not a word it knows; it knows "
                             f"{', '.join(VOCABULARY[1:])}")
        if len(words) > self.tokens:
            raise ValueError(f"digits-words: {caption!r} has {len(words)} words; contexts hold {self.tokens} "
                             "(raise text_encoder.tokens)")
        return [self.index[w] for w in words] + [0] * (self.tokens - len(words))

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        ids = torch.tensor([self.ids(c) for c in captions], dtype=torch.long).reshape(len(captions), self.tokens)
        return self.table[ids] + self.positions

