"""Running under torchrun: the process group, this process's rank, and the few collectives the
loop and the job need.

torchrun starts one process per device and tells each who it is through the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without WORLD_SIZE this is a plain single
process: no process group, and every helper here does nothing (or returns its input), so the loop
calls them unconditionally.

Backends: NCCL for CUDA devices (each rank on ``cuda:LOCAL_RANK``), gloo for everything else.

Two ways to split the work (``train.strategy``): DDP keeps a whole copy of the model on every rank
and averages gradients; FSDP2 (``shard``: ``fully_shard`` on each repeated layer, then the root)
keeps 1/world of every parameter, gradient and optimizer state on each rank and gathers a layer's
parameters only while it runs, for models that do not fit one device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from forgeml.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Who this process is in the job. ``device`` is the device this rank trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes to the run directory or prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env(device: torch.device) -> DistInfo:
    """Join torchrun's process group when started by torchrun; a single process otherwise.

    Args:
        device: the device the config resolved to; under torchrun a CUDA device becomes
            ``cuda:LOCAL_RANK``.

    Returns:
        This process's rank, the number of processes, its local rank and its device.

    Raises:
        ConfigError: torchrun asked for more CUDA processes on this node than it has devices.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo(device=device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"--nproc: local rank {local_rank} has no GPU (this node has {torch.cuda.device_count()}); "
                "start at most one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup() -> None:
    """Leave the process group (when there is one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over ranks, as a new tensor (``value`` itself in a single process)."""
    if not is_distributed():
        return value
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / dist.get_world_size()


def broadcast_object(value: Any, source: int = 0) -> Any:
    """Rank ``source``'s ``value`` on every rank (any picklable object)."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def shard(model: nn.Module) -> nn.Module:
    """FSDP2, in place: ``fully_shard`` each layer of the model's outermost stacks of repeated layers
    (every module held in a ``ModuleList``: a GPT's blocks, a transformers model's layers), then the
    model itself for what is left (embeddings, final norm, head). Returns ``model``."""
    from torch.distributed.fsdp import fully_shard

    stacks: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(stack + ".") for stack in stacks):
            stacks.append(name)
            for layer in module:
                if any(True for _ in layer.parameters()):
                    fully_shard(layer)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` went through ``shard`` (its parameters are DTensors spread over the ranks)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(model, FSDPModule)
