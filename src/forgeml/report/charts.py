"""The report's own pictures (the stages draw theirs): training curves, the confusion matrix, per-class
scores and input images, each as PNG bytes."""

from __future__ import annotations

import io
from typing import Any, Optional

import numpy as np
import torch

from forgeml.plots import figure_png, pyplot


def curves_png(curves: dict[str, list[list[float]]], metric: Optional[str], best_step: Optional[int]) -> bytes:
    """Loss (train and validation), the validation metric and the learning rate against the step."""
    plt = pyplot()
    panels = 3 if metric else 2
    figure, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.0))
    loss = axes[0]
    for key, label, style in (("train_loss", "train", "-"), ("validation_loss", "validation", "o-")):
        points = np.array(curves.get(key) or [], dtype=np.float64).reshape(-1, 2)
        if len(points):
            loss.plot(points[:, 0], points[:, 1], style, markersize=3, linewidth=1.2, label=label)
    loss.set_title("loss", fontsize=10)
    loss.legend(fontsize=8)
    if metric:
        points = np.array(curves.get(f"validation_{metric}") or [], dtype=np.float64).reshape(-1, 2)
        axes[1].plot(points[:, 0], points[:, 1], "o-", color="#f58518", markersize=3, linewidth=1.2)
        axes[1].set_title(f"validation {metric}", fontsize=10)
    lr = np.array(curves.get("lr") or [], dtype=np.float64).reshape(-1, 2)
    axes[-1].plot(lr[:, 0], lr[:, 1], color="#54a24b", linewidth=1.2)
    axes[-1].set_title("learning rate", fontsize=10)
    for axis in axes:
        axis.set_xlabel("step", fontsize=9)
        axis.tick_params(labelsize=8)
        if best_step is not None:
            axis.axvline(best_step, color="grey", linewidth=0.8, linestyle=":")
    figure.tight_layout()
    return figure_png(figure)


def confusion_png(matrix: list[list[int]], names: list[str]) -> bytes:
    """The confusion matrix as a heat map of row shares (each true class sums to 1), with counts."""
    plt = pyplot()
    counts = np.asarray(matrix, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(max(3.2, 0.42 * len(names) + 1.6), 9)
    figure, axis = plt.subplots(figsize=(size + 0.8, size))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 20:
        for row in range(len(names)):
            for column in range(len(names)):
                if counts[row, column]:
                    colour = "white" if shares[row, column] > 0.6 else "black"
                    axis.text(column, row, f"{int(counts[row, column])}", ha="center", va="center", fontsize=7, color=colour)
        axis.set_xticks(range(len(names)), names, fontsize=8, rotation=90 if max(map(len, names)) > 3 else 0)
        axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    figure.tight_layout()
    return figure_png(figure)


def per_class_png(per_class: dict[str, dict[str, float]]) -> bytes:
    """Precision and recall of each class as paired bars."""
    plt = pyplot()
    names = list(per_class)
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(min(max(4.0, 0.45 * len(names) + 2), 12), 2.8))
    axis.bar(positions - 0.2, [per_class[n]["precision"] for n in names], width=0.4, label="precision", color="#4c78a8")
    axis.bar(positions + 0.2, [per_class[n]["recall"] for n in names], width=0.4, label="recall", color="#f58518")
    axis.set_xticks(positions, names, fontsize=8, rotation=90 if len(names) > 12 or max(map(len, names)) > 6 else 0)
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure_png(figure)


def image_png(encoded: torch.Tensor, normalisation: Any) -> bytes:
    """An encoded image (channels x height x width, normalised) back in pixels, as a small PNG."""
    from PIL import Image

    pixels = encoded.detach().cpu().double()
    if normalisation is not None:
        mean, std = normalisation
        pixels = pixels * torch.tensor(std, dtype=torch.float64).view(-1, 1, 1) + torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    array = (pixels.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0)))
    scale = max(1, 84 // max(picture.size))
    picture = picture.resize((picture.size[0] * scale, picture.size[1] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
