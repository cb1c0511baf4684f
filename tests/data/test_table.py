"""Table.concat: rows of several tables, origins and lines kept; the union of columns for merges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forgeml.data.table import Table


def test_concat_keeps_origins_lines_and_splits():
    first = Table.single({"x": np.array([1, 2])}, "a.csv", first_line=2)
    second = Table.single({"x": np.array([3])}, "b.csv", first_line=5)
    first.split, second.split = np.array(["train", "train"], dtype=object), np.array(["test"], dtype=object)
    table = Table.concat([first, second])
    assert table.columns["x"].tolist() == [1, 2, 3] and table.columns["x"].dtype == np.int64
    assert [table.where(i) for i in range(3)] == ["a.csv, line 2", "a.csv, line 3", "b.csv, line 5"]
    assert table.split.tolist() == ["train", "train", "test"]


def test_concat_needs_equal_columns_unless_union():
    first = Table.single({"x": np.array([1, 2]), "y": np.array([0.5, 1.5])}, "a")
    second = Table.single({"x": np.array([3.5]), "z": np.array(["q"], dtype=object)}, "b")
    with pytest.raises(ValueError, match="different columns"):
        Table.concat([first, second])
    table = Table.concat([first, second], union=True)
    assert list(table.columns) == ["x", "y", "z"]
    assert table.columns["x"].dtype == np.float64 and table.columns["x"].tolist() == [1.0, 2.0, 3.5]  # numbers stay numbers
    assert table.columns["y"].tolist() == [0.5, 1.5, None] and table.columns["y"].dtype == object  # absent: missing
    assert table.columns["z"].tolist() == [None, None, "q"]


def test_concat_keeps_numbers_as_numbers_beside_strings():
    # numpy alone would turn 7 into the string '7'
    table = Table.concat([Table.single({"x": np.array(["a"])}, "a"), Table.single({"x": np.array([7])}, "b")])
    assert table.columns["x"].tolist() == ["a", 7]


def test_concat_of_images_of_different_sizes_names_the_column():
    small = Table.single({"image": np.zeros((2, 8, 8), np.float32)}, "a")
    large = Table.single({"image": np.zeros((1, 28, 28), np.float32)}, "b")
    with pytest.raises(ValueError, match=r"column 'image' has values of different shapes: \[\(8, 8\), \(28, 28\)\]"):
        Table.concat([small, large])


def test_path_columns_become_absolute_when_base_directories_differ(tmp_path: Path):
    first = Table.single({"image": np.array(["cat/1.png"], dtype=object)}, "a", base_dir=tmp_path / "one")
    second = Table.single({"image": np.array(["dog/2.png"], dtype=object)}, "b", base_dir=tmp_path / "two")
    first.path_columns = second.path_columns = ("image",)
    table = Table.concat([first, second])
    assert table.columns["image"].tolist() == [str(tmp_path / "one" / "cat/1.png"), str(tmp_path / "two" / "dog/2.png")]
    assert table.base_dir is None and table.path_columns == ("image",)

    same = Table.concat([first, first])  # one base directory serves both: paths stay relative
    assert same.columns["image"].tolist() == ["cat/1.png", "cat/1.png"] and same.base_dir == tmp_path / "one"


def test_confined_origins_survive_take_and_concat():
    first = Table.single({"image": np.array(["a.png", "b.png"], dtype=object)}, "one/a.csv").confine("pass --allow-outside to read it")
    second = Table.single({"image": np.array(["c.png"], dtype=object)}, "two/b.csv")  # read with allow_outside: not confined
    table = Table.concat([first, second], union=True)
    assert table.confined == {"one/a.csv": "pass --allow-outside to read it"}
    assert table.take(np.array([2, 0])).confined == table.confined
