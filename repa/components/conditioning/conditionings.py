"""The built-in conditionings (registered in `repa.components.conditioning`, which stays light)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from repa.errors import RepaError
from repa.interfaces import Conditioning, Conditions


class ClassConditioning(Conditioning):
    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def collate(self, values: Any) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.long)

    def conditions(self, seed: int, indices: Sequence[int], mode: str) -> Conditions:
        from repa.engine.generate.generation import class_labels

        labels = class_labels(seed, indices, self.num_classes, mode)
        return Conditions(labels, labels, tuple(f"class {int(k)}" for k in labels))

    def prompts(self, prompts: Sequence[str]) -> Conditions:
        """Class numbers written as prompts ("207")."""
        bad = [p for p in prompts if not p.strip().isdigit() or not 0 <= int(p) < self.num_classes]
        if bad:
            raise ValueError(f"prompt {bad[0]!r}: this experiment is conditioned on class labels; give a class number "
                             f"0..{self.num_classes - 1} (or use --labels)")
        labels = torch.tensor([int(p) for p in prompts], dtype=torch.long)
        return Conditions(labels, labels, tuple(f"class {int(k)}" for k in labels))


class TextConditioning(Conditioning):
    """Captions are encoded by the text encoder (built on first need: cached contexts need none)."""

    def __init__(self, params, dataset):
        self.params, self._dataset = params, dataset
        self.context_shape = params.context_shape()
        self._encoder = None
        self._null = None

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = self.params.text_encoder.build()
        return self._encoder

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        try:
            contexts = self.encoder.encode(list(captions)).float().cpu()
        except ValueError as exc:  # a caption the encoder refuses (digits-words: an unknown word)
            raise RepaError(f"conditioning.text_encoder ({self.params.text_encoder.kind}): {exc}") from None
        return self._checked(contexts, "the text encoder")

    def _checked(self, contexts: torch.Tensor, source: str) -> torch.Tensor:
        if contexts.ndim == 1:  # one number per item: class labels
            raise RepaError(f"conditioning.kind = \"text\" needs captions or contexts from the data, and {source} gave "
                            "class labels; use a captioned dataset (data.kind = \"digits-captions\" or \"coco\") or "
                            "[conditioning] kind = \"class\"")
        if tuple(contexts.shape[1:]) != self.context_shape:
            raise RepaError(f"{source} gave contexts {list(contexts.shape[1:])}; conditioning.text_encoder "
                            f"({self.params.text_encoder.kind}) makes {list(self.context_shape)}: preprocess the data "
                            "with the same text encoder, or set the one it was made with")
        return contexts

    def collate(self, values: Any) -> torch.Tensor:
        if isinstance(values, torch.Tensor):
            return self._checked(values.float(), "the data")
        values = list(values)
        if all(isinstance(v, str) for v in values):
            return self.encode(values)
        return self._checked(torch.stack([torch.as_tensor(v).float() for v in values]), "the data")

    def null_context(self) -> torch.Tensor:
        if self._null is None:
            stored = self._dataset("train").empty_context()
            self._null = self.encode([""])[0] if stored is None else \
                self._checked(torch.as_tensor(stored).float()[None], "the data's empty context")[0]
        return self._null

    def conditions(self, seed: int, indices: Sequence[int], mode: str) -> Conditions:
        try:
            rows = self._dataset("val").prompts(seed, indices, mode)
        except NotImplementedError as exc:  # data without captions (Dataset.prompts is optional)
            raise RepaError(f"conditioning.kind = \"text\": {exc}; use a captioned dataset (data.kind = "
                            "\"digits-captions\" or \"coco\") or [conditioning] kind = \"class\"") from None
        y = self.collate([row[0] for row in rows])
        labels = [row[1] for row in rows]
        known = all(label is not None for label in labels)
        return Conditions(y, torch.tensor(labels, dtype=torch.long) if known else None,
                          tuple(row[2] for row in rows))

    def prompts(self, prompts: Sequence[str]) -> Conditions:
        return Conditions(self.encode(prompts), None, tuple(prompts))
