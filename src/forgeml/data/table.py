"""A table of raw rows: named numpy columns plus where each row came from (for error messages)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Table:
    """Columns of equal length, with each row's origin (file and line) kept for messages.

    Attributes:
        columns: column name -> array (numbers, strings as objects, or image arrays N x H x W [x C]).
        origins: the distinct origins (file paths or dataset names) rows came from.
        origin_index: for each row, its index into ``origins``.
        line: for each row, its line number in its origin (1-based; CSV lines count the header).
        split: for each row, a split name taken from the source (separate files per split), or None.
        base_dir: directory that relative image paths are resolved against.
    """

    columns: dict[str, np.ndarray]
    origins: list[str]
    origin_index: np.ndarray
    line: np.ndarray
    split: np.ndarray | None = None
    base_dir: Path | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def single(cls, columns: dict[str, np.ndarray], origin: str, first_line: int = 1, base_dir: Path | None = None) -> "Table":
        n = len(next(iter(columns.values()))) if columns else 0
        return cls(columns, [origin], np.zeros(n, dtype=np.int64), np.arange(first_line, first_line + n), None, base_dir)

    def __len__(self) -> int:
        return len(self.line)

    def where(self, row: int) -> str:
        """Human-readable origin of a row, e.g. ``data/train.csv, line 12``."""
        return f"{self.origins[self.origin_index[row]]}, line {self.line[row]}"

    def take(self, index: np.ndarray) -> "Table":
        """The rows at ``index`` (a boolean mask or integer positions)."""
        return Table(
            {name: values[index] for name, values in self.columns.items()},
            self.origins,
            self.origin_index[index],
            self.line[index],
            None if self.split is None else self.split[index],
            self.base_dir,
            dict(self.skipped),
        )

    @staticmethod
    def concat(tables: list["Table"]) -> "Table":
        """Rows of several tables after one another (the columns must match)."""
        names = list(tables[0].columns)
        for table in tables[1:]:
            if list(table.columns) != names:
                raise ValueError("tables have different columns")
        origins: list[str] = []
        origin_index = []
        for table in tables:
            origin_index.append(table.origin_index + len(origins))
            origins.extend(table.origins)
        splits = [t.split for t in tables]
        return Table(
            {name: np.concatenate([t.columns[name] for t in tables]) for name in names},
            origins,
            np.concatenate(origin_index),
            np.concatenate([t.line for t in tables]),
            None if any(s is None for s in splits) else np.concatenate(splits),  # type: ignore[arg-type]
            tables[0].base_dir,
        )
