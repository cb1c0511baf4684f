"""What a model is given: the contract between the data side (features) and the architectures.

Every model takes one tensor per example batch. ``InputSpec`` says which kind of tensor it is, so a
model can check it was paired with suitable data and size its first layer:

    vector    N x D float           numbers and one-hot categories
    image     N x C x H x W float   an image feature
    tokens    N x L int64           token ids of a text feature, padded with ``pad_id`` (padding
                                    positions are where ids == pad_id: that is the padding mask);
                                    or, with ``pad_id`` -1, unpadded windows of a corpus in which
                                    every position predicts the next token (language modelling)
    sequence  N x T x F float       sliding windows over a numeric series (forecasting)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

InputKind = Literal["vector", "image", "tokens", "sequence"]


@dataclass(frozen=True)
class InputSpec:
    """The model input: its kind, the shape of one example, and for tokens the vocabulary."""

    kind: InputKind
    shape: tuple[int, ...]
    vocab_size: int = 0
    pad_id: int = 0
    unk_id: Optional[int] = None  # tokens: the unknown token (None: the tokenizer has none, e.g. byte-level BPE)
    special_ids: tuple[int, ...] = ()  # tokens: other special tokens ([CLS], [SEP], ...), which augmentation leaves alone

    @property
    def next_token(self) -> bool:
        """Windows of a corpus for language modelling (N x L x vocabulary logits wanted)."""
        return self.kind == "tokens" and self.pad_id < 0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "shape": list(self.shape), "vocab_size": self.vocab_size, "pad_id": self.pad_id}
        if self.kind == "tokens":
            data |= {"unk_id": self.unk_id, "special_ids": list(self.special_ids)}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputSpec":
        unk = data.get("unk_id")
        return cls(
            data["kind"],
            tuple(data["shape"]),
            int(data.get("vocab_size", 0)),
            int(data.get("pad_id", 0)),
            None if unk is None else int(unk),
            tuple(int(i) for i in data.get("special_ids", ())),
        )

    def describe(self) -> str:
        if self.kind == "tokens":
            return f"token ids (length {self.shape[0]}, vocabulary {self.vocab_size:,})"
        if self.kind == "sequence":
            return f"windows of {self.shape[0]} steps x {self.shape[1]} value{'s' if self.shape[1] != 1 else ''}"
        if self.kind == "image":
            return f"{self.shape[0]}-channel {self.shape[1]}x{self.shape[2]} images"
        return f"a vector of {self.shape[0]} number{'s' if self.shape[0] != 1 else ''}"
