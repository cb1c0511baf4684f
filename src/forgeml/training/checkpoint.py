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

from forgeml.training import distributed
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


def _full_state_options(**options: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **options)


def state_dict_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights a run stores (``trained_names``) that safetensors can store
    (contiguous, no shared storage).

    For a model sharded with FSDP2 the full tensors are gathered to rank 0, a collective every rank
    must call; the other ranks get an empty dict.
    """
    names = trained_names(model)
    if distributed.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_full_state_options(cpu_offload=True))
    else:
        state = model.state_dict()
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items() if names is None or name in names}


def load_state_dict_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load what ``state_dict_tensors`` stored into a freshly built ``model`` of the same config.

    Raises:
        RuntimeError: the tensors are not the ones ``model`` stores (another config): tensors missing
            or unexpected, or one of another shape (named, with both shapes).
    """
    names = trained_names(model)
    if distributed.is_sharded(model):  # rank 0 holds the tensors (state_dict_tensors) and sends each rank its shards
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, tensors, options=_full_state_options(broadcast_from_rank0=True, strict=names is None))
        return
    expected = model.state_dict()
    whole = names is None or set(tensors) == set(expected)  # everything stored (as runs did before adapter-only storage)
    wanted = set(expected) if whole else names
    missing, unexpected = sorted(wanted - set(tensors)), sorted(set(tensors) - wanted)
    if missing or unexpected:
        raise RuntimeError(
            f"the stored tensors do not fit this model: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    # load_state_dict's own message puts the tensor's name past the first line, which is all a one-line error shows
    wrong = [name for name in tensors if tuple(tensors[name].shape) != tuple(expected[name].shape)]
    if wrong:
        name = wrong[0]
        raise RuntimeError(
            f"tensor {name!r} is {list(tensors[name].shape)} in the stored weights, {list(expected[name].shape)} in the model"
            + (f" ({len(wrong) - 1} more tensors differ in shape)" if len(wrong) > 1 else "")
        )
    model.load_state_dict(tensors, strict=whole)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict as ``torch.optim.Optimizer.state_dict`` gives it (parameters by
    index), whole, whatever the strategy: under FSDP2 each sharded tensor is gathered (a collective
    every rank must call; rank 0 keeps the result, the other ranks get an empty dict), so any run
    resumes from it with any number of processes."""
    if not distributed.is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.tensor import DTensor

    state = optimizer.state_dict()
    gathered = {
        index: {key: value.full_tensor().cpu() if isinstance(value, DTensor) else value for key, value in values.items()}
        for index, values in sorted(state["state"].items())  # the same order on every rank: each gather is a collective
    }
    return {"state": gathered, "param_groups": state["param_groups"]} if distributed.rank() == 0 else {}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load what ``optimizer_state`` gave (every rank has it whole) into the optimizer of ``model``:
    under FSDP2 each rank keeps its own shard of every tensor, cut as its parameter is."""
    if not distributed.is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    sharded: dict[int, dict[str, Any]] = {}
    for index, values in state["state"].items():
        parameter = parameters[int(index)]
        sharded[int(index)] = {
            key: distribute_tensor(value.to(parameter.device), parameter.device_mesh, parameter.placements, src_data_rank=None)
            if isinstance(parameter, DTensor) and isinstance(value, torch.Tensor) and value.shape == parameter.shape
            else value
            for key, value in values.items()
        }
    optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})


@dataclass
class Resumed:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    state: dict[str, Any]


def pack(
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    rng: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> dict[str, bytes]:
    """The checkpoint files, from ``state_dict_tensors(model)`` and ``optimizer_state(model, optimizer)``."""
    tensors, metadata = optimizer_state_to_tensors(optimizer_state)
    files = {
        "model.safetensors": save_tensors(weights),
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
