"""What the model will see: ``forgeml data inspect CONFIG``.

Reads the data exactly as training does (same source, parsing, split and features fitted on the
training split) and summarises it: rows per split, class balance or target range, missing values
and bad rows, and per input feature what its encoding looks like (text lengths and vocabulary,
image shape and pixel statistics, sequence windows, number ranges, category vocabularies).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from forgeml.data.dataset import SPLITS, load_dataset
from forgeml.data.features import Features
from forgeml.data.table import Table


def _stats(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {}
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()), "max": float(values.max())}


def _percentiles(values: np.ndarray) -> dict[str, int]:
    return {f"p{q}": int(np.percentile(values, q)) for q in (50, 90, 99)} | {"max": int(values.max())}


def _feature_summary(feature: Any, tables: dict[str, Table]) -> dict[str, Any]:
    """Statistics of one fitted input feature (training split unless said otherwise)."""
    name, kind = feature.cfg.name, feature.cfg.type
    train = tables["train"].columns[name]
    out: dict[str, Any] = {"name": name, "type": kind}
    if kind == "number":
        out |= _stats(train)
    elif kind == "category":
        known = set(feature.vocabulary[1:])
        out["vocabulary"] = len(feature.vocabulary) - 1
        values, counts = np.unique(train.astype(str), return_counts=True)
        out["most_common"] = [str(v) for v in values[np.argsort(-counts, kind="stable")][:5]]
        for split in ("validation", "test"):
            column = tables[split].columns[name]
            if len(column):
                out[f"unknown_{split}"] = float(np.mean([str(v) not in known for v in column]))
    elif kind == "image":
        out["shape"] = list(feature.shape)
        per_channel = train.reshape(train.shape[0], train.shape[1], -1).transpose(1, 0, 2).reshape(train.shape[1], -1)
        out["pixels"] = [_stats(channel) for channel in per_channel]
    elif kind == "text":
        lengths = feature.lengths(train)
        out |= {
            "tokenizer": feature.cfg.tokenizer,
            "vocabulary": feature.vocab_size,
            "max_length": feature.max_length,
            "tokens_per_text": _percentiles(lengths),
            "truncated": float(np.mean(lengths > feature.max_length)),
        }
        for split in ("train", "validation"):
            column = tables[split].columns[name]
            if len(column):
                ids = feature.transform(column)
                real = ids != 0
                out[f"unknown_tokens_{split}"] = float((ids[real] == 1).mean()) if real.any() else 0.0
    elif kind == "sequence":
        out["length"] = feature.cfg.length
        out["windows"] = {split: int(len(tables[split])) for split in SPLITS}
        out |= {f"series_{k}": v for k, v in _stats(train[:, -1]).items()}
    return out


def inspect(data_cfg: Any, seed: int) -> dict[str, Any]:
    """Summarise a config's data as the model will see it.

    Bad rows never stop the inspection: they are counted (and training with ``on_bad_row: error``
    would stop at the first one, which the summary says).
    """
    dataset = load_dataset(data_cfg.model_copy(update={"on_bad_row": "skip"}), seed)
    features: Features = dataset.features
    tables = {name: dataset.split(name) for name in SPLITS}
    features.fit(tables["train"])
    summary: dict[str, Any] = {
        "source": dataset.description,
        "rows_read": dataset.rows_read,
        "bad_rows": dict(dataset.skipped),
        "on_bad_row": data_cfg.on_bad_row,
        "without_window_or_target": dataset.rows_read - len(dataset.table) - sum(dataset.skipped.values()),
        "task": features.task,
        "splits": {name: int(len(t)) for name, t in tables.items()},
        "model_input": features.input_spec.describe(),
    }
    key = features.target_key
    if features.task == "classification":
        labels = features.label_names
        summary["classes"] = {
            name: {label: int(np.sum(t.columns[key].astype(str) == label)) for label in labels} for name, t in tables.items()
        }
    else:
        summary["target"] = {name: _stats(t.columns[key]) for name, t in tables.items() if len(t)}
    summary["inputs"] = [_feature_summary(f, tables) for f in features.inputs]
    return summary
