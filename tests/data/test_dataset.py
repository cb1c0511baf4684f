"""From a data config to parsed rows and splits: bad rows, seeded and stratified splits, split columns,
and preprocessing fitted on the training split only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import tiny_config

from forgeml.config import load_config
from forgeml.data.dataset import load_dataset, split_rows
from forgeml.errors import DataError

pytestmark = pytest.mark.usefixtures("single_thread_torch")

CSV_FEATURES = [{"type": "number", "name": "size"}, {"type": "category", "name": "colour"}]


def data_config(source: dict, **data: Any) -> Any:
    """The validated ``data`` section for a source (default columns: the helpers.py CSV's)."""
    section = {"source": source, "features": CSV_FEATURES, "target": {"type": "category", "name": "label"}, **data}
    return load_config(tiny_config(data=section)).data


def edit_lines(path: Path, changes: dict[int, str]) -> Path:
    """Replace lines of a text file (1-based line numbers)."""
    lines = path.read_text().splitlines()
    for number, text in changes.items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# bad rows


def test_a_bad_row_names_file_line_and_column(csv_dataset: Path):
    edit_lines(csv_dataset, {4: "oops,red,images/img2.png,small"})
    with pytest.raises(DataError) as info:
        load_dataset(data_config({"type": "csv", "path": str(csv_dataset)}), seed=0)
    assert str(info.value) == (
        f"{csv_dataset}, line 4: column 'size': cannot read 'oops' as a number (set data.on_bad_row: skip to drop such rows)"
    )


def test_a_missing_image_file_names_file_line_and_column(csv_dataset: Path):
    edit_lines(csv_dataset, {7: "1.0,red,images/nope.png,small"})
    cfg = data_config({"type": "csv", "path": str(csv_dataset)}, features=[{"type": "image", "name": "picture"}])
    with pytest.raises(DataError) as info:
        load_dataset(cfg, seed=0)
    missing = csv_dataset.parent / "images" / "nope.png"
    assert str(info.value) == f"{csv_dataset}, line 7: column 'picture': no such image file {str(missing)!r} (set data.on_bad_row: skip to drop such rows)"


def test_image_paths_in_a_training_file_stay_in_its_folder_unless_the_source_allows(csv_dataset: Path):
    # what a data file from elsewhere could name: a file outside its folder (here one of its own images, moved out)
    outside = csv_dataset.parent.parent / "outside.png"
    (csv_dataset.parent / "images" / "img5.png").rename(outside)
    edit_lines(csv_dataset, {7: f"1.0,red,{outside},small"})
    features = [{"type": "image", "name": "picture"}]
    with pytest.raises(DataError) as info:
        load_dataset(data_config({"type": "csv", "path": str(csv_dataset)}, features=features), seed=0)
    assert str(info.value) == (
        f"{csv_dataset}, line 7: column 'picture': {str(outside)!r} lies outside the folder of {csv_dataset}; "
        "set allow_outside: true on its data source to read it (set data.on_bad_row: skip to drop such rows)"
    )
    allowed = load_dataset(data_config({"type": "csv", "path": str(csv_dataset), "allow_outside": True}, features=features), seed=0)
    assert len(allowed.table) == 60
    skipped = load_dataset(data_config({"type": "csv", "path": str(csv_dataset)}, features=features, on_bad_row="skip"), seed=0)
    assert len(skipped.table) == 59 and skipped.skipped == {"picture": 1}


def test_skip_drops_and_counts_bad_rows(csv_dataset: Path):
    original = csv_dataset.read_text().splitlines()
    edit_lines(csv_dataset, {4: "oops,red,x,small", 9: "1.0,,x,big", 12: "NA,,x,big", 20: original[19].rsplit(",", 1)[0] + ","})
    dataset = load_dataset(data_config({"type": "csv", "path": str(csv_dataset)}, on_bad_row="skip"), seed=0)
    assert dataset.skipped == {"size": 2, "colour": 1, "label": 1}  # line 12 counts once, for its first bad column
    assert len(dataset.table) == 56
    assert not set(dataset.table.line.tolist()) & {4, 9, 12, 20}
    assert sum(len(rows) for rows in dataset.splits.values()) == 56


# --------------------------------------------------------------------------------------------------
# splits


def test_split_rows_is_a_seeded_partition():
    first = split_rows(100, 0.1, 0.2, seed=0)
    assert {name: len(rows) for name, rows in first.items()} == {"train": 70, "validation": 10, "test": 20}
    assert sorted(np.concatenate(list(first.values())).tolist()) == list(range(100))
    assert all((np.diff(rows) > 0).all() for rows in first.values())  # sorted positions
    again = split_rows(100, 0.1, 0.2, seed=0)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    other = split_rows(100, 0.1, 0.2, seed=1)
    assert not np.array_equal(first["test"], other["test"])


def test_stratified_split_keeps_class_proportions():
    strata = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    splits = split_rows(100, 0.2, 0.1, seed=3, strata=strata)
    counts = {name: {c: int((strata[rows] == c).sum()) for c in "abc"} for name, rows in splits.items()}
    assert counts == {
        "test": {"a": 5, "b": 3, "c": 2},
        "validation": {"a": 10, "b": 6, "c": 4},
        "train": {"a": 35, "b": 21, "c": 14},
    }


def test_builtin_digits_split_is_stratified_and_reproducible():
    cfg = load_config(tiny_config()).data
    dataset = load_dataset(cfg, seed=0)
    labels = dataset.table.columns["label"].astype(int)  # parsed category values are strings
    totals = np.bincount(labels, minlength=10)
    test_counts = np.bincount(labels[dataset.splits["test"]], minlength=10)
    assert (np.abs(test_counts - totals * 0.1) <= 0.5).all()
    summary = dataset.split_summary()
    assert summary["rows"] == {"train": 1439, "validation": 179, "test": 179}
    assert load_dataset(cfg, seed=0).split_summary() == summary
    assert load_dataset(cfg, seed=1).split_summary()["sha256"] != summary["sha256"]


def test_split_column_assigns_rows(tmp_path: Path):
    path = tmp_path / "folds.csv"
    rows = ["x,label,fold", "1,a, Train", "2,b,train", "oops,a,test", "4,b,VALIDATION", "5,a,test", "6,b,train"]
    path.write_text("\n".join(rows) + "\n")
    cfg = data_config({"type": "csv", "path": str(path)}, features=[{"type": "number", "name": "x"}], split={"column": "fold"}, on_bad_row="skip")
    dataset = load_dataset(cfg, seed=0)
    assert {name: dataset.split(name).columns["x"].tolist() for name in ("train", "validation", "test")} == {
        "train": [1.0, 2.0, 6.0],
        "validation": [4.0],
        "test": [5.0],  # the bad row (line 4) is dropped and the others keep their own fold
    }


def test_split_column_errors(tmp_path: Path):
    path = tmp_path / "folds.csv"
    path.write_text("x,label,fold\n1,a,train\n2,b,holdout\n")
    source = {"type": "csv", "path": str(path)}
    features = [{"type": "number", "name": "x"}]
    with pytest.raises(DataError, match=r"^split names must be train, validation or test; found \['holdout'\]$"):
        load_dataset(data_config(source, features=features, split={"column": "fold"}), seed=0)
    with pytest.raises(DataError, match=r"^data\.split\.column: no column named 'folds'$"):
        load_dataset(data_config(source, features=features, split={"column": "folds"}), seed=0)


def test_an_empty_training_split_is_an_error(tmp_path: Path):
    path = tmp_path / "folds.csv"
    path.write_text("x,label,fold\n1,a,test\n2,b,validation\n")
    cfg = data_config({"type": "csv", "path": str(path)}, features=[{"type": "number", "name": "x"}], split={"column": "fold"})
    with pytest.raises(DataError) as info:
        load_dataset(cfg, seed=0)
    assert str(info.value) == f"CSV file {path}: the training split is empty (2 usable rows)"

    inline = {"type": "inline", "columns": {"x": [1, 2, 3, 4], "label": ["a", "b", "a", "b"]}}
    cfg = data_config(inline, features=[{"type": "number", "name": "x"}], split={"validation": 0.6, "test": 0.5, "stratify": False})
    with pytest.raises(DataError, match=r"^inline rows: the training split is empty \(4 usable rows\)$"):
        load_dataset(cfg, seed=0)


# --------------------------------------------------------------------------------------------------
# preprocessing is fitted on the training split only


def outlier_split_files(directory: Path) -> dict[str, str]:
    """Train and test CSVs of x -> y where only the test split holds an outlier (x = 1e6)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.csv").write_text("x,y\n" + "".join(f"{x},{2 * x}\n" for x in (1, 2, 3, 4, 5)))
    (directory / "test.csv").write_text("x,y\n6,12\n1000000,7\n")
    return {"train": str(directory / "train.csv"), "test": str(directory / "test.csv")}


def test_statistics_come_from_the_training_split_only(tmp_path: Path):
    paths = outlier_split_files(tmp_path)
    cfg = data_config({"type": "csv", "paths": paths}, features=[{"type": "number", "name": "x"}], target={"type": "number", "name": "y"})
    dataset = load_dataset(cfg, seed=0)
    dataset.features.fit(dataset.split("train"))
    x = dataset.features.inputs[0]
    assert (x.shift, x.scale) == pytest.approx((3.0, np.std([1, 2, 3, 4, 5])))
    assert (dataset.features.target.shift, dataset.features.target.scale) == pytest.approx((6.0, 2 * np.std([1, 2, 3, 4, 5])))


def test_a_training_run_fits_features_json_on_the_training_split_only(tmp_path: Path):
    from forgeml.training.job import train

    paths = outlier_split_files(tmp_path / "data")
    config = tiny_config(
        data={"source": {"type": "csv", "paths": paths}, "features": [{"type": "number", "name": "x"}], "target": {"type": "number", "name": "y"}},
        model={"type": "linear"},
        train={"max_steps": 2, "batch_size": "full", "optimizer": "sgd", "lr": 0.1},
    )
    result = train(config, out=tmp_path / "run", quiet=True)
    state = json.loads((result.run_dir / "features.json").read_text())
    assert state["inputs"][0]["state"] == {"shift": 3.0, "scale": pytest.approx(float(np.std([1, 2, 3, 4, 5])))}
    assert state["splits"]["rows"] == {"train": 5, "validation": 0, "test": 2}
