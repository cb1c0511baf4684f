"""Pretrained models fine-tuned with LoRA through the real command line: the offline all-MiniLM-L6-v2
as a classifier, and a (tiny, saved-to-disk) Llama as a causal LM on a corpus. The run records its
base model, trains and stores only the adapters, resumes exactly, predicts or generates with the
adapters merged into an ordinary model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

import forgeml
from helpers import TINY_LM_TEXT, make_tiny_causal_lm

from .support import assert_user_error, describe, forge, in_parallel, in_parallel_groups, json_lines, read_json, write_yaml
from helpers import write_reviews  # tests/ is on sys.path (pyproject)


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
    stored = load_file(run / "model.safetensors")  # adapter-only: the base comes from base_model.json's model
    assert stored and all("lora_" in name or name.startswith("head.") for name in stored)
    assert sum(t.numel() for t in stored.values()) == training["trainable_parameters"]
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


# --------------------------------------------------------------------------------------------------
# a pretrained causal LM on a corpus


def causal_config(model_dir: Path, corpus: Path, max_steps: int) -> dict[str, Any]:
    return {
        "name": "tiny_llama_lora",
        "data": {
            "source": {"type": "text_files", "path": str(corpus)},
            "corpus": {"tokenizer": "pretrained"},
            "split": {"validation": 0.1, "test": 0.1},
        },
        "model": {"type": "hf", "pretrained": str(model_dir), "context": 16,
                  "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}},
        "train": {"optimizer": "adamw", "lr": 0.01, "batch_size": 8, "max_steps": max_steps, "epochs": 100,
                  "eval_every": 4, "checkpoint_every": 4, "log_every": 2, "monitor": "loss"},
    }


@pytest.fixture(scope="module")
def causal(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("causal")
    model_dir = make_tiny_causal_lm(root / "tiny_llama")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_LM_TEXT * 200)
    full, short = write_yaml(root / "full.yaml", causal_config(model_dir, corpus, 8)), write_yaml(root / "short.yaml", causal_config(model_dir, corpus, 4))
    run, short_run = root / "run", root / "short"
    trained = in_parallel({"train": lambda: forge("train", full, "--out", run), "short": lambda: forge("train", short, "--out", short_run)})
    calls = in_parallel_groups(
        {  # evaluate writes into the run generate reads: one after the other
            "generate": lambda: forge("generate", run, "--prompt", "the cat", "--temperature", "0", "--max-new-tokens", "12"),
            "evaluate": lambda: forge("evaluate", run, "--json"),
        },
        {"resumed": lambda: forge("train", full, "--resume", short_run)},
    )
    return {"root": root, "run": run, "short_run": short_run, "model_dir": model_dir, **trained, **calls}


def test_a_causal_lm_trains_its_adapters_on_the_corpus_with_its_own_tokenizer(causal: dict[str, Any]):
    assert causal["train"].returncode == 0, describe(causal["train"])
    run = causal["run"]
    assert read_json(run / "features.json")["corpus"]["tokenizer"] == "pretrained"
    assert (run / "tokenizer.json").read_text() and read_json(run / "base_model.json")["pretrained"] == str(causal["model_dir"])
    stored = load_file(run / "model.safetensors")
    assert stored and all("lora_" in name for name in stored)  # adapters only: a few KB for any base model size
    metrics = read_json(run / "metrics.json")
    assert sum(t.numel() for t in stored.values()) == metrics["training"]["trainable_parameters"] == 896
    assert metrics["splits"]["test"]["perplexity"] > 1
    # the loss fell: the text repeats, so even rank-4 adapters on a random tiny model learn some of it
    losses = [r["loss"] for r in (json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert losses[-1] < losses[0]


def test_a_resumed_adapter_run_ends_where_the_straight_run_ends(causal: dict[str, Any]):
    assert causal["resumed"].returncode == 0, describe(causal["resumed"])
    straight, resumed = load_file(causal["run"] / "model.safetensors"), load_file(causal["short_run"] / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert (straight[name] == resumed[name]).all(), name


def test_generate_and_evaluate_a_fine_tuned_causal_lm(causal: dict[str, Any]):
    assert causal["generate"].returncode == 0, describe(causal["generate"])
    predictor = forgeml.load(causal["run"])
    assert "peft" not in type(predictor.model.network).__module__  # merged into an ordinary LlamaForCausalLM
    continuation = predictor.generate("the cat", 12, temperature=0)
    assert continuation.strip() and continuation in causal["generate"].stdout
    assert causal["evaluate"].returncode == 0, describe(causal["evaluate"])
    evaluated = json.loads(causal["evaluate"].stdout)
    # the merged model scores the test windows as the adapter model did at the end of training
    assert evaluated["metrics"]["loss"] == pytest.approx(read_json(causal["run"] / "metrics.json")["splits"]["test"]["loss"], rel=1e-4)
