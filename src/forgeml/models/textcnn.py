"""Convolutional text classifier (Kim 2014): parallel 1-d convolutions, max over time, one output layer.

Each kernel size reads windows of that many tokens; max-over-time pooling keeps each filter's
strongest match anywhere in the text, so the prediction does not depend on where a phrase occurs.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from forgeml.config import Section
from forgeml.inputs import InputSpec
from forgeml.models.layers import masked_max, padding_mask, require_input_kind
from forgeml.registry import MODELS


class TextCNNConfig(Section):
    """Embedding -> parallel Conv1d + ReLU per kernel size -> max over time -> Dropout -> output layer."""

    type: Literal["textcnn"] = Field(description="Convolutional text classifier (Kim 2014).")
    embedding_dim: int = Field(128, ge=1, description="Width of the token embeddings.")
    kernels: list[Annotated[int, Field(ge=1)]] = Field(
        [3, 4, 5], min_length=1, description="Window sizes in tokens, one parallel convolution each."
    )
    filters: int = Field(100, ge=1, description="Filters (output channels) per kernel size.")
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout on the pooled features, before the output layer.")


class TextCNN(nn.Module):
    """The network ``textcnn`` builds."""

    def __init__(self, cfg: TextCNNConfig, inputs: InputSpec, num_outputs: int):
        super().__init__()
        self.pad_id = inputs.pad_id
        self.longest_kernel = max(cfg.kernels)
        self.embedding = nn.Embedding(inputs.vocab_size, cfg.embedding_dim, padding_idx=inputs.pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(cfg.embedding_dim, cfg.filters, kernel) for kernel in cfg.kernels)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.filters * len(cfg.kernels), num_outputs)

    def forward(self, ids: Tensor) -> Tensor:
        length = ids.shape[1]
        real = padding_mask(ids, self.pad_id)
        # Padding embeds to zeros (zeroed here too, so this holds even if the padding row was trained
        # or loaded), and the end of every row is extended with zeros as long as the longest window:
        # a window running past the end of a text then sees the same zeros however much padding the
        # row had, or none, and a text shorter than a window still has one window.
        embedded = self.embedding(ids).masked_fill((ids == self.pad_id).unsqueeze(-1), 0.0)
        embedded = F.pad(embedded.transpose(1, 2), (0, self.longest_kernel - 1))
        pooled = []
        for conv in self.convs:
            # one window per start position; keep those that start on a real token
            features = F.relu(conv(embedded))[:, :, :length].transpose(1, 2)
            pooled.append(masked_max(features, real))
        return self.head(self.dropout(torch.cat(pooled, dim=1)))


@MODELS.register("textcnn", TextCNNConfig)
def build_textcnn(cfg: TextCNNConfig, *, inputs: InputSpec, num_outputs: int) -> nn.Module:
    require_input_kind("textcnn", inputs, ("tokens",))
    return TextCNN(cfg, inputs, num_outputs)
