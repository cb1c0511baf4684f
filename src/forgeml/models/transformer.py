"""Transformer encoder over text or a numeric sequence, pooled into one vector (a classifier or regressor).

Token embeddings (or, for numeric windows, a linear map of each step) plus positions, then pre-LayerNorm
blocks: x = x + Attention(LN(x)); x = x + MLP(LN(x)); a final LayerNorm, and a CLS vector or the mean
of the real positions into the output layer. Attention runs through
``torch.nn.functional.scaled_dot_product_attention``, which picks a fused kernel where one applies;
padded keys are masked out, so padding never changes what a real position sees.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from forgeml.config import Section
from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.models.layers import (
    Block,
    SelfAttention,
    init_normal_weights,
    masked_mean,
    padding_mask,
    require_heads_divide_dim,
    require_input_kind,
)
from forgeml.registry import MODELS


class TransformerConfig(Section):
    """Embedding + positions -> pre-LayerNorm self-attention blocks -> CLS or mean pooling -> output layer."""

    type: Literal["transformer"] = Field(description="Transformer encoder.")
    dim: int = Field(128, ge=1, description="Width of every position's vector (the model dimension).")
    heads: int = Field(4, ge=1, description="Attention heads per block; must divide dim.")
    layers: int = Field(2, ge=1, description="Transformer blocks.")
    ff_dim: Optional[int] = Field(None, ge=1, description="Hidden width of each block's MLP; null: 4 x dim.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the inputs, the attention weights and each residual branch.")
    positions: Literal["learned", "sinusoidal"] = Field(
        "learned", description="Position encoding: learned (one trained vector per position) or sinusoidal (fixed)."
    )
    max_length: Optional[int] = Field(None, ge=1, description="Longest input the positions cover; null: the input length of the data.")
    pooling: Literal["cls", "mean"] = Field(
        "cls", description="cls: a learned vector prepended to every input is read out; mean: the average of the real positions."
    )


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """The fixed encoding of Vaswani et al. 2017: sin and cos of the position at geometric frequencies; length x dim."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class Transformer(nn.Module):
    """The network ``transformer`` builds."""

    def __init__(self, cfg: TransformerConfig, inputs: InputSpec, num_outputs: int, max_length: int):
        super().__init__()
        self.pad_id = inputs.pad_id
        self.max_length = max_length
        self.tokens = inputs.kind == "tokens"
        if self.tokens:
            self.embed: nn.Module = nn.Embedding(inputs.vocab_size, cfg.dim, padding_idx=inputs.pad_id)
        else:
            self.embed = nn.Linear(inputs.shape[1], cfg.dim)  # each step's F numbers -> one vector
        self.learned_positions = nn.Parameter(torch.zeros(max_length, cfg.dim)) if cfg.positions == "learned" else None
        # The fixed table is added at full size (amplitude 1, as DistilBERT's sinusoidal option does) beside
        # 0.02-wide token vectors; the first LayerNorm sees mostly position at first, and the embeddings
        # grow to matter within a few dozen steps. It is derived from the config: kept out of the state dict.
        fixed = sinusoidal_positions(max_length, cfg.dim) if cfg.positions == "sinusoidal" else None
        self.register_buffer("fixed_positions", fixed, persistent=False)
        # The CLS vector gets no position: it is one learned vector, told apart from the tokens already.
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.ff_dim or 4 * cfg.dim, cfg.dropout, SelfAttention(cfg.dim, cfg.heads, cfg.dropout))
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, num_outputs)
        self.apply(init_normal_weights)
        for parameter in (self.learned_positions, self.cls):
            if parameter is not None:
                nn.init.normal_(parameter, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        batch, length = x.shape[:2]
        if length > self.max_length:
            raise ValueError(f"input of length {length} is longer than the transformer's max_length {self.max_length}")
        hidden = self.embed(x) + (self.learned_positions if self.learned_positions is not None else self.fixed_positions)[:length]
        # numeric windows have no padding: no mask, which also lets attention use its fastest kernels
        real = padding_mask(x, self.pad_id) if self.tokens else None
        if self.cls is not None:
            hidden = torch.cat([self.cls.expand(batch, 1, -1), hidden], dim=1)
            if real is not None:
                real = torch.cat([real.new_ones(batch, 1), real], dim=1)
        hidden = self.dropout(hidden)
        key_mask = real[:, None, None, :] if real is not None else None  # broadcast over heads and queries
        for block in self.blocks:
            hidden = block(hidden, key_mask)
        hidden = self.norm(hidden)
        if self.cls is not None:
            pooled = hidden[:, 0]
        elif real is not None:
            pooled = masked_mean(hidden, real)
        else:
            pooled = hidden.mean(1)
        return self.head(pooled)


@MODELS.register("transformer", TransformerConfig)
def build_transformer(cfg: TransformerConfig, *, inputs: InputSpec, num_outputs: int) -> nn.Module:
    require_input_kind("transformer", inputs, ("tokens", "sequence"))
    require_heads_divide_dim(cfg.heads, cfg.dim)
    if cfg.max_length is not None and cfg.max_length < inputs.shape[0]:
        raise ConfigError(
            f"model.max_length {cfg.max_length} is shorter than the inputs ({inputs.describe()}); raise it or leave it null"
        )
    return Transformer(cfg, inputs, num_outputs, cfg.max_length or inputs.shape[0])
