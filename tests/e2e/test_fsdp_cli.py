"""A GPT on a corpus across 2 real processes (gloo on CPU): DDP, and FSDP2 (``train.strategy: fsdp``,
parameters sharded over the ranks), each against one process with the global batch; FSDP2 with
gradient accumulation; a 2-process FSDP2 run stopped at a checkpoint and resumed. The checkpoints and
the run's weights hold whole tensors gathered to rank 0, so every run loads alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import forgeml

from .support import TrainedRun, describe, forge, in_parallel, read_history, read_json, write_yaml
from .test_language_model_cli import write_corpus

STEPS = 6


def config(corpus: Path) -> dict[str, Any]:
    return {
        "name": "tiny_gpt_fsdp",
        "data": {"source": {"type": "text_files", "path": str(corpus)}, "corpus": {"tokenizer": "char"}, "split": {"validation": 0.1, "test": 0.1}},
        "model": {"type": "gpt", "layers": 2, "heads": 2, "dim": 32, "context": 16, "dropout": 0.0},  # no dropout: no random masks
        # SGD: Adam divides by the root of the squared gradient, which turns the rounding noise on gradients that
        # are zero in theory (the key biases) into whole steps; SGD keeps 1- and 2-process runs within rounding
        "train": {"optimizer": "sgd", "lr": 0.3, "momentum": 0.9, "batch_size": 8, "max_steps": STEPS, "epochs": 100,
                  "eval_every": 2, "checkpoint_every": 2, "log_every": 2, "eval_batch_size": 64},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedRun]:
    root = tmp_path_factory.mktemp("fsdp")
    path = write_yaml(root / "config.yaml", config(write_corpus(root / "corpus.txt", lines=120)))

    def train(name: str, *extra: Any) -> TrainedRun:
        result = forge("train", path, "--out", root / name, *extra)
        return TrainedRun(path, root / name, result, tuple(str(e) for e in extra))

    fsdp = ("--nproc", 2, "--set", "train.strategy=fsdp")
    first = in_parallel(
        {
            "single": lambda: train("single"),
            "ddp": lambda: train("ddp", "--nproc", 2),
            "fsdp": lambda: train("fsdp", *fsdp),
            "fsdp_accum": lambda: train("fsdp_accum", *fsdp, "--set", "train.batch_size=4", "--set", "train.grad_accum=2"),
            "stopped": lambda: train("resumed", *fsdp, "--set", f"train.max_steps={STEPS // 2}"),
        }
    )
    for run in first.values():
        assert run.result.returncode == 0, describe(run.result)
    resumed = forge("train", path, "--resume", root / "resumed", *fsdp)
    assert resumed.returncode == 0, describe(resumed)
    return first | {"resumed": TrainedRun(path, root / "resumed", resumed, ("--resume",))}


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=0, atol=atol, msg=name)


def test_a_language_model_on_two_ddp_processes_matches_one_process(runs: dict[str, TrainedRun]) -> None:
    assert_same_weights(runs["single"].path, runs["ddp"].path)
    single, ddp = read_history(runs["single"].path), read_history(runs["ddp"].path)
    assert [r.get("loss") for r in ddp] == pytest.approx([r.get("loss") for r in single], abs=1e-5)


def test_fsdp_matches_one_process_with_and_without_accumulation(runs: dict[str, TrainedRun]) -> None:
    assert_same_weights(runs["single"].path, runs["fsdp"].path)
    assert_same_weights(runs["single"].path, runs["fsdp_accum"].path)
    single, fsdp = read_json(runs["single"].path / "metrics.json"), read_json(runs["fsdp"].path / "metrics.json")
    assert fsdp["training"]["processes"] == 2
    # the final metrics are computed on the sharded model by both ranks; the same numbers as one process
    assert fsdp["splits"]["test"]["loss"] == pytest.approx(single["splits"]["test"]["loss"], abs=1e-4)
    validation = [r["perplexity"] for r in read_history(runs["fsdp"].path) if r["split"] == "validation"]
    assert validation == pytest.approx([r["perplexity"] for r in read_history(runs["single"].path) if r["split"] == "validation"], rel=1e-4)


def test_a_resumed_fsdp_run_matches_an_uninterrupted_one(runs: dict[str, TrainedRun]) -> None:
    assert "resuming" in runs["resumed"].result.stdout
    assert_same_weights(runs["fsdp"].path, runs["resumed"].path, atol=1e-6)
    # the checkpoint holds whole tensors, gathered to rank 0: one process loads it as it is
    step = sorted((runs["fsdp"].path / "checkpoints").iterdir())[-1]
    weights = load_file(step / "model.safetensors")
    assert weights["token_embedding.weight"].shape == forgeml.load(runs["fsdp"].path).model.token_embedding.weight.shape
