"""What a checkpoint holds, as bytes for ``RunDir.save_checkpoint``: safetensors and JSON, no pickle.

    model.safetensors       weights (on a pretrained base with frozen weights, LoRA or freeze: only
                            the trained ones, see ``state_dict_tensors``)
    optimizer.safetensors   optimizer tensors; param groups and scalars in the file's metadata
    rng.safetensors         torch (and CUDA) RNG, the shuffling generator now and at epoch start,
                            the augmentation generator
    best.safetensors        best weights so far by the monitored metric (when tracked)
    state.json              step, epoch, position in the epoch, early-stopping and scaler state
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from forgeml.training.optim import optimizer_state_from_tensors, optimizer_state_to_tensors


def trained_names(model: nn.Module) -> set[str] | None:
    """The names of the tensors a run stores for ``model``: None for all of them; for a model on a
    pretrained base (``model.resolved``) of which some weights are frozen (LoRA adapters, or
    ``freeze``), only the trainable ones. The frozen rest is the pretrained model itself, loaded again
    from it (its identity checked against the run's base_model.json), so a LoRA checkpoint of a
    135M-parameter model is a few MB, not half a GB."""
    if getattr(model, "resolved", None) is None:
        return None
    parameters = dict(model.named_parameters())
    trainable = {name for name, parameter in parameters.items() if parameter.requires_grad}
    return None if len(trainable) == len(parameters) else trainable


def state_dict_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights a run stores (``trained_names``) that safetensors can store
    (contiguous, no shared storage)."""
    names = trained_names(model)
    return {
        name: tensor.detach().cpu().contiguous().clone()
        for name, tensor in model.state_dict().items()
        if names is None or name in names
    }


def load_state_dict_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load what ``state_dict_tensors`` stored into a freshly built ``model`` of the same config.

    Raises:
        RuntimeError: the tensors are not the ones ``model`` stores (another config), as
            ``load_state_dict`` raises for a whole model.
    """
    names = trained_names(model)
    if names is None:
        model.load_state_dict(tensors)
        return
    missing, unexpected = sorted(names - set(tensors)), sorted(set(tensors) - names)
    if missing or unexpected:
        raise RuntimeError(
            f"the stored tensors do not fit this model: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    model.load_state_dict(tensors, strict=False)


@dataclass
class Resumed:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    state: dict[str, Any]


def pack(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> dict[str, bytes]:
    tensors, metadata = optimizer_state_to_tensors(optimizer)
    files = {
        "model.safetensors": save_tensors(state_dict_tensors(model)),
        "optimizer.safetensors": save_tensors(tensors, metadata=metadata),
        "rng.safetensors": save_tensors({k: v.contiguous() for k, v in rng.items()}),
        "state.json": (json.dumps(state, indent=2) + "\n").encode(),
    }
    if best is not None:
        files["best.safetensors"] = save_tensors(best)
    return files


def unpack(files: dict[str, bytes]) -> Resumed:
    optimizer_bytes = files["optimizer.safetensors"]
    # safetensors.torch.load drops the file's metadata; read it from the header (8-byte length + JSON)
    header_size = int.from_bytes(optimizer_bytes[:8], "little")
    metadata = json.loads(optimizer_bytes[8 : 8 + header_size]).get("__metadata__", {})
    return Resumed(
        model=load_tensors(files["model.safetensors"]),
        optimizer=optimizer_state_from_tensors(load_tensors(optimizer_bytes), metadata),
        rng=load_tensors(files["rng.safetensors"]),
        best=load_tensors(files["best.safetensors"]) if "best.safetensors" in files else None,
        state=json.loads(files["state.json"]),
    )
