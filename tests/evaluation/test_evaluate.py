"""Evaluate: evaluate.json agrees with metrics.json, per-class scores, and regression metrics in the
target's own units."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_config

import forgeml
from forgeml.errors import DataError
from forgeml.evaluation import run as evaluate
from forgeml.training.job import train

pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory, single_thread_torch: None) -> Path:
    """The tiny digits CNN of tests/helpers.py, trained for 12 steps."""
    return train(tiny_config(), out=tmp_path_factory.mktemp("digits") / "run", quiet=True).run_dir


def write_line_data(path: Path, rows: int = 50, seed: int = 0) -> Path:
    """A CSV of y = 30 x + 200 + noise: a target whose scale (std ~90) is far from 1."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, rows)
    y = 30 * x + 200 + rng.normal(0, 20, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x,y\n" + "".join(f"{a:.4f},{b:.4f}\n" for a, b in zip(x, y)))
    return path


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory: pytest.TempPathFactory, single_thread_torch: None) -> Path:
    """A linear regression on ``write_line_data`` with a standardised target and no validation split."""
    root = tmp_path_factory.mktemp("line")
    config = tiny_config(
        name="line",
        data={
            "source": {"type": "csv", "path": str(write_line_data(root / "line.csv"))},
            "features": [{"type": "number", "name": "x"}],
            "target": {"type": "number", "name": "y", "normalize": "standard"},
            "split": {"validation": 0.0, "test": 0.2},
        },
        model={"type": "linear"},
        train={"optimizer": "sgd", "lr": 0.1, "batch_size": "full", "epochs": 30, "max_steps": None, "log_every": 10, "checkpoint_every": None},
    )
    return train(config, out=root / "run", quiet=True).run_dir


def metrics_json(run_dir: Path) -> dict:
    """The run's metrics.json."""
    return json.loads((run_dir / "metrics.json").read_text())


# --------------------------------------------------------------------------------------------------
# classification


def test_evaluate_writes_evaluate_json_that_agrees_with_metrics_json(digits_run: Path):
    result = evaluate(digits_run, split="test")
    trained = metrics_json(digits_run)["splits"]["test"]
    assert result.split == "test" and result.task == "classification" and result.rows == 179
    assert result.metrics == {k: v for k, v in trained.items() if k not in ("loss", "confusion_matrix")}
    assert result.confusion_matrix == trained["confusion_matrix"]
    assert result.label_names == [str(d) for d in range(10)]
    saved = json.loads((digits_run / "evaluate.json").read_text())
    assert saved["test"] == json.loads(json.dumps(result.to_dict()))
    forgeml.load(digits_run)  # the manifest was updated: the run still verifies
    manifest = json.loads((digits_run / "manifest.json").read_text())["files"]
    assert "evaluate.json" in manifest


def test_per_class_scores_are_consistent_with_the_confusion_matrix(digits_run: Path):
    result = evaluate(digits_run, split="test", save=False)
    matrix = np.array(result.confusion_matrix)
    assert matrix.sum() == result.rows
    assert [result.per_class[name]["support"] for name in result.label_names] == matrix.sum(axis=1).tolist()
    assert np.mean([s["recall"] for s in result.per_class.values()]) == pytest.approx(result.metrics["recall_macro"])
    assert np.mean([s["f1"] for s in result.per_class.values()]) == pytest.approx(result.metrics["f1_macro"])
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result.metrics["accuracy"])


def test_each_split_gets_its_own_entry(digits_run: Path):
    predictor = forgeml.load(digits_run)
    validation = evaluate(predictor, split="validation")  # a loaded Predictor works too
    assert validation.metrics["accuracy"] == metrics_json(digits_run)["splits"]["validation"]["accuracy"]
    train_result = evaluate(digits_run, split="train")
    assert train_result.rows == 1439
    saved = json.loads((digits_run / "evaluate.json").read_text())
    assert {"validation", "train"} <= set(saved)
    assert saved["train"]["metrics"] == train_result.metrics


def test_save_false_writes_nothing(tmp_path: Path, digits_run: Path):
    before = (digits_run / "evaluate.json").read_bytes() if (digits_run / "evaluate.json").exists() else None
    result = evaluate(digits_run, split="test", save=False)
    after = (digits_run / "evaluate.json").read_bytes() if (digits_run / "evaluate.json").exists() else None
    assert before == after and result.rows == 179


def test_bad_split(digits_run: Path, regression_run: Path):
    with pytest.raises(DataError, match=r"^split 'dev' is not one of: train, validation, test$"):
        evaluate(digits_run, split="dev")
    with pytest.raises(DataError, match=r"the validation split of this run is empty"):
        evaluate(regression_run, split="validation")


# --------------------------------------------------------------------------------------------------
# regression: metrics in the target's units


def test_regression_metrics_are_in_the_targets_units(regression_run: Path):
    predictor = forgeml.load(regression_run)
    assert predictor.task == "regression"
    _, _, table = predictor.split("test")
    truth = table.columns["y"]
    predicted = np.array([p["value"] for p in predictor.predict([{"x": x} for x in table.columns["x"]])])
    mse, mae = float(((predicted - truth) ** 2).mean()), float(np.abs(predicted - truth).mean())
    r2 = 1 - float(((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())

    result = evaluate(regression_run, split="test")
    assert result.rows == 10 and result.confusion_matrix is None and result.per_class is None
    assert result.metrics == pytest.approx({"mse": mse, "mae": mae, "r2": r2}, rel=1e-5)
    trained = metrics_json(regression_run)["splits"]["test"]
    assert trained["mse"] == pytest.approx(mse, rel=1e-5)

    # the loss is the MSE of the standardised target; the reported MSE is that times the scale squared
    scale = json.loads((regression_run / "features.json").read_text())["target"]["state"]["scale"]
    assert scale > 50
    assert trained["mse"] == pytest.approx(trained["loss"] * scale**2, rel=1e-4)
    assert 100 < mse < 2000  # noise of std 20 (variance 400) after 30 steps of gradient descent


PINNED_TEST_MSE = 485.19  # in the units of y squared


def test_regression_training_pinned(regression_run: Path):
    metrics = metrics_json(regression_run)
    assert metrics["task"] == "regression"
    assert metrics["training"]["steps"] == 30 and metrics["training"]["epochs"] == 30
    assert set(metrics["splits"]) == {"train", "test"}  # no validation rows
    assert round(metrics["splits"]["test"]["mse"], 2) == PINNED_TEST_MSE

