"""Every example config trains through the CLI (a few steps) and opens with the command that runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from .support import EXAMPLES, REPO, describe, forge, in_parallel, read_json

EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.yaml"))
IDS = [str(p.relative_to(EXAMPLES)) for p in EXAMPLE_FILES]
# Examples whose few steps still cost minutes on a CPU (a 22.7M- or 135M-parameter pretrained model scoring every split
# at the end): trained only with -m slow.
SLOW = {"minilm_sentiment_finetune.yaml", "minilm_sentiment_lora.yaml", "smollm2_lora.yaml"}
TRAINED = [p for p in EXAMPLE_FILES if p.name not in SLOW]
PARAMS = [pytest.param(p, id=i, marks=[pytest.mark.slow] if p.name in SLOW else []) for p, i in zip(EXAMPLE_FILES, IDS)]


def train_example(example: Path, out: Path) -> Any:
    return forge("train", example, "--out", out, "--set", "train.max_steps=3", "--set", "train.epochs=1", timeout=1800)


def test_there_are_examples() -> None:
    assert len(EXAMPLE_FILES) >= 3, EXAMPLE_FILES


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, tuple[Path, Any]]:
    root = tmp_path_factory.mktemp("examples")

    outs = {example: root / f"run{index}" for index, example in enumerate(TRAINED)}
    results = in_parallel({str(example): (lambda e=example, o=out: train_example(e, o)) for example, out in outs.items()})
    return {example: (outs[example], results[str(example)]) for example in TRAINED}


@pytest.mark.parametrize("example", PARAMS)
def test_example_trains(runs: dict[Path, tuple[Path, Any]], example: Path, tmp_path: Path) -> None:
    out, result = runs[example] if example in runs else (tmp_path / "run", train_example(example, tmp_path / "run"))
    assert result.returncode == 0, describe(result)
    assert (out / "model.safetensors").is_file()
    assert load_file(out / "model.safetensors"), "no tensors in model.safetensors"
    metrics = read_json(out / "metrics.json")
    assert 1 <= metrics["training"]["steps"] <= 3
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["name"] == yaml.safe_load(example.read_text())["name"]
    assert resolved["train"]["max_steps"] == 3 and resolved["train"]["epochs"] == 1


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=IDS)
def test_example_opens_with_the_command_that_runs_it(example: Path) -> None:
    first = example.read_text().splitlines()[0]
    assert first == f"# forgeml train {example.relative_to(REPO).as_posix()}"
