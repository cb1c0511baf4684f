"""The merge source: several sources as one, each row tagged with its source's name (and split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import tiny_config
from test_sources_files import make_image_folder

from forgeml.config import dump_config, load_config
from forgeml.data.dataset import load_dataset
from forgeml.errors import ConfigError, DataError
from forgeml.registry import SOURCES

X_TO_Y = {"features": [{"type": "number", "name": "x"}], "target": {"type": "number", "name": "y"}}


def merge_config(sources: dict, **merge: object) -> dict:
    return tiny_config(data={"source": {"type": "merge", "sources": sources, **merge}, **X_TO_Y})


@pytest.fixture
def two_files(tmp_path: Path) -> dict[str, str]:
    """A CSV and a JSON Lines file with x and y; the second also has a column `note`."""
    (tmp_path / "old.csv").write_text("x,y\n1,2\n2,4\n3,6\n")
    (tmp_path / "new.jsonl").write_text('{"x": 4, "y": 8, "note": "late"}\n{"x": 5, "y": 10}\n')
    return {"old": str(tmp_path / "old.csv"), "new": str(tmp_path / "new.jsonl")}


def test_merge_tags_rows_with_their_source_and_keeps_origins(two_files: dict[str, str]):
    cfg = load_config(merge_config({"old": {"type": "csv", "path": two_files["old"]}, "new": {"type": "jsonl", "path": two_files["new"]}}))
    data = SOURCES.build(cfg.data.source)
    table = data.table
    assert list(table.columns) == ["x", "y", "note", "source"]
    assert table.columns["source"].tolist() == ["old"] * 3 + ["new"] * 2
    assert table.columns["x"].tolist() == ["1", "2", "3", 4, 5]  # each source's raw values; features parse them
    assert table.columns["note"].tolist() == [None, None, None, "late", None]  # absent from the CSV: missing
    assert [table.where(i) for i in (0, 4)] == [f"{two_files['old']}, line 2", f"{two_files['new']}, line 2"]
    assert table.split is None
    assert data.description == f"merge of old: CSV file {two_files['old']}; new: JSON Lines file {two_files['new']}"


def test_merge_splits_train_on_one_source_and_test_on_another(two_files: dict[str, str]):
    cfg = load_config(
        merge_config({"old": {"type": "csv", "path": two_files["old"]}, "new": {"type": "jsonl", "path": two_files["new"]}}, splits={"old": "train", "new": "test"})
    )
    dataset = load_dataset(cfg.data, cfg.seed)
    assert dataset.split("train").columns["x"].tolist() == [1.0, 2.0, 3.0]
    assert dataset.split("test").columns["x"].tolist() == [4.0, 5.0]
    assert len(dataset.splits["validation"]) == 0


def test_a_bad_row_in_the_second_source_is_named_by_its_file_and_line(tmp_path: Path, two_files: dict[str, str]):
    (tmp_path / "new.jsonl").write_text('{"x": 4, "y": 8}\n\n{"x": "four", "y": 10}\n')
    cfg = load_config(merge_config({"old": {"type": "csv", "path": two_files["old"]}, "new": {"type": "jsonl", "path": two_files["new"]}}))
    with pytest.raises(DataError, match=r"new\.jsonl, line 3: column 'x': cannot read 'four' as a number"):
        load_dataset(cfg.data, cfg.seed)


def test_merge_keeps_numbers_numeric_when_every_source_has_the_column(tmp_path: Path):
    for name, xs in (("a", [1, 2]), ("b", [3])):
        pq.write_table(pa.table({"x": xs, "y": [float(x) for x in xs]}), tmp_path / f"{name}.parquet")
    sources = {name: {"type": "parquet", "path": str(tmp_path / f"{name}.parquet")} for name in ("a", "b")}
    table = SOURCES.build(load_config(merge_config(sources)).data.source).table
    assert table.columns["x"].dtype == np.int64 and table.columns["y"].dtype == np.float64
    assert table.columns["source"].tolist() == ["a", "a", "b"]


def test_merge_of_two_image_folders_in_different_places(tmp_path: Path):
    first = make_image_folder(tmp_path / "one", {"cat": 3, "dog": 3})
    second = make_image_folder(tmp_path / "far" / "two", {"cat": 2, "dog": 2})
    source = {"type": "merge", "sources": {"a": {"type": "image_folder", "path": str(first)}, "b": {"type": "image_folder", "path": str(second)}}}
    cfg = load_config(tiny_config(data={"source": source, "split": {"validation": 0.0, "test": 0.0}}))
    assert [f.name for f in cfg.data.features] == ["image"] and cfg.data.target.name == "label"  # the sources' shared defaults
    dataset = load_dataset(cfg.data, cfg.seed)
    assert dataset.split("train").columns["image"].shape == (10, 1, 4, 4)  # relative paths resolved per folder


def test_builtin_shorthand_inside_a_merge_and_the_config_round_trip(two_files: dict[str, str]):
    cfg = load_config(merge_config({"digits": "digits", "old": {"type": "csv", "path": two_files["old"]}}, column="origin"))
    assert cfg.data.source.sources["digits"].name == "digits"
    assert "      digits:\n        type: builtin\n        name: digits\n" in dump_config(cfg)
    assert load_config(cfg) == cfg  # the resolved config validates again


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"sources": {"a": {"type": "merge", "sources": {}}}}, "data.source.sources: a: a merge cannot contain another merge"),
        ({"sources": {"a": {"type": "csv"}}}, "data.source.sources: a: give exactly one of `path` (one file) or `paths` (a file per split)"),
        ({"sources": {"a": {"type": "csv", "path": "x", "colour": 1}}}, "data.source.sources: a.colour: unknown key; allowed keys here: path, paths, allow_outside, type, delimiter"),
        ({"sources": {"a": {"type": "cvs", "path": "x"}}}, "data.source.sources: a.type: 'cvs' is not one of: builtin, csv, jsonl, parquet"),
        ({"sources": {"a": {"path": "x"}}}, "data.source.sources: a: needs a mapping with a `type`"),
        ({"sources": {"a": "digitz"}}, "data.source.sources: a.name: 'digitz' is not one of: 'digits', 'mnist5k'"),
        ({"sources": {}}, "data.source.sources: list at least one source"),
        ({"sources": {"a": "digits"}, "splits": {"a": "training"}}, "data.source.splits.a: 'training' is not one of: train, validation, test"),
        ({"sources": {"a": "digits", "b": "digits"}, "splits": {"a": "train"}}, "data.source: splits: give every source a split; missing 'b'"),
        ({"sources": {"a": "digits"}, "splits": {"a": "train", "c": "test"}}, "data.source: splits: 'c' is not a source name (sources: a)"),
        ({"sources": {"a": "digits"}, "splits": {"a": "test"}}, "data.source: splits: no source is `train`"),
    ],
)
def test_merge_config_errors_name_the_nested_source(source: dict, message: str):
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config(data={"source": {"type": "merge", **source}, **X_TO_Y}))
    assert f"config: {message}" in str(info.value)


def test_merge_load_errors(tmp_path: Path, two_files: dict[str, str]):
    (tmp_path / "test.csv").write_text("x,y\n9,9\n")
    per_split = {"type": "csv", "paths": {"train": two_files["old"], "test": str(tmp_path / "test.csv")}}
    one_file = {"type": "jsonl", "path": two_files["new"]}

    cfg = load_config(merge_config({"old": per_split, "new": one_file}, splits={"old": "train", "new": "test"}))
    with pytest.raises(DataError, match=r"merge source 'old' already has a file per split; give it one `path`, or leave `splits` out"):
        SOURCES.build(cfg.data.source)

    cfg = load_config(merge_config({"old": per_split, "new": one_file}))
    with pytest.raises(DataError, match=r"merge: some sources have a file per split \(old\) and some do not \(new\); give each one `path`"):
        SOURCES.build(cfg.data.source)

    cfg = load_config(merge_config({"new": one_file}, column="note"))
    with pytest.raises(DataError, match=r"merge source 'new' already has a column 'note'; set the merge's `column` to another name"):
        SOURCES.build(cfg.data.source)

    # one value per row in sunspots' `activity`, a pair per row in the inline source's
    cfg = load_config(merge_config({"years": "sunspots", "pairs": {"type": "inline", "columns": {"activity": [[1, 2]]}}}))
    with pytest.raises(DataError, match=r"merge: cannot join the sources' rows: column 'activity' has values of different shapes: \[\(\), \(2,\)\]"):
        SOURCES.build(cfg.data.source)
