"""`forgeml data inspect`: the summary is computed from the same rows, split and fitted features as training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forgeml.config import load_config
from forgeml.data.dataset import load_dataset
from forgeml.data.inspect import inspect
from helpers import tiny_config


def test_digits_summary_matches_the_split_and_the_pixels():
    cfg = load_config(tiny_config())
    summary = inspect(cfg.data, cfg.seed)
    dataset = load_dataset(cfg.data, cfg.seed)
    assert summary["rows_read"] == 1797 and summary["bad_rows"] == {}
    assert summary["splits"] == {name: len(dataset.splits[name]) for name in ("train", "validation", "test")}
    assert sum(summary["classes"]["train"].values()) == summary["splits"]["train"]
    assert summary["classes"]["test"]["0"] == 18  # stratified: 178 zeros, a tenth in test
    image = summary["inputs"][0]
    pixels = dataset.split("train").columns["image"]
    assert image["shape"] == [1, 8, 8]
    assert image["pixels"][0]["mean"] == pytest.approx(float(pixels.mean()), rel=1e-6)
    assert (image["pixels"][0]["min"], image["pixels"][0]["max"]) == (0.0, 1.0)
    assert summary["model_input"] == "1-channel 8x8 images"


def test_bad_rows_are_counted_not_fatal(tmp_path: Path):
    path = tmp_path / "rows.csv"
    path.write_text("x,colour,y\n1,red,2\nnope,blue,3\n3,,4\n4,red,5\n5,blue,6\n6,red,7\n")
    config = {
        "data": {
            "source": {"type": "csv", "path": str(path)},
            "features": [{"type": "number", "name": "x"}, {"type": "category", "name": "colour"}],
            "target": {"type": "number", "name": "y"},
            "split": {"validation": 0.0, "test": 0.0},
        },
        "model": {"type": "mlp"},
    }
    cfg = load_config(config)
    summary = inspect(cfg.data, cfg.seed)  # on_bad_row is error: inspect still looks at everything
    assert summary["bad_rows"] == {"x": 1, "colour": 1} and summary["on_bad_row"] == "error"
    assert summary["splits"]["train"] == 4
    x = summary["inputs"][0]
    assert (x["min"], x["max"], x["mean"]) == (1.0, 6.0, pytest.approx(np.mean([1, 4, 5, 6])))
    colour = summary["inputs"][1]
    assert colour["vocabulary"] == 2 and colour["most_common"] == ["red", "blue"]
    assert summary["target"]["train"]["max"] == 7.0
