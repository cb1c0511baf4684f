"""Small building blocks shared by the architectures."""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "leaky_relu", "silu"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def dense_stack(in_features: int, hidden: list[int], act: str, dropout: float, batch_norm: bool) -> tuple[nn.Sequential, int]:
    """Linear -> [BatchNorm] -> activation -> [Dropout] for each hidden width; returns (stack, out width)."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers.append(nn.Linear(width, size))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(activation(act))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*layers), width


def flat_width(model: str, inputs: InputSpec) -> int:
    """Input width of a model that flattens its input; token ids cannot be flattened into numbers."""
    if inputs.kind == "tokens":
        raise ConfigError(
            f"model.type {model} cannot read text (token ids); use rnn, attention, textcnn or transformer"
        )
    return math.prod(inputs.shape)
