"""A pretrained encoder (the offline all-MiniLM-L6-v2) fine-tuned with LoRA through the real command
line: the run records its base model, trains a small fraction of the weights, and predicts with the
adapters merged into an ordinary model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import forgeml

from .support import assert_user_error, describe, forge, json_lines, read_json, write_yaml
from .test_text_series_cli import write_reviews


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pretrained")
    config = write_yaml(
        root / "lora.yaml",
        {
            "name": "minilm_lora",
            "data": {
                "source": {"type": "csv", "path": str(write_reviews(root / "reviews.csv", rows=40))},
                "features": [{"type": "text", "name": "text", "tokenizer": "pretrained", "max_length": 16}],
                "target": {"type": "category", "name": "label"},
                "split": {"validation": 0.2, "test": 0.2},
            },
            "model": {"type": "hf", "adapter": {"type": "lora", "r": 4, "alpha": 8}},
            "train": {"optimizer": "adamw", "lr": 0.001, "batch_size": 8, "max_steps": 4, "log_every": 2},
        },
    )
    run = root / "run"
    trained = forge("train", config, "--out", run, timeout=600)
    new = root / "new.csv"
    new.write_text("text\nwhat a superb and moving film\n")
    predicted = forge("predict", run, new, timeout=600)
    return {"root": root, "run": run, "train": trained, "predict": predicted, "new": new}


def test_the_run_records_its_base_model_and_trains_the_adapters_only(lora: dict[str, Any]):
    assert lora["train"].returncode == 0, describe(lora["train"])
    run = lora["run"]
    base = read_json(run / "base_model.json")
    assert base["pretrained"].endswith("all-MiniLM-L6-v2") or "minilm" in base["pretrained"].lower()
    assert base["revision"] is None and all(len(digest) == 64 for digest in base["weights"].values())
    assert "base_model.json" in read_json(run / "manifest.json")["files"]
    training = read_json(run / "metrics.json")["training"]
    assert training["trainable_parameters"] < training["parameters"] / 100  # LoRA r=4 on query and value, and the head
    assert f"{training['trainable_parameters']:,} of {training['parameters']:,} parameters trainable" in lora["train"].stdout
    tokenizer = json.loads((run / "tokenizer.json").read_text())
    assert "[CLS]" in (run / "tokenizer.json").read_text() and tokenizer["truncation"]["max_length"] == 16


def test_predict_uses_the_merged_model(lora: dict[str, Any]):
    assert lora["predict"].returncode == 0, describe(lora["predict"])
    [line] = json_lines(lora["predict"].stdout)
    assert line["label"] in ("fresh", "rotten") and sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    predictor = forgeml.load(lora["run"])
    assert "peft" not in type(predictor.model.network).__module__  # an ordinary transformers model
    assert predictor.predict(lora["new"])[0]["probabilities"] == line["probabilities"]


def test_a_different_base_model_is_refused(lora: dict[str, Any], tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(lora["run"], copy)
    base = read_json(copy / "base_model.json")
    base["weights"] = {name: "0" * 64 for name in base["weights"]}
    (copy / "base_model.json").write_text(json.dumps(base))
    result = forge("predict", copy, lora["new"], timeout=600)
    assert_user_error(result, "base_model.json", "is not the one this run was trained from")
