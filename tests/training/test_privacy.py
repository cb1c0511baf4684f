"""DP-SGD (train.privacy): the accountant, the calibrated noise, per-example clipping that really
bounds each step, Poisson batches, unsupported layers, and what it is not combined with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

import forgeml
from forgeml.data.batches import PoissonBatches
from forgeml.errors import ConfigError
from forgeml.training.privacy import epsilon_spent

from .support import Digits, run_fit


def test_epsilon_shrinks_as_the_noise_grows_and_grows_with_the_steps():
    by_noise = [epsilon_spent(noise, 0.05, 200, 1e-5) for noise in (0.6, 0.8, 1.2, 2.0, 4.0)]
    assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == len(by_noise)
    by_steps = [epsilon_spent(1.0, 0.05, steps, 1e-5) for steps in (10, 100, 1000)]
    assert by_steps == sorted(by_steps) and epsilon_spent(1.0, 0.05, 0, 1e-5) == 0.0
    assert epsilon_spent(1.0, 0.05, 200, 1e-5) == pytest.approx(5.3676, abs=1e-3)  # pinned: Opacus's RDP accountant


def test_poisson_batches_sample_each_row_with_probability_q_and_replay():
    rows = torch.arange(1000).float().unsqueeze(1)
    batches = PoissonBatches((rows, torch.zeros(1000)), batch_size=50, seed=3)
    assert len(batches) == 20 and batches.sample_rate == 0.05
    start = batches.generator.get_state()
    epoch = list(batches.epoch())
    sizes = [len(b[1]) for b in epoch]
    assert len(epoch) == 20 and 40 < sum(sizes) / len(sizes) < 60 and len(set(sizes)) > 3  # sizes vary around 50
    batches.generator.set_state(start)
    resumed = list(batches.epoch(start_batch=7))
    assert len(resumed) == 13 and all(torch.equal(a[0], b[0]) for a, b in zip(resumed, epoch[7:]))


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # noise 1e-9 spends an unbounded ε, as it should
def test_each_step_moves_the_weights_by_at_most_lr_times_the_clipped_gradients(digits: Digits):
    # noise almost zero, plain SGD with lr 1: the update is the sum of the clipped per-example gradients
    # over the expected batch, so its norm is at most max_grad_norm x (examples drawn / expected batch)
    model = {"type": "mlp", "hidden": [16]}
    start = run_fit(digits, model, max_steps=1, lr=1e-12, optimizer="sgd", with_validation=False, privacy={"noise_multiplier": 1e-9})
    after = run_fit(
        digits, model, max_steps=1, lr=1.0, optimizer="sgd", with_validation=False, privacy={"noise_multiplier": 1e-9, "max_grad_norm": 0.01}
    )
    change = torch.cat([(a - b).detach().flatten() for a, b in zip(after.model.parameters(), start.model.parameters())]).norm()
    assert 0 < float(change) <= 0.01 * 1.5  # a Poisson batch of 64 expected is well under 96 rows
    plain = run_fit(digits, model, max_steps=1, lr=1.0, optimizer="sgd", with_validation=False)
    unclipped = torch.cat([(a - b).detach().flatten() for a, b in zip(plain.model.parameters(), start.model.parameters())]).norm()
    assert float(unclipped) > 10 * float(change)  # without DP the same step is far larger


def dp_config(**privacy: object) -> dict:
    return tiny_config(train={"epochs": 3, "batch_size": 64, "lr": 0.01, "log_every": 5, "privacy": privacy})


def test_the_noise_is_calibrated_to_the_budget_and_epsilon_is_logged(tmp_path: Path, single_thread_torch: None):
    run_dir = forgeml.train(dp_config(target_epsilon=4.0, delta=1e-5), out=tmp_path / "run", quiet=True).run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    privacy = metrics["privacy"]
    assert 3.9 <= privacy["epsilon"] <= 4.0 and privacy["steps"] == metrics["training"]["steps"] == 69
    assert privacy["sample_rate"] == pytest.approx(64 / 1439) and privacy["delta"] == 1e-5
    assert privacy["noise_multiplier"] == pytest.approx(0.9045, abs=0.01)
    logged = [r["epsilon"] for r in map(json.loads, (run_dir / "history.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert logged == sorted(logged) and logged[-1] == pytest.approx(privacy["epsilon"], abs=1e-6)


def test_a_batchnorm_layer_is_named_with_its_replacement_or_fixed(tmp_path: Path, single_thread_torch: None):
    config = dp_config(target_epsilon=8.0)
    config["model"] = {"type": "cnn", "blocks": [{"channels": 4, "batch_norm": True}], "dense": [8]}
    config["train"]["max_steps"] = 3
    with pytest.raises(ConfigError, match=r"layer '0.1' \(BatchNorm2d\) cannot be trained with DP-SGD.*GroupNorm.*fix_layers: true"):
        forgeml.train(config, out=tmp_path / "refused", quiet=True)
    assert not (tmp_path / "refused").exists()
    config["train"]["privacy"]["fix_layers"] = True
    result = forgeml.train(config, out=tmp_path / "fixed", quiet=True)
    predictor = forgeml.load(result.run_dir)
    assert "GroupNorm" in str(predictor.model)
    assert forgeml.evaluate(result.run_dir).metrics["accuracy"] == result.metrics["splits"]["test"]["accuracy"]


@pytest.mark.parametrize(
    "train, refused",
    [({"grad_accum": 2}, "grad_accum"), ({"grad_clip": 1.0}, "grad_clip"), ({"adversarial": {"eps": 0.1}}, "adversarial")],
)
def test_what_dp_sgd_is_not_combined_with(tmp_path: Path, train: dict, refused: str):
    config = dp_config(target_epsilon=8.0)
    config["train"].update(train)
    with pytest.raises(ConfigError, match=f"DP-SGD cannot be combined with train.{refused}"):
        forgeml.train(config, out=tmp_path / "run", quiet=True)


def test_exactly_one_of_budget_and_noise():
    with pytest.raises(ConfigError, match="exactly one of target_epsilon"):
        forgeml.load_config(dp_config())
    with pytest.raises(ConfigError, match="exactly one of target_epsilon"):
        forgeml.load_config(dp_config(target_epsilon=1.0, noise_multiplier=1.0))
