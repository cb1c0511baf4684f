"""The accuracy targets of the breadth examples, trained in full (slow: about 15 minutes on 2 cores;
CI skips them, `.venv/bin/python -m pytest -m slow tests/test_targets.py` runs them).

The figures of the last run are in benchmarks/README.md (benchmarks/breadth_targets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import forgeml
from helpers import REPO

pytestmark = pytest.mark.slow

SENTIMENT = ["sentiment_lstm", "sentiment_attention", "sentiment_textcnn", "sentiment_transformer"]


def train(example: str, out: Path) -> dict:
    return forgeml.train(REPO / "examples" / f"{example}.yaml", out=out, quiet=True).metrics["splits"]["test"]


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    root = tmp_path_factory.mktemp("sentiment")
    return {example: train(example, root / example)["accuracy"] for example in SENTIMENT}


@pytest.mark.parametrize("example", SENTIMENT)
def test_every_sentiment_model_reaches_072(sentiment: dict[str, float], example: str):
    assert sentiment[example] >= 0.72, sentiment


def test_one_sentiment_model_reaches_077(sentiment: dict[str, float]):
    assert max(sentiment.values()) >= 0.77, sentiment


def test_the_gru_beats_persistence_on_sunspots(tmp_path: Path):
    test = train("sunspots_gru", tmp_path / "run")
    assert test["mae"] < test["persistence_mae"], test


def test_breast_cancer_mlp_reaches_095(tmp_path: Path):
    assert train("breast_cancer_mlp", tmp_path / "run")["accuracy"] >= 0.95
