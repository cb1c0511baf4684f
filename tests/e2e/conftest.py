"""Fixtures shared by the end-to-end tests (helpers live in support.py)."""

from __future__ import annotations

import pytest

from .support import TrainedRun, forge, tiny_config, write_yaml


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """The tiny digits CNN of tests/conftest.py, trained with ``--set train.max_steps=3``.

    Shared by the train, evaluate, predict and error tests; tests may add files to it (evaluate.json)
    but never change what training wrote.
    """
    root = tmp_path_factory.mktemp("digits")
    config = write_yaml(root / "tiny.yaml", tiny_config())
    overrides = ("--set", "train.max_steps=3")
    run = root / "run"
    result = forge("train", config, "--out", run, *overrides)
    assert result.returncode == 0, f"training the shared digits run failed:\n{result.stdout}\n{result.stderr}"
    return TrainedRun(config, run, result, overrides)
