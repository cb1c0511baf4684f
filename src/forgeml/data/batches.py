"""Training batches by batched indexing into in-memory tensors.

No per-example ``__getitem__`` and no collate: each batch is one ``index_select`` per tensor, on the
device the tensors live on. Shuffling draws from a dedicated ``torch.Generator`` whose state (taken
at the start of each epoch) is checkpointed, so a resumed run sees the same batches in the same order.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch


class InMemoryBatches:
    """Shuffled mini-batches over tensors that share their first dimension.

    Args:
        tensors: e.g. (inputs, targets), all with the same number of rows.
        batch_size: rows per batch; ``None`` for the whole split in one batch.
        shuffle: a new permutation each epoch.
        seed: seeds the shuffling generator.
        drop_last: drop a final batch smaller than ``batch_size``.
        rank, world_size: this process takes every ``world_size``-th row of the shared
            permutation (all ranks shuffle with the same seed), so processes see disjoint data and
            batch k of all ranks together is exactly batch k of one process with
            ``batch_size * world_size``: positions [k*B, (k+1)*B) of the same permutation, B the
            global batch. ``batch_size`` is per rank. The last ``num_rows % world_size`` rows of
            each permutation are left out so every rank has as many rows (DDP averages per-rank
            means: equal shards make that the mean over the global batch, the epoch's final
            smaller batch included).
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int | None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        sizes = {t.shape[0] for t in tensors}
        if len(sizes) != 1:
            raise ValueError(f"tensors have different numbers of rows: {sorted(sizes)}")
        self.tensors = tensors
        self.num_rows = sizes.pop()
        self.batch_size = batch_size or self.num_rows
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        rows = self.num_rows // self.world_size
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def epoch(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches of one epoch, from ``start_batch`` on (to resume in the middle of an epoch).

        Call ``generator.get_state()`` before this to be able to replay the epoch.
        """
        device = self.tensors[0].device
        if self.shuffle:
            order = torch.randperm(self.num_rows, generator=self.generator)
        else:
            order = torch.arange(self.num_rows)
        if self.world_size > 1:
            usable = (self.num_rows // self.world_size) * self.world_size
            order = order[:usable][self.rank :: self.world_size]
        order = order.to(device)
        for batch in range(start_batch, len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield tuple(t.index_select(0, index) for t in self.tensors)


class PoissonBatches:
    """Batches for differentially private training: each step takes every row independently with
    probability ``sample_rate`` (Poisson sampling, which the DP-SGD privacy accounting assumes), so
    batch sizes vary around ``batch_size``. An epoch is ``ceil(rows / batch_size)`` steps.

    The draws come from one ``torch.Generator``: resuming at ``start_batch`` replays the epoch's
    earlier draws from the generator state at its start, as ``InMemoryBatches`` does. A draw of no
    row at all (probability ``(1 - q) ** rows``: e^-64 for an expected batch of 64) is drawn again,
    since the loop needs at least one example per step.

    Args:
        tensors: e.g. (inputs, targets), all with the same number of rows.
        batch_size: the expected rows per batch.
        seed: seeds the sampling generator.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int = 0):
        sizes = {t.shape[0] for t in tensors}
        if len(sizes) != 1:
            raise ValueError(f"tensors have different numbers of rows: {sorted(sizes)}")
        self.tensors = tensors
        self.num_rows = sizes.pop()
        self.batch_size = min(batch_size, self.num_rows)
        self.sample_rate = self.batch_size / self.num_rows
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def epoch(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches of one epoch, from ``start_batch`` on (see the class docstring)."""
        device = self.tensors[0].device
        for batch in range(len(self)):
            index = torch.zeros(0, dtype=torch.int64)
            while len(index) == 0:
                index = (torch.rand(self.num_rows, generator=self.generator) < self.sample_rate).nonzero().squeeze(1)
            if batch >= start_batch:
                yield tuple(t.index_select(0, index.to(device)) for t in self.tensors)
