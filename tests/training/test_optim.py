"""Optimizers and schedules: pinned learning rates, weight decay groups, optimizer state without pickle."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from forgeml.config import TrainConfig
from forgeml.training.optim import build_optimizer, lr_at, optimizer_state_from_tensors, optimizer_state_to_tensors

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def model_with_norm() -> nn.Module:
    """Conv (4-D kernel), batch norm (1-D scale and shift), linear (2-D) and biases."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


def take_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    """A few optimizer steps on random data (so the optimizer has state)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        inputs = torch.randn(4, 1, 4, 4, generator=generator)
        loss = model(inputs).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def as_plain(value: Any) -> Any:
    """Optimizer state with tuples as lists and tensors as lists, for comparing state dicts."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, value.tolist())
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# learning-rate schedules


def test_constant_schedule_with_warmup():
    cfg = TrainConfig(lr=0.1, warmup_steps=4)
    assert [lr_at(step, cfg, 100) for step in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert lr_at(99, cfg, 100) == 0.1
    assert lr_at(0, TrainConfig(lr=0.3), 10) == 0.3


def test_step_schedule():
    cfg = TrainConfig(lr=0.1, schedule="step", step_every=3, gamma=0.5)
    assert [lr_at(step, cfg, 100) for step in (0, 2, 3, 5, 6, 9)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125])


def test_cosine_schedule_with_warmup():
    cfg = TrainConfig(lr=0.1, schedule="cosine", warmup_steps=10, min_lr=0.001)
    total = 111  # 10 warmup steps, then 101 steps of cosine from step 10 to step 110
    assert lr_at(0, cfg, total) == pytest.approx(0.01)  # the first step already moves
    assert lr_at(9, cfg, total) == pytest.approx(0.1)  # the end of warmup reaches the peak
    assert lr_at(10, cfg, total) == pytest.approx(0.1)
    assert lr_at(60, cfg, total) == pytest.approx(0.001 + 0.099 * 0.5)  # half way
    assert lr_at(35, cfg, total) == pytest.approx(0.001 + 0.099 * 0.5 * (1 + 2**-0.5))  # a quarter of the way
    assert lr_at(110, cfg, total) == 0.001  # the last step is exactly min_lr
    lrs = [lr_at(step, cfg, total) for step in range(10, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_cosine_without_warmup_and_a_single_step():
    cfg = TrainConfig(lr=1.0, schedule="cosine")
    assert lr_at(0, cfg, 3) == 1.0 and lr_at(1, cfg, 3) == pytest.approx(0.5) and lr_at(2, cfg, 3) == 0.0
    assert lr_at(0, cfg, 1) == 1.0  # no division by zero


# --------------------------------------------------------------------------------------------------
# optimizers and weight decay


def test_weight_decay_applies_to_matrices_and_kernels_only():
    model = model_with_norm()
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sorted(p.ndim for p in decay["params"]) == [2, 4]  # linear weight, conv kernel
    assert sorted(p.ndim for p in no_decay["params"]) == [1, 1, 1, 1]  # conv bias, norm scale and shift, linear bias
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_adamw_decay_shrinks_weights_but_not_biases():
    model = nn.Linear(3, 2)
    before = copy.deepcopy(model.state_dict())
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decoupled decay moves anything
    optimizer.step()
    assert torch.allclose(model.weight, before["weight"] * (1 - 0.1 * 0.5))
    assert torch.equal(model.bias, before["bias"])


def test_optimizer_choice_and_options():
    model = nn.Linear(2, 2)
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, momentum=0.9, nesterov=True))
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.param_groups[0]["lr"], sgd.param_groups[0]["momentum"], sgd.param_groups[0]["nesterov"]) == (0.5, 0.9, True)
    assert build_optimizer(model, TrainConfig(optimizer="sgd", nesterov=True)).param_groups[0]["nesterov"] is False  # needs momentum
    adam = build_optimizer(model, TrainConfig(optimizer="adam", betas=(0.8, 0.95)))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.95)
    assert type(build_optimizer(model, TrainConfig(optimizer="adamw"))) is torch.optim.AdamW


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    optimizer = build_optimizer(model, TrainConfig())
    assert not any(p is model[0].weight for g in optimizer.param_groups for p in g["params"])


# --------------------------------------------------------------------------------------------------
# optimizer state <-> tensors + JSON metadata


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(optimizer="adam", lr=0.01),
        TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1, betas=(0.8, 0.9)),
        TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9),
        TrainConfig(optimizer="sgd", lr=0.1),
    ],
    ids=["adam", "adamw", "sgd-momentum", "sgd-plain"],
)
def test_optimizer_state_round_trips_through_tensors_and_json(cfg: TrainConfig):
    model = model_with_norm()
    optimizer = build_optimizer(model, cfg)
    take_steps(model, optimizer, 3)
    tensors, metadata = optimizer_state_to_tensors(optimizer.state_dict())
    assert all(isinstance(v, str) for v in metadata.values())  # safetensors metadata is str -> str
    assert len(json.loads(metadata["param_groups"])) == len(optimizer.param_groups)
    assert isinstance(json.loads(metadata["other_state"]), dict)

    twin = copy.deepcopy(model)
    restored = build_optimizer(twin, cfg)
    restored.load_state_dict(optimizer_state_from_tensors(tensors, metadata))
    assert as_plain(restored.state_dict()) == as_plain(optimizer.state_dict())

    take_steps(model, optimizer, 2, seed=1)  # and both continue identically
    take_steps(twin, restored, 2, seed=1)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_optimizer_state_round_trips_through_a_safetensors_file(tmp_path: Path):
    model = model_with_norm()
    cfg = TrainConfig(optimizer="adam", lr=0.01)
    optimizer = build_optimizer(model, cfg)
    take_steps(model, optimizer, 2)
    tensors, metadata = optimizer_state_to_tensors(optimizer.state_dict())
    assert set(tensors) == {f"state.{i}.{key}" for i in range(6) for key in ("step", "exp_avg", "exp_avg_sq")}
    save_file(tensors, tmp_path / "optimizer.safetensors", metadata=metadata)
    with safe_open(tmp_path / "optimizer.safetensors", "pt") as handle:
        loaded = {name: handle.get_tensor(name) for name in handle.keys()}
        loaded_metadata = handle.metadata()
    restored = build_optimizer(copy.deepcopy(model), cfg)
    restored.load_state_dict(optimizer_state_from_tensors(loaded, loaded_metadata))
    assert as_plain(restored.state_dict()) == as_plain(optimizer.state_dict())


def test_an_unstepped_optimizer_round_trips():
    optimizer = build_optimizer(nn.Linear(2, 2), TrainConfig())
    tensors, metadata = optimizer_state_to_tensors(optimizer.state_dict())
    assert tensors == {}
    assert optimizer_state_from_tensors(tensors, metadata)["state"] == {}
