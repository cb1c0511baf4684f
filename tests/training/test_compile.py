"""train.compile: training steps through torch.compile give the losses of eager training (slow: the
compiler takes tens of seconds on a CPU; `pytest -m slow tests/training/test_compile.py`)."""

from __future__ import annotations

import pytest

from .support import Digits, run_fit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread_torch")]


def test_compiled_training_matches_eager(digits: Digits):
    eager = run_fit(digits, max_steps=6, log_every=1, with_validation=False)
    compiled = run_fit(digits, max_steps=6, log_every=1, with_validation=False, compile=True)
    assert [r["loss"] for r in compiled.logs] == pytest.approx([r["loss"] for r in eager.logs], rel=1e-4)
    # checkpoints and the final weights belong to the plain module: no "_orig_mod." prefixes
    assert all(not key.startswith("_orig_mod") for key in compiled.model.state_dict())
