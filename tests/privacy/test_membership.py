"""The membership-inference audit: an overfit model gives its training examples away, a barely
trained one does not; audit.json and its picture are written into the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_config

import forgeml
from forgeml.errors import DataError
from forgeml.privacy import membership

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def noisy_labels_csv(path: Path, rows: int = 240, seed: int = 0) -> Path:
    """Ten random numbers and a label that is the sign of the first one, flipped for 30% of the rows:
    a model can only learn the flipped rows by memorising them."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, 10))
    labels = (values[:, 0] > 0) ^ (rng.random(rows) < 0.3)
    lines = [",".join(f"x{i}" for i in range(10)) + ",label"]
    lines += [",".join(f"{v:.5f}" for v in row) + f",{'yes' if label else 'no'}" for row, label in zip(values, labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


def overfit_config(csv: Path, epochs: int, lr: float = 0.005, validation: float = 0.1, test: float = 0.4, hidden: int = 128) -> dict:
    """An MLP on ``noisy_labels_csv`` that, given enough epochs, memorises the flipped rows."""
    return tiny_config(
        data={
            "source": {"type": "csv", "path": str(csv)},
            "features": [{"type": "number", "name": f"x{i}"} for i in range(10)],
            "target": {"type": "category", "name": "label"},
            "split": {"validation": validation, "test": test},
        },
        model={"type": "mlp", "hidden": [hidden]},
        train={"epochs": epochs, "batch_size": 16, "lr": lr, "keep_best": False, "log_every": 1000},
    )


@pytest.fixture(scope="module")
def noisy_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return noisy_labels_csv(tmp_path_factory.mktemp("noisy") / "noisy.csv")


def test_an_overfit_model_leaks_membership(noisy_csv: Path, tmp_path: Path):
    run_dir = forgeml.train(overfit_config(noisy_csv, epochs=150), out=tmp_path / "overfit", quiet=True).run_dir
    result = membership(run_dir)
    assert result.members == result.non_members == 96  # the test split (40% of 240) is the smaller group
    assert result.train_accuracy == 1.0 and result.held_out_accuracy < 0.8
    assert result.auc > 0.6 and result.advantage > 0.2
    assert result.auc == pytest.approx(0.8558, abs=0.02)  # pinned on this seed
    assert result.member_loss < result.non_member_loss
    saved = (run_dir / "audit.json").read_text()
    assert '"membership"' in saved and (run_dir / "audit_membership.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "audit.json" in (run_dir / "manifest.json").read_text()


AUC_UNTRAINED = 0.5132  # pinned on this seed


def test_an_untrained_model_is_near_chance(noisy_csv: Path, tmp_path: Path):
    run_dir = forgeml.train(overfit_config(noisy_csv, epochs=1, lr=1e-7), out=tmp_path / "untrained", quiet=True).run_dir
    result = membership(run_dir, save=False)
    assert abs(result.auc - 0.5) < 0.1
    assert result.auc == pytest.approx(AUC_UNTRAINED, abs=0.01)
    assert not (run_dir / "audit.json").exists()


def test_members_are_drawn_reproducibly_and_limited(noisy_csv: Path, tmp_path: Path):
    run_dir = forgeml.train(overfit_config(noisy_csv, epochs=1), out=tmp_path / "run", quiet=True).run_dir
    first, second = membership(run_dir, limit=30, seed=3, save=False), membership(run_dir, limit=30, seed=3, save=False)
    assert first.members == 30 and first.auc == second.auc and first.member_loss == second.member_loss
    with pytest.raises(DataError, match="test or validation"):
        membership(run_dir, held_out="train")
