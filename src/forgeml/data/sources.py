"""Sources: where rows come from. Each registers under its YAML ``type`` with its config class.

A source returns a ``SourceData``: the raw ``Table`` and a description. A source config may define
``default_columns`` (the built-in datasets and image folders do): the features and target the data
is meant to be used with, filled into the config when it leaves them out, so ``source: mnist5k`` is
a complete data section.

    builtin        a dataset shipped with forgeml's dependencies (builtin_datasets.py)
    csv, jsonl, parquet
                   data files: one split by data.split, or one per split
    image_folder   a sub-folder of images per class
    text_files     plain text: a row per line, paragraph or file; sub-folders are classes
    inline         rows written in the config
    merge          several sources after one another, each row tagged with its source's name
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Optional

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from forgeml.config import Section
from forgeml.data.builtin_datasets import BUILTINS
from forgeml.data.table import Table
from forgeml.errors import DataError
from forgeml.registry import SOURCES

# Image files an image folder (and `forgeml predict`) reads; PIL decodes all of them.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SPLIT_NAMES = Literal["train", "validation", "test"]


@dataclass
class SourceData:
    table: Table
    description: str = ""


# --------------------------------------------------------------------------------------------------
# built-in real datasets


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

    @staticmethod
    def default_split(raw: dict[str, Any]) -> dict[str, Any] | None:
        """The data.split settings a built-in dataset needs (sunspots: in time order), or None."""
        builtin = BUILTINS.get(raw.get("name"))  # type: ignore[arg-type]
        return None if builtin is None else builtin.split


@SOURCES.register("builtin", BuiltinConfig)
def load_builtin(cfg: BuiltinConfig) -> SourceData:
    return SourceData(BUILTINS[cfg.name].load(), description=f"built-in dataset {cfg.name}")


# --------------------------------------------------------------------------------------------------
# files: CSV / TSV, JSON Lines and Parquet, one file split by data.split or a file per split


class FileSourceConfig(Section):
    """What every file source has: one file, or one file per split (a folder, for folder sources)."""

    path_noun: ClassVar[str] = "file"  # what `path` names, for messages

    path: Optional[str] = Field(None, description="A data file, split by data.split (relative paths: from the current directory).")
    paths: Optional[dict[SPLIT_NAMES, str]] = Field(None, description="One file per split: {train: ..., validation: ..., test: ...}.")

    @model_validator(mode="after")
    def _one_of(self) -> "FileSourceConfig":
        if (self.path is None) == (self.paths is None):
            raise ValueError(f"give exactly one of `path` (one {self.path_noun}) or `paths` (a {self.path_noun} per split)")
        if self.paths is not None and "train" not in self.paths:
            raise ValueError(f"`paths` needs a `train` {self.path_noun}")
        return self


def load_files(cfg: FileSourceConfig, read: Callable[[str], Table], kind: str, unit: str = "file") -> SourceData:
    """Read ``cfg.path``, or each path of ``cfg.paths`` with its split name on every row.

    Args:
        cfg: the source config (``path`` or ``paths``).
        read: reads one path into a Table.
        kind, unit: for the description, e.g. "CSV" and "file" give "CSV file data.csv".

    Raises:
        DataError: from ``read``, or the split files have different columns.
    """
    if cfg.path is not None:
        return SourceData(read(cfg.path), description=f"{kind} {unit} {cfg.path}")
    assert cfg.paths is not None
    tables = []
    for split, path in cfg.paths.items():
        table = read(path)
        table.split = np.full(len(table), split, dtype=object)
        tables.append(table)
    headers = {split: list(t.columns) for split, t in zip(cfg.paths, tables)}
    if any(columns != headers["train"] for columns in headers.values()):
        raise DataError(f"the split {unit}s have different columns: {headers}")
    merged = Table.concat(tables)
    return SourceData(merged, description=f"{kind} {unit}s " + ", ".join(f"{k}={v}" for k, v in cfg.paths.items()))


class DataFileConfig(FileSourceConfig):
    """A file source of rows (CSV, JSON Lines, Parquet), whose image columns hold paths."""

    allow_outside: bool = Field(
        False,
        description="Read image paths in the file that lead out of its folder (absolute, `..`, symlinks out); "
        "false: such a row is refused, as a file from elsewhere may name any file on this machine.",
    )


# How a refused image path in a training file says what to do (see Table.confine).
ALLOW_OUTSIDE = "set allow_outside: true on its data source to read it"


def load_data_files(cfg: DataFileConfig, read: Callable[[str], Table], kind: str) -> SourceData:
    """``load_files`` for files of rows, their image paths confined to each file's folder unless
    ``cfg.allow_outside``."""
    return load_files(cfg, read if cfg.allow_outside else (lambda path: read(path).confine(ALLOW_OUTSIDE)), kind)


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    return path


class CSVConfig(DataFileConfig):
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
    return load_data_files(cfg, lambda path: read_csv(path, cfg.delimiter), "CSV")


class JSONLConfig(DataFileConfig):
    """Rows from JSON Lines files: one JSON object per line; a key missing from a row is a missing value."""

    type: Literal["jsonl"] = Field(description="JSON Lines files.")


def json_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The (line number, object) of each non-blank line of a JSON Lines file.

    Raises:
        DataError: the file is missing, or a line is not a JSON object (naming the file and line).
    """
    path = _existing_file(path)
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
            yield number, row


def read_jsonl(path: str | Path) -> Table:
    """Read a JSON Lines file (one object per line) into columns; errors name the file and line."""
    path = _existing_file(path)
    rows, lines = [], []
    for number, row in json_objects(path):
        rows.append(row)
        lines.append(number)
    if not rows:
        raise DataError(f"{path}: no rows")
    names = list(dict.fromkeys(key for row in rows for key in row))  # every key, in first-seen order
    columns = {name: np.array([row.get(name) for row in rows], dtype=object) for name in names}
    return Table(columns, [str(path)], np.zeros(len(rows), dtype=np.int64), np.array(lines), None, path.parent)


@SOURCES.register("jsonl", JSONLConfig)
def load_jsonl(cfg: JSONLConfig) -> SourceData:
    return load_data_files(cfg, read_jsonl, "JSON Lines")


class ParquetConfig(DataFileConfig):
    """Rows from Parquet files: columns keep their types; a null is a missing value."""

    type: Literal["parquet"] = Field(description="Parquet files.")


def read_parquet(path: str | Path) -> Table:
    """Read a Parquet file; errors name the file and the row ("line": 1-based row number).

    Number and boolean columns without nulls stay numpy arrays of their type; every other column
    (strings, columns with nulls, lists, dates) becomes an object array of Python values, a null
    becoming None, which features read as a missing value.
    """
    path = _existing_file(path)
    import pyarrow.parquet  # heavy: imported only when a Parquet file is read

    try:
        arrow = pyarrow.parquet.read_table(path)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    names = arrow.column_names
    if len(set(names)) != len(names):
        raise DataError(f"{path}: the file repeats a column name: {names}")
    if arrow.num_rows == 0:
        raise DataError(f"{path}: no rows")
    columns = {name: _numpy_column(arrow.column(name)) for name in names}
    return Table(columns, [str(path)], np.zeros(arrow.num_rows, dtype=np.int64), np.arange(1, arrow.num_rows + 1), None, path.parent)


def _numpy_column(column: Any) -> np.ndarray:
    """A pyarrow column as numpy: numbers stay numbers when nothing is null, else Python objects."""
    import pyarrow.types

    kind = column.type
    if column.null_count == 0 and (pyarrow.types.is_integer(kind) or pyarrow.types.is_floating(kind) or pyarrow.types.is_boolean(kind)):
        return column.to_numpy()
    # fromiter keeps each value whole: np.array would turn a column of equal-length lists into a 2-D array
    return np.fromiter(column.to_pylist(), dtype=object, count=len(column))


@SOURCES.register("parquet", ParquetConfig)
def load_parquet(cfg: ParquetConfig) -> SourceData:
    return load_data_files(cfg, read_parquet, "Parquet")


# --------------------------------------------------------------------------------------------------
# folders: images or text files, a sub-folder per class


def _existing_folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: {'a file, not a folder' if path.is_file() else 'no such folder'}")
    return path


def _class_folders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` in name order, hidden ones (.git, .ipynb_checkpoints) left out."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _files(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """The files of ``folder`` with one of ``suffixes``, in name order, hidden ones left out."""
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()),
        key=lambda p: p.name,
    )


class ImageFolderConfig(FileSourceConfig):
    """Images in one sub-folder per class (pets/cat/1.png, pets/dog/2.jpg): columns `image` and `label`."""

    path_noun: ClassVar[str] = "folder"
    type: Literal["image_folder"] = Field(description="A folder with a sub-folder of images per class.")
    path: Optional[str] = Field(
        None, description="A folder with one sub-folder of images per class (its name is the label), split by data.split."
    )
    paths: Optional[dict[SPLIT_NAMES, str]] = Field(
        None, description="One such folder per split: {train: ..., validation: ..., test: ...}."
    )

    @staticmethod
    def default_columns(raw: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """An image folder is an image classification dataset: the image in, its folder's name out."""
        return [{"type": "image", "name": "image"}], {"type": "category", "name": "label"}


def read_image_folder(path: str | Path) -> Table:
    """List an image folder: a row per image, sorted by class, then file name.

    The ``image`` column holds paths relative to the folder (``cat/1.png``; the table's ``base_dir``),
    ``label`` the class sub-folder's name. A row's origin is its class folder and its line the
    image's position there, so a message reads ``pets/cat, line 3: ...``.

    Raises:
        DataError: the folder is missing, has no class sub-folders, or a class folder has no images.
    """
    folder = _existing_folder(path)
    classes = _class_folders(folder)
    if not classes:
        raise DataError(f"{folder}: no class sub-folders; put each class's images in a folder named after it ({folder}/cat/1.png)")
    images, labels, origin_index, lines = [], [], [], []
    for index, class_folder in enumerate(classes):
        files = _files(class_folder, IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{class_folder}: no images in this class folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        images += [f"{class_folder.name}/{file.name}" for file in files]
        labels += [class_folder.name] * len(files)
        origin_index += [index] * len(files)
        lines += range(1, len(files) + 1)
    columns = {"image": np.array(images, dtype=object), "label": np.array(labels, dtype=object)}
    origins = [str(class_folder) for class_folder in classes]  # folders, not files: paths resolve against base_dir
    return Table(columns, origins, np.array(origin_index), np.array(lines), None, folder, path_columns=("image",))


@SOURCES.register("image_folder", ImageFolderConfig)
def load_image_folder(cfg: ImageFolderConfig) -> SourceData:
    return load_files(cfg, read_image_folder, "image", unit="folder")


TEXT_SUFFIXES = frozenset({".txt"})


class TextFilesConfig(FileSourceConfig):
    """Plain text, a row per line, paragraph or file: column `text`, and `label` when sub-folders are classes."""

    path_noun: ClassVar[str] = "file or folder"
    type: Literal["text_files"] = Field(description="Plain-text files.")
    path: Optional[str] = Field(
        None,
        description="A text file; a folder of .txt files; or a folder with a sub-folder of .txt files per class "
        "(its name is the label, as in aclImdb's pos/ and neg/). Split by data.split.",
    )
    paths: Optional[dict[SPLIT_NAMES, str]] = Field(
        None, description="One such file or folder per split: {train: ..., validation: ..., test: ...}."
    )
    unit: Literal["line", "paragraph", "file"] = Field(
        "line", description="A row per line, per paragraph (lines between blank lines) or per file. Blank ones are skipped."
    )

    @staticmethod
    def default_columns(raw: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """Text in, class out when the folder has class sub-folders; else None (a corpus to name columns for)."""
        paths = raw.get("paths")
        path = raw.get("path") or (paths.get("train") if isinstance(paths, dict) else None)
        if isinstance(path, str) and Path(path).is_dir() and _class_folders(Path(path)):
            return [{"type": "text", "name": "text"}], {"type": "category", "name": "label"}
        return None


def read_text_files(path: str | Path, unit: str = "line") -> Table:
    """Read plain text into a ``text`` column (and ``label`` when sub-folders are classes).

    Args:
        path: a text file (any name); a folder of .txt files; or a folder whose sub-folders each
            hold one class's .txt files (other files beside the sub-folders are ignored).
        unit: "line", "paragraph" (lines between blank lines, joined by newlines) or "file".

    Returns:
        A row per non-blank unit, in folder, file and line order; each row's origin is its file and
        its line the unit's first line.

    Raises:
        DataError: the path is missing, a folder holds no .txt files, a file is not UTF-8 text, or
            there is no text at all.
    """
    path = Path(path)
    labelled = False
    if path.is_file():
        files: list[tuple[Path, str | None]] = [(path, None)]
    elif path.is_dir():
        classes = _class_folders(path)
        labelled = bool(classes)
        files = []
        for class_folder in classes:
            found = _files(class_folder, TEXT_SUFFIXES)
            if not found:
                raise DataError(f"{class_folder}: no .txt files in this class folder")
            files += [(file, class_folder.name) for file in found]
        if not labelled:
            files = [(file, None) for file in _files(path, TEXT_SUFFIXES)]
            if not files:
                raise DataError(f"{path}: no .txt files, and no class sub-folders of them")
    else:
        raise DataError(f"{path}: no such file or folder")
    texts, labels, origin_index, lines = [], [], [], []
    for index, (file, label) in enumerate(files):
        for line, text in _text_units(file, unit):
            texts.append(text)
            labels.append(label)
            origin_index.append(index)
            lines.append(line)
    if not texts:
        raise DataError(f"{path}: no text (every {unit} is blank)")
    columns = {"text": np.array(texts, dtype=object)}
    if labelled:
        columns["label"] = np.array(labels, dtype=object)
    base_dir = path if path.is_dir() else path.parent
    return Table(columns, [str(file) for file, _ in files], np.array(origin_index), np.array(lines), None, base_dir)


def _text_units(file: Path, unit: str) -> list[tuple[int, str]]:
    """(first line, text) of each non-blank line, paragraph or whole file of a UTF-8 text file."""
    data = file.read_bytes()
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{file}, line {line}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    if unit == "file":
        return [(1, content.strip())] if content.strip() else []
    # split on "\n" only: line numbers then match an editor's (str.splitlines also breaks at \f, \x1c, ...)
    file_lines = [text.rstrip() for text in content.split("\n")]
    if unit == "line":
        return [(number, text.strip()) for number, text in enumerate(file_lines, start=1) if text.strip()]
    paragraphs: list[tuple[int, str]] = []
    block: list[str] = []
    for number, text in enumerate([*file_lines, ""], start=1):  # the blank line at the end closes the last block
        if text.strip():
            block.append(text)
        elif block:
            paragraphs.append((number - len(block), "\n".join(block)))
            block = []
    return paragraphs


@SOURCES.register("text_files", TextFilesConfig)
def load_text_files(cfg: TextFilesConfig) -> SourceData:
    first = Path(cfg.path or cfg.paths["train"])  # type: ignore[index]
    return load_files(cfg, lambda path: read_text_files(path, cfg.unit), "text", unit="folder" if first.is_dir() else "file")


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


# --------------------------------------------------------------------------------------------------
# several sources as one


class MergeConfig(Section):
    """Rows of several sources after one another, a column naming each row's source.

    Each source is any source config (or a built-in dataset's name), validated like ``data.source``.
    With ``splits``, every row of a source goes to the split named for it: train on one file, test
    on another.
    """

    type: Literal["merge"] = Field(description="Several sources as one.")
    # validated against the registry in _validate_sources: the union of source configs does not exist
    # yet while this module registers them, and a merge must not nest itself
    sources: dict[str, Any] = Field(
        description="Name -> a source ({type: csv, path: ...}, any type but merge, or a built-in dataset's name); rows follow in this order.",
        json_schema_extra={
            "additionalProperties": {
                "anyOf": [{"type": "object", "properties": {"type": {"type": "string"}}, "required": ["type"]}, {"type": "string"}]
            }
        },
    )
    column: str = Field("source", min_length=1, description="Column that holds each row's source name.")
    splits: Optional[dict[str, SPLIT_NAMES]] = Field(
        None, description="Source name -> the split (train, validation, test) all its rows go to; null: split by data.split."
    )

    @field_validator("sources")
    @classmethod
    def _validate_sources(cls, sources: dict[str, Any]) -> dict[str, BaseModel]:
        if not sources:
            raise ValueError("list at least one source: {NAME: {type: ..., ...}}")
        return {name: _nested_source(name, raw) for name, raw in sources.items()}

    @model_validator(mode="after")
    def _every_source_has_a_split(self) -> "MergeConfig":
        if self.splits is None:
            return self
        unknown = [name for name in self.splits if name not in self.sources]
        if unknown:
            raise ValueError(f"splits: {', '.join(map(repr, unknown))} is not a source name (sources: {', '.join(self.sources)})")
        missing = [name for name in self.sources if name not in self.splits]
        if missing:
            raise ValueError(f"splits: give every source a split; missing {', '.join(map(repr, missing))}")
        if "train" not in self.splits.values():
            raise ValueError("splits: no source is `train`; the model needs training rows")
        return self

    @staticmethod
    def default_columns(raw: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """The sources' default columns when they all have the same ones (two image folders), else None."""
        sources = raw.get("sources")
        if not isinstance(sources, dict) or not sources:
            return None
        found = []
        for nested in sources.values():
            nested = {"type": "builtin", "name": nested} if isinstance(nested, str) else nested
            if not isinstance(nested, dict) or nested.get("type") not in SOURCES.names() or nested["type"] == "merge":
                return None
            default_columns = getattr(SOURCES.get(nested["type"]).config, "default_columns", None)
            columns = default_columns(nested) if default_columns else None
            if columns is None:
                return None
            found.append(columns)
        return found[0] if all(columns == found[0] for columns in found) else None


def _nested_source(name: str, raw: Any) -> BaseModel:
    """Validate one source of a merge with its registered config class; errors name it (``NAME.path: ...``)."""
    if isinstance(raw, BaseModel):  # already validated (a config object validated again)
        raw = raw.model_dump()
    if isinstance(raw, str):  # `digits` is short for {type: builtin, name: digits}, as for data.source
        raw = {"type": "builtin", "name": raw}
    types = [t for t in SOURCES.names() if t != "merge"]
    if not isinstance(raw, dict) or "type" not in raw:
        raise ValueError(f"{name}: needs a mapping with a `type` (one of: {', '.join(types)}) or a built-in dataset's name")
    if raw["type"] == "merge":
        raise ValueError(f"{name}: a merge cannot contain another merge; list all the sources in one merge")
    if raw["type"] not in types:
        raise ValueError(f"{name}.type: {raw['type']!r} is not one of: {', '.join(types)}")
    config = SOURCES.get(raw["type"]).config
    try:
        return config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join([name, *map(str, error["loc"])])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
                message = f"unknown key; allowed keys here: {', '.join(config.model_fields)}"
            elif error["type"] == "literal_error":
                message = f"{error['input']!r} is not one of: {error['ctx']['expected']}"
            problems.append(f"{where}: {message}" if error["loc"] else f"{name}: {message}")
        raise ValueError("; ".join(problems)) from None


@SOURCES.register("merge", MergeConfig)
def load_merge(cfg: MergeConfig) -> SourceData:
    """Build every source, tag its rows with its name (and split), and concatenate them.

    Columns are the union: a column a source lacks is missing (None) in its rows. Origins and lines
    are kept, so a bad row is still named by its file and line.

    Raises:
        DataError: a source fails to load, already has the name column, carries its own splits
            (a file per split) where ``splits`` assigns one, or only some sources carry splits.
    """
    tables, descriptions = [], []
    for name, source_cfg in cfg.sources.items():
        data = SOURCES.build(source_cfg)
        table = data.table
        if cfg.column in table.columns:
            raise DataError(f"merge source {name!r} already has a column {cfg.column!r}; set the merge's `column` to another name")
        if cfg.splits is not None:
            if table.split is not None:
                raise DataError(
                    f"merge source {name!r} already has a file per split; give it one `path`, or leave `splits` out of the merge"
                )
            table = replace(table, split=np.full(len(table), cfg.splits[name], dtype=object))
        tables.append(table)
        descriptions.append(f"{name}: {data.description}")
    with_splits = [name for name, table in zip(cfg.sources, tables) if table.split is not None]
    if with_splits and len(with_splits) < len(tables):
        without = [name for name in cfg.sources if name not in with_splits]
        raise DataError(
            f"merge: some sources have a file per split ({', '.join(with_splits)}) and some do not ({', '.join(without)}); "
            "give each one `path` and name its split under the merge's `splits`"
        )
    try:
        merged = Table.concat(tables, union=True)
    except ValueError as exc:
        raise DataError(f"merge: cannot join the sources' rows: {exc}") from None
    merged.columns[cfg.column] = np.concatenate([np.full(len(t), name, dtype=object) for name, t in zip(cfg.sources, tables)])
    return SourceData(merged, description="merge of " + "; ".join(descriptions))
