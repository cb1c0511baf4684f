"""`forgeml train`: the run directory it writes, --set, CSV sources, existing run directories, log output."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from .support import (
    TrainedRun,
    assert_user_error,
    describe,
    forge,
    in_parallel,
    make_csv_dataset,
    read_history,
    read_json,
    sha256,
    write_yaml,
)

RUN_FILES = ("config.yaml", "features.json", "model.safetensors", "metrics.json", "history.jsonl", "manifest.json")
CLASSIFICATION_METRICS = {"loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion_matrix"}
ANSI = re.compile(r"\x1b\[|\x1b\]|\r")


def csv_config(name: str, csv: Path, features: list[dict[str, Any]], model: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 0,
        "data": {
            "source": {"type": "csv", "path": str(csv)},
            "features": features,
            "target": {"type": "category", "name": "label"},
            "split": {"validation": 0.2, "test": 0.2},
        },
        "model": model,
        "train": {"epochs": 20, "batch_size": 8, "lr": 0.01, "log_every": 5},
    }


NUMBER = {"type": "number", "name": "size"}
CATEGORY = {"type": "category", "name": "colour"}
IMAGE = {"type": "image", "name": "picture"}


@pytest.fixture(scope="module")
def calls(digits_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every CLI call of this module but the shared digits run, run side by side."""
    root = tmp_path_factory.mktemp("train_cli")
    csv = make_csv_dataset(root / "csvdata")
    all_columns = write_yaml(root / "csv_all.yaml", csv_config("csv_all", csv, [NUMBER, CATEGORY, IMAGE], {"type": "mlp", "hidden": [8]}))
    tabular = write_yaml(root / "csv_tab.yaml", csv_config("csv_tab", csv, [NUMBER, CATEGORY], {"type": "mlp", "hidden": [8]}))
    images = write_yaml(
        root / "csv_img.yaml",
        csv_config("csv_img", csv, [IMAGE], {"type": "cnn", "blocks": [{"channels": 4}], "dense": [8]}),
    )

    # a copy of the shared run, with what a killed write of it left, to be replaced by --overwrite
    overwritten = root / "overwritten"
    shutil.copytree(digits_run.path, overwritten)
    (overwritten / ".metrics.json.k2x9q0ab.tmp").write_text("left over from the previous run\n")
    before = {p.name: sha256(p) for p in digits_run.path.iterdir() if p.is_file() and p.name != ".lock"}  # the lock records each writer

    cfg = digits_run.config
    out = {
        "root": root,
        "overwritten": overwritten,
        "shared_before": before,
        "csv_all_out": root / "csv_all_run",
        "csv_tab_out": root / "csv_tab_run",
        "csv_img_out": root / "csv_img_run",
    }
    out |= in_parallel(
        {
            "show": lambda: forge("config", "show", cfg, *digits_run.overrides),
            "again": lambda: forge("train", cfg, "--out", digits_run.path, *digits_run.overrides),
            "overwrite": lambda: forge("train", cfg, "--out", overwritten, "--overwrite", "--set", "train.max_steps=2"),
            "csv_all": lambda: forge("train", all_columns, "--out", out["csv_all_out"]),
            "csv_tab": lambda: forge("train", tabular, "--out", out["csv_tab_out"]),
            "csv_img": lambda: forge("train", images, "--out", out["csv_img_out"]),
        }
    )
    return out


# --------------------------------------------------------------------------------------------------
# the run directory


def test_train_writes_a_complete_run_directory(digits_run: TrainedRun) -> None:
    assert digits_run.result.returncode == 0, describe(digits_run.result)
    for name in RUN_FILES:
        assert (digits_run.path / name).is_file(), f"{name} missing from {sorted(os.listdir(digits_run.path))}"
    weights = load_file(digits_run.path / "model.safetensors")
    assert weights and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())


def test_config_yaml_is_the_resolved_config_shown_by_config_show(digits_run: TrainedRun, calls: dict[str, Any]) -> None:
    show = calls["show"]
    assert show.returncode == 0, describe(show)
    written = (digits_run.path / "config.yaml").read_text()
    assert written == show.stdout
    resolved = yaml.safe_load(written)
    # defaults filled in: none of these keys is in the tiny config
    assert resolved["train"]["optimizer"] == "adam"
    assert resolved["train"]["grad_accum"] == 1
    assert resolved["train"]["keep_checkpoints"] == 2
    assert resolved["output"] == {"dir": "runs"}
    assert resolved["data"]["on_bad_row"] == "error"
    assert resolved["model"]["blocks"][0]["kernel"] == 3


def test_set_max_steps_is_honoured(digits_run: TrainedRun) -> None:
    metrics = read_json(digits_run.path / "metrics.json")
    assert metrics["training"]["steps"] == 3
    assert metrics["training"]["total_steps"] == 3
    assert yaml.safe_load((digits_run.path / "config.yaml").read_text())["train"]["max_steps"] == 3
    assert max(r["step"] for r in read_history(digits_run.path)) == 3


def test_features_json_describes_the_fitted_preprocessing(digits_run: TrainedRun) -> None:
    features = read_json(digits_run.path / "features.json")
    assert features["task"] == "classification"
    assert features["label_names"] == [str(i) for i in range(10)]
    assert features["input"] == {"kind": "image", "shape": [1, 8, 8], "vocab_size": 0, "pad_id": 0}
    assert [entry["config"]["type"] for entry in features["inputs"]] == ["image"]
    assert sum(features["splits"]["rows"].values()) == 1797  # scikit-learn's digits


def test_metrics_json_has_every_split(digits_run: TrainedRun) -> None:
    metrics = read_json(digits_run.path / "metrics.json")
    rows = read_json(digits_run.path / "features.json")["splits"]["rows"]
    assert metrics["task"] == "classification"
    assert set(metrics["splits"]) == {"train", "validation", "test"}
    for split, values in metrics["splits"].items():
        assert CLASSIFICATION_METRICS <= set(values), split
        assert 0.0 <= values["accuracy"] <= 1.0
        matrix = values["confusion_matrix"]
        assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
        assert sum(map(sum, matrix)) == rows[split]
        assert values["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(10)) / rows[split])


def test_history_has_train_and_validation_records(digits_run: TrainedRun) -> None:
    records = read_history(digits_run.path)
    splits = {r["split"] for r in records}
    assert splits == {"train", "validation"}
    for record in records:
        assert isinstance(record["step"], int) and 1 <= record["step"] <= 3
        assert record["loss"] == record["loss"]  # not NaN
    keys = [(r["split"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)), f"duplicated records: {keys}"
    assert [r["step"] for r in records if r["split"] == "train"][-1] == 3
    assert "accuracy" in [r for r in records if r["split"] == "validation"][-1]


def test_latest_checkpoint_is_complete(digits_run: TrainedRun) -> None:
    root = digits_run.path / "checkpoints"
    name = (root / "latest").read_text().strip()
    assert name == "step-000003"
    step_dir = root / name
    manifest = read_json(step_dir / "manifest.json")["files"]
    assert {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"} <= set(manifest)
    for filename, digest in manifest.items():
        assert sha256(step_dir / filename) == digest, filename
    assert read_json(step_dir / "state.json")["step"] == 3
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")], "a temporary checkpoint directory was left behind"


def test_manifest_matches_the_files(digits_run: TrainedRun) -> None:
    manifest = read_json(digits_run.path / "manifest.json")["files"]
    assert set(RUN_FILES) - {"manifest.json"} <= set(manifest)
    top_level = {p.name for p in digits_run.path.iterdir() if p.is_file() and not p.name.startswith(".")} - {"manifest.json"}
    assert top_level == set(manifest), "every artifact is in the manifest, and the manifest names no missing file"
    for name, digest in manifest.items():
        assert sha256(digits_run.path / name) == digest, f"{name}: sha256 does not match manifest.json"


def test_output_is_plain_log_lines_when_not_a_terminal(digits_run: TrainedRun) -> None:
    result = digits_run.result
    assert not ANSI.search(result.stdout + result.stderr), "escape codes or carriage returns in piped output"
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert any(re.search(r"\bstep \d+/\d+\b.*\bloss \d+\.\d+", line) for line in lines), result.stdout
    assert "step" in result.stdout and "loss" in result.stdout
    assert lines[-1].startswith("done in ") and str(digits_run.path) in lines[-1]


def test_metrics_json_records_the_command_line(digits_run: TrainedRun) -> None:
    command = read_json(digits_run.path / "metrics.json")["environment"]["command"]
    assert isinstance(command, list) and command[:2] == ["forgeml", "train"] and "--out" in command


def test_checkpoint_directories_get_the_same_permissions_as_the_run_directory(digits_run: TrainedRun) -> None:
    root = digits_run.path / "checkpoints"
    expected = stat.S_IMODE(root.stat().st_mode)
    for step_dir in root.glob("step-*"):
        assert stat.S_IMODE(step_dir.stat().st_mode) == expected, f"{step_dir.name}: {oct(step_dir.stat().st_mode)}"


# --------------------------------------------------------------------------------------------------
# an existing run directory


def test_training_into_an_existing_run_directory_is_refused(digits_run: TrainedRun, calls: dict[str, Any]) -> None:
    line = assert_user_error(calls["again"], str(digits_run.path), "already exists")
    assert "--resume" in line and "--overwrite" in line
    after = {p.name: sha256(p) for p in digits_run.path.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == calls["shared_before"], "the refused run changed the existing run directory"


def test_overwrite_replaces_the_run_directory(calls: dict[str, Any]) -> None:
    result, run = calls["overwrite"], calls["overwritten"]
    assert result.returncode == 0, describe(result)
    assert not (run / ".metrics.json.k2x9q0ab.tmp").exists(), "--overwrite kept a file of the old run"
    assert not (run.parent / f".{run.name}.replaced").exists(), "the old run was not removed"
    assert not (run / "evaluate.json").exists()
    assert read_json(run / "metrics.json")["training"]["steps"] == 2
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000002"]
    assert max(r["step"] for r in read_history(run)) == 2
    for name, digest in read_json(run / "manifest.json")["files"].items():
        assert sha256(run / name) == digest, name


# --------------------------------------------------------------------------------------------------
# CSV sources


def test_image_column_with_other_columns_is_rejected(calls: dict[str, Any]) -> None:
    assert_user_error(calls["csv_all"], "image", "cannot be combined")
    assert not calls["csv_all_out"].exists(), "a failed run left a half run directory behind"


def test_train_on_number_and_category_columns(calls: dict[str, Any]) -> None:
    result, run = calls["csv_tab"], calls["csv_tab_out"]
    assert result.returncode == 0, describe(result)
    features = read_json(run / "features.json")
    assert [entry["config"]["type"] for entry in features["inputs"]] == ["number", "category"]
    assert features["input"]["shape"] == [5]  # one number + <unknown>, blue, green, red
    assert features["inputs"][1]["state"]["vocabulary"] == ["<unknown>", "blue", "green", "red"]
    assert features["label_names"] == ["big", "small"]
    assert features["splits"]["rows"] == {"train": 36, "validation": 12, "test": 12}
    metrics = read_json(run / "metrics.json")
    assert metrics["splits"]["test"]["accuracy"] >= 0.9, "size separates the labels; the model should learn it"
    assert (run / "model.safetensors").is_file()


def test_train_on_an_image_path_column(calls: dict[str, Any]) -> None:
    result, run = calls["csv_img"], calls["csv_img_out"]
    assert result.returncode == 0, describe(result)
    features = read_json(run / "features.json")
    assert [entry["config"]["type"] for entry in features["inputs"]] == ["image"]
    assert features["input"] == {"kind": "image", "shape": [1, 8, 8], "vocab_size": 0, "pad_id": 0}
    assert features["label_names"] == ["big", "small"]
    metrics = read_json(run / "metrics.json")
    assert metrics["splits"]["test"]["accuracy"] >= 0.9, "brightness separates the labels; the model should learn it"
    assert (run / "model.safetensors").is_file()
