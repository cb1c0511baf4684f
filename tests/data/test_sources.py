"""Sources: CSV files (one, or one per split), rows written inline, the built-in datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_config

from forgeml.config import load_config
from forgeml.data.dataset import load_dataset
from forgeml.data.builtin_datasets import BREAST_CANCER_COLUMNS, load_breast_cancer_table, load_digits_table, load_mnist5k_table
from forgeml.data.sources import read_csv, read_jsonl
from forgeml.errors import DataError
from forgeml.registry import SOURCES


def source_data(source: dict):
    """Build a source from its config dict through the registry."""
    cfg = load_config(tiny_config(data={"source": source, "features": [{"type": "number", "name": "x"}], "target": {"type": "number", "name": "y"}}))
    return SOURCES.build(cfg.data.source)


# --------------------------------------------------------------------------------------------------
# CSV


def test_read_csv_header_columns_lines_and_origins(tmp_path: Path):
    path = tmp_path / "rows.csv"
    path.write_text(" x , label\n1,a\n\n2, b \n,\n3,c\n")  # blank and empty rows are skipped
    table = read_csv(path)
    assert list(table.columns) == ["x", "label"]  # header names are stripped
    assert table.columns["x"].tolist() == ["1", "2", "3"] and table.columns["x"].dtype == object
    assert table.columns["label"].tolist() == ["a", " b ", "c"]  # values are parsed later, by features
    assert table.line.tolist() == [2, 4, 6]  # file lines, the header being line 1
    assert table.origins == [str(path)] and table.origin_index.tolist() == [0, 0, 0]
    assert table.where(1) == f"{path}, line 4"
    assert table.base_dir == tmp_path and table.split is None


def test_read_csv_strips_a_byte_order_mark_and_reads_tsv(tmp_path: Path):
    path = tmp_path / "excel.tsv"
    path.write_bytes("\ufeffx\ty\n1\t2\n".encode("utf-8"))
    table = read_csv(path, "\t")
    assert list(table.columns) == ["x", "y"] and table.columns["y"].tolist() == ["2"]


def test_read_csv_quoted_fields_keep_their_delimiters(tmp_path: Path):
    path = tmp_path / "quoted.csv"
    path.write_text('name,x\n"Smith, J",1\n')
    assert read_csv(path).columns["name"].tolist() == ["Smith, J"]


def test_ragged_row_names_file_and_line(tmp_path: Path):
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,c\n1,2,3\n4,5\n")
    with pytest.raises(DataError) as info:
        read_csv(path)
    assert str(info.value) == f"{path}, line 3: 2 fields, but the header has 3"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the file is empty; it needs a header row"),
        ("a,b\n", "no data rows after the header"),
        ("a,b,a\n1,2,3\n", "the header repeats a column name: ['a', 'b', 'a']"),
    ],
)
def test_empty_or_headerless_files(tmp_path: Path, text: str, message: str):
    path = tmp_path / "data.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_csv(path)
    assert str(info.value) == f"{path}: {message}"


def test_missing_csv_file(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope\.csv: no such data file"):
        source_data({"type": "csv", "path": str(tmp_path / "nope.csv")})


def test_csv_source_with_one_file(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text("x,y\n1,2\n3,4\n")
    data = source_data({"type": "csv", "path": str(path)})
    assert data.table.columns["y"].tolist() == ["2", "4"] and data.table.split is None
    assert data.description == f"CSV file {path}"


def test_csv_source_with_a_file_per_split(tmp_path: Path):
    for name, rows in (("train", "1,2\n3,4\n5,6\n"), ("validation", "7,8\n"), ("test", "9,10\n11,12\n")):
        (tmp_path / f"{name}.csv").write_text("x,y\n" + rows)
    paths = {name: str(tmp_path / f"{name}.csv") for name in ("train", "validation", "test")}
    table = source_data({"type": "csv", "paths": paths}).table
    rows = {x: (split, table.where(i)) for i, (x, split) in enumerate(zip(table.columns["x"], table.split))}
    assert rows == {
        "1": ("train", f"{paths['train']}, line 2"),
        "3": ("train", f"{paths['train']}, line 3"),
        "5": ("train", f"{paths['train']}, line 4"),
        "7": ("validation", f"{paths['validation']}, line 2"),
        "9": ("test", f"{paths['test']}, line 2"),
        "11": ("test", f"{paths['test']}, line 3"),
    }
    assert sorted(table.origins) == sorted(paths.values())

    cfg = load_config(tiny_config(data={"source": {"type": "csv", "paths": paths}, "features": [{"type": "number", "name": "x"}], "target": {"type": "number", "name": "y"}}))
    dataset = load_dataset(cfg.data, seed=0)
    assert {name: dataset.split(name).columns["x"].tolist() for name in ("train", "validation", "test")} == {
        "train": [1.0, 3.0, 5.0],
        "validation": [7.0],
        "test": [9.0, 11.0],
    }


def test_split_files_with_different_columns(tmp_path: Path):
    (tmp_path / "train.csv").write_text("x,y\n1,2\n")
    (tmp_path / "test.csv").write_text("x,z\n1,2\n")
    with pytest.raises(DataError) as info:
        source_data({"type": "csv", "paths": {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}})
    message = str(info.value)
    assert message.startswith("the split files have different columns: ")
    assert "'train': ['x', 'y']" in message and "'test': ['x', 'z']" in message


# --------------------------------------------------------------------------------------------------
# inline


def test_inline_source():
    data = source_data({"type": "inline", "columns": {"x": [1, 2, 3], "y": [2.5, "4", None]}})
    assert data.table.columns["x"].tolist() == [1, 2, 3] and data.table.columns["x"].dtype == object
    assert data.table.columns["y"].tolist() == [2.5, "4", None]
    assert data.table.where(2) == "config data.source.columns, line 3"
    assert data.description == "inline rows"


@pytest.mark.parametrize("columns", [{}, {"x": [1, 2], "y": [1]}, {"x": []}])
def test_inline_columns_must_be_non_empty_and_of_equal_length(columns: dict):
    from forgeml.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.source: columns must be non-empty lists of equal length"):
        source_data({"type": "inline", "columns": columns})


# --------------------------------------------------------------------------------------------------
# built-in datasets


def test_digits():
    table = load_digits_table()
    images, labels = table.columns["image"], table.columns["label"]
    assert images.shape == (1797, 8, 8) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0  # 0..16 scaled to 0..1
    assert labels.dtype == np.int64 and sorted(set(labels.tolist())) == list(range(10))
    assert table.origins == ["builtin:digits"] and table.line[:3].tolist() == [1, 2, 3]


def test_mnist5k():
    table = load_mnist5k_table()
    images, labels = table.columns["image"], table.columns["label"]
    assert images.shape == (5000, 28, 28) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(labels).tolist() == [500] * 10
    assert 0.1 < float(images.mean()) < 0.2  # mostly black background, white strokes


def test_breast_cancer_is_a_table_of_30_measurements_and_a_diagnosis():
    table = load_breast_cancer_table()
    assert list(table.columns) == [*BREAST_CANCER_COLUMNS, "diagnosis"]
    assert len(table) == 569 and len(BREAST_CANCER_COLUMNS) == 30
    assert BREAST_CANCER_COLUMNS[:2] == ["mean_radius", "mean_texture"] and BREAST_CANCER_COLUMNS[-1] == "worst_fractal_dimension"
    diagnosis = table.columns["diagnosis"]
    assert (diagnosis == "malignant").sum() == 212 and (diagnosis == "benign").sum() == 357
    assert table.columns["mean_radius"].min() == pytest.approx(6.981)


def test_breast_cancer_shorthand_fills_in_its_columns():
    cfg = load_config(tiny_config(data={"source": "breast_cancer"}, model={"type": "mlp"}))
    assert [f.name for f in cfg.data.features] == BREAST_CANCER_COLUMNS
    assert {f.type for f in cfg.data.features} == {"number"}
    assert (cfg.data.target.type, cfg.data.target.name) == ("category", "diagnosis")
    dataset = load_dataset(cfg.data, cfg.seed)
    dataset.features.fit(dataset.split("train"))
    assert dataset.features.label_names == ["benign", "malignant"] and dataset.features.input_spec.shape == (30,)


def test_builtin_source_description_and_default_columns():
    data = SOURCES.build(load_config(tiny_config()).data.source)
    assert data.description == "built-in dataset digits"
    assert len(data.table) == 1797


# --------------------------------------------------------------------------------------------------
# JSON Lines


def test_read_jsonl_columns_lines_and_missing_keys(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"x": 1.5, "colour": "red", "y": 3}\n\n{"x": 2, "y": 5, "extra": true}\n{"colour": "blue", "y": 7}\n')
    table = read_jsonl(path)
    assert list(table.columns) == ["x", "colour", "y", "extra"]  # every key, first seen first
    assert table.columns["x"].tolist() == [1.5, 2, None]  # a key missing from a row is a missing value
    assert table.columns["colour"].tolist() == ["red", None, "blue"]
    assert table.line.tolist() == [1, 3, 4]  # the blank line is skipped but counted
    assert table.where(2) == f"{path}, line 4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"x": 1}\n{"x": 2,\n', "line 2: not valid JSON"),
        ('{"x": 1}\n[1, 2]\n', "line 2: expected a JSON object {...}, found list"),
        ("\n\n", "no rows"),
    ],
)
def test_read_jsonl_errors_name_the_file_and_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=str(path).replace("\\", "\\\\")) as error:
        read_jsonl(path)
    assert message in str(error.value)


def test_jsonl_source_per_split_files_and_a_missing_value_in_training(tmp_path: Path):
    for split, rows in {"train": [(1, 2), (2, 4), (3, 6)], "test": [(4, 8)]}.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(f'{{"x": {x}, "y": {y}}}\n' for x, y in rows))
    data = source_data({"type": "jsonl", "paths": {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")}})
    assert data.table.split.tolist() == ["train", "train", "train", "test"]
    assert data.description.startswith("JSON Lines files train=")

    (tmp_path / "gap.jsonl").write_text('{"x": 1, "y": 2}\n{"y": 4}\n')
    cfg = load_config(
        tiny_config(data={"source": {"type": "jsonl", "path": str(tmp_path / "gap.jsonl")}, "features": [{"type": "number", "name": "x"}], "target": {"type": "number", "name": "y"}})
    )
    with pytest.raises(DataError, match=r"gap\.jsonl, line 2: column 'x': missing value"):
        load_dataset(cfg.data, cfg.seed)
