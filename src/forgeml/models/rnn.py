"""Recurrent network (RNN, LSTM or GRU) over text or a numeric sequence, pooled into one vector.

Text (token ids) is embedded and packed by length, so padding at the end of a row never enters the
recurrence; a numeric sequence (N x T x F windows, for forecasting) is read as it is.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from forgeml.config import Section
from forgeml.inputs import InputSpec
from forgeml.models.layers import AdditiveAttention, dense_stack, masked_max, masked_mean, padding_mask, require_input_kind
from forgeml.registry import MODELS

_CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RNNConfig(Section):
    """Embedding (text only) -> recurrent layers -> pooling over the steps -> dense layers -> output layer."""

    type: Literal["rnn"] = Field(description="Recurrent network (RNN, LSTM or GRU).")
    cell: Literal["rnn", "lstm", "gru"] = Field("lstm", description="Recurrent cell: rnn (plain tanh), lstm or gru.")
    embedding_dim: int = Field(128, ge=1, description="Width of the token embeddings (text inputs only).")
    hidden_size: int = Field(128, ge=1, description="Width of the recurrent state, per direction.")
    layers: int = Field(1, ge=1, description="Stacked recurrent layers.")
    bidirectional: bool = Field(False, description="Also read each sequence backwards; doubles the pooled width.")
    pooling: Literal["last", "mean", "max", "attention"] = Field(
        "last",
        description="How the steps become one vector: last (final state; both ends when bidirectional), mean, max, or attention (learned weights).",
    )
    attention_dim: int = Field(128, ge=1, description="Width of the attention scorer (pooling: attention only).")
    dense: list[int] = Field([], description="Hidden dense layer widths between the pooled vector and the output layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout between recurrent layers, before the dense layers and after each.")


class RecurrentModel(nn.Module):
    """The network ``rnn`` builds (and ``attention``, as an LSTM with attention pooling)."""

    def __init__(self, cfg: RNNConfig, inputs: InputSpec, num_outputs: int):
        super().__init__()
        self.pad_id = inputs.pad_id
        self.pooling = cfg.pooling
        self.embedding: nn.Embedding | None = None
        if inputs.kind == "tokens":
            self.embedding = nn.Embedding(inputs.vocab_size, cfg.embedding_dim, padding_idx=inputs.pad_id)
        self.rnn = _CELLS[cfg.cell](
            cfg.embedding_dim if self.embedding is not None else inputs.shape[1],
            cfg.hidden_size,
            num_layers=cfg.layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,  # torch warns about dropout after the last layer
        )
        width = cfg.hidden_size * (2 if cfg.bidirectional else 1)
        self.attention = AdditiveAttention(width, cfg.attention_dim) if cfg.pooling == "attention" else None
        stack, stack_width = dense_stack(width, cfg.dense, "relu", cfg.dropout, False)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), stack, nn.Linear(stack_width, num_outputs))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run the recurrence over a batch of token ids (N x L) or numeric windows (N x T x F).

        Returns:
            (outputs, final, mask): the top layer's N x L x D outputs (zeros at padding), the N x D
            final state (forward state after the last real step, with the backward state after the
            first step appended when bidirectional), and the N x L mask of real steps.
        """
        if self.embedding is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            outputs, state = self.rnn(x)
        else:
            mask = padding_mask(x, self.pad_id)
            # packing needs the lengths on the CPU: a device-to-host sync on GPU, the price of exact padding
            lengths = mask.sum(1).cpu()
            packed = pack_padded_sequence(self.embedding(x), lengths, batch_first=True, enforce_sorted=False)
            packed_outputs, state = self.rnn(packed)
            outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=x.shape[1])
        hidden = state[0] if isinstance(state, tuple) else state  # an LSTM's state is (h, c)
        directions = 2 if self.rnn.bidirectional else 1
        # hidden is (layers * directions) x N x H; the top layer's directions come last
        final = hidden[-directions:].transpose(0, 1).reshape(x.shape[0], -1)
        return outputs, final, mask

    def forward(self, x: Tensor) -> Tensor:
        outputs, final, mask = self.encode(x)
        if self.pooling == "last":
            pooled = final
        elif self.pooling == "mean":
            pooled = masked_mean(outputs, mask)
        elif self.pooling == "max":
            pooled = masked_max(outputs, mask)
        else:
            pooled = self.attention(outputs, mask)
        return self.head(pooled)


@MODELS.register("rnn", RNNConfig)
def build_rnn(cfg: RNNConfig, *, inputs: InputSpec, num_outputs: int) -> nn.Module:
    require_input_kind("rnn", inputs, ("tokens", "sequence"))
    return RecurrentModel(cfg, inputs, num_outputs)
