"""``forgeml train --nproc 2``: DDP on CPU (gloo) in real processes, against one process.

``train.batch_size`` is the global batch, so 2 processes x 16 rows must end where 1 process x 32 rows
ends (allclose 1e-6: only the order of the gradient summation differs), with and without gradient
accumulation; a 2-process run stopped at a checkpoint and resumed must end where an uninterrupted one
ends; only rank 0 writes the run. One module fixture trains everything, side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from .support import TrainedRun, assert_user_error, describe, forge, in_parallel, read_history, read_json, tiny_config, write_yaml

STEPS = 8
CONFIG = tiny_config(
    model={"type": "mlp", "hidden": [32]},  # no dropout: 1 and 2 processes draw no random masks
    train={"epochs": 1, "max_steps": STEPS, "batch_size": 32, "lr": 0.01, "log_every": 2, "checkpoint_every": 2},
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedRun]:
    root = tmp_path_factory.mktemp("distributed")
    config = write_yaml(root / "config.yaml", CONFIG)

    def train(name: str, *extra: Any) -> TrainedRun:
        result = forge("train", config, "--out", root / name, *extra)
        return TrainedRun(config, root / name, result, tuple(str(e) for e in extra))

    accumulate = ("--set", "train.batch_size=16", "--set", "train.grad_accum=2")  # still 32 rows per step
    first = in_parallel(
        {
            "single": lambda: train("single"),
            "ddp": lambda: train("ddp", "--nproc", 2),
            "ddp_accum": lambda: train("ddp_accum", "--nproc", 2, *accumulate),
            "stopped": lambda: train("resumed", "--nproc", 2, "--set", f"train.max_steps={STEPS // 2}"),
        }
    )
    for run in first.values():
        assert run.result.returncode == 0, describe(run.result)
    # max_steps goes back to the config's STEPS: a change resume allows
    resumed = forge("train", config, "--resume", root / "resumed", "--nproc", 2)
    assert resumed.returncode == 0, describe(resumed)
    return first | {"resumed": TrainedRun(config, root / "resumed", resumed, ("--resume",))}


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=0, atol=1e-6, msg=name)


def test_two_processes_match_one_with_the_global_batch(runs: dict[str, TrainedRun]) -> None:
    assert_same_weights(runs["single"].path, runs["ddp"].path)
    assert read_json(runs["ddp"].path / "metrics.json")["training"]["processes"] == 2
    # the logged loss is the mean over ranks: the loss of the global batch
    single, ddp = read_history(runs["single"].path), read_history(runs["ddp"].path)
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], abs=1e-5)


def test_two_processes_match_one_with_gradient_accumulation(runs: dict[str, TrainedRun]) -> None:
    # 2 processes x 2 micro-batches x 8 rows: the same 32 rows per step as one process x 32
    assert_same_weights(runs["single"].path, runs["ddp_accum"].path)


def test_a_resumed_two_process_run_matches_an_uninterrupted_one(runs: dict[str, TrainedRun]) -> None:
    assert "resuming" in runs["resumed"].result.stdout
    assert_same_weights(runs["ddp"].path, runs["resumed"].path)
    train_losses = [[r["loss"] for r in read_history(runs[name].path) if r["split"] == "train"] for name in ("resumed", "ddp")]
    assert train_losses[0] == pytest.approx(train_losses[1], abs=1e-6)


def test_only_rank_zero_writes(runs: dict[str, TrainedRun]) -> None:
    run = runs["ddp"]
    steps = [(r["step"], r["split"]) for r in read_history(run.path)]
    assert steps == sorted(set(steps))  # no line written twice
    assert [s for s, split in steps if split == "train"] == [2, 4, 6, 8]
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir() if p.is_dir())[-1] == f"step-{STEPS:06d}"
    assert run.result.stdout.count("training mlp") == 1  # one progress stream, rank 0's
    assert "x 2 processes" in run.result.stdout


def test_a_batch_that_does_not_split_over_the_processes_is_a_user_error(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "config.yaml", CONFIG)
    result = forge("train", config, "--out", tmp_path / "run", "--nproc", 2, "--set", "train.batch_size=33")
    assert_user_error(result, "train.batch_size", "33", "2 processes")
    assert not (tmp_path / "run").exists()
