"""Multi-layer perceptron on the (flattened) input."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from forgeml.config import Section
from forgeml.inputs import InputSpec
from forgeml.models.layers import Activation, dense_stack, flat_width
from forgeml.registry import MODELS


class MLPConfig(Section):
    """Dense layers: Linear -> [BatchNorm] -> activation -> [Dropout], then a linear output layer."""

    type: Literal["mlp"] = Field(description="Multi-layer perceptron.")
    hidden: list[int] = Field([128], description="Width of each hidden layer, input side first.")
    activation: Activation = Field("relu", description="Non-linearity after each hidden layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each hidden layer.")
    batch_norm: bool = Field(False, description="BatchNorm after each hidden linear layer.")


@MODELS.register("mlp", MLPConfig)
def build_mlp(cfg: MLPConfig, *, inputs: InputSpec, num_outputs: int) -> nn.Module:
    stack, width = dense_stack(flat_width("mlp", inputs), cfg.hidden, cfg.activation, cfg.dropout, cfg.batch_norm)
    return nn.Sequential(nn.Flatten(), stack, nn.Linear(width, num_outputs))
