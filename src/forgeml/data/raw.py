"""Raw inputs in, readable predictions out: the two ends of inference that need no torch.

``Predictor.predict`` (torch) and the edge runtime (``forgeml.runtime``, ONNX Runtime) both turn
what a user gives (a CSV, JSON Lines or Parquet path, image files or arrays, row dicts, a dict of
columns) into a ``Table`` with ``to_table``, and turn model outputs into labels and probabilities,
or values in the target's units, with ``decode``. Keeping both here means the two paths cannot
drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from forgeml.data.sources import IMAGE_SUFFIXES, read_csv, read_jsonl, read_parquet
from forgeml.data.table import Table
from forgeml.errors import DataError, PredictionError

# How a refused image path in a data file says what to do (see Table.confine).
ALLOW_OUTSIDE = "pass --allow-outside (allow_outside=True in Python) to read it"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64 (then float32), stable for large logits."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def decode(features: Any, outputs: np.ndarray, temperature: float = 1.0) -> list[dict[str, Any]]:
    """Readable predictions of raw model outputs: ``{"label", "probabilities"}`` per row for a
    classifier (probabilities calibrated by ``temperature``), ``{"value"}`` in the target's units
    for a regressor.

    Raises:
        PredictionError: an output is nan or inf; no prediction is made rather than one that is not a
            number (which JSON cannot hold either).
    """
    if features.task == "classification":
        _check_finite(outputs)
        names = features.label_names
        return [
            {"label": names[int(row.argmax())], "probabilities": {name: round(float(p), 6) for name, p in zip(names, row)}}
            for row in softmax(outputs, temperature)
        ]
    values = features.decode_regression(np.asarray(outputs))
    _check_finite(values)
    return [{"value": float(v)} for v in values]


def _check_finite(outputs: np.ndarray) -> None:
    finite = np.isfinite(np.asarray(outputs))
    bad = np.flatnonzero(~finite.all(axis=tuple(range(1, finite.ndim))))
    if len(bad):
        raise PredictionError(
            f"the model outputs nan or inf for {len(bad)} of {len(finite)} inputs (the first: input {int(bad[0]) + 1}), which are no predictions: "
            "its weights are unusable (train it again, e.g. with a lower train.lr) or those inputs lie far outside the training data"
        )


def to_table(features: Any, inputs: Any, allow_outside: bool = False) -> Table:
    """Raw inputs as a Table of the model's input columns.

    Paths the caller gives are read as given. Image paths written inside a CSV, JSON Lines or
    Parquet file are read relative to that file and must lie inside its folder, unless
    ``allow_outside``: the file may come from someone else (parsing then refuses such a row).

    Args:
        features: the fitted ``Features`` of the model.
        inputs: a CSV, TSV, JSON Lines or Parquet path; image file paths (one or a list); a numpy
            array of images (N x H x W or N x H x W x C, on the scale of the training images); a
            list of row dicts; a dict of columns; or a ``Table``.
        allow_outside: let a data file's image paths lead anywhere (absolute, ``..``, symlinks).

    Raises:
        DataError: a file is missing or of an unknown kind, or a row lacks a column.
    """
    if isinstance(inputs, Table):
        return inputs
    if isinstance(inputs, np.ndarray) and inputs.dtype != object:
        return _array_table(features, inputs)
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if isinstance(inputs, dict):
        columns = {k: np.asarray(v, dtype=object) if not isinstance(v, np.ndarray) else v for k, v in inputs.items()}
        return Table.single(columns, "input")
    items = list(inputs)
    if items and all(isinstance(i, (str, Path)) for i in items):
        paths = [Path(i) for i in items]
        if all(p.suffix.lower() in IMAGE_SUFFIXES for p in paths):
            return _image_table(features, paths)
        table = _data_file_table(paths)
        return table if allow_outside else table.confine(ALLOW_OUTSIDE)
    if items and all(isinstance(i, dict) for i in items):
        names = features.columns
        missing = [n for n in names if any(n not in row for row in items)]
        if missing:
            raise DataError(f"input rows need the columns {', '.join(names)}; missing {', '.join(missing)}")
        return Table.single({n: np.array([row[n] for row in items], dtype=object) for n in names}, "input")
    raise DataError("nothing to predict: give a CSV file, image files, or rows")


def _data_file_table(paths: list[Path]) -> Table:
    if len(paths) == 1 and paths[0].suffix.lower() in (".csv", ".tsv"):
        return read_csv(paths[0], "\t" if paths[0].suffix.lower() == ".tsv" else ",")
    if len(paths) == 1 and paths[0].suffix.lower() in (".jsonl", ".ndjson"):
        return read_jsonl(paths[0])
    if len(paths) == 1 and paths[0].suffix.lower() == ".parquet":
        return read_parquet(paths[0])
    raise DataError(
        f"give one CSV or JSON Lines file, or image files ({', '.join(sorted(IMAGE_SUFFIXES))}), or one Parquet file; "
        f"got {', '.join(map(str, paths[:3]))}"
    )


def _image_column(features: Any) -> str:
    image_features = [f for f in features.inputs if f.kind == "image"]
    if not image_features:
        raise DataError(f"this model takes the columns {', '.join(features.columns)}, not images: give a CSV file")
    return image_features[0].cfg.name


def _image_table(features: Any, paths: list[Path]) -> Table:
    name = _image_column(features)
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such image file")
    table = Table.single({name: np.array([str(p.resolve()) for p in paths], dtype=object)}, "input", base_dir=Path.cwd())
    table.origins = [str(p) for p in paths]
    table.origin_index = np.arange(len(paths))
    table.line = np.ones(len(paths), dtype=np.int64)
    return table


def _array_table(features: Any, images: np.ndarray) -> Table:
    name = _image_column(features)
    if images.ndim not in (3, 4) or images.size == 0:
        raise DataError(f"an array of images is N x H x W or N x H x W x C; got shape {list(images.shape)}")
    if not np.issubdtype(images.dtype, np.number) or not np.isfinite(images).all():
        raise DataError("an array of images must hold finite numbers")
    return Table.single({name: images.astype(np.float32)}, "input")


def text_pieces(tokens: Iterable[int], decode: Callable[[list[int]], str], eos_id: Optional[int] = None) -> Iterator[tuple[str, int]]:
    """The text of generated tokens as it grows: (new piece, tokens so far) per token that adds text.

    Pieces never split a character: the bytes of an unfinished UTF-8 character wait for the token
    that completes them. ``eos_id`` ends the text (its own text is not shown). Both generation
    paths (the Predictor on torch, the edge runtime on ONNX Runtime) read their tokens through this.
    """
    new: list[int] = []
    shown = ""
    for token in tokens:
        if token == eos_id:
            break
        new.append(int(token))
        text = decode(new)
        if text.endswith("\ufffd"):  # a multi-byte character is still incomplete
            continue
        if len(text) > len(shown):
            yield text[len(shown) :], len(new)
            shown = text
    text = decode(new)
    if len(text) > len(shown):
        yield text[len(shown) :], len(new)
