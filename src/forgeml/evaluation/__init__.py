"""Evaluate a trained run on one of its splits; the result is saved as ``evaluate.json`` in the run."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from forgeml import locks
from forgeml.metrics import per_class_scores, persistence_scores, score
from forgeml.predictor import Predictor, load
from forgeml.training.loop import LANGUAGE_MODELLING, language_model_metrics


@dataclass
class EvaluationResult:
    """Metrics of a run on one split.

    Attributes:
        split: train, validation or test.
        task: classification or regression.
        rows: examples evaluated (windows of a language model).
        metrics: accuracy, precision_macro, recall_macro, f1_macro (classification) or mse, mae, r2
            (regression; a forecast of a series also gets the persistence baseline's mse and mae), or
            loss and perplexity (language modelling).
        label_names: class names, the order of the confusion matrix rows and columns.
        confusion_matrix: rows are true classes, columns predicted classes.
        per_class: precision, recall, F1 and support per class.
    """

    split: str
    task: str
    rows: int
    metrics: dict[str, float]
    label_names: list[str]
    confusion_matrix: list[list[int]] | None
    per_class: dict[str, dict[str, float]] | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@locks.writes_run
def run(target: str | Path | Predictor, split: str = "test", save: bool = True) -> EvaluationResult:
    """Evaluate a run (a directory or a loaded Predictor) on ``split``.

    Args:
        target: a run directory or a Predictor from ``forgeml.load``.
        split: train, validation or test.
        save: write the result into the run as ``evaluate.json`` (one entry per split).

    Raises:
        ForgeError: the run cannot be loaded or the split is empty.
    """
    predictor = target if isinstance(target, Predictor) else load(target)
    started = time.perf_counter()
    if predictor.task == LANGUAGE_MODELLING:
        result = _language_model(predictor, split, started)
    else:
        result = _predictions(predictor, split, started)
    if save:
        predictor.run.record("evaluate.json", split, result.to_dict())
    return result


def _language_model(predictor: Predictor, split: str, started: float) -> EvaluationResult:
    """Next-token loss and perplexity on the split's held-out windows."""
    inputs, targets = predictor.windows(split)
    scores = language_model_metrics(predictor.model, inputs, targets, predictor.batch_size, predictor.device)
    return EvaluationResult(split, predictor.task, int(inputs.shape[0]), scores, [], None, None, round(time.perf_counter() - started, 4))


def _predictions(predictor: Predictor, split: str, started: float) -> EvaluationResult:
    inputs, targets, table = predictor.split(split)
    outputs = predictor.outputs(inputs)
    decode = predictor.features.decode_regression if predictor.task == "regression" else None
    scores = score(predictor.task, outputs.numpy(), targets.numpy(), len(predictor.label_names), decode)
    baseline = predictor.features.persistence(table)
    if baseline is not None:
        scores |= persistence_scores(*baseline)
    confusion = scores.pop("confusion_matrix", None)
    per_class = per_class_scores(confusion, predictor.label_names) if confusion is not None else None
    return EvaluationResult(
        split=split,
        task=predictor.task,
        rows=int(inputs.shape[0]),
        metrics=scores,
        label_names=predictor.label_names,
        confusion_matrix=confusion,
        per_class=per_class,
        seconds=round(time.perf_counter() - started, 4),
    )
