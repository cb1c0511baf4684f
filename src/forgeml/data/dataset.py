"""From a data config to parsed rows split into train / validation / test, and fitted features."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from forgeml.data.features import Features
from forgeml.data.table import Table
from forgeml.errors import DataError
from forgeml.registry import SOURCES

SPLITS = ("train", "validation", "test")


@dataclass
class Dataset:
    """Parsed rows, the split each row belongs to, and the (unfitted) features."""

    table: Table
    splits: dict[str, np.ndarray]
    features: Features
    description: str
    skipped: dict[str, int]
    rows_read: int = 0  # rows the source gave, before bad rows and rows without a window were left out

    def split(self, name: str) -> Table:
        return self.table.take(self.splits[name])

    def split_summary(self) -> dict[str, Any]:
        """Row counts per split and a hash of the assignment, so a later load can check it is identical."""
        digest = hashlib.sha256()
        for name in SPLITS:
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.splits[name], dtype=np.int64).tobytes())
        return {"rows": {name: int(len(self.splits[name])) for name in SPLITS}, "sha256": digest.hexdigest()}


def split_rows(n: int, validation: float, test: float, seed: int, strata: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Seeded split of ``n`` rows; with ``strata`` each class is split in the same proportions.

    Returns sorted row positions per split. Deterministic for a given seed, n and strata.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == value) for value in np.unique(strata)]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for group in groups:
        order = rng.permutation(group)
        n_test = int(round(len(order) * test))
        n_validation = int(round(len(order) * validation))
        parts["test"].append(order[:n_test])
        parts["validation"].append(order[n_test : n_test + n_validation])
        parts["train"].append(order[n_test + n_validation :])
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}


def split_in_order(n: int, validation: float, test: float) -> dict[str, np.ndarray]:
    """The first rows train, the next validation, the last test: a forecaster is tested on the future."""
    n_test, n_validation = int(round(n * test)), int(round(n * validation))
    n_train = n - n_test - n_validation
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_validation), "test": (n_train + n_validation, n)}
    return {name: np.arange(start, stop, dtype=np.int64) for name, (start, stop) in bounds.items()}


def load_dataset(data_cfg: Any, seed: int) -> Dataset:
    """Read the source, parse every column (dropping or rejecting bad rows), and split the rows.

    Args:
        data_cfg: the ``data`` section of the config.
        seed: the experiment seed (the split depends on it).

    Raises:
        DataError: a file is missing, a column is absent, a row is bad (with on_bad_row: error), or
            a split ends up empty.
    """
    source = SOURCES.build(data_cfg.source)
    if not data_cfg.features:
        raise DataError(f"{source.description}: list the input columns under data.features")
    if data_cfg.target is None:
        raise DataError(f"{source.description}: name the column to predict under data.target")
    features = Features(data_cfg.features, data_cfg.target)
    table = features.parse(source.table, on_bad_row=data_cfg.on_bad_row)

    split_cfg = data_cfg.split
    if table.split is not None or split_cfg.column is not None:
        if split_cfg.column is not None:
            if split_cfg.column not in source.table.columns:
                raise DataError(f"data.split.column: no column named {split_cfg.column!r}")
            # the split column was not parsed as a feature; take it from the raw rows that survived
            kept = _surviving_rows(source.table, table)
            names = np.array([str(v).strip().lower() for v in source.table.columns[split_cfg.column][kept]], dtype=object)
        else:
            names = table.split
        unknown = sorted(set(names) - set(SPLITS))
        if unknown:
            raise DataError(f"split names must be train, validation or test; found {unknown[:5]}")
        splits = {name: np.flatnonzero(names == name).astype(np.int64) for name in SPLITS}
    elif split_cfg.order == "sequential":
        splits = split_in_order(len(table), split_cfg.validation, split_cfg.test)
    else:
        strata = None
        if split_cfg.stratify and features.task == "classification":
            strata = table.columns[features.target_key].astype(str)
        splits = split_rows(len(table), split_cfg.validation, split_cfg.test, seed, strata)
    if len(splits["train"]) == 0:
        raise DataError(f"{source.description}: the training split is empty ({len(table)} usable rows)")
    return Dataset(table, splits, features, source.description, table.skipped, len(source.table))


def _surviving_rows(raw: Table, parsed: Table) -> np.ndarray:
    """Positions in ``raw`` of the rows kept in ``parsed`` (rows are only ever dropped, never reordered)."""
    key = {(o, l): i for i, (o, l) in enumerate(zip(raw.origin_index.tolist(), raw.line.tolist()))}
    return np.array([key[(o, l)] for o, l in zip(parsed.origin_index.tolist(), parsed.line.tolist())], dtype=np.int64)
