"""The digits splits the training-loop tests train on, encoded once per module."""

from __future__ import annotations

import pytest
from helpers import tiny_config

from forgeml.config import load_config
from forgeml.data.dataset import load_dataset

from .support import Digits


@pytest.fixture(scope="module")
def digits(single_thread_torch: None) -> Digits:
    """The digits of tiny_config, split and encoded once for the module."""
    cfg = load_config(tiny_config())
    dataset = load_dataset(cfg.data, cfg.seed)
    features = dataset.features
    tables = {name: dataset.split(name) for name in ("train", "validation")}
    features.fit(tables["train"])
    encoded = {name: (features.transform_inputs(t), features.transform_target(t)) for name, t in tables.items()}
    return Digits(encoded["train"], encoded["validation"], features.input_spec)
