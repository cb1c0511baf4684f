"""Shared fixtures; the helpers they use live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import make_csv_dataset, tiny_config


@pytest.fixture
def tiny() -> dict[str, Any]:
    return tiny_config()


@pytest.fixture
def csv_dataset(tmp_path: Path) -> Path:
    return make_csv_dataset(tmp_path / "csvdata")


@pytest.fixture(scope="module")
def single_thread_torch():
    """Run torch on one CPU thread for a module (restored afterwards).

    Tiny models train many times faster on one thread than with two threads competing for two busy
    cores, and pinned numbers do not depend on how many cores the machine has.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
