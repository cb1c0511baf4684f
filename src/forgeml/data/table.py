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
        base_dir: directory that relative image paths are resolved against, for rows whose origin is
            not a file (a row read from a file resolves against that file's folder).
        path_columns: columns whose values are file paths relative to ``base_dir`` (an image folder's
            ``image`` column); ``concat`` rewrites them when the tables' base directories differ.
        confined: origins (data files) whose file paths must lie inside the file's own folder, each
            with what to do to read one outside it; see ``confine``.
    """

    columns: dict[str, np.ndarray]
    origins: list[str]
    origin_index: np.ndarray
    line: np.ndarray
    split: np.ndarray | None = None
    base_dir: Path | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    path_columns: tuple[str, ...] = ()
    confined: dict[str, str] = field(default_factory=dict)

    @classmethod
    def single(cls, columns: dict[str, np.ndarray], origin: str, first_line: int = 1, base_dir: Path | None = None) -> "Table":
        n = len(next(iter(columns.values()))) if columns else 0
        return cls(columns, [origin], np.zeros(n, dtype=np.int64), np.arange(first_line, first_line + n), None, base_dir)

    def __len__(self) -> int:
        return len(self.line)

    def where(self, row: int) -> str:
        """Human-readable origin of a row, e.g. ``data/train.csv, line 12`` (line 0: the origin alone,
        e.g. ``instances[3]`` of a request to ``forgeml serve``)."""
        origin = self.origins[self.origin_index[row]]
        return f"{origin}, line {self.line[row]}" if self.line[row] else origin

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
            self.path_columns,
            self.confined,
        )

    @staticmethod
    def concat(tables: list["Table"], union: bool = False) -> "Table":
        """Rows of several tables after one another, origins and lines kept.

        Args:
            tables: the tables, in order.
            union: False: every table must have the same columns. True: the columns are the union, a
                column absent from a table being None (a missing value) in its rows; a column all
                tables have keeps its dtype when they agree (numbers stay numbers).

        Raises:
            ValueError: the columns differ (without ``union``), or a column's arrays cannot be joined
                (images of different sizes); the message names the column.
        """
        names = list(dict.fromkeys(name for table in tables for name in table.columns))
        if not union and any(list(table.columns) != names for table in tables):
            raise ValueError("tables have different columns")
        base_dirs = {table.base_dir for table in tables}
        if len(base_dirs) > 1:
            # one base directory cannot serve them all: make relative paths absolute instead
            tables = [table.with_absolute_paths() for table in tables]
        origins: list[str] = []
        origin_index = []
        for table in tables:
            origin_index.append(table.origin_index + len(origins))
            origins.extend(table.origins)
        columns = {}
        for name in names:
            parts = [t.columns[name] if name in t.columns else np.full(len(t), None, dtype=object) for t in tables]
            if not all(part.dtype.kind in "biuf" for part in parts) and len({part.dtype for part in parts}) > 1:
                parts = [part.astype(object) for part in parts]  # numpy would turn numbers into strings
            try:
                columns[name] = np.concatenate(parts)
            except ValueError:  # e.g. 8x8 images after 28x28 images
                shapes = sorted({part.shape[1:] for part in parts})
                raise ValueError(f"column {name!r} has values of different shapes: {shapes}") from None
        splits = [t.split for t in tables]
        return Table(
            columns,
            origins,
            np.concatenate(origin_index),
            np.concatenate([t.line for t in tables]),
            None if any(s is None for s in splits) else np.concatenate(splits),  # type: ignore[arg-type]
            base_dirs.pop() if len(base_dirs) == 1 else None,
            path_columns=tuple(dict.fromkeys(name for table in tables for name in table.path_columns)),
            confined={origin: remedy for table in tables for origin, remedy in table.confined.items()},
        )

    def with_absolute_paths(self) -> "Table":
        """This table with its ``path_columns`` resolved against ``base_dir`` (or the current directory)."""
        if not self.path_columns:
            return self
        base = self.base_dir or Path.cwd()
        columns = dict(self.columns)
        for name in self.path_columns:
            columns[name] = np.array([str(base / str(value)) for value in columns[name]], dtype=object)
        return Table(columns, self.origins, self.origin_index, self.line, self.split, None, dict(self.skipped), self.path_columns, self.confined)

    def confine(self, remedy: str) -> "Table":
        """Confine the file paths in the rows of this table's origins (the data files it was read
        from) to each file's folder: an image path there is read relative to the file, and one that
        leads out of the folder (absolute, ``..``, a symlink) is refused with a message ending in
        ``remedy`` (e.g. "pass --allow-outside to read it"). A file the user names directly is theirs
        to read; paths written inside a file may come from anyone who wrote it.

        Returns:
            this table, changed in place.
        """
        self.confined = {**self.confined, **{origin: remedy for origin in self.origins}}
        return self
