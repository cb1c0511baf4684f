"""Attack a trained classifier: robust accuracy under FGSM or PGD at each ε, saved in the run as
``attack.json`` (one entry per method and norm), a PNG of the curve, and for images a PNG of a few
examples before and after the strongest attack.

    forgeml attack runs/mnist_cnn --method pgd --eps 0.05,0.1,0.2,0.3 --steps 20

An example counts as robust at ε when the model still gives its true class after the attack; at ε 0
that is the clean accuracy. Images are attacked in pixel space ([0, 1], clipped), tables in their
standardised inputs (clipped to the training range), texts in the embedding space (see
``forgeml.adversarial``; the result says which in ``space``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from forgeml import locks
from forgeml.adversarial import Adversary, default_step, input_space
from forgeml.errors import ConfigError, DataError
from forgeml.plots import figure_png, pyplot
from forgeml.predictor import Predictor, load

RESULT = "attack.json"
EXAMPLES_SHOWN = 8


@dataclass
class RobustPoint:
    """Robust accuracy at one ε, and the largest perturbation actually applied (in the attack's norm)."""

    eps: float
    robust_accuracy: float
    max_perturbation: float


@dataclass
class AttackResult:
    """The result of ``forgeml attack``.

    Attributes:
        method, norm, steps, alpha: the attack (alpha: the step size at the largest ε, in the space's units).
        split, rows: the examples attacked.
        space: where the inputs were perturbed and what ε is measured in.
        clean_accuracy: accuracy without an attack.
        points: robust accuracy per ε, smallest ε first.
        files: the pictures written into the run.
    """

    method: str
    norm: str
    steps: int
    alpha: float
    split: str
    rows: int
    space: str
    clean_accuracy: float
    points: list[RobustPoint]
    files: list[str] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        return f"{self.method}_{self.norm}"


def parse_eps(text: str) -> list[float]:
    """``"0.05,0.1,0.2"`` -> sorted radii; each must be a positive number."""
    try:
        values = sorted({float(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise ConfigError(f"--eps: {text!r} is not a comma-separated list of numbers (e.g. 0.05,0.1,0.2,0.3)") from None
    if not values or values[0] <= 0:
        raise ConfigError(f"--eps: give positive radii, e.g. 0.05,0.1,0.2,0.3 (got {text!r})")
    return values


@locks.writes_run
def run(
    target: str | Path | Predictor,
    method: str = "pgd",
    eps: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
    norm: str = "linf",
    steps: int = 20,
    alpha: Optional[float] = None,
    split: str = "test",
    limit: Optional[int] = None,
    seed: int = 0,
    save: bool = True,
) -> AttackResult:
    """Attack a run (a directory or a loaded Predictor) on one of its splits.

    Args:
        target: a run directory or a Predictor.
        method: fgsm or pgd.
        eps: radii of the perturbation, in the units of the input space (pixels in [0, 1] for images).
        norm: linf or l2.
        steps: PGD steps.
        alpha: PGD step size (default 2.5 ε / steps).
        split: train, validation or test.
        limit: attack at most this many examples (the first of the split); None: all.
        seed: seed of PGD's random starts.
        save: write attack.json and the PNGs into the run.

    Raises:
        ForgeError: not a classifier, an unknown method or norm, or an empty split.
    """
    predictor = target if isinstance(target, Predictor) else load(target)
    if predictor.task != "classification":
        raise DataError(f"{predictor.run.path} is a {predictor.task} model; forgeml attack measures robust accuracy of classifiers")
    if method not in ("fgsm", "pgd"):
        raise ConfigError(f"--method: {method!r} is not one of: fgsm, pgd")
    if norm not in ("linf", "l2"):
        raise ConfigError(f"--norm: {norm!r} is not one of: linf, l2")
    radii = sorted(float(e) for e in eps)
    started = time.perf_counter()
    inputs, targets, _ = predictor.split(split)
    if limit is not None:
        inputs, targets = inputs[:limit], targets[:limit]
    train_inputs = predictor.split("train")[0] if predictor.features.input_spec.kind in ("vector", "sequence") else None
    model, device = predictor.model, predictor.device
    space = input_space(model, predictor.features.input_spec, train_inputs, predictor.features.image_normalisation).to(device)
    clean = predictor.outputs(inputs).argmax(dim=-1)
    points: list[RobustPoint] = []
    # the pictured examples are spread over the split (a split in class order would otherwise show one class)
    shown = torch.linspace(0, inputs.shape[0] - 1, min(EXAMPLES_SHOWN, inputs.shape[0])).round().long().unique()
    shown_delta: dict[int, torch.Tensor] = {}
    shown_predicted: dict[int, int] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for radius in radii:
            adversary = Adversary(model, space, method, radius, norm, steps, alpha, random_start=method == "pgd")  # type: ignore[arg-type]
            correct, largest = 0, 0.0
            for begin in range(0, inputs.shape[0], predictor.batch_size):
                batch = inputs[begin : begin + predictor.batch_size].to(device)
                batch_targets = targets[begin : begin + predictor.batch_size].to(device)
                delta = adversary.attack(batch, batch_targets)
                with torch.no_grad():
                    predicted = adversary.outputs(model, batch, delta).argmax(dim=-1)
                correct += int((predicted == batch_targets).sum())
                size = delta.flatten(1).abs().amax(dim=1) if norm == "linf" else delta.flatten(1).norm(dim=1)
                largest = max(largest, float(size.max()) / space.unit)
                if radius == radii[-1] and space.kind == "pixels":
                    for index in shown[(shown >= begin) & (shown < begin + len(batch))].tolist():
                        shown_delta[index], shown_predicted[index] = delta[index - begin].cpu(), int(predicted[index - begin])
            points.append(RobustPoint(radius, correct / max(1, inputs.shape[0]), round(largest, 6)))
    result = AttackResult(
        method=method,
        norm=norm,
        steps=1 if method == "fgsm" else steps,
        alpha=float(alpha if alpha is not None else default_step(method, radii[-1], steps, method == "pgd")),  # type: ignore[arg-type]
        split=split,
        rows=int(inputs.shape[0]),
        space=space.description,
        clean_accuracy=float((clean == targets).float().mean()) if len(targets) else 0.0,
        points=points,
        seed=seed,
    )
    if save:
        run_dir = predictor.run
        curve = f"attack_{result.key}.png"
        run_dir.write_bytes(curve, _curve_png(result))
        result.files.append(curve)
        if shown_delta:
            pictures = f"attack_{result.key}_examples.png"
            pixels = inputs[shown] * space.scale.cpu() + space.shift.cpu()  # type: ignore[union-attr]
            deltas = torch.stack([shown_delta[i] for i in shown.tolist()])
            attacked = torch.tensor([shown_predicted[i] for i in shown.tolist()])
            run_dir.write_bytes(pictures, _examples_png(pixels, deltas, clean[shown], attacked, targets[shown], predictor.label_names, result))
            result.files.append(pictures)
    result.seconds = round(time.perf_counter() - started, 3)  # the pictures included
    if save:
        predictor.run.record(RESULT, result.key, result.to_dict(), result.files)
    return result


def _curve_png(result: AttackResult) -> bytes:
    figure, axes = pyplot().subplots(figsize=(5, 3.4))
    radii = [0.0] + [p.eps for p in result.points]
    accuracy = [result.clean_accuracy] + [p.robust_accuracy for p in result.points]
    axes.plot(radii, accuracy, marker="o")
    for x, y in zip(radii, accuracy):
        axes.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel(f"ε ({result.norm}; {result.space.split(';')[0]})", fontsize=8)
    axes.set_ylabel(f"accuracy on {result.split} ({result.rows:,} examples)")
    name = "FGSM" if result.method == "fgsm" else f"PGD-{result.steps}"
    axes.set_title(f"robust accuracy under {name}")
    axes.grid(alpha=0.3)
    return figure_png(figure)


def _examples_png(
    pixels: torch.Tensor,
    delta: torch.Tensor,
    clean: torch.Tensor,
    attacked: torch.Tensor,
    targets: torch.Tensor,
    label_names: list[str],
    result: AttackResult,
) -> bytes:
    """Clean images above, their adversarial versions below, with true and predicted labels."""
    count = pixels.shape[0]
    figure, axes = pyplot().subplots(2, count, figsize=(1.3 * count, 3.0), squeeze=False)
    adversarial = (pixels + delta).clamp(0, 1)
    for column in range(count):
        for row, images, predicted in ((0, pixels, clean), (1, adversarial, attacked)):
            image = images[column].permute(1, 2, 0).numpy()
            axis = axes[row][column]
            axis.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray" if image.shape[2] == 1 else None, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            wrong = int(predicted[column]) != int(targets[column])
            axis.set_title(f"→ {label_names[int(predicted[column])]}", fontsize=8, color="crimson" if wrong else "black")
        axes[0][column].set_xlabel(f"true {label_names[int(targets[column])]}", fontsize=7)
    axes[0][0].set_ylabel("clean", fontsize=8)
    axes[1][0].set_ylabel(f"ε {result.points[-1].eps:g}", fontsize=8)
    return figure_png(figure)


def robust_table(result: AttackResult) -> list[tuple[str, str, str]]:
    """Rows of (ε, robust accuracy, largest perturbation) for printing, ε 0 first."""
    rows = [("0 (clean)", f"{result.clean_accuracy:.4f}", "0")]
    rows += [(f"{p.eps:g}", f"{p.robust_accuracy:.4f}", f"{p.max_perturbation:.4g}") for p in result.points]
    return rows


