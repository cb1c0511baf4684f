"""Calibration of a classifier by temperature scaling, saved in the run as ``calibration.json``.

A network trained with cross-entropy is often over-confident: among the test digits it calls 99%
sure, fewer than 99% are right. Temperature scaling (Guo et al., 2017) divides every logit by one
number T > 0, fitted on the validation split to minimise the negative log-likelihood. It never
changes which class is predicted, only how sure the model says it is; T > 1 softens an
over-confident model.

``forgeml calibrate RUN`` fits T, reports the expected calibration error (ECE) before and after on
the validation and test splits, draws the reliability diagrams, and stores T in the run. From then
on ``forgeml.load(RUN)`` applies it: ``Predictor.probabilities``, ``predict`` and the server's
probabilities are calibrated.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from forgeml import locks
from forgeml.errors import DataError
from forgeml.metrics import reliability
from forgeml.plots import figure_png, pyplot
from forgeml.predictor import CALIBRATION, Predictor, load, model_sha256

PICTURE = "calibration.png"
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 100.0


@dataclass
class CalibrationResult:
    """A fitted temperature and the calibration of the model before and after it.

    Attributes:
        temperature: T; calibrated probabilities are softmax(logits / T).
        fitted_on: the split T was fitted on (validation).
        bins: equal-width confidence bins of the reliability diagrams.
        before, after: per split (validation, test), ``metrics.reliability`` of the probabilities
            without and with T: ece, nll, accuracy, confidence and the bins.
        model_sha256: the weights T was fitted to; ``forgeml.load`` applies T only to them.
        files: the reliability diagram (PNG) in the run.
    """

    temperature: float
    model_sha256: str | None
    fitted_on: str
    rows: int
    bins: int
    before: dict[str, dict[str, Any]]
    after: dict[str, dict[str, Any]]
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T minimising the mean cross-entropy of ``logits / T`` on ``targets``.

    The objective is convex in 1 / T, so L-BFGS on log T finds the optimum from T = 1.
    """
    logits = logits.detach().double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or temperature <= 0:
        raise DataError("temperature scaling did not converge on the validation split")
    # a validation split the model gets entirely right keeps lowering the loss as T -> 0: stop at
    # a temperature that still leaves probabilities below 1
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


@locks.writes_run
def run(target: str | Path | Predictor, split: str = "validation", bins: int = 15, save: bool = True) -> CalibrationResult:
    """Fit a run's temperature on ``split`` and measure the calibration before and after.

    Args:
        target: a run directory or a Predictor from ``forgeml.load``.
        split: where T is fitted: validation (the test split stays untouched for the report).
        bins: confidence bins of the ECE and the reliability diagram.
        save: write ``calibration.json`` and ``calibration.png`` into the run.

    Raises:
        ForgeError: not a classifier, or the split is empty.
    """
    predictor = target if isinstance(target, Predictor) else load(target)
    if predictor.task != "classification":
        raise DataError(f"{predictor.run.path} is a {predictor.task} model; calibration is for classifiers")
    started = time.perf_counter()
    logits, targets = _logits(predictor, split)
    temperature = fit_temperature(logits, targets)
    before, after = {}, {}
    for name in dict.fromkeys([split, "validation", "test"]):
        if name == split:
            split_logits, split_targets = logits, targets
        else:
            try:
                split_logits, split_targets = _logits(predictor, name)
            except DataError:
                continue  # an empty split
        before[name] = reliability(torch.softmax(split_logits.double(), -1).numpy(), split_targets.numpy(), bins)
        after[name] = reliability(torch.softmax(split_logits.double() / temperature, -1).numpy(), split_targets.numpy(), bins)
    result = CalibrationResult(round(temperature, 6), model_sha256(predictor.run), split, int(len(targets)), bins, before, after)
    if save:
        shown = "test" if "test" in before else split
        predictor.run.write_bytes(PICTURE, reliability_png(before[shown], after[shown], temperature, shown))
        result.files = [PICTURE]
        result.seconds = round(time.perf_counter() - started, 4)
        predictor.run.write_json(CALIBRATION, result.to_dict())
        predictor.run.write_manifest([CALIBRATION, PICTURE])
        predictor.temperature = temperature
    result.seconds = round(time.perf_counter() - started, 4)
    return result


def _logits(predictor: Predictor, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets, _ = predictor.split(split)
    return predictor.outputs(inputs), targets


def reliability_png(before: dict[str, Any], after: dict[str, Any], temperature: float, split: str) -> bytes:
    """Two reliability diagrams side by side: accuracy per confidence bin, against the diagonal."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(8.4, 3.8), sharey=True)
    for axis, scores, title in ((axes[0], before, "before"), (axes[1], after, f"after (T = {temperature:.3f})")):
        table = [b for b in scores["bins"] if b["count"]]
        width = table[0]["upper"] - table[0]["lower"] if table else 0.1
        centres = np.array([(b["lower"] + b["upper"]) / 2 for b in table])
        axis.bar(centres, [b["accuracy"] for b in table], width=width * 0.95, color="#4c78a8", label="accuracy")
        axis.bar(
            centres,
            [abs(b["confidence"] - b["accuracy"]) for b in table],
            bottom=[min(b["confidence"], b["accuracy"]) for b in table],
            width=width * 0.95,
            color="none",
            edgecolor="#e45756",
            hatch="///",
            label="gap to confidence",
        )
        axis.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence")
        axis.set_title(f"{title}: ECE {scores['ece']:.4f}", fontsize=10)
    axes[0].set_ylabel(f"accuracy ({split} split)")
    axes[0].legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure_png(figure)
