"""Convolutional network: a list of conv blocks, then dense layers."""

from __future__ import annotations

from typing import Literal, Union

import torch
from pydantic import Field
from torch import nn

from forgeml.config import Section
from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.models.layers import MODELS_FOR, Activation, activation, dense_stack
from forgeml.registry import MODELS


class ConvBlock(Section):
    """Conv2d -> [BatchNorm] -> activation -> [pool] -> [Dropout]."""

    channels: int = Field(ge=1, description="Output channels of the convolution.")
    kernel: int = Field(3, ge=1, description="Kernel size.")
    stride: int = Field(1, ge=1, description="Convolution stride.")
    padding: Union[int, Literal["same", "valid"]] = Field("same", description="Pixels of zero padding, or same / valid.")
    pool: Literal["max", "avg", "none"] = Field("max", description="Pooling after the activation.")
    pool_size: int = Field(2, ge=1, description="Pooling window and stride.")
    batch_norm: bool = Field(False, description="BatchNorm after the convolution.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout (2D, whole channels) after the block.")
    activation: Activation = Field("relu", description="Non-linearity.")


class CNNConfig(Section):
    """Conv blocks over an image input, flattened into dense layers and a linear output layer."""

    type: Literal["cnn"] = Field(description="Convolutional network.")
    blocks: list[ConvBlock] = Field(
        default_factory=lambda: [ConvBlock(channels=32), ConvBlock(channels=64)],
        description="Convolutional blocks, input side first.",
    )
    dense: list[int] = Field([128], description="Hidden dense layer widths after flattening.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each dense layer.")
    activation: Activation = Field("relu", description="Non-linearity of the dense layers.")


@MODELS.register("cnn", CNNConfig)
def build_cnn(cfg: CNNConfig, *, inputs: InputSpec, num_outputs: int) -> nn.Module:
    if inputs.kind != "image":
        raise ConfigError(
            f"model.type cnn needs an image input (channels x height x width); this data gives {inputs.describe()}: "
            + MODELS_FOR[inputs.kind]
        )
    input_shape = inputs.shape
    layers: list[nn.Module] = []
    channels = input_shape[0]
    for block in cfg.blocks:
        padding = block.padding if block.stride == 1 or block.padding != "same" else block.kernel // 2
        layers.append(nn.Conv2d(channels, block.channels, block.kernel, block.stride, padding, bias=not block.batch_norm))
        if block.batch_norm:
            layers.append(nn.BatchNorm2d(block.channels))
        layers.append(activation(block.activation))
        if block.pool != "none":
            layers.append((nn.MaxPool2d if block.pool == "max" else nn.AvgPool2d)(block.pool_size))
        if block.dropout > 0:
            layers.append(nn.Dropout2d(block.dropout))
        channels = block.channels
    features = nn.Sequential(*layers)
    try:
        with torch.no_grad():  # infer the flattened width with a dummy forward pass
            out = features(torch.zeros(1, *input_shape))
    except RuntimeError:
        out = torch.zeros(0)
    if out.numel() == 0:
        raise ConfigError(
            f"model.blocks shrink a {input_shape[1]}x{input_shape[2]} image to nothing; use fewer blocks, less pooling or padding"
        )
    stack, width = dense_stack(out.numel(), cfg.dense, cfg.activation, cfg.dropout, False)
    return nn.Sequential(features, nn.Flatten(), stack, nn.Linear(width, num_outputs))
