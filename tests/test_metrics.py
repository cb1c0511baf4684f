"""Task metrics: pinned against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from forgeml.metrics import classification_metrics, lower_is_better, per_class_scores, regression_metrics, score


def test_classification_metrics_by_hand():
    target = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    metrics = classification_metrics(predicted, target, 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # precision per class: 1/2, 2/3, 1/1; recall per class: 1/2, 2/2, 1/2
    assert metrics["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metrics["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    f1 = [2 * p * r / (p + r) for p, r in ((1 / 2, 1 / 2), (2 / 3, 1), (1, 1 / 2))]
    assert metrics["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_classification_metrics_count_absent_classes():
    metrics = classification_metrics(np.array([0, 0]), np.array([0, 0]), 3)
    assert metrics["accuracy"] == 1.0
    assert metrics["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert metrics["precision_macro"] == pytest.approx(1 / 3)  # absent classes score 0, no warning


def test_regression_metrics_by_hand():
    target = np.array([1.0, 2.0, 3.0, 4.0])
    predicted = np.array([1.5, 2.0, 2.0, 5.0])
    metrics = regression_metrics(predicted, target)
    assert metrics["mse"] == pytest.approx((0.25 + 0 + 1 + 1) / 4)
    assert metrics["mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert metrics["r2"] == pytest.approx(1 - 2.25 / 5.0)


def test_r2_of_a_constant_target_is_zero():
    assert regression_metrics(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == {"mse": 1.0, "mae": 1.0, "r2": 0.0}


def test_score_classification_takes_the_argmax_of_logits():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]])
    metrics = score("classification", logits, np.array([0, 1, 1]), 2)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["confusion_matrix"] == [[1, 0], [1, 1]]


def test_score_regression_decodes_into_the_targets_units():
    outputs = np.array([[0.0], [1.0], [-1.0]], dtype=np.float32)
    targets = np.array([0.5, 1.0, -1.0], dtype=np.float32)
    plain = score("regression", outputs, targets, 1)
    assert plain["mse"] == pytest.approx(0.25 / 3)
    decoded = score("regression", outputs, targets, 1, decode=lambda v: v * 10.0 + 100.0)
    assert decoded["mse"] == pytest.approx(25.0 / 3)  # errors scale by 10, squared errors by 100
    assert decoded["mae"] == pytest.approx(5.0 / 3)
    assert decoded["r2"] == pytest.approx(plain["r2"])  # R² has no units


def test_per_class_scores_from_a_confusion_matrix():
    scores = per_class_scores([[1, 1, 0], [0, 2, 0], [1, 0, 1]], ["a", "b", "c"])
    assert scores["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores["b"]["precision"] == pytest.approx(2 / 3) and scores["b"]["recall"] == 1.0
    assert scores["c"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert per_class_scores([[0, 0], [0, 0]], ["x", "y"])["x"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_lower_is_better():
    assert all(lower_is_better(name) for name in ("loss", "mse", "mae", "rmse"))
    assert not any(lower_is_better(name) for name in ("accuracy", "f1_macro", "r2"))
