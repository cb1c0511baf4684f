"""Sources read from files and folders: Parquet, image folders, plain text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import tiny_config
from PIL import Image

from forgeml.config import load_config
from forgeml.data.dataset import load_dataset
from forgeml.data.sources import read_image_folder, read_parquet, read_text_files
from forgeml.errors import ConfigError, DataError
from forgeml.registry import SOURCES

NUMBER_X = [{"type": "number", "name": "x"}]


def data_config(source: dict, features: list | None = None, target: dict | None = None) -> dict:
    data: dict = {"source": source, "split": {"validation": 0.0, "test": 0.0}}
    if features is not None:
        data["features"], data["target"] = features, target
    return tiny_config(data=data)


def build(source: dict):
    """Build a source from its config dict through the config and the registry."""
    return SOURCES.build(load_config(data_config(source, NUMBER_X, {"type": "number", "name": "y"})).data.source)


def write_png(path: Path, value: int, size: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8), mode="L").save(path)


# --------------------------------------------------------------------------------------------------
# Parquet


def write_parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_read_parquet_keeps_types_and_turns_nulls_into_missing_values(tmp_path: Path):
    path = write_parquet(
        tmp_path / "rows.parquet",
        {"n": [1, 2, 3], "f": [0.5, 1.5, 2.5], "flag": [True, False, True], "gap": [1.0, None, 3.0], "word": ["a", None, "c"]},
    )
    table = read_parquet(path)
    assert list(table.columns) == ["n", "f", "flag", "gap", "word"]
    assert table.columns["n"].dtype == np.int64 and table.columns["f"].dtype == np.float64 and table.columns["flag"].dtype == bool
    assert table.columns["gap"].tolist() == [1.0, None, 3.0] and table.columns["gap"].dtype == object  # a null is None
    assert table.columns["word"].tolist() == ["a", None, "c"]
    assert table.line.tolist() == [1, 2, 3] and table.where(2) == f"{path}, line 3"  # line: the row number
    assert table.base_dir == tmp_path


def test_parquet_list_column_keeps_one_list_per_row(tmp_path: Path):
    table = read_parquet(write_parquet(tmp_path / "lists.parquet", {"seq": [[1, 2], [3, 4]]}))
    assert table.columns["seq"].shape == (2,) and table.columns["seq"][1] == [3, 4]


def test_parquet_through_load_dataset_names_the_row_of_a_missing_value(tmp_path: Path):
    path = write_parquet(tmp_path / "d.parquet", {"x": [1.0, 2.0, None, 4.0], "colour": ["red", "blue", "red", "blue"]})
    cfg = load_config(data_config({"type": "parquet", "path": str(path)}, NUMBER_X, {"type": "category", "name": "colour"}))
    with pytest.raises(DataError, match=r"d\.parquet, line 3: column 'x': missing value"):
        load_dataset(cfg.data, cfg.seed)

    cfg.data.on_bad_row = "skip"
    dataset = load_dataset(cfg.data, cfg.seed)
    train = dataset.split("train")
    assert train.columns["x"].tolist() == [1.0, 2.0, 4.0] and train.columns["colour"].tolist() == ["red", "blue", "blue"]
    assert train.line.tolist() == [1, 2, 4] and dataset.skipped == {"x": 1}


def test_parquet_file_per_split_and_different_columns(tmp_path: Path):
    train = write_parquet(tmp_path / "train.parquet", {"x": [1, 2], "y": [3, 4]})
    test = write_parquet(tmp_path / "test.parquet", {"x": [5], "y": [6]})
    data = build({"type": "parquet", "paths": {"train": str(train), "test": str(test)}})
    assert data.table.split.tolist() == ["train", "train", "test"] and data.table.columns["y"].dtype == np.int64
    assert data.description == f"Parquet files train={train}, test={test}"

    other = write_parquet(tmp_path / "other.parquet", {"x": [5], "z": [6]})
    with pytest.raises(DataError, match=r"^the split files have different columns: .*'test': \['x', 'z'\]"):
        build({"type": "parquet", "paths": {"train": str(train), "test": str(other)}})


def test_parquet_errors_name_the_file(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope\.parquet: no such data file"):
        build({"type": "parquet", "path": str(tmp_path / "nope.parquet")})
    (tmp_path / "fake.parquet").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match=r"fake\.parquet: not a readable Parquet file \("):
        read_parquet(tmp_path / "fake.parquet")
    with pytest.raises(DataError, match=r"empty\.parquet: no rows"):
        read_parquet(write_parquet(tmp_path / "empty.parquet", {"x": pa.array([], pa.int64())}))


# --------------------------------------------------------------------------------------------------
# image folders


def make_image_folder(root: Path, counts: dict[str, int], size: int = 4) -> Path:
    """root/<class>/<i>.png, grey images whose brightness depends on the class."""
    for index, (label, count) in enumerate(counts.items()):
        for i in range(count):
            write_png(root / label / f"{i}.png", 40 + 100 * index, size)
    return root


def test_read_image_folder_rows_in_class_then_file_order(tmp_path: Path):
    root = make_image_folder(tmp_path / "pets", {"dog": 2, "cat": 3})
    (root / "README.md").write_text("files beside the class folders are ignored")
    (root / "cat" / "notes.txt").write_text("so are files that are not images")
    (root / ".hidden").mkdir()  # and hidden folders
    table = read_image_folder(root)
    assert table.columns["image"].tolist() == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png"]
    assert table.columns["label"].tolist() == ["cat"] * 3 + ["dog"] * 2
    assert table.base_dir == root and table.path_columns == ("image",)
    assert table.where(4) == f"{root / 'dog'}, line 2"  # origin: the class folder; line: the image's position


def test_image_folder_is_a_complete_data_section(tmp_path: Path):
    root = make_image_folder(tmp_path / "pets", {"cat": 6, "dog": 6})
    cfg = load_config(tiny_config(data={"source": {"type": "image_folder", "path": str(root)}, "split": {"validation": 0.0, "test": 0.25}}))
    assert (cfg.data.features[0].type, cfg.data.features[0].name) == ("image", "image")
    assert (cfg.data.target.type, cfg.data.target.name) == ("category", "label")
    dataset = load_dataset(cfg.data, cfg.seed)
    assert dataset.description == f"image folder {root}"
    assert {name: len(rows) for name, rows in dataset.splits.items()} == {"train": 8, "validation": 0, "test": 4}
    train = dataset.split("train")
    assert train.columns["image"].shape == (8, 1, 4, 4) and train.columns["image"].dtype == np.float32
    brightness = {label: float(image.mean()) for image, label in zip(train.columns["image"], train.columns["label"])}
    assert brightness == {"cat": pytest.approx(40 / 255), "dog": pytest.approx(140 / 255)}


def test_image_folder_per_split(tmp_path: Path):
    train = make_image_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    test = make_image_folder(tmp_path / "elsewhere" / "test", {"cat": 1, "dog": 1})
    cfg = load_config(tiny_config(data={"source": {"type": "image_folder", "paths": {"train": str(train), "test": str(test)}}}))
    dataset = load_dataset(cfg.data, cfg.seed)
    assert dataset.split("test").columns["label"].tolist() == ["cat", "dog"]
    assert dataset.split("train").columns["image"].shape == (4, 1, 4, 4)
    # two folders share no base directory: the paths became absolute
    raw = SOURCES.build(cfg.data.source).table
    assert raw.columns["image"][-1] == str(test / "dog" / "0.png") and raw.base_dir is None


def test_image_folder_errors_name_the_folder(tmp_path: Path):
    with pytest.raises(DataError, match=r"nowhere: no such folder"):
        build({"type": "image_folder", "path": str(tmp_path / "nowhere")})
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "1.png", 0)
    with pytest.raises(DataError, match=r"flat: no class sub-folders; put each class's images in a folder named after it"):
        read_image_folder(tmp_path / "flat")
    root = make_image_folder(tmp_path / "pets", {"cat": 1})
    (root / "dog").mkdir()
    with pytest.raises(DataError) as info:
        read_image_folder(root)
    assert str(info.value).startswith(f"{root / 'dog'}: no images in this class folder (.bmp, .gif, .jpeg, .jpg, .png")
    with pytest.raises(ConfigError, match=r"data\.source: give exactly one of `path` \(one folder\) or `paths` \(a folder per split\)"):
        load_config(tiny_config(data={"source": {"type": "image_folder"}}))


def test_a_broken_image_is_named_by_its_class_folder_and_position(tmp_path: Path):
    root = make_image_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    (root / "dog" / "1.png").write_bytes(b"not a png")
    cfg = load_config(tiny_config(data={"source": {"type": "image_folder", "path": str(root)}}))
    with pytest.raises(DataError, match=r"pets/dog, line 2: column 'image': cannot decode image '.*1\.png'"):
        load_dataset(cfg.data, cfg.seed)


# --------------------------------------------------------------------------------------------------
# plain text


POEM = "The first line.\n\n  Second paragraph, line one.\nline two\n\n\n\nLast line, no newline at the end"


def test_text_file_by_line_paragraph_and_file(tmp_path: Path):
    path = tmp_path / "poem.txt"
    path.write_text(POEM, encoding="utf-8")
    lines = read_text_files(path)
    assert list(lines.columns) == ["text"]
    assert lines.columns["text"].tolist() == ["The first line.", "Second paragraph, line one.", "line two", "Last line, no newline at the end"]
    assert lines.line.tolist() == [1, 3, 4, 8] and lines.where(3) == f"{path}, line 8"

    paragraphs = read_text_files(path, "paragraph")
    assert paragraphs.columns["text"].tolist() == ["The first line.", "  Second paragraph, line one.\nline two", "Last line, no newline at the end"]
    assert paragraphs.line.tolist() == [1, 3, 8]  # each paragraph's first line

    whole = read_text_files(path, "file")
    assert whole.columns["text"].tolist() == [POEM.strip()] and whole.line.tolist() == [1]


def test_text_folder_with_class_sub_folders_is_labelled(tmp_path: Path):
    root = tmp_path / "reviews"
    for label, texts in {"pos": ["great", "loved it"], "neg": ["dull"]}.items():
        (root / label).mkdir(parents=True)
        for i, text in enumerate(texts):
            (root / label / f"{i}_{label}.txt").write_text(text + "\n")
    (root / "urls_pos.txt").write_text("http://example.com\n")  # beside the class folders: ignored (as in aclImdb)
    source = {"type": "text_files", "path": str(root), "unit": "file"}
    data = build(source)
    assert data.table.columns["text"].tolist() == ["dull", "great", "loved it"]
    assert data.table.columns["label"].tolist() == ["neg", "pos", "pos"]
    assert data.table.where(2) == f"{root / 'pos' / '1_pos.txt'}, line 1"
    assert data.description == f"text folder {root}"
    assert SOURCES.get("text_files").config.default_columns(source) == (
        [{"type": "text", "name": "text"}],
        {"type": "category", "name": "label"},
    )


def test_text_folder_without_sub_folders_is_a_corpus(tmp_path: Path):
    (tmp_path / "b.txt").write_text("third\n")
    (tmp_path / "a.txt").write_text("first\nsecond\n")
    (tmp_path / "skip.md").write_text("not a .txt file\n")
    table = read_text_files(tmp_path)
    assert list(table.columns) == ["text"] and table.columns["text"].tolist() == ["first", "second", "third"]
    assert [table.where(i) for i in range(3)] == [f"{tmp_path / 'a.txt'}, line 1", f"{tmp_path / 'a.txt'}, line 2", f"{tmp_path / 'b.txt'}, line 1"]
    assert SOURCES.get("text_files").config.default_columns({"type": "text_files", "path": str(tmp_path)}) is None


def test_text_errors_name_the_file_and_line(tmp_path: Path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("fine\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt, line 2: not UTF-8 text \(byte 8\); save the file as UTF-8"):
        read_text_files(bad)
    with pytest.raises(DataError, match=r"missing\.txt: no such file or folder"):
        build({"type": "text_files", "path": str(tmp_path / "missing.txt")})
    (tmp_path / "corpus" / "pos").mkdir(parents=True)
    with pytest.raises(DataError, match=r"corpus/pos: no \.txt files in this class folder"):
        read_text_files(tmp_path / "corpus")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"blank\.txt: no text \(every paragraph is blank\)"):
        read_text_files(tmp_path / "blank.txt", "paragraph")
    with pytest.raises(ConfigError, match=r"data\.source\.unit: 'word' is not one of: line, paragraph, file"):
        load_config(data_config({"type": "text_files", "path": "x.txt", "unit": "word"}, NUMBER_X, {"type": "number", "name": "y"}))


def test_text_file_per_split(tmp_path: Path):
    (tmp_path / "train.txt").write_text("one\ntwo\n")
    (tmp_path / "test.txt").write_text("three\n")
    paths = {"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "test.txt")}
    data = build({"type": "text_files", "paths": paths})
    assert data.table.columns["text"].tolist() == ["one", "two", "three"]
    assert data.table.split.tolist() == ["train", "train", "test"]
    assert data.description == f"text files train={paths['train']}, test={paths['test']}"
