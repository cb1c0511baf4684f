"""Task metrics from predictions and targets (numpy in, plain floats out)."""

from __future__ import annotations

from typing import Callable

import numpy as np

LOWER_IS_BETTER = {"loss", "mse", "mae", "rmse", "perplexity"}


def lower_is_better(name: str) -> bool:
    return name in LOWER_IS_BETTER


def classification_metrics(predicted: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Accuracy, macro precision / recall / F1 and the confusion matrix (rows: true, columns: predicted)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(num_classes))
    precision, recall, f1, _ = precision_recall_fscore_support(
        target, predicted, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float((predicted == target).mean()) if len(target) else 0.0,
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "confusion_matrix": confusion_matrix(target, predicted, labels=labels).tolist(),
    }


def regression_metrics(predicted: np.ndarray, target: np.ndarray) -> dict:
    """Mean squared error, mean absolute error and R² (1 - SSE / SST; 0 when the target is constant)."""
    error = predicted.astype(np.float64) - target.astype(np.float64)
    total = float(((target - target.mean()) ** 2).sum()) if len(target) else 0.0
    return {
        "mse": float((error**2).mean()) if len(target) else 0.0,
        "mae": float(np.abs(error).mean()) if len(target) else 0.0,
        "r2": float(1.0 - (error**2).sum() / total) if total > 0 else 0.0,
    }


def score(task: str, outputs: np.ndarray, targets: np.ndarray, num_classes: int, decode: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """The task's metrics from raw model outputs and encoded targets.

    Args:
        task: classification or regression.
        outputs: logits (N x classes) or normalised values (N or N x 1).
        targets: class indices or normalised values.
        num_classes: classes (classification).
        decode: maps normalised regression values back to the target's units, so that MSE and MAE
            are reported in the units of the data.
    """
    if task == "classification":
        return classification_metrics(outputs.argmax(-1), targets, num_classes)
    predicted, truth = outputs.reshape(-1), targets.reshape(-1)
    if decode is not None:
        predicted, truth = decode(predicted), decode(truth)
    return regression_metrics(predicted, truth)


def persistence_scores(last: np.ndarray, truth: np.ndarray) -> dict:
    """A forecaster's yardstick: MSE and MAE of predicting that the next value equals the last one seen."""
    scores = regression_metrics(last, truth)
    return {"persistence_mse": scores["mse"], "persistence_mae": scores["mae"]}


def per_class_scores(confusion: list[list[int]], label_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix."""
    matrix = np.asarray(confusion, dtype=np.float64)
    out = {}
    for index, name in enumerate(label_names):
        true_positive = matrix[index, index]
        predicted, support = matrix[:, index].sum(), matrix[index].sum()
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}
    return out


def reliability(probabilities: np.ndarray, targets: np.ndarray, bins: int = 15) -> dict:
    """How far a classifier's confidence is from its accuracy.

    The examples are put into ``bins`` equal-width bins by their top probability (the confidence);
    the expected calibration error (ECE) is the average over bins of |accuracy - confidence|,
    weighted by the share of examples in each bin. 0 means that among the predictions made with
    confidence p, a share p is right.

    Returns:
        ``ece``, ``nll`` (mean negative log-likelihood of the true class), ``accuracy``,
        ``confidence`` (mean top probability) and ``bins``: per bin its ``lower`` and ``upper``
        edge, ``count``, ``confidence`` and ``accuracy`` (None for an empty bin).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lower, upper]
    table, ece = [], 0.0
    for index in range(bins):
        members = which == index
        count = int(members.sum())
        mean_confidence = float(confidence[members].mean()) if count else None
        accuracy = float(correct[members].mean()) if count else None
        if count:
            ece += count / len(targets) * abs(accuracy - mean_confidence)
        table.append({"lower": float(edges[index]), "upper": float(edges[index + 1]), "count": count, "confidence": mean_confidence, "accuracy": accuracy})
    true_class = probabilities[np.arange(len(targets)), targets]
    return {
        "ece": float(ece),
        "nll": float(-np.log(np.clip(true_class, 1e-12, None)).mean()) if len(targets) else 0.0,
        "accuracy": float(correct.mean()) if len(targets) else 0.0,
        "confidence": float(confidence.mean()) if len(targets) else 0.0,
        "bins": table,
    }
