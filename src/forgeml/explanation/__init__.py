"""Explain a trained classifier's predictions and measure how faithful the explanations are.

    forgeml explain runs/mnist_cnn examples/data/digits/seven.png --method ig
    forgeml explain runs/mnist_cnn --faithfulness --n 200

Explanations (``run``): for each input, its attributions (``Predictor.explain``, through Captum)
drawn where a person would look: an image with the attribution as a heat map over it, a text as an
HTML page with its tokens highlighted and the top tokens listed, a table row as a bar chart of its
columns. The raw numbers go into a JSON file beside each picture; ``explain.json`` in the run lists
them.

Faithfulness (``faithfulness``): a deletion curve per method on test examples. Features are
removed most-attributed first (pixels turned black, columns set to the training mean, tokens to
[UNK]) and the probability of the predicted class is followed down to nothing left; the area under
that curve is compared with removing the features in random order. An attribution that knows what
the model relies on makes the probability fall faster (a smaller area). A method whose area is not
smaller than random's by two standard errors of the paired difference is flagged.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from forgeml import locks
from forgeml.attribution import METHODS, AttributionSpace, delete, per_feature
from forgeml.errors import ConfigError, DataError
from forgeml.plots import figure_png, pyplot
from forgeml.predictor import Predictor, load

RESULT = "explain.json"
FOLDER = "explanations"


@dataclass
class Explained:
    """One input's explanation: what was predicted and explained, its strongest features, its files."""

    input: str
    label: str
    target: str
    probability: float
    top: list[tuple[str, float]]
    files: list[str]


@dataclass
class ExplainResult:
    method: str
    kind: str
    folder: str
    inputs: list[Explained]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _classifier(target: str | Path | Predictor) -> Predictor:
    predictor = target if isinstance(target, Predictor) else load(target)
    if predictor.task != "classification":
        raise DataError(f"{predictor.run.path} is a {predictor.task} model; forgeml explain is for classifiers")
    return predictor


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "_", Path(text).name)[-40:].strip("_") or "input"


@locks.writes_run
def run(
    target: str | Path | Predictor,
    inputs: Any,
    method: str = "ig",
    label: Optional[str] = None,
    out: str | Path | None = None,
    save: bool = True,
    allow_outside: bool = False,
) -> ExplainResult:
    """Explain raw inputs (what ``predict`` takes) with one method; write the pictures and JSON.

    Args:
        target: a run directory or a Predictor.
        inputs: image paths, a CSV / JSON Lines / Parquet path, or row dicts.
        method: ig, saliency, gradcam, occlusion, shap or lime.
        label: the class to explain (default: each input's predicted class).
        out: the folder for the pictures (default: ``explanations/`` in the run).
        save: write the files and ``explain.json``.
        allow_outside: read image paths in a data file that lead out of its folder (as ``predict``).

    Raises:
        ForgeError: not a classifier, an unknown method or class, unreadable inputs.
    """
    predictor = _classifier(target)
    rows = predictor.parse(predictor.to_table(inputs, allow_outside))
    images = predictor.features.input_spec.kind == "image"
    names = [
        rows.origins[rows.origin_index[i]] if images else f"{rows.origins[rows.origin_index[i]]}:{int(rows.line[i])}"  # an image file, or file:line of a row
        for i in range(len(rows))
    ]
    return _explain(predictor, predictor.features.transform_inputs(rows), names, method, label, out, save)


def run_split(
    target: str | Path | Predictor, split: str = "test", n: int = 4, method: str = "ig", out: str | Path | None = None, save: bool = True
) -> ExplainResult:
    """Explain the first ``n`` examples of one of the run's own splits (what ``forgeml pipeline``
    shows in the report); each is named by its origin, e.g. ``mnist5k:4012``."""
    predictor = _classifier(target)
    inputs, _, table = predictor.split(split)
    count = min(n, len(inputs))
    names = [f"{table.origins[table.origin_index[i]]}:{int(table.line[i])}" for i in range(count)]
    return _explain(predictor, inputs[:count], names, method, None, out, save)


def _explain(
    predictor: Predictor, encoded: torch.Tensor, titles: list[str], method: str, label: Optional[str], out: str | Path | None, save: bool
) -> ExplainResult:
    started = time.perf_counter()
    explanations = predictor.explain_encoded(encoded, method, label)
    kind = predictor.features.input_spec.kind
    folder = Path(out) if out is not None else predictor.run / FOLDER
    images = kind == "image"
    result = ExplainResult(method, kind, str(folder), [])
    for index, explanation in enumerate(explanations):
        name = titles[index]
        scores = explanation["scores"]
        names = explanation["names"]
        order = torch.argsort(scores.abs() if method != "gradcam" else scores, descending=True)
        top = [(names[i], round(float(scores[i]), 6)) for i in order[:10].tolist() if kind != "tokens" or names[i] not in ("[PAD]", "")]
        entry = Explained(name, explanation["label"], explanation["target"], round(explanation["probability"], 6), top[:10], [])
        if save:
            stem = f"{index:03d}_{_slug(name)}_{method}"
            folder.mkdir(parents=True, exist_ok=True)
            raw = {
                "input": name,
                "method": method,
                "label": explanation["label"],
                "target": explanation["target"],
                "probability": explanation["probability"],
                "names": names,
                "scores": scores.tolist(),
                "attributions": explanation["attributions"].tolist(),
            }
            data = folder / f"{stem}.json"
            data.write_text(json.dumps(raw) + "\n")
            if kind == "tokens":
                picture = folder / f"{stem}.html"
                picture.write_text(_text_page(names, scores, entry, method))
            else:
                picture = folder / f"{stem}.png"
                if images:
                    pixels = encoded[index] * _std(predictor) + _mean(predictor)
                    picture.write_bytes(_heat_map(pixels, scores, entry, method))
                else:
                    picture.write_bytes(_bars(names, scores, entry, method))
            entry.files = [str(data), str(picture)]
        result.inputs.append(entry)
    result.seconds = round(time.perf_counter() - started, 3)
    if save:
        predictor.run.record(RESULT, method, result.to_dict())
    return result


def _mean(predictor: Predictor) -> torch.Tensor:
    mean, _ = predictor.features.image_normalisation or ([0.0], [1.0])
    return torch.tensor(mean).view(-1, 1, 1)


def _std(predictor: Predictor) -> torch.Tensor:
    _, std = predictor.features.image_normalisation or ([0.0], [1.0])
    return torch.tensor(std).view(-1, 1, 1)


def _title(entry: Explained, method: str) -> str:
    explained = entry.target if entry.target == entry.label else f"{entry.target} (predicted {entry.label})"
    return f"{method}: why {explained}, p = {entry.probability:.3f}"


def _heat_map(pixels: torch.Tensor, scores: torch.Tensor, entry: Explained, method: str) -> bytes:
    """The image beside itself under its attribution map (red: toward the class, blue: against it)."""
    plt = pyplot()
    image = pixels.clamp(0, 1).permute(1, 2, 0).numpy()
    heat = scores.view(image.shape[0], image.shape[1]).numpy()
    limit = float(np.abs(heat).max()) or 1.0
    figure, (left, right) = plt.subplots(1, 2, figsize=(6, 3.2))
    shown = image[:, :, 0] if image.shape[2] == 1 else image
    left.imshow(shown, cmap="gray" if image.shape[2] == 1 else None, vmin=0, vmax=1)
    left.set_title(Path(entry.input).name[:30], fontsize=8)
    right.imshow(shown, cmap="gray" if image.shape[2] == 1 else None, vmin=0, vmax=1)
    overlay = right.imshow(heat, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.6)
    right.set_title(_title(entry, method), fontsize=8)
    for axis in (left, right):
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(overlay, ax=right, fraction=0.046, pad=0.04)
    return figure_png(figure)


def _bars(names: list[str], scores: torch.Tensor, entry: Explained, method: str) -> bytes:
    """The 15 columns with the largest attributions, as horizontal bars (green: toward the class)."""
    plt = pyplot()
    order = torch.argsort(scores.abs(), descending=True)[:15].tolist()[::-1]
    values = [float(scores[i]) for i in order]
    figure, axis = plt.subplots(figsize=(6, 0.3 * len(order) + 1.2))
    axis.barh([names[i] for i in order], values, color=["seagreen" if v >= 0 else "indianred" for v in values])
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_title(_title(entry, method), fontsize=9)
    axis.set_xlabel("attribution (toward the class: right)", fontsize=8)
    axis.tick_params(labelsize=8)
    return figure_png(figure)


def _text_page(tokens: list[str], scores: torch.Tensor, entry: Explained, method: str) -> str:
    """A self-contained HTML page: the tokens on backgrounds as strong as their attribution
    (green: toward the class, red: against it), then the top tokens in a table."""
    shown = [(token, float(score)) for token, score in zip(tokens, scores.tolist()) if token not in ("[PAD]", "")]
    limit = max((abs(score) for _, score in shown), default=0.0) or 1.0
    spans = []
    for token, score in shown:
        colour = "0, 150, 60" if score >= 0 else "210, 40, 40"
        spans.append(
            f'<span title="{score:+.4f}" style="background: rgba({colour}, {abs(score) / limit:.3f}); padding: 2px 3px; '
            f'margin: 1px; border-radius: 3px; display: inline-block">{html.escape(token)}</span>'
        )
    rows = "".join(f"<tr><td>{html.escape(token)}</td><td>{score:+.4f}</td></tr>" for token, score in entry.top)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>forgeml explain</title>"
        "<style>body{font-family:sans-serif;max-width:760px;margin:2em auto;line-height:2}"
        "table{border-collapse:collapse}td{padding:2px 12px;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h2>{html.escape(_title(entry, method))}</h2><p>{' '.join(spans)}</p>"
        "<p style='font-size:small'>green: pushes toward the class, red: against it; the stronger the colour, the larger the attribution.</p>"
        f"<h3>top tokens</h3><table><tr><th>token</th><th>attribution</th></tr>{rows}</table></body></html>\n"
    )


# --------------------------------------------------------------------------------------------------
# faithfulness


@dataclass
class DeletionCurve:
    """One method's deletion curve: the mean probability of the predicted class after removing each
    fraction of the features, its area, and the paired comparison with random order."""

    method: str
    fractions: list[float]
    probability: list[float]
    auc: float
    random_auc: float
    improvement: float  # random_auc - auc, averaged over examples: above 0 is better than random
    standard_error: float
    better_than_random: bool


@dataclass
class FaithfulnessResult:
    split: str
    rows: int
    steps: int
    curves: list[DeletionCurve]
    random_probability: list[float]
    flagged: list[str]
    files: list[str] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def applicable_methods(predictor: Predictor) -> list[str]:
    """The methods that apply to the run's model: gradcam needs a convolutional image model."""
    from torch import nn

    convolutional = any(isinstance(m, nn.Conv2d) for m in predictor.model.modules())
    return [m for m in METHODS if m != "gradcam" or (predictor.features.input_spec.kind == "image" and convolutional)]


def _deletion(
    predictor: Predictor, space: AttributionSpace, inputs: torch.Tensor, targets: torch.Tensor, scores: torch.Tensor, fractions: np.ndarray
) -> np.ndarray:
    """Each example's probability of its target after removing each fraction of its features in
    the order of ``scores`` (highest first): examples x fractions."""
    removable = space.removable(inputs) if space.tokens else torch.ones_like(scores, dtype=torch.bool)
    ranked = torch.where(removable, scores, torch.full_like(scores, float("-inf")))
    order = torch.argsort(ranked, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order).contiguous())
    count = removable.sum(dim=1, keepdim=True)
    curve = np.zeros((len(inputs), len(fractions)))
    for column, fraction in enumerate(fractions):
        removed = rank < torch.round(count * float(fraction)).long()
        probabilities = predictor.probabilities(delete(space, inputs, removed))
        curve[:, column] = probabilities.gather(1, targets.view(-1, 1)).squeeze(1).numpy()
    return curve


def _area(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    return ((curves[:, 1:] + curves[:, :-1]) / 2 * np.diff(fractions)).sum(axis=1)


@locks.writes_run
def faithfulness(
    target: str | Path | Predictor, methods: Optional[Sequence[str]] = None, limit: int = 200, split: str = "test", steps: int = 20, seed: int = 0, save: bool = True
) -> FaithfulnessResult:
    """Deletion curves of each method against random order on the first ``limit`` examples of ``split``.

    Args:
        target: a run directory or a Predictor.
        methods: the methods to measure (default: every method that applies to the model).
        limit: examples measured.
        split: where they come from.
        steps: points of the curve after the start (fractions 0, 1/steps, ..., 1).
        seed: the random order's seed.
        save: write ``faithfulness`` in explain.json and a PNG of the curves into the run.
    """
    predictor = _classifier(target)
    started = time.perf_counter()
    chosen = list(methods) if methods else applicable_methods(predictor)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: {', '.join(unknown)} not among {', '.join(METHODS)}")
    inputs, _, _ = predictor.split(split)
    inputs = inputs[:limit]
    targets = predictor.probabilities(inputs).argmax(dim=-1)  # each example's own prediction is what is deleted
    space = predictor.attribution_space
    fractions = np.linspace(0.0, 1.0, steps + 1)
    width = per_feature(space, torch.zeros_like(inputs[:1], dtype=torch.float32)).shape[1]  # features per example
    random_scores = torch.rand((len(inputs), width), generator=torch.Generator().manual_seed(seed))
    random_curves = _deletion(predictor, space, inputs, targets, random_scores, fractions)
    random_area = _area(random_curves, fractions)
    curves = []
    for method in chosen:
        explained = predictor.explain_encoded(inputs, method)
        scores = torch.stack([e["scores"] for e in explained])
        method_curves = _deletion(predictor, space, inputs, targets, scores, fractions)
        area = _area(method_curves, fractions)
        difference = random_area - area
        error = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else 0.0
        curves.append(
            DeletionCurve(
                method=method,
                fractions=[round(float(f), 4) for f in fractions],
                probability=[round(float(p), 6) for p in method_curves.mean(axis=0)],
                auc=round(float(area.mean()), 6),
                random_auc=round(float(random_area.mean()), 6),
                improvement=round(float(difference.mean()), 6),
                standard_error=round(error, 6),
                better_than_random=bool(difference.mean() > 2 * error),
            )
        )
    result = FaithfulnessResult(
        split=split,
        rows=int(len(inputs)),
        steps=steps,
        curves=curves,
        random_probability=[round(float(p), 6) for p in random_curves.mean(axis=0)],
        flagged=[c.method for c in curves if not c.better_than_random],
        seed=seed,
    )
    if save:
        picture = "explain_faithfulness.png"
        predictor.run.write_bytes(picture, _curves_png(result, predictor.features.input_spec.kind))
        result.files.append(picture)
    result.seconds = round(time.perf_counter() - started, 3)
    if save:
        predictor.run.record(RESULT, "faithfulness", result.to_dict(), result.files)
    return result


def _curves_png(result: FaithfulnessResult, kind: str) -> bytes:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    fractions = result.curves[0].fractions if result.curves else []
    for curve in result.curves:
        axis.plot(curve.fractions, curve.probability, label=f"{curve.method} (area {curve.auc:.3f})" + ("  flagged" if not curve.better_than_random else ""))
    axis.plot(fractions, result.random_probability, linestyle="--", color="grey", label=f"random order (area {result.curves[0].random_auc:.3f})" if result.curves else "random")
    unit = {"image": "pixels", "tokens": "tokens", "sequence": "time steps"}.get(kind, "columns")
    axis.set_xlabel(f"share of {unit} removed, most attributed first")
    axis.set_ylabel("probability of the predicted class")
    axis.set_title(f"deletion curves on {result.rows} {result.split} examples (lower is more faithful)", fontsize=9)
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    return figure_png(figure)
