"""LSTM with additive attention pooling: the classic attention text classifier.

The same network as ``rnn`` with ``cell: lstm, pooling: attention``, under its own name and with
defaults of its own (bidirectional), because it is the model many people look for by that name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from forgeml.config import Section
from forgeml.inputs import InputSpec
from forgeml.models.layers import require_input_kind
from forgeml.models.rnn import RecurrentModel, RNNConfig
from forgeml.registry import MODELS


class AttentionConfig(Section):
    """Embedding (text only) -> LSTM -> additive attention over the steps -> output layer."""

    type: Literal["attention"] = Field(description="LSTM with additive attention pooling.")
    embedding_dim: int = Field(128, ge=1, description="Width of the token embeddings (text inputs only).")
    hidden_size: int = Field(128, ge=1, description="Width of the LSTM state, per direction.")
    layers: int = Field(1, ge=1, description="Stacked LSTM layers.")
    bidirectional: bool = Field(True, description="Also read each sequence backwards; doubles the attended width.")
    attention_dim: int = Field(128, ge=1, description="Width of the attention scorer: score_t = v . tanh(W h_t + b).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout between LSTM layers and before the output layer.")


@MODELS.register("attention", AttentionConfig)
def build_attention(cfg: AttentionConfig, *, inputs: InputSpec, num_outputs: int) -> nn.Module:
    require_input_kind("attention", inputs, ("tokens", "sequence"))
    fields = cfg.model_dump(exclude={"type"})
    return RecurrentModel(RNNConfig(type="rnn", cell="lstm", pooling="attention", **fields), inputs, num_outputs)
