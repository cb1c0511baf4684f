"""Linear and logistic regression: one affine map from the (flattened) input to the outputs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from forgeml.config import Section
from forgeml.inputs import InputSpec
from forgeml.models.layers import flat_width
from forgeml.registry import MODELS


class LinearConfig(Section):
    """y = W x + b. With a category target this is (multinomial) logistic regression."""

    type: Literal["linear"] = Field(description="Linear / logistic regression.")
    bias: bool = Field(True, description="Learn an intercept b.")
    init: Literal["zeros", "default"] = Field(
        "default", description="zeros: start from W = 0, b = 0 (the textbook start); default: PyTorch's uniform init."
    )


@MODELS.register("linear", LinearConfig)
def build_linear(cfg: LinearConfig, *, inputs: InputSpec, num_outputs: int) -> nn.Module:
    layer = nn.Linear(flat_width("linear", inputs), num_outputs, bias=cfg.bias)
    if cfg.init == "zeros":
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return nn.Sequential(nn.Flatten(), layer)
