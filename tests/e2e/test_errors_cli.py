"""User errors: exactly one line on stderr starting with 'error:', exit code 2, no traceback; --debug shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import diverged_copy, line_config

from .support import EXAMPLES, TrainedRun, assert_user_error, describe, forge, in_parallel, json_lines, make_csv_dataset, tiny_config, write_yaml


SEVEN = EXAMPLES / "data" / "digits" / "seven.png"


def csv_config(csv: Path) -> dict[str, Any]:
    return {
        "name": "csv",
        "data": {
            "source": {"type": "csv", "path": str(csv)},
            "features": [{"type": "number", "name": "size"}, {"type": "category", "name": "colour"}],
            "target": {"type": "category", "name": "label"},
        },
        "model": {"type": "mlp", "hidden": [4]},
        "train": {"epochs": 1},
    }


@pytest.fixture(scope="module")
def errors(digits_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each error case's paths and the result of its CLI call (all run side by side)."""
    root = tmp_path_factory.mktemp("errors")
    cases: dict[str, Any] = {"root": root}

    cases["missing_config"] = root / "no_such_config.yaml"

    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("name: broken\ndata: [1, 2\nmodel: {type: cnn}\n")
    cases["bad_yaml"] = bad_yaml

    unknown = tiny_config()
    unknown["train"]["learning_rate"] = 0.1  # the key is `lr`
    cases["unknown_key"] = write_yaml(root / "unknown_key.yaml", unknown)

    cases["missing_csv"] = root / "nowhere" / "data.csv"
    cases["missing_data"] = write_yaml(root / "missing_data.yaml", csv_config(cases["missing_csv"]))

    csv = make_csv_dataset(root / "csvdata", rows=20)
    lines = csv.read_text().splitlines()
    fields = lines[7].split(",")  # file line 8 (the header is line 1)
    fields[0] = "twelve"
    lines[7] = ",".join(fields)
    csv.write_text("\n".join(lines) + "\n")
    cases["bad_csv"] = csv
    cases["bad_row"] = write_yaml(root / "bad_row.yaml", csv_config(csv))

    not_a_run = root / "not_a_run"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("nothing to see\n")
    cases["not_a_run"] = not_a_run
    cases["missing_image"] = root / "no_such_digit.png"
    cases["diverging"] = write_yaml(root / "diverging.yaml", line_config(lr=10))
    cases["diverged_run"] = diverged_copy(digits_run.path, root / "diverged_run")

    def out(name: str) -> Path:
        return root / f"{name}_run"

    results = in_parallel(
        {
            "missing_config": lambda: forge("train", cases["missing_config"], "--out", out("missing_config")),
            "bad_yaml": lambda: forge("train", bad_yaml, "--out", out("bad_yaml")),
            "unknown_key": lambda: forge("train", cases["unknown_key"], "--out", out("unknown_key")),
            "missing_data": lambda: forge("train", cases["missing_data"], "--out", out("missing_data")),
            "bad_row": lambda: forge("train", cases["bad_row"], "--out", out("bad_row")),
            "not_a_run": lambda: forge("evaluate", not_a_run),
            "missing_image": lambda: forge("predict", digits_run.path, cases["missing_image"]),
            "diverging": lambda: forge("train", cases["diverging"], "--out", out("diverging")),
            "diverged_predict": lambda: forge("predict", cases["diverged_run"], SEVEN),
            "debug": lambda: forge("--debug", "train", cases["missing_config"], "--out", out("debug")),
        }
    )
    cases["results"] = results
    cases["out"] = out
    return cases


def test_missing_config_file(errors: dict[str, Any]) -> None:
    assert_user_error(errors["results"]["missing_config"], str(errors["missing_config"]), "no such config file")
    assert not errors["out"]("missing_config").exists()


def test_bad_yaml(errors: dict[str, Any]) -> None:
    assert_user_error(errors["results"]["bad_yaml"], str(errors["bad_yaml"]), "not valid YAML")


def test_unknown_key(errors: dict[str, Any]) -> None:
    line = assert_user_error(errors["results"]["unknown_key"], str(errors["unknown_key"]), "train.learning_rate", "unknown key")
    assert "lr" in line.split("allowed keys here:", 1)[1], "the message lists the allowed keys"


def test_missing_data_file_in_a_csv_source(errors: dict[str, Any]) -> None:
    assert_user_error(errors["results"]["missing_data"], str(errors["missing_csv"]), "no such data file")
    assert not errors["out"]("missing_data").exists(), "a failed run left a half run directory behind"


def test_bad_row_in_a_csv_file_names_file_line_and_column(errors: dict[str, Any]) -> None:
    assert_user_error(errors["results"]["bad_row"], str(errors["bad_csv"]), "line 8", "'size'", "'twelve'")
    assert not errors["out"]("bad_row").exists(), "a failed run left a half run directory behind"


def test_evaluate_on_a_directory_that_is_not_a_run(errors: dict[str, Any]) -> None:
    assert_user_error(errors["results"]["not_a_run"], str(errors["not_a_run"]), "not a forgeml run directory")
    assert sorted(p.name for p in errors["not_a_run"].iterdir()) == ["notes.txt"], "evaluate wrote into a non-run"


def test_predict_with_a_missing_image(errors: dict[str, Any]) -> None:
    assert_user_error(errors["results"]["missing_image"], str(errors["missing_image"]), "no such image file")


def test_a_diverging_run_stops_with_one_line_and_keeps_its_checkpoints(errors: dict[str, Any]) -> None:
    result = errors["results"]["diverging"]
    assert_user_error(result, "step 16: the loss is inf at lr 10; training stopped; lower train.lr")
    run = errors["out"]("diverging")
    assert f"the run keeps its checkpoints from before the loss diverged (the newest: {run / 'checkpoints' / 'step-000012'})" in result.stdout.splitlines()
    assert "--resume" not in result.stdout  # resumed as it is, it would diverge at step 16 again


def test_predict_refuses_nan_outputs_instead_of_printing_invalid_json(errors: dict[str, Any]) -> None:
    result = errors["results"]["diverged_predict"]
    assert_user_error(result, "the model outputs nan or inf for 1 of 1 inputs (the first: input 1)", "lower train.lr")
    assert json_lines(result.stdout) == []


def test_debug_shows_the_traceback(errors: dict[str, Any]) -> None:
    result = errors["results"]["debug"]
    assert result.returncode != 0, describe(result)
    assert "Traceback" in result.stderr, describe(result)
    assert "ConfigError" in result.stderr and "no such config file" in result.stderr
