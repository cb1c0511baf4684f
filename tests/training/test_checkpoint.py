"""Checkpoint files: what ``pack`` writes (safetensors and JSON, no pickle) and ``unpack`` reads back."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as load_tensors
from torch import nn

from forgeml.config import TrainConfig
from forgeml.training.checkpoint import pack, state_dict_tensors, unpack
from forgeml.training.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def trained_pair() -> tuple[nn.Module, torch.optim.Optimizer]:
    """A small model with batch norm (buffers too) and an Adam optimizer that has taken a step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizer = build_optimizer(model, TrainConfig(optimizer="adam", lr=0.01))
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_state_dict_tensors_is_a_detached_cpu_copy():
    model, _ = trained_pair()
    tensors = state_dict_tensors(model)
    assert set(tensors) == set(model.state_dict())  # buffers (running mean, num_batches_tracked) included
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(tensors["0.weight"], model[0].weight)
    assert not any(t.requires_grad for t in tensors.values())


def test_pack_writes_safetensors_and_json_only():
    model, optimizer = trained_pair()
    rng = {"torch": torch.get_rng_state(), "shuffle": torch.Generator().manual_seed(3).get_state()}
    files = pack(state_dict_tensors(model), optimizer.state_dict(), rng, None, {"step": 7, "epoch": 1})
    assert sorted(files) == ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
        load_tensors(files[name])  # valid safetensors
        assert not files[name].startswith(b"\x80")  # not a pickle stream
    assert json.loads(files["state.json"]) == {"step": 7, "epoch": 1}


def test_unpack_restores_model_optimizer_rng_best_and_state():
    model, optimizer = trained_pair()
    best = {k: v * 2 for k, v in state_dict_tensors(model).items()}
    rng = {"torch": torch.get_rng_state(), "shuffle": torch.Generator().manual_seed(3).get_state()}
    files = pack(state_dict_tensors(model), optimizer.state_dict(), rng, best, {"step": 7, "best_value": 0.25, "scaler": None})
    assert "best.safetensors" in files
    resumed = unpack(files)
    assert resumed.state == {"step": 7, "best_value": 0.25, "scaler": None}
    assert all(torch.equal(resumed.model[k], v) for k, v in model.state_dict().items())
    assert resumed.best is not None and all(torch.equal(resumed.best[k], v) for k, v in best.items())
    assert torch.equal(resumed.rng["torch"], rng["torch"]) and torch.equal(resumed.rng["shuffle"], rng["shuffle"])

    twin = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    twin.load_state_dict(resumed.model)
    restored = build_optimizer(twin, TrainConfig(optimizer="adam", lr=0.01))
    restored.load_state_dict(resumed.optimizer)
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert unpack(pack(state_dict_tensors(model), optimizer.state_dict(), rng, None, {"step": 1})).best is None
