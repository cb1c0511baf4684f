"""`forgeml evaluate` and `forgeml predict` on a classification run (digits) and a regression run (y = 2x)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from .support import (
    EXAMPLES,
    TrainedRun,
    assert_user_error,
    describe,
    forge,
    in_parallel,
    json_lines,
    read_json,
    sha256,
)

ANSI = "\x1b["


def write_digit_images(directory: Path) -> list[Path]:
    """Three 8x8 greyscale PNGs (the size of scikit-learn's digits) and one 8x8 RGB PNG."""
    directory.mkdir(parents=True, exist_ok=True)
    bar = np.zeros((8, 8), np.uint8)
    bar[1:7, 3:5] = 255  # a "1"
    ring = np.zeros((8, 8), np.uint8)
    ring[1:7, 2:6] = 255
    ring[2:6, 3:5] = 0  # a "0"
    noise = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    paths = []
    for name, pixels in (("one.png", bar), ("zero.png", ring), ("noise.png", noise)):
        Image.fromarray(pixels).save(directory / name)
        paths.append(directory / name)
    Image.fromarray(np.stack([ring, bar, noise], axis=-1)).save(directory / "colour.png")
    paths.append(directory / "colour.png")
    return paths


@pytest.fixture(scope="module")
def calls(digits_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("evaluate_predict")
    images = write_digit_images(root / "images")
    line = root / "line_run"
    before = {name: sha256(digits_run.path / name) for name in ("model.safetensors", "metrics.json", "features.json")}

    def evaluations() -> dict[str, Any]:  # one after another: each evaluate writes into the run, which a predict reads
        return {
            "table": forge("evaluate", digits_run.path),
            "json": forge("evaluate", digits_run.path, "--json"),
            "validation": forge("evaluate", digits_run.path, "--split", "validation", "--json"),
            "predict": forge("predict", digits_run.path, *images),
            "refused": forge("predict", digits_run.path, outside),
            "allowed": forge("predict", digits_run.path, outside, "--allow-outside"),
        }

    one_row = root / "one_row.csv"
    one_row.write_text("x\n7\n")
    outside = root / "batch" / "outside.csv"  # names an image out of its own folder
    outside.parent.mkdir()
    outside.write_text("image\n../images/one.png\n")

    def regression() -> dict[str, Any]:
        train = forge("train", EXAMPLES / "linear_regression_gd.yaml", "--out", line, "--set", "train.epochs=500")
        if train.returncode != 0:
            return {"train": train}
        return {
            "train": train,
            "predict": forge("predict", line, EXAMPLES / "data" / "line_inputs.csv"),
            "predict_one_row": forge("predict", line, one_row),
            "evaluate": forge("evaluate", line, "--split", "train", "--json"),
            "evaluate_test": forge("evaluate", line),
        }

    results = in_parallel({"evaluations": evaluations, "regression": regression})
    return {"images": images, "line": line, "before": before, "outside": outside, **results["evaluations"], "regression": results["regression"]}


# --------------------------------------------------------------------------------------------------
# evaluate, classification


def test_evaluate_prints_a_table(digits_run: TrainedRun, calls: dict[str, Any]) -> None:
    result = calls["table"]
    assert result.returncode == 0, describe(result)
    rows = read_json(digits_run.path / "features.json")["splits"]["rows"]["test"]
    assert f"{digits_run.path}: test split, {rows:,} examples" in result.stdout
    for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion matrix"):
        assert name in result.stdout
    accuracy = read_json(digits_run.path / "metrics.json")["splits"]["test"]["accuracy"]
    assert f"accuracy {accuracy:.4f}" in " ".join(result.stdout.split()), "the table shows the run's test accuracy"
    assert ANSI not in result.stdout


def test_evaluate_json(digits_run: TrainedRun, calls: dict[str, Any]) -> None:
    result = calls["json"]
    assert result.returncode == 0, describe(result)
    report = json.loads(result.stdout)
    rows = read_json(digits_run.path / "features.json")["splits"]["rows"]["test"]
    assert report["split"] == "test" and report["task"] == "classification"
    assert report["rows"] == rows
    assert set(report["metrics"]) == {"accuracy", "precision_macro", "recall_macro", "f1_macro"}
    matrix = report["confusion_matrix"]
    assert report["label_names"] == [str(i) for i in range(10)]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    assert sum(map(sum, matrix)) == rows
    assert report["metrics"]["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(10)) / rows)
    assert {name: c["support"] for name, c in report["per_class"].items()} == {str(i): sum(matrix[i]) for i in range(10)}
    # evaluating the saved run reproduces what training measured
    trained = read_json(digits_run.path / "metrics.json")["splits"]["test"]
    assert report["metrics"]["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-9)
    assert matrix == trained["confusion_matrix"]


def test_evaluate_validation_split(digits_run: TrainedRun, calls: dict[str, Any]) -> None:
    result = calls["validation"]
    assert result.returncode == 0, describe(result)
    report = json.loads(result.stdout)
    rows = read_json(digits_run.path / "features.json")["splits"]["rows"]["validation"]
    assert report["split"] == "validation" and report["rows"] == rows
    assert sum(map(sum, report["confusion_matrix"])) == rows
    trained = read_json(digits_run.path / "metrics.json")["splits"]["validation"]
    assert report["confusion_matrix"] == trained["confusion_matrix"]


def test_evaluate_saves_evaluate_json_and_keeps_the_run_intact(digits_run: TrainedRun, calls: dict[str, Any]) -> None:
    saved = read_json(digits_run.path / "evaluate.json")
    assert {"test", "validation"} <= set(saved)
    assert saved["validation"]["confusion_matrix"] == json.loads(calls["validation"].stdout)["confusion_matrix"]
    manifest = read_json(digits_run.path / "manifest.json")["files"]
    assert manifest["evaluate.json"] == sha256(digits_run.path / "evaluate.json")
    for name, digest in calls["before"].items():
        assert sha256(digits_run.path / name) == digest, f"evaluate changed {name}"


# --------------------------------------------------------------------------------------------------
# predict, classification


def test_predict_images(digits_run: TrainedRun, calls: dict[str, Any]) -> None:
    result = calls["predict"]
    assert result.returncode == 0, describe(result)
    predictions = json_lines(result.stdout)
    assert len(result.stdout.splitlines()) == len(calls["images"]), "one JSON object per line, one line per image"
    labels = [str(i) for i in range(10)]
    for image, prediction in zip(calls["images"], predictions):
        assert prediction["input"] == str(image)
        probabilities = prediction["probabilities"]
        assert list(probabilities) == labels
        assert all(0.0 <= p <= 1.0 for p in probabilities.values())
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert prediction["label"] == max(probabilities, key=probabilities.get)


def test_predict_refuses_an_image_path_out_of_the_csv_folder_unless_allowed(calls: dict[str, Any]) -> None:
    outside = calls["outside"]
    assert_user_error(
        calls["refused"],
        f"{outside}, line 2: column 'image': '../images/one.png' lies outside the folder of {outside}; pass --allow-outside",
    )
    assert calls["allowed"].returncode == 0, describe(calls["allowed"])
    allowed, direct = json_lines(calls["allowed"].stdout), json_lines(calls["predict"].stdout)
    assert allowed == [{**direct[0], "input": f"{outside}:2"}]  # the same image, read through the CSV


# --------------------------------------------------------------------------------------------------
# regression: examples/linear_regression_gd.yaml learns y = 2x


def test_regression_run_learns_the_line(calls: dict[str, Any]) -> None:
    train = calls["regression"]["train"]
    assert train.returncode == 0, describe(train)
    metrics = read_json(calls["line"] / "metrics.json")
    assert metrics["task"] == "regression"
    assert metrics["training"]["steps"] == 500  # full batch: one step per epoch
    assert set(metrics["splits"]) == {"train"}, "the example has no validation or test rows"
    assert metrics["splits"]["train"]["mse"] < 1e-4


def test_predict_csv_on_the_regression_run(calls: dict[str, Any]) -> None:
    result = calls["regression"].get("predict")
    assert result is not None and result.returncode == 0, describe(result or calls["regression"]["train"])
    predictions = json_lines(result.stdout)
    inputs = [float(x) for x in (EXAMPLES / "data" / "line_inputs.csv").read_text().split()[1:]]
    assert len(predictions) == len(inputs) == len(result.stdout.splitlines())
    for number, (x, prediction) in enumerate(zip(inputs, predictions), start=2):
        assert prediction["input"].endswith(f"line_inputs.csv:{number}")  # file and line of each row
        assert prediction["value"] == pytest.approx(2 * x, abs=0.01)
    assert inputs[0] == 5.0 and predictions[0]["value"] == pytest.approx(10.0, abs=0.01)
    (single,) = json_lines(calls["regression"]["predict_one_row"].stdout)  # a one-row CSV still names its line
    assert single["input"].endswith("one_row.csv:2") and single["value"] == pytest.approx(14.0, abs=0.01)


def test_evaluate_regression_reports_mse_mae_r2(calls: dict[str, Any]) -> None:
    result = calls["regression"].get("evaluate")
    assert result is not None and result.returncode == 0, describe(result or calls["regression"]["train"])
    report = json.loads(result.stdout)
    assert report["task"] == "regression" and report["split"] == "train" and report["rows"] == 4
    assert set(report["metrics"]) == {"mse", "mae", "r2"}
    assert report["metrics"]["mse"] < 1e-4 and report["metrics"]["mae"] < 1e-2 and report["metrics"]["r2"] > 0.9999
    assert report["confusion_matrix"] is None and report["label_names"] == []


def test_evaluate_an_empty_split_is_a_user_error(calls: dict[str, Any]) -> None:
    result = calls["regression"].get("evaluate_test")
    assert result is not None, describe(calls["regression"]["train"])
    assert_user_error(result, "test split", "empty")
