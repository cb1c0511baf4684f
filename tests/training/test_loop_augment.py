"""Augmentation in the training loop: training batches only, soft targets in the loss, bit-exact
resume with the augmentation generator in the checkpoint, and the job's kind check."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config
from safetensors.torch import load as load_tensors

import forgeml
from forgeml.data.augment import Augmenter
from forgeml.errors import ConfigError
from forgeml.training.loop import batched_outputs, compute_loss, task_metrics

from .support import CPU, Digits, Outcome, same_weights
from .support import run_fit as support_run_fit

pytestmark = pytest.mark.usefixtures("single_thread_torch")

MLP = {"type": "mlp", "hidden": [32], "dropout": 0.3}
IMAGE_AUGMENT = [
    {"type": "random_crop", "padding": 1},
    {"type": "flip", "p": 0.5},
    {"type": "affine", "degrees": 10, "translate": 0.1, "scale": [0.9, 1.1]},
    {"type": "noise", "std": 0.1},
    {"type": "cutout", "size": 2, "p": 0.5},
    {"type": "mixup", "alpha": 0.2},
]


class CountingAugmenter(Augmenter):
    """An Augmenter that records the size of every batch it is given."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.batch_rows: list[int] = []

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.batch_rows.append(inputs.shape[0])
        return super().__call__(inputs, targets)


def run_fit(data: Digits, augment: list[dict[str, Any]] | None = IMAGE_AUGMENT, **kwargs: Any) -> tuple[Outcome, Augmenter | None]:
    """``support.run_fit`` with a dropout MLP and, by default, every image augmentation counted."""
    outcome = support_run_fit(data, model=MLP, augment=augment, augmenter_class=CountingAugmenter, **kwargs)
    return outcome, outcome.augmenter


# --------------------------------------------------------------------------------------------------
# the loss takes class probabilities


def test_compute_loss_takes_class_probabilities():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    one_hot = F.one_hot(labels, 3).float()
    for smoothing in (0.0, 0.2):
        hard = compute_loss(logits, labels, "classification", smoothing)
        assert float(compute_loss(logits, one_hot, "classification", smoothing)) == pytest.approx(float(hard), rel=1e-6)
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]])
    expected = -(soft * torch.log_softmax(logits, dim=1)).sum(1).mean()
    assert float(compute_loss(logits, soft, "classification")) == pytest.approx(float(expected), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# the loop

PINNED_AUGMENTED_LOSS = 2.1995  # mean training loss over steps 11-20 (without augmentation: 0.9839)


def test_training_with_augmentation_runs_and_differs_from_plain(digits: Digits):
    augmented, _ = run_fit(digits, max_steps=20)
    plain, _ = run_fit(digits, augment=None, max_steps=20)
    losses = [r["loss"] for r in augmented.logs if r["split"] == "train"]
    assert all(math.isfinite(loss) for loss in losses)
    assert round(losses[-1], 4) == PINNED_AUGMENTED_LOSS
    assert round([r["loss"] for r in plain.logs if r["split"] == "train"][-1], 4) == 0.9839


def test_only_training_micro_batches_are_augmented(digits: Digits):
    outcome, augmenter = run_fit(digits, max_steps=12, grad_accum=2, batch_size=32, eval_every=3, keep_best=False)
    assert augmenter is not None
    assert augmenter.batch_rows == [32] * 24  # every micro-batch once; never the 179 validation rows
    assert sum(augmenter.batch_rows) == outcome.result.state.samples
    # the logged validation metrics are those of the model on the plain validation inputs
    outputs = batched_outputs(outcome.model, digits.validation[0], 512, CPU)
    final = [r for r in outcome.logs if r["split"] == "validation"][-1]
    assert final["loss"] == task_metrics(outputs, digits.validation[1], "classification", 10)["loss"]


def test_resume_with_augmentation_continues_bit_for_bit(digits: Digits):
    settings = {"epochs": 2, "checkpoint_every": 7}  # 23 batches per epoch: checkpoint 7 and 28 are mid-epoch
    uninterrupted, _ = run_fit(digits, **settings)
    final_step = uninterrupted.result.state.step
    assert "augment" in load_tensors(uninterrupted.checkpoints[7]["rng.safetensors"])
    for step in (7, 28):
        resumed, _ = run_fit(digits, resume_files=uninterrupted.checkpoints[step], **settings)
        assert same_weights(resumed.model.state_dict(), uninterrupted.model.state_dict()), f"resumed from step {step}"
        final_rng = [load_tensors(outcome.checkpoints[final_step]["rng.safetensors"]) for outcome in (resumed, uninterrupted)]
        assert same_weights(*final_rng)
        state = [asdict(outcome.result.state) | {"train_seconds": 0} for outcome in (resumed, uninterrupted)]
        assert state[0] == state[1]


# --------------------------------------------------------------------------------------------------
# the job


def test_the_job_trains_with_augmentation_and_checkpoints_its_generator(tmp_path: Path):
    config = tiny_config()
    config["data"]["augment"] = [{"type": "flip"}, {"type": "random_crop", "padding": 1}, {"type": "mixup"}]
    result = forgeml.train(config, out=tmp_path / "run", quiet=True)
    assert result.metrics["training"]["steps"] == 12
    latest = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    assert "augment" in load_tensors((latest / "rng.safetensors").read_bytes())
    assert json.loads((latest / "state.json").read_text())["step"] == 12


def test_the_job_stops_before_training_when_an_augmentation_does_not_fit(tmp_path: Path):
    config = tiny_config()
    config["data"]["augment"] = [{"type": "flip"}, {"type": "token_swap"}]
    with pytest.raises(ConfigError) as info:
        forgeml.train(config, out=tmp_path / "run", quiet=True)
    assert str(info.value).startswith("data.augment[1] (token_swap): applies to tokens inputs, but this model is given image inputs (1-channel 8x8 images)")
    assert not (tmp_path / "run").exists()  # nothing trained, nothing left behind
