"""Architectures: output shapes, initialisation, the layers each option adds, and input checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.registry import MODELS

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def build(input_shape: tuple[int, ...], num_outputs: int = 3, **cfg: Any) -> nn.Module:
    """A model built through the registry from a config dict, for vector (1-d shape) or image (3-d) inputs."""
    config = MODELS.get(cfg["type"]).config.model_validate(cfg)
    spec = InputSpec("image" if len(input_shape) == 3 else "vector", input_shape)
    return MODELS.build(config, inputs=spec, num_outputs=num_outputs)


def layer_types(model: nn.Module) -> list[type]:
    """The leaf module classes of a model, in order."""
    return [type(m) for m in model.modules() if not list(m.children())]


def parameters(model: nn.Module) -> int:
    """The number of trainable numbers in a model."""
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "cfg, input_shape",
    [
        ({"type": "linear"}, (5,)),
        ({"type": "linear"}, (1, 8, 8)),
        ({"type": "mlp", "hidden": [7, 6]}, (5,)),
        ({"type": "mlp"}, (3, 4, 4)),
        ({"type": "cnn", "blocks": [{"channels": 4}, {"channels": 8}], "dense": [16]}, (1, 8, 8)),
        ({"type": "cnn", "blocks": [{"channels": 2, "stride": 2, "pool": "none"}], "dense": []}, (3, 9, 7)),
    ],
)
def test_output_shapes(cfg: dict, input_shape: tuple[int, ...]):
    model = build(input_shape, num_outputs=3, **cfg)
    assert model(torch.zeros(4, *input_shape)).shape == (4, 3)
    assert model(torch.zeros(1, *input_shape)).shape == (1, 3)


def test_parameter_counts():
    assert parameters(build((5,), 3, type="linear")) == 5 * 3 + 3
    assert parameters(build((5,), 3, type="linear", bias=False)) == 15
    assert parameters(build((5,), 3, type="mlp", hidden=[7, 6])) == (5 * 7 + 7) + (7 * 6 + 6) + (6 * 3 + 3)
    # conv 1->4 (36+4), conv 4->8 (288+8), 8x8 -> 2x2 after two pools: 32 -> 16 (512+16), 16 -> 10 (160+10)
    assert parameters(build((1, 8, 8), 10, type="cnn", blocks=[{"channels": 4}, {"channels": 8}], dense=[16])) == 1034


def test_linear_zero_init():
    model = build((4,), 2, type="linear", init="zeros")
    assert all((p == 0).all() for p in model.parameters())
    assert torch.equal(model(torch.randn(3, 4)), torch.zeros(3, 2))
    default = build((4,), 2, type="linear")
    assert any((p != 0).any() for p in default.parameters())


def test_cnn_needs_an_image_input():
    with pytest.raises(ConfigError) as info:
        build((64,), 10, type="cnn")
    assert str(info.value) == (
        "model.type cnn needs an image input (channels x height x width); this data gives a vector of 64 numbers: use mlp or linear"
    )


@pytest.mark.parametrize(
    "blocks",
    [
        [{"channels": 2}, {"channels": 2}, {"channels": 2}],  # 4 -> 2 -> 1 -> pooled to 0
        [{"channels": 2, "kernel": 5, "padding": "valid", "pool": "none"}],  # a kernel larger than the image
    ],
    ids=["pooled-away", "kernel-too-large"],
)
def test_cnn_blocks_that_shrink_the_image_to_nothing(blocks: list):
    with pytest.raises(ConfigError, match=r"model\.blocks shrink a 4x4 image to nothing"):
        build((1, 4, 4), 2, type="cnn", blocks=blocks)


def test_cnn_block_options_add_their_layers():
    plain = build((1, 8, 8), 2, type="cnn", blocks=[{"channels": 3}], dense=[5])
    assert layer_types(plain) == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert plain[0][0].bias is not None

    rich = build(
        (1, 8, 8),
        2,
        type="cnn",
        blocks=[{"channels": 3, "batch_norm": True, "pool": "avg", "pool_size": 4, "dropout": 0.2, "activation": "gelu"}],
        dense=[5],
        dropout=0.3,
        activation="tanh",
    )
    assert layer_types(rich) == [nn.Conv2d, nn.BatchNorm2d, nn.GELU, nn.AvgPool2d, nn.Dropout2d, nn.Flatten, nn.Linear, nn.Tanh, nn.Dropout, nn.Linear]
    conv, norm, _, pool, drop = rich[0]
    assert conv.bias is None  # the batch norm's shift replaces it
    assert pool.kernel_size == 4 and drop.p == 0.2
    assert rich[2][2].p == 0.3

    unpooled = build((1, 8, 8), 2, type="cnn", blocks=[{"channels": 3, "pool": "none", "padding": "valid", "kernel": 3}], dense=[])
    assert nn.MaxPool2d not in layer_types(unpooled)
    assert unpooled[0](torch.zeros(1, 1, 8, 8)).shape == (1, 3, 6, 6)


def test_strided_same_padding_halves_the_image():
    model = build((1, 8, 8), 2, type="cnn", blocks=[{"channels": 2, "stride": 2, "kernel": 5, "pool": "none"}], dense=[])
    assert model[0](torch.zeros(1, 1, 8, 8)).shape == (1, 2, 4, 4)


def test_mlp_options_add_their_layers():
    model = build((6,), 2, type="mlp", hidden=[4, 3], batch_norm=True, dropout=0.5, activation="silu")
    assert layer_types(model) == [
        nn.Flatten,
        nn.Linear, nn.BatchNorm1d, nn.SiLU, nn.Dropout,
        nn.Linear, nn.BatchNorm1d, nn.SiLU, nn.Dropout,
        nn.Linear,
    ]  # fmt: skip
    assert layer_types(build((6,), 2, type="mlp", hidden=[4])) == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]


def test_models_are_plain_modules_without_training_state():
    model = build((1, 8, 8), 10, type="cnn", blocks=[{"channels": 4}], dense=[8])
    assert isinstance(model, nn.Module) and all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, (nn.CrossEntropyLoss, nn.MSELoss)) for m in model.modules())
