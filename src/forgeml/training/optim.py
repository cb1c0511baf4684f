"""Optimizers and learning-rate schedules.

The schedule is a plain function of the step, set on the optimizer before every step (as nanoGPT
does), so there is no scheduler object whose state could drift from the step counter on resume.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from torch import nn

from forgeml.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW over the model's trainable parameters.

    Weight decay applies to weight matrices and kernels only: decaying biases and normalisation
    scales pulls them towards zero for no regularising benefit.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    if cfg.weight_decay > 0:
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:  # one group: the optimizer's per-group work runs once per step
        groups = [{"params": params, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    # on a GPU, the fused kernels update every parameter in one launch instead of several per tensor
    fused = bool(params) and all(p.is_cuda for p in params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (step // cfg.step_every)
    if cfg.schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps - 1)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr


# --------------------------------------------------------------------------------------------------
# optimizer state <-> safetensors (tensors) + JSON (everything else)


def optimizer_state_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split an optimizer state dict (``optimizer.state_dict()``) into named tensors and JSON metadata for safetensors."""
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                other.setdefault(str(index), {})[key] = value
    metadata = {"param_groups": json.dumps(state["param_groups"]), "other_state": json.dumps(other)}
    return tensors, metadata


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, Any]:
    """Inverse of ``optimizer_state_to_tensors``: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in json.loads(metadata["other_state"]).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": json.loads(metadata["param_groups"])}
