"""The training loop: pinned losses, accumulation, early stopping and best weights, clipping, label
smoothing, device and precision checks, and bit-exact resume from checkpoints."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

import pytest
import torch
from helpers import tiny_config
from safetensors.torch import load as load_tensors

from forgeml.config import load_config
from forgeml.data.batches import InMemoryBatches
from forgeml.errors import ConfigError
from forgeml.registry import MODELS
from forgeml.training.loop import batched_outputs, compute_loss, resolve_device, seed_everything, task_metrics
from forgeml.training.optim import lr_at

from .support import CPU, MLP, Digits, Outcome, run_fit, same_weights

pytestmark = pytest.mark.usefixtures("single_thread_torch")



def validation_loss(model: torch.nn.Module, data: Digits) -> float:
    """The model's loss on the validation split, computed as the loop does."""
    outputs = batched_outputs(model, data.validation[0], 512, CPU)
    return task_metrics(outputs, data.validation[1], "classification", 10)["loss"]


# --------------------------------------------------------------------------------------------------
# pinned numbers


PINNED_FINAL_TRAIN_LOSS = 0.3504  # mean over steps 21-30
PINNED_VALIDATION_ACCURACY = 0.905  # 162 of 179


def test_pinned_training_run(digits: Digits):
    outcome = run_fit(digits, epochs=2, max_steps=30)
    train_logs = [r for r in outcome.logs if r["split"] == "train"]
    assert [r["step"] for r in train_logs] == [10, 20, 30]
    assert round(train_logs[-1]["loss"], 4) == PINNED_FINAL_TRAIN_LOSS
    validation = [r for r in outcome.logs if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [23, 30]  # each epoch (eval_every: null), and the final step
    assert round(validation[-1]["accuracy"], 4) == PINNED_VALIDATION_ACCURACY
    state = outcome.result.state
    assert (state.step, state.epoch, state.batch_in_epoch, state.samples) == (30, 1, 7, 1439 + 7 * 64)  # 23 batches per epoch
    assert outcome.result.total_steps == 30


def test_loop_state_counts_steps_epochs_and_samples(digits: Digits):
    outcome = run_fit(digits, max_steps=30, batch_size=100)
    state = outcome.result.state
    assert len(digits.train[0]) == 1439 and math.ceil(1439 / 100) == 15
    assert (state.step, state.epoch, state.batch_in_epoch) == (15, 1, 0)  # epochs: 1 stops before max_steps
    assert state.samples == 1439
    assert outcome.result.total_steps == 15
    assert sorted(outcome.checkpoints) == [15]  # checkpoint_every: null -> each epoch, and at the end


# --------------------------------------------------------------------------------------------------
# gradient accumulation


def test_two_micro_batches_of_16_equal_one_batch_of_32(digits: Digits):
    model = {"type": "mlp", "hidden": [16]}  # no batch norm, no dropout
    common = {"optimizer": "sgd", "lr": 0.1, "max_steps": 10}
    whole = run_fit(digits, model, with_validation=False, batch_size=32, **common)
    accumulated = run_fit(digits, model, with_validation=False, batch_size=16, grad_accum=2, **common)
    assert accumulated.result.state.step == whole.result.state.step == 10
    assert accumulated.result.state.samples == whole.result.state.samples == 320
    for name, value in whole.model.state_dict().items():
        assert torch.allclose(accumulated.model.state_dict()[name], value, atol=1e-6), name
    halves = run_fit(digits, model, with_validation=False, batch_size=16, **common)  # 10 steps of 16 differ
    assert not torch.allclose(halves.model.state_dict()["1.0.weight"], whole.model.state_dict()["1.0.weight"], atol=1e-6)


# --------------------------------------------------------------------------------------------------
# evaluation, best weights, early stopping


def test_early_stopping_stops_and_keep_best_restores_the_best_weights(digits: Digits):
    # min_delta 100: nothing after the first evaluation counts as an improvement
    stopped = run_fit(digits, max_steps=50, eval_every=1, checkpoint_every=1, early_stopping={"patience": 2, "min_delta": 100.0})
    state = stopped.result.state
    assert state.stopped_early and state.step == 3 < stopped.result.total_steps
    assert (state.best_step, state.evals_without_improvement) == (1, 2)
    assert [r["step"] for r in stopped.logs if r["split"] == "validation"] == [1, 2, 3]
    assert sorted(stopped.checkpoints) == [1, 2, 3]
    final = stopped.model.state_dict()
    assert same_weights(final, load_tensors(stopped.checkpoints[1]["model.safetensors"]))  # weights after step 1
    assert not same_weights(final, load_tensors(stopped.checkpoints[3]["model.safetensors"]))
    assert same_weights(final, load_tensors(stopped.checkpoints[3]["best.safetensors"]))
    assert validation_loss(stopped.model, digits) == state.best_value


def test_without_keep_best_the_last_weights_stay(digits: Digits):
    outcome = run_fit(digits, max_steps=3, eval_every=1, checkpoint_every=1, keep_best=False, early_stopping={"patience": 5, "min_delta": 100.0})
    assert not outcome.result.state.stopped_early and outcome.result.state.best_step == 1
    assert same_weights(outcome.model.state_dict(), load_tensors(outcome.checkpoints[3]["model.safetensors"]))


def test_keep_best_by_accuracy_picks_the_highest(digits: Digits):
    outcome = run_fit(digits, max_steps=8, eval_every=2, monitor="accuracy", lr=0.05)
    evaluations = [r for r in outcome.logs if r["split"] == "validation"]
    best = max(evaluations, key=lambda r: r["accuracy"])  # the first of equal values wins
    assert outcome.result.state.best_step == best["step"]
    assert outcome.result.state.best_value == best["accuracy"]
    outputs = batched_outputs(outcome.model, digits.validation[0], 512, CPU)
    assert task_metrics(outputs, digits.validation[1], "classification", 10)["accuracy"] == best["accuracy"]


def test_unknown_monitor_metric(digits: Digits):
    with pytest.raises(ConfigError, match=r"train\.monitor: 'mse' is not one of: loss, accuracy, precision_macro, recall_macro, f1_macro"):
        run_fit(digits, max_steps=1, monitor="mse")


# --------------------------------------------------------------------------------------------------
# clipping, label smoothing, schedule


def update_norm(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """The global L2 norm of the change in weights."""
    return math.sqrt(sum(float((after[k] - before[k]).pow(2).sum()) for k in before))


def initial_weights(data: Digits, model: dict[str, Any] = MLP) -> dict[str, torch.Tensor]:
    """The seeded initial weights ``run_fit`` starts from."""
    seed_everything(0)
    return MODELS.build(MODELS.get(model["type"]).config.model_validate(model), inputs=data.inputs, num_outputs=10).state_dict()


def test_grad_clip_bounds_the_update(digits: Digits):
    start = initial_weights(digits)
    settings = {"optimizer": "sgd", "lr": 1.0, "max_steps": 1, "batch_size": "full"}
    free = run_fit(digits, with_validation=False, **settings)
    clipped = run_fit(digits, with_validation=False, grad_clip=0.01, **settings)
    assert update_norm(start, free.model.state_dict()) > 0.1
    assert update_norm(start, clipped.model.state_dict()) == pytest.approx(0.01, rel=1e-4)  # lr x the clipped norm


def test_label_smoothing_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 1])
    log_p = torch.log_softmax(logits, dim=1)
    plain = -(log_p[0, 0] + log_p[1, 1]) / 2
    uniform = -log_p.mean(dim=1).mean()
    assert float(compute_loss(logits, targets, "classification")) == pytest.approx(float(plain), rel=1e-6)
    assert float(compute_loss(logits, targets, "classification", 0.2)) == pytest.approx(float(0.8 * plain + 0.2 * uniform), rel=1e-6)
    regression = compute_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]), "regression")
    assert float(regression) == pytest.approx(2.5)


def test_label_smoothing_changes_the_training_loss(digits: Digits):
    plain = run_fit(digits, max_steps=1, log_every=1, with_validation=False)
    smoothed = run_fit(digits, max_steps=1, log_every=1, with_validation=False, label_smoothing=0.2)
    seed_everything(0)
    first_batch = next(InMemoryBatches(digits.train, 64, seed=0).epoch())
    model = MODELS.build(MODELS.get("mlp").config.model_validate(MLP), inputs=digits.inputs, num_outputs=10)
    with torch.no_grad():
        outputs = model(first_batch[0])
    assert plain.logs[0]["loss"] == pytest.approx(float(compute_loss(outputs, first_batch[1], "classification")), rel=1e-6)
    assert smoothed.logs[0]["loss"] == pytest.approx(float(compute_loss(outputs, first_batch[1], "classification", 0.2)), rel=1e-6)
    assert abs(smoothed.logs[0]["loss"] - plain.logs[0]["loss"]) > 1e-3


def test_the_logged_learning_rate_follows_the_schedule(digits: Digits):
    outcome = run_fit(digits, max_steps=6, log_every=1, with_validation=False, schedule="cosine", warmup_steps=2, min_lr=0.001)
    cfg = load_config(tiny_config(train={"lr": 0.01, "schedule": "cosine", "warmup_steps": 2, "min_lr": 0.001}))
    assert [r["lr"] for r in outcome.logs] == [lr_at(step, cfg.train, 6) for step in range(6)]
    assert outcome.logs[-1]["lr"] == 0.001


# --------------------------------------------------------------------------------------------------
# device and precision


def test_fp16_on_cpu_is_a_config_error(digits: Digits):
    with pytest.raises(ConfigError, match=r"train\.precision: fp16 needs a CUDA device"):
        run_fit(digits, max_steps=1, precision="fp16")


def test_bf16_autocast_trains_on_cpu(digits: Digits):
    outcome = run_fit(digits, max_steps=3, precision="bf16", log_every=1)
    assert all(math.isfinite(r["loss"]) for r in outcome.logs)
    assert all(t.dtype == torch.float32 for t in outcome.model.state_dict().values())  # weights stay fp32


def test_resolve_device_without_cuda(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError) as info:
            resolve_device(name)
        assert str(info.value) == f"train.device: {name!r} asked for, but no CUDA device is available; use auto or cpu"
    with pytest.raises(ConfigError, match=r"train\.device: 'mps' asked for, but this machine has no MPS device"):
        resolve_device("mps")
    assert resolve_device("auto") == CPU and resolve_device("cpu") == CPU


def test_resolve_device_auto_prefers_cuda(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


# --------------------------------------------------------------------------------------------------
# resume: bit for bit


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The metadata of safetensors bytes (read from the JSON header)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


def same_file_content(a: bytes, b: bytes) -> bool:
    """Equal tensors and metadata (the header's key order may differ: safetensors writes a hash map)."""
    return same_weights(load_tensors(a), load_tensors(b)) and safetensors_metadata(a) == safetensors_metadata(b)


def comparable_state(outcome: Outcome) -> dict[str, Any]:
    """The final loop state without its wall-clock time."""
    state = asdict(outcome.result.state)
    state.pop("train_seconds")
    return state


RESUME_CASES = {
    # 1439 rows / 64 = 23 batches per epoch: checkpoints at 7, 14, 21, 28, ... are mid-epoch
    "mlp-dropout-mid-epoch": ({"type": "mlp", "hidden": [32], "dropout": 0.3}, {"epochs": 2, "checkpoint_every": 7}, [7, 28]),
    "mlp-epoch-end": ({"type": "mlp", "hidden": [32], "dropout": 0.3}, {"epochs": 2, "checkpoint_every": None}, [23]),
    "cnn-batchnorm-dropout": (
        {"type": "cnn", "blocks": [{"channels": 4, "batch_norm": True, "dropout": 0.2}], "dense": [16], "dropout": 0.3},
        {"epochs": 2, "max_steps": 30, "checkpoint_every": 10, "optimizer": "sgd", "momentum": 0.9},
        [20],
    ),
    "accumulation-cosine": (
        {"type": "mlp", "hidden": [32], "dropout": 0.1},
        {"epochs": 2, "grad_accum": 2, "checkpoint_every": 5, "schedule": "cosine", "warmup_steps": 3, "eval_every": 4},
        [5, 15],
    ),
    # PGD's random starts draw from torch's generator, which the checkpoint restores
    "pgd-adversarial": (
        {"type": "mlp", "hidden": [16], "dropout": 0.2},
        {"epochs": 1, "max_steps": 12, "checkpoint_every": 5, "adversarial": {"eps": 0.2, "steps": 2, "ratio": 0.5, "eps_warmup": 8}},
        [5],
    ),
    # DP-SGD: Poisson batches replayed from the sampling generator, noise from torch's generator
    "dp-sgd": (
        {"type": "mlp", "hidden": [16], "dropout": 0.2},
        {"epochs": 2, "checkpoint_every": 9, "optimizer": "sgd", "momentum": 0.5, "privacy": {"noise_multiplier": 1.0}},
        [9, 27],
    ),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_from_a_checkpoint_continues_bit_for_bit(digits: Digits, case: str):
    model, train, resume_steps = RESUME_CASES[case]
    uninterrupted = run_fit(digits, model, **train)
    final_step = uninterrupted.result.state.step
    for step in resume_steps:
        assert step in uninterrupted.checkpoints and step < final_step
        resumed = run_fit(digits, model, resume_files=uninterrupted.checkpoints[step], **train)
        assert same_weights(resumed.model.state_dict(), uninterrupted.model.state_dict()), f"resumed from step {step}"
        assert comparable_state(resumed) == comparable_state(uninterrupted)
        assert sorted(resumed.checkpoints) == [s for s in sorted(uninterrupted.checkpoints) if s > step]
        for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):  # the same final checkpoint
            assert same_file_content(resumed.checkpoints[final_step][name], uninterrupted.checkpoints[final_step][name]), name
        evaluations = [r for r in uninterrupted.logs if r["split"] == "validation" and r["step"] > step]
        assert [r for r in resumed.logs if r["split"] == "validation"] == evaluations


def test_a_checkpoint_is_mid_epoch_when_expected(digits: Digits):
    outcome = run_fit(digits, {"type": "mlp", "hidden": [8]}, epochs=2, checkpoint_every=7, with_validation=False)
    batches = {step: json.loads(files["state.json"])["batch_in_epoch"] for step, files in outcome.checkpoints.items()}
    assert batches == {7: 7, 14: 14, 21: 21, 28: 5, 35: 12, 42: 19, 46: 0}


def test_resume_logs_the_same_training_losses(digits: Digits):
    uninterrupted = run_fit(digits, max_steps=20, checkpoint_every=7, log_every=4)
    resumed = run_fit(digits, max_steps=20, checkpoint_every=7, log_every=4, resume_files=uninterrupted.checkpoints[7])
    expected = [(r["step"], r["loss"]) for r in uninterrupted.logs if r["split"] == "train" and r["step"] > 7]
    assert [(r["step"], r["loss"]) for r in resumed.logs if r["split"] == "train"] == expected
