"""In-memory batches: coverage, reproducibility from the generator state, mid-epoch resume, sharding."""

from __future__ import annotations

import pytest
import torch

from forgeml.data.batches import InMemoryBatches


def rows(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose first column is the row number, and targets equal to it, to trace rows through batches."""
    index = torch.arange(n)
    return torch.stack([index.float(), -index.float()], dim=1), index


def row_ids(batches: list[tuple[torch.Tensor, ...]]) -> list[int]:
    """The row numbers of a sequence of batches, in order."""
    return [int(i) for _, targets in batches for i in targets]


def test_every_row_exactly_once_per_epoch_in_a_new_order():
    batches = InMemoryBatches(rows(50), batch_size=8, seed=0)
    assert len(batches) == 7
    first, second = list(batches.epoch()), list(batches.epoch())
    assert [len(b[1]) for b in first] == [8, 8, 8, 8, 8, 8, 2]
    assert sorted(row_ids(first)) == list(range(50)) and sorted(row_ids(second)) == list(range(50))
    assert row_ids(first) != row_ids(second)  # reshuffled each epoch
    assert row_ids(first) != list(range(50))
    for inputs, targets in first:  # tensors stay aligned row by row
        assert torch.equal(inputs[:, 0].long(), targets) and torch.equal(inputs[:, 1], -targets.float())


def test_same_seed_same_order_and_no_shuffle_keeps_the_order():
    assert row_ids(list(InMemoryBatches(rows(), 8, seed=5).epoch())) == row_ids(list(InMemoryBatches(rows(), 8, seed=5).epoch()))
    assert row_ids(list(InMemoryBatches(rows(), 8, seed=5).epoch())) != row_ids(list(InMemoryBatches(rows(), 8, seed=6).epoch()))
    assert row_ids(list(InMemoryBatches(rows(), 8, shuffle=False).epoch())) == list(range(50))


def test_an_epoch_replays_from_the_generator_state():
    batches = InMemoryBatches(rows(), 8, seed=0)
    list(batches.epoch())
    state = batches.generator.get_state()
    expected = row_ids(list(batches.epoch()))
    batches.generator.set_state(state)
    assert row_ids(list(batches.epoch())) == expected


def test_start_batch_yields_exactly_the_remaining_batches():
    batches = InMemoryBatches(rows(), 8, seed=0)
    state = batches.generator.get_state()
    full = list(batches.epoch())
    after = row_ids(list(batches.epoch()))
    for start in (0, 3, 6, 7):
        batches.generator.set_state(state)
        rest = list(batches.epoch(start_batch=start))
        assert len(rest) == len(full) - start
        assert row_ids(rest) == row_ids(full[start:])
        assert row_ids(list(batches.epoch())) == after  # and the following epoch is unchanged


def test_drop_last_and_whole_split_batches():
    dropped = InMemoryBatches(rows(50), 8, seed=0, drop_last=True)
    assert len(dropped) == 6 and [len(b[1]) for b in dropped.epoch()] == [8] * 6
    whole = InMemoryBatches(rows(50), None, shuffle=False)
    assert len(whole) == 1 and row_ids(list(whole.epoch())) == list(range(50))


def test_shards_are_disjoint_and_cover_the_usable_rows():
    world_size = 3
    shards = [InMemoryBatches(rows(50), 4, seed=7, rank=rank, world_size=world_size) for rank in range(world_size)]
    assert [len(s) for s in shards] == [4, 4, 4]  # 16 rows each, 50 // 3 * 3 = 48 usable
    seen = [row_ids(list(s.epoch())) for s in shards]
    assert [len(ids) for ids in seen] == [16, 16, 16]
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]).isdisjoint(seen[2]) and set(seen[1]).isdisjoint(seen[2])
    permutation = torch.randperm(50, generator=torch.Generator().manual_seed(7))[:48]
    assert sorted(seen[0] + seen[1] + seen[2]) == sorted(permutation.tolist())  # one shared permutation


def test_tensors_must_have_the_same_number_of_rows():
    with pytest.raises(ValueError, match=r"tensors have different numbers of rows: \[3, 4\]"):
        InMemoryBatches((torch.zeros(3), torch.zeros(4)), 2)
