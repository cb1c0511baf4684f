"""Privacy audits of a trained run, saved in the run as ``audit.json``.

Membership inference (``forgeml audit RUN --membership``): does the model give itself away on the
examples it was trained on? The attack is the loss threshold of Yeom et al. (2018): an example whose
loss is below a threshold is guessed to be a training example. It is scored on an equal number of
training examples (members) and held-out examples of the same distribution (non-members, the test
split by default), so guessing gives an AUC of 0.5:

    AUC        the probability that a random member has a lower loss than a random non-member
    advantage  max over thresholds of TPR - FPR (0: no better than chance; 1: perfect inference)

A model trained with differential privacy should score near 0.5; a model fitted to its training
set until its loss there is near zero scores well above it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from forgeml import locks
from forgeml.errors import DataError
from forgeml.plots import figure_png, pyplot
from forgeml.predictor import Predictor, load

RESULT = "audit.json"
PICTURE = "audit_membership.png"


@dataclass
class MembershipResult:
    """The loss-threshold membership-inference attack.

    Attributes:
        members, non_members: examples scored from the training split and from ``held_out``.
        held_out: the split the non-members come from.
        auc: area under the attack's ROC curve (0.5: chance).
        advantage: max TPR - FPR over thresholds, and the loss threshold where it is reached.
        member_loss, non_member_loss: mean loss of each group.
        train_accuracy, held_out_accuracy: on the scored examples (classification; the generalisation gap).
    """

    members: int
    non_members: int
    held_out: str
    auc: float
    advantage: float
    threshold: float
    member_loss: float
    non_member_loss: float
    train_accuracy: Optional[float] = None
    held_out_accuracy: Optional[float] = None
    files: list[str] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_example_loss(predictor: Predictor, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Each example's loss (cross-entropy, or squared error for regression) and, for a classifier,
    whether it is classified correctly."""
    outputs = predictor.outputs(inputs)
    if predictor.task == "classification":
        # in float64: a confident float32 loss underflows to exactly 0 for members and non-members alike,
        # and the ties would hide the difference between them
        losses = F.cross_entropy(outputs.double(), targets, reduction="none")
        return losses.numpy(), (outputs.argmax(dim=-1) == targets).numpy()
    return ((outputs.squeeze(-1).double() - targets.double()) ** 2).numpy(), None


@locks.writes_run
def membership(target: str | Path | Predictor, held_out: str = "test", limit: Optional[int] = None, seed: int = 0, save: bool = True) -> MembershipResult:
    """Run the loss-threshold membership-inference attack on a run.

    Args:
        target: a run directory or a Predictor.
        held_out: the split the non-members come from (test or validation).
        limit: score at most this many examples of each group; None: as many as the smaller group has.
        seed: which training examples are drawn when the training split is the larger.
        save: write the result (``membership`` in audit.json) and a picture into the run.

    Raises:
        ForgeError: a language model, or an empty split.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    predictor = target if isinstance(target, Predictor) else load(target)
    if held_out not in ("test", "validation"):
        raise DataError(f"--split: the non-members come from test or validation, not {held_out!r}")
    started = time.perf_counter()
    train_inputs, train_targets, _ = predictor.split("train")
    other_inputs, other_targets, _ = predictor.split(held_out)
    count = min(len(train_targets), len(other_targets), limit or len(train_targets))
    generator = np.random.default_rng(seed)
    members = np.sort(generator.choice(len(train_targets), count, replace=False))
    non_members = np.sort(generator.choice(len(other_targets), count, replace=False))
    member_loss, member_correct = per_example_loss(predictor, train_inputs[members], train_targets[members])
    other_loss, other_correct = per_example_loss(predictor, other_inputs[non_members], other_targets[non_members])

    truth = np.concatenate([np.ones(count), np.zeros(count)])
    score = -np.concatenate([member_loss, other_loss])  # a lower loss is more likely a member
    false_positive, true_positive, thresholds = roc_curve(truth, score)
    best = int(np.argmax(true_positive - false_positive))
    result = MembershipResult(
        members=count,
        non_members=count,
        held_out=held_out,
        auc=float(roc_auc_score(truth, score)),
        advantage=float(true_positive[best] - false_positive[best]),
        threshold=float(-thresholds[best]) if np.isfinite(thresholds[best]) else float("inf"),
        member_loss=float(member_loss.mean()),
        non_member_loss=float(other_loss.mean()),
        train_accuracy=None if member_correct is None else float(member_correct.mean()),
        held_out_accuracy=None if other_correct is None else float(other_correct.mean()),
        seed=seed,
    )
    if save:
        predictor.run.write_bytes(PICTURE, _picture(false_positive, true_positive, member_loss, other_loss, result))
        result.files.append(PICTURE)
    result.seconds = round(time.perf_counter() - started, 3)
    if save:
        predictor.run.record(RESULT, "membership", result.to_dict(), result.files)
    return result


def _picture(false_positive: np.ndarray, true_positive: np.ndarray, member_loss: np.ndarray, other_loss: np.ndarray, result: MembershipResult) -> bytes:
    """The attack's ROC curve beside the two loss distributions."""
    figure, (roc, losses) = pyplot().subplots(1, 2, figsize=(9, 3.4))
    roc.plot(false_positive, true_positive, label=f"loss threshold (AUC {result.auc:.3f})")
    roc.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    roc.set_xlabel("false positive rate (non-members called members)")
    roc.set_ylabel("true positive rate")
    roc.set_title(f"membership inference: advantage {result.advantage:.3f}", fontsize=10)
    roc.legend(fontsize=8, loc="lower right")
    upper = float(np.quantile(np.concatenate([member_loss, other_loss]), 0.99)) or 1.0
    bins = np.linspace(0, upper, 40)
    losses.hist(np.clip(member_loss, 0, upper), bins=bins, alpha=0.6, label=f"training ({result.members:,})")
    losses.hist(np.clip(other_loss, 0, upper), bins=bins, alpha=0.6, label=f"{result.held_out} ({result.non_members:,})")
    losses.set_xlabel("per-example loss")
    losses.set_ylabel("examples")
    losses.legend(fontsize=8)
    return figure_png(figure)
