"""Temperature scaling: the ECE of an over-confident model falls once its temperature is fitted; the
temperature is stored in the run and applied by forgeml.load, and only to the weights it was fitted to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config
from privacy.test_membership import noisy_labels_csv, overfit_config

import forgeml
from forgeml.calibration import fit_temperature, run
from forgeml.errors import DataError
from forgeml.metrics import reliability

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def test_reliability_of_known_predictions():
    # four predictions at confidence 0.9 of which two are right, four at 0.6 all right
    probabilities = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 4)
    targets = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    scores = reliability(probabilities, targets, bins=10)
    # bins (0.5, 0.6] and (0.8, 0.9]: |1.0 - 0.6| and |0.5 - 0.9|, each half of the examples
    assert scores["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert scores["accuracy"] == 0.75 and scores["confidence"] == pytest.approx(0.75)
    filled = [b for b in scores["bins"] if b["count"]]
    assert [(b["lower"], b["count"], b["accuracy"]) for b in filled] == [(pytest.approx(0.5), 4, 1.0), (pytest.approx(0.8), 4, 0.5)]
    assert scores["nll"] == pytest.approx(-(2 * np.log(0.9) + 2 * np.log(0.1) + 4 * np.log(0.6)) / 8)


def test_the_temperature_of_sharpened_logits_is_found_again():
    # labels drawn from softmax(z); the model reports 4 z: the best temperature is near 4
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 5, generator=generator) * 2
    targets = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
    temperature = fit_temperature(logits * 4, targets)
    assert temperature == pytest.approx(4.0, rel=0.08)
    assert fit_temperature(logits, targets) == pytest.approx(1.0, abs=0.08)


def overconfident_config(csv: Path) -> dict:
    """An MLP fitted for many epochs to labels that are 30% noise: near-certain on every test row,
    right on about 65% of them."""
    return overfit_config(csv, epochs=120, validation=0.3, test=0.3, hidden=64)


def test_ece_falls_after_temperature_scaling_of_an_overconfident_model(tmp_path: Path):
    csv = noisy_labels_csv(tmp_path / "noisy.csv", rows=400)
    run_dir = forgeml.train(overconfident_config(csv), out=tmp_path / "run", quiet=True).run_dir
    before_load = forgeml.load(run_dir)
    assert before_load.temperature == 1.0
    inputs = before_load.split("test")[0]
    raw = before_load.probabilities(inputs)

    result = run(run_dir)
    test_before, test_after = result.before["test"], result.after["test"]
    assert result.fitted_on == "validation" and result.rows == 120
    assert test_before["confidence"] > 0.9 and test_before["accuracy"] < 0.75  # over-confident
    assert result.temperature > 2
    assert test_after["ece"] < 0.5 * test_before["ece"]
    # pinned on this seed: ECE 0.366 -> 0.068 on the test split, T 13.5
    assert (test_before["ece"], test_after["ece"]) == (pytest.approx(0.366, abs=0.03), pytest.approx(0.068, abs=0.03))
    assert test_after["nll"] < test_before["nll"]
    assert test_after["accuracy"] == test_before["accuracy"]  # the classes do not change
    assert result.after["validation"]["ece"] < result.before["validation"]["ece"]
    assert (run_dir / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "calibration.json" in (run_dir / "manifest.json").read_text()

    calibrated = forgeml.load(run_dir)
    assert calibrated.temperature == pytest.approx(result.temperature)
    softened = calibrated.probabilities(inputs)
    assert torch.equal(softened.argmax(-1), raw.argmax(-1))
    assert softened.max(-1).values.mean() < raw.max(-1).values.mean() - 0.1
    assert torch.allclose(softened, torch.softmax(torch.log(raw) / result.temperature, -1), atol=1e-4)
    row = {f"x{i}": 0.5 for i in range(10)}
    predicted = calibrated.predict([row])[0]["probabilities"]
    assert max(predicted.values()) < max(before_load.predict([row])[0]["probabilities"].values())

    # weights trained since the temperature was fitted do not get it
    forgeml.train(overconfident_config(csv) | {"train": {**overconfident_config(csv)["train"], "epochs": 121}}, resume=run_dir, quiet=True)
    assert forgeml.load(run_dir).temperature == 1.0


def test_calibration_is_for_classifiers_with_a_validation_split(tmp_path: Path):
    csv = noisy_labels_csv(tmp_path / "noisy.csv", rows=60)
    config = overconfident_config(csv)
    config["train"]["epochs"] = 1
    config["data"]["split"] = {"validation": 0.0, "test": 0.3}
    config["train"]["keep_best"] = False
    config["train"]["monitor"] = "loss"
    run_dir = forgeml.train(config, out=tmp_path / "noval", quiet=True).run_dir
    with pytest.raises(DataError, match="validation split of this run is empty"):
        run(run_dir)
    regression = tiny_config(
        data={
            "source": {"type": "csv", "path": str(csv)},
            "features": [{"type": "number", "name": f"x{i}"} for i in range(1, 10)],
            "target": {"type": "number", "name": "x0"},
        },
        model={"type": "mlp", "hidden": [8]},
    )
    regression_dir = forgeml.train(regression, out=tmp_path / "regression", quiet=True).run_dir
    with pytest.raises(DataError, match="calibration is for classifiers"):
        run(regression_dir)


def test_a_perfectly_separated_validation_split_does_not_drive_the_temperature_to_zero():
    logits = torch.tensor([[3.0, -3.0], [-2.0, 2.0]] * 20)
    targets = torch.tensor([0, 1] * 20)
    temperature = fit_temperature(logits, targets)
    assert 0.05 <= temperature < 1  # sharper, but bounded
    assert fit_temperature(logits * 100, targets) >= 0.05
