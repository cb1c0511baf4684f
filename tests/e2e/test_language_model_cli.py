"""A GPT trained on a text corpus through the real command line: token files in the run, perplexity,
`forgeml generate` (greedy and seeded sampling, streamed), `forgeml evaluate`, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file

import forgeml

from .support import assert_user_error, describe, forge, in_parallel, read_history, read_json, write_yaml

LINE = "the cat sat on the mat. the dog lay on the rug."


def write_corpus(path: Path, lines: int = 300) -> Path:
    path.write_text("\n".join(LINE for _ in range(lines)) + "\n")
    return path


def config(corpus: Path, max_steps: int) -> dict[str, Any]:
    return {
        "name": "tiny_gpt",
        "data": {
            "source": {"type": "text_files", "path": str(corpus)},
            "corpus": {"column": "text", "tokenizer": "char"},
            "split": {"validation": 0.1, "test": 0.1},
        },
        "model": {"type": "gpt", "layers": 2, "heads": 2, "dim": 32, "context": 24, "dropout": 0.0},
        "train": {"optimizer": "adamw", "lr": 0.01, "batch_size": 16, "max_steps": max_steps, "epochs": 1000,
                  "eval_every": 40, "checkpoint_every": 40, "log_every": 20},
    }


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("language_model")
    corpus = write_corpus(root / "corpus.txt")
    full_config = write_yaml(root / "full.yaml", config(corpus, 160))
    short_config = write_yaml(root / "short.yaml", config(corpus, 80))
    run, short = root / "run", root / "short"
    trained = in_parallel(
        {"train_full": lambda: forge("train", full_config, "--out", run), "train_short": lambda: forge("train", short_config, "--out", short)}
    )
    prompt = "the dog"
    calls = in_parallel(
        {
            "greedy": lambda: forge("generate", run, "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "30"),
            "seeded": lambda: forge("generate", run, "--prompt", prompt, "--seed", "7", "--max-new-tokens", "30"),
            "seeded_again": lambda: forge("generate", run, "--prompt", prompt, "--seed", "7", "--max-new-tokens", "30"),
            "classify": lambda: forge("predict", run, corpus),
        }
    )
    # evaluate writes into the run the calls above read, so it comes after them; beside it, the 80-step
    # run resumed to 160 steps, which must end where the straight 160-step run ended
    calls |= in_parallel({"evaluate": lambda: forge("evaluate", run, "--json"), "resumed": lambda: forge("train", full_config, "--resume", short)})
    return {"root": root, "run": run, "short": short, "prompt": prompt, **trained, **calls}


def test_the_run_keeps_its_token_files_and_scores_perplexity(lm: dict[str, Any]):
    assert lm["train_full"].returncode == 0, describe(lm["train_full"])
    run = lm["run"]
    state = read_json(run / "features.json")
    assert state["task"] == "language_modelling" and state["input"]["kind"] == "tokens"
    for split, count in state["tokens"].items():
        assert (run / "tokens" / f"{split}.bin").stat().st_size == count * np.dtype(state["dtype"]).itemsize
    manifest = read_json(run / "manifest.json")["files"]
    assert {"tokens/train.bin", "tokens/validation.bin", "tokens/test.bin", "tokenizer.json"} <= set(manifest)
    test = read_json(run / "metrics.json")["splits"]["test"]
    assert test["perplexity"] == pytest.approx(np.exp(test["loss"]), rel=1e-6)
    assert test["perplexity"] < 2.0  # the text repeats: the model all but knows the next character
    history = read_history(run)
    assert any(record["split"] == "validation" and "perplexity" in record for record in history)
    for record in (r for r in history if r["split"] == "train"):  # windows of 24 tokens
        assert record["tokens_per_s"] == pytest.approx(record["examples_per_s"] * 24) and "mfu" not in record  # no GPU peak on a CPU
    assert "perplexity" in lm["train_full"].stdout


def test_generate_continues_the_prompt_greedily_and_reproducibly(lm: dict[str, Any]):
    greedy = lm["greedy"]
    assert greedy.returncode == 0, describe(greedy)
    text = greedy.stdout.rstrip("\n")
    assert text.startswith(lm["prompt"]) and " lay on the rug." in text
    assert lm["seeded"].returncode == 0, describe(lm["seeded"])
    assert lm["seeded"].stdout == lm["seeded_again"].stdout
    predictor = forgeml.load(lm["run"])
    assert lm["prompt"] + predictor.generate(lm["prompt"], 30, temperature=0) == text
    pieces = list(predictor.generate_stream("the cat", 12, temperature=0))
    assert len(pieces) > 1 and "".join(pieces) == predictor.generate("the cat", 12, temperature=0)


def test_evaluate_reports_perplexity_and_predict_says_to_generate(lm: dict[str, Any]):
    evaluated = json.loads(lm["evaluate"].stdout)
    assert evaluated["task"] == "language_modelling" and set(evaluated["metrics"]) == {"loss", "perplexity"}
    assert evaluated["metrics"]["loss"] == pytest.approx(read_json(lm["run"] / "metrics.json")["splits"]["test"]["loss"], rel=1e-5)
    assert_user_error(lm["classify"], "language model")


def test_a_resumed_language_model_run_ends_where_an_uninterrupted_one_does(lm: dict[str, Any]):
    assert lm["train_short"].returncode == 0 and lm["resumed"].returncode == 0, describe(lm["resumed"])
    straight, resumed = load_file(lm["run"] / "model.safetensors"), load_file(lm["short"] / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all((straight[k] == resumed[k]).all() for k in straight)
