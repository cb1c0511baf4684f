"""A nan or inf loss: training stops at once with one line naming the step, the loss and the learning
rate, keeping only finite checkpoints (train.nonfinite: stop), or skips the step, counts it and goes
on until train.max_nonfinite_steps come in a row (skip_step). The losses overflow for real: a target
of 1e20 squares past float32's largest number, and plain SGD at lr 10 on a line explodes 19-fold per step."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import line_config

import forgeml
from forgeml.config import TrainConfig
from forgeml.data.batches import InMemoryBatches
from forgeml.errors import ConfigError, TrainingError
from forgeml.run import RunDir
from forgeml.training import checkpoint
from forgeml.training.loop import fit

pytestmark = pytest.mark.usefixtures("single_thread_torch")

HUGE = 1e20  # finite in float32, but its square (the MSE) is not
CPU = torch.device("cpu")


def fit_line(targets: torch.Tensor, **train: Any) -> tuple[torch.nn.Linear, dict[int, dict[str, bytes]], list[dict[str, Any]], Any]:
    """Fit y = w x + b by SGD on 64 points of a line, 8 per batch, checkpointing and logging every step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    inputs = torch.linspace(-1, 1, len(targets)).unsqueeze(1)
    cfg = TrainConfig(**{"optimizer": "sgd", "lr": 0.1, "batch_size": 8, "log_every": 1, "checkpoint_every": 1, **train})
    checkpoints: dict[int, dict[str, bytes]] = {}
    logs: list[dict[str, Any]] = []
    try:
        result = fit(
            model,
            InMemoryBatches((inputs, targets), 8, shuffle=True, seed=0),
            cfg,
            task="regression",
            num_outputs=1,
            device=CPU,
            save_checkpoint=lambda files, step: checkpoints.__setitem__(step, files),
            log=logs.append,
        )
    except TrainingError as error:
        return model, checkpoints, logs, error
    return model, checkpoints, logs, result


def line_with_one_huge_target() -> torch.Tensor:
    targets = 3 * torch.linspace(-1, 1, 64) + 1
    targets[5] = HUGE
    return targets


def finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_a_nonfinite_loss_stops_training_at_that_step_with_finite_checkpoints_only():
    model, checkpoints, logs, error = fit_line(line_with_one_huge_target(), epochs=3)
    assert isinstance(error, TrainingError)
    assert str(error) == "step 5: the loss is inf at lr 0.1; training stopped; lower train.lr"
    assert sorted(checkpoints) == [1, 2, 3, 4]  # nothing at or after the step that overflowed
    assert all(finite(checkpoint.unpack(files).model) for files in checkpoints.values())
    assert finite(model.state_dict())  # no step was taken from the inf loss
    assert [r["step"] for r in logs] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in logs)


def test_skip_step_skips_counts_and_goes_on():
    model, checkpoints, logs, result = fit_line(line_with_one_huge_target(), epochs=3, nonfinite="skip_step", max_nonfinite_steps=2)
    state = result.state
    assert state.step == 24 and state.nonfinite_steps == 3 and state.nonfinite_in_a_row == 0  # one batch per epoch holds the huge target
    skipped = [r["step"] for r in logs if "loss" not in r]  # a line of skipped steps only has no loss to show
    assert skipped == [5, 12, 18]
    assert [r["nonfinite_steps"] for r in logs if r["step"] in (4, 5, 24)] == [0, 1, 3]
    assert all(math.isfinite(r["loss"]) for r in logs if "loss" in r)
    assert finite(model.state_dict()) and all(finite(checkpoint.unpack(files).model) for files in checkpoints.values())
    assert json.loads(checkpoints[24]["state.json"])["nonfinite_steps"] == 3  # a resumed run counts on
    # the 21 steps taken pull the line towards y = 3x + 1 (the slope still on its way up at lr 0.1)
    assert model.weight.item() == pytest.approx(2.3153, abs=1e-3) and model.bias.item() == pytest.approx(0.9778, abs=1e-3)


def test_skip_step_stops_after_max_nonfinite_steps_in_a_row():
    _, checkpoints, _, error = fit_line(torch.full((64,), HUGE), nonfinite="skip_step", max_nonfinite_steps=3)
    assert str(error) == "step 3: the loss is inf at lr 0.1, 3 such steps in a row (train.max_nonfinite_steps); training stopped; lower train.lr"
    assert all(finite(checkpoint.unpack(files).model) for files in checkpoints.values())


def test_a_diverging_run_stops_and_keeps_its_finite_checkpoints(tmp_path: Path):
    with pytest.raises(TrainingError) as error:
        forgeml.train(line_config(lr=10), out=tmp_path / "run", quiet=True)
    assert str(error.value) == "step 16: the loss is inf at lr 10; training stopped; lower train.lr"
    run = tmp_path / "run"
    assert RunDir(run).checkpoint_names() == ["step-000012", "step-000008"]  # keep_checkpoints: 2
    assert not (run / "model.safetensors").exists() and not (run / "metrics.json").exists()
    newest = checkpoint.unpack({p.name: p.read_bytes() for p in (run / "checkpoints" / "step-000012").iterdir()})
    assert finite(newest.model) and max(float(t.abs().max()) for t in newest.model.values()) > 1e12  # finite, and far gone
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in history) == 15


def test_metrics_json_counts_skipped_steps_and_dp_sgd_refuses_to_skip(tmp_path: Path):
    result = forgeml.train(line_config(lr=0.1, epochs=3), out=tmp_path / "run", quiet=True)
    assert result.metrics["training"]["nonfinite_steps"] == 0
    with pytest.raises(ConfigError, match="train.privacy: DP-SGD cannot be combined with train.nonfinite: skip_step"):
        forgeml.train(line_config(nonfinite="skip_step", privacy={"noise_multiplier": 1.0}), out=tmp_path / "private", quiet=True)
