"""Text and time series through the real command line: train, inspect, evaluate and predict.

A text run must carry its tokenizer (tokenizer.json, checked by the manifest) so that `predict` reads
raw sentences; a forecasting run must report the persistence baseline beside its own error and
predict one value per row that has a full window of history.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

import forgeml

from helpers import BAD, GOOD, write_reviews  # tests/ is on sys.path (pyproject)

from .support import assert_user_error, describe, forge, in_parallel, in_parallel_groups, json_lines, read_json, write_yaml

def write_series(path: Path, rows: int) -> Path:
    """A noiseless sine wave with a period of 12 rows, one value per line."""
    path.write_text("value\n" + "\n".join(f"{10 + 5 * math.sin(2 * math.pi * i / 12):.5f}" for i in range(rows)) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("text_series")
    text_config = write_yaml(
        root / "text.yaml",
        {
            "name": "reviews",
            "data": {
                "source": {"type": "csv", "path": str(write_reviews(root / "reviews.csv"))},
                "features": [{"type": "text", "name": "text", "min_frequency": 1}],
                "target": {"type": "category", "name": "label"},
            },
            "model": {"type": "textcnn", "embedding_dim": 16, "kernels": [1, 2], "filters": 8, "dropout": 0.0},
            "train": {"epochs": 30, "batch_size": 32, "lr": 0.01, "log_every": 20},
        },
    )
    series_config = write_yaml(
        root / "series.yaml",
        {
            "name": "sine",
            "data": {
                "source": {"type": "csv", "path": str(write_series(root / "series.csv", 160))},
                "features": [{"type": "sequence", "name": "value", "length": 6}],
                "target": {"type": "number", "name": "value", "lead": 1},
                "split": {"order": "sequential", "validation": 0.15, "test": 0.15},
            },
            "model": {"type": "rnn", "cell": "gru", "hidden_size": 16},
            "train": {"epochs": 60, "batch_size": 32, "lr": 0.02, "log_every": 50},
        },
    )
    text_run, series_run = root / "text_run", root / "series_run"
    trained = in_parallel(
        {
            "text": lambda: forge("train", text_config, "--out", text_run),
            "series": lambda: forge("train", series_config, "--out", series_run),
            "inspect": lambda: forge("data", "inspect", text_config),
            "inspect_json": lambda: forge("data", "inspect", series_config, "--json"),
        }
    )
    new_reviews = root / "new.csv"
    new_reviews.write_text("text\nwhat a superb and moving film\nthe plot was dull and tedious\n")
    history = write_series(root / "history.csv", 15)
    after = in_parallel_groups(
        {"predict_text": lambda: forge("predict", text_run, new_reviews)},
        {  # evaluate writes into the run the prediction reads: one after the other
            "predict_series": lambda: forge("predict", series_run, history),
            "evaluate_series": lambda: forge("evaluate", series_run, "--json"),
        },
    )
    # after the predictions: resuming rewrites the run they read
    after["resume_text"] = forge("train", text_config, "--resume", text_run, "--set", "train.epochs=32")
    return {"root": root, "text_run": text_run, "series_run": series_run, **trained, **after}


def test_a_text_run_keeps_its_tokenizer(runs: dict[str, Any]):
    assert runs["text"].returncode == 0, describe(runs["text"])
    run = runs["text_run"]
    manifest = read_json(run / "manifest.json")["files"]
    assert "tokenizer.json" in manifest
    tokenizer = Tokenizer.from_file(str(run / "tokenizer.json"))  # a plain Hugging Face tokenizer
    assert all(word in tokenizer.get_vocab() for word in GOOD + BAD)
    features = read_json(run / "features.json")
    assert features["input"]["kind"] == "tokens" and features["input"]["vocab_size"] == tokenizer.get_vocab_size()
    assert read_json(run / "metrics.json")["splits"]["test"]["accuracy"] >= 0.9


def test_a_text_run_resumes_with_the_same_tokenizer(runs: dict[str, Any]):
    result = runs["resume_text"]
    assert result.returncode == 0, describe(result)
    assert "resuming" in result.stdout
    # the tokenizer is fitted again from the same rows and must come out byte for byte the same
    assert read_json(runs["text_run"] / "metrics.json")["training"]["epochs"] == 32


def test_predict_reads_raw_sentences(runs: dict[str, Any]):
    result = runs["predict_text"]
    assert result.returncode == 0, describe(result)
    lines = json_lines(result.stdout)
    assert [line["label"] for line in lines] == ["fresh", "rotten"]
    assert lines[0]["input"].endswith("new.csv:2")
    predictor = forgeml.load(runs["text_run"])
    assert [p["label"] for p in predictor.predict([{"text": "clever and charming"}, {"text": "lazy, flat acting"}])] == ["fresh", "rotten"]


def test_a_changed_tokenizer_is_refused(runs: dict[str, Any], tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["text_run"], copy)
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text().replace('"great"', '"grate"'))
    result = forge("predict", copy, runs["root"] / "new.csv")
    assert_user_error(result, "tokenizer.json", "corrupt")


def test_data_inspect_shows_the_text_and_the_windows(runs: dict[str, Any]):
    table = runs["inspect"]
    assert table.returncode == 0, describe(table)
    assert "word tokenizer, vocabulary" in table.stdout and "tokens per text" in table.stdout
    assert "200 rows read" in table.stdout and "fresh" in table.stdout
    summary = json.loads(runs["inspect_json"].stdout)
    # 160 values, windows of 6: rows 1-5 lack history and the last has no next value -> 154 windows
    assert summary["without_window_or_target"] == 6 and sum(summary["splits"].values()) == 154
    assert summary["inputs"][0]["length"] == 6 and summary["model_input"] == "windows of 6 steps x 1 value"


def test_a_forecaster_beats_persistence_and_says_so(runs: dict[str, Any]):
    assert runs["series"].returncode == 0, describe(runs["series"])
    assert "persistence baseline mae" in runs["series"].stdout
    test = read_json(runs["series_run"] / "metrics.json")["splits"]["test"]
    assert test["mae"] < test["persistence_mae"]
    evaluated = json.loads(runs["evaluate_series"].stdout)
    assert evaluated["metrics"]["persistence_mae"] == pytest.approx(test["persistence_mae"])
    assert evaluated["metrics"]["mae"] == pytest.approx(test["mae"], rel=1e-5)


def test_predicting_a_series_forecasts_each_row_with_enough_history(runs: dict[str, Any]):
    result = runs["predict_series"]
    assert result.returncode == 0, describe(result)
    lines = json_lines(result.stdout)
    # 15 values on lines 2..16; windows of 6 end at lines 7..16; the last forecasts the 16th value
    assert [line["input"].rsplit(":", 1)[1] for line in lines] == [str(n) for n in range(7, 17)]
    truth = [10 + 5 * math.sin(2 * math.pi * i / 12) for i in range(6, 16)]
    errors = [abs(line["value"] - value) for line, value in zip(lines, truth)]
    assert np.mean(errors) < 1.0, errors
