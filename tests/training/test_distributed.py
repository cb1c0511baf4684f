"""Rank sharding and the single-process fallbacks of ``training.distributed`` (the real 2-process
DDP runs are in tests/e2e/test_distributed_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgeml.data.batches import InMemoryBatches
from forgeml.data.corpus import WindowBatches
from forgeml.errors import ConfigError
from forgeml.training import distributed
from forgeml.training.job import per_rank_batch_size


@pytest.mark.parametrize("rows", [96, 100])  # 100: the epoch ends with a smaller batch
def test_the_ranks_batches_together_are_the_single_process_batch(rows: int) -> None:
    data = (torch.arange(rows),)
    single = InMemoryBatches(data, 12, seed=3)
    ranks = [InMemoryBatches(data, 6, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(2):  # two epochs: the shared generator moves on alike
        expected = [batch[0] for batch in single.epoch()]
        per_rank = [[batch[0] for batch in shard.epoch()] for shard in ranks]
        assert len(ranks[0]) == len(ranks[1]) == len(single)
        for k, batch in enumerate(expected):
            together = torch.cat([per_rank[0][k], per_rank[1][k]])
            assert per_rank[0][k].shape == per_rank[1][k].shape  # equal shards: DDP's mean is the batch mean
            assert sorted(together.tolist()) == sorted(batch.tolist())


def test_window_batches_split_the_same_windows_over_ranks() -> None:
    tokens = np.arange(2000, dtype=np.uint16)
    single = WindowBatches(tokens, 8, 8, seed=1)
    ranks = [WindowBatches(tokens, 8, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    assert len(single) == len(ranks[0])
    for (inputs, _), (first, _), (second, _) in zip(single.epoch(), ranks[0].epoch(), ranks[1].epoch()):
        assert torch.equal(inputs, torch.cat([first, second]))


def test_the_global_batch_splits_evenly_or_is_an_error() -> None:
    assert per_rank_batch_size(32, 4) == 8
    assert per_rank_batch_size("full", 4) is None
    with pytest.raises(ConfigError, match="train.batch_size: 30 does not split evenly over 4 processes"):
        per_rank_batch_size(30, 4)


def test_without_torchrun_it_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.init_from_env(torch.device("cpu"))
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    value = torch.tensor(2.5)
    assert distributed.all_reduce_mean(value) is value
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(7) == [7]
    distributed.barrier()
    distributed.cleanup()
