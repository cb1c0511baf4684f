"""Features: parse raw columns, fit on training rows, transform, and round-trip the fitted state through JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from forgeml.data.features import Features
from forgeml.data.sources import read_csv
from forgeml.data.table import Table
from forgeml.errors import DataError
from forgeml.registry import FEATURES


def feature(**cfg: Any) -> Any:
    """One feature built from its config dict through the registry."""
    return FEATURES.build(FEATURES.get(cfg["type"]).config.model_validate(cfg))


def table_of(**columns: Any) -> Table:
    """A Table from plain lists (object columns, like a CSV) or arrays."""
    return Table.single({k: v if isinstance(v, np.ndarray) else np.array(v, dtype=object) for k, v in columns.items()}, "rows.csv", first_line=2)


def features_of(inputs: list[dict], target: dict) -> Features:
    """A Features bundle from raw config dicts."""
    config = lambda raw: FEATURES.get(raw["type"]).config.model_validate(raw)  # noqa: E731
    return Features([config(raw) for raw in inputs], config(target))


# --------------------------------------------------------------------------------------------------
# number


def test_number_standard_minmax_none():
    values = np.array([1.0, 2.0, 3.0, 6.0])
    standard = feature(type="number", name="x")
    standard.fit(values)
    assert (standard.shift, standard.scale) == pytest.approx((3.0, np.std(values)))
    encoded = standard.transform(values)
    assert encoded.shape == (4, 1) and encoded.dtype == np.float32
    assert encoded.mean() == pytest.approx(0.0, abs=1e-6) and encoded.std() == pytest.approx(1.0, rel=1e-6)

    minmax = feature(type="number", name="x", normalize="minmax")
    minmax.fit(values)
    assert minmax.transform(values).reshape(-1).tolist() == pytest.approx([0.0, 0.2, 0.4, 1.0])

    none = feature(type="number", name="x", normalize="none")
    none.fit(values)
    assert none.transform(values).reshape(-1).tolist() == [1.0, 2.0, 3.0, 6.0]
    np.testing.assert_allclose(standard.inverse(standard.transform(values).reshape(-1)), values, rtol=1e-6)


def test_number_constant_column_does_not_divide_by_zero():
    for normalize in ("standard", "minmax"):
        constant = feature(type="number", name="x", normalize=normalize)
        constant.fit(np.array([4.0, 4.0]))
        assert constant.scale == 1.0
        assert np.isfinite(constant.transform(np.array([4.0, 5.0]))).all()


def test_number_parse_marks_bad_values_with_reasons():
    parsed = feature(type="number", name="x").parse(np.array([" 1.5", "", "NA", "abc", "inf", "-2e3"], dtype=object), table_of(x=[0] * 6))
    assert parsed.values[[0, 5]].tolist() == [1.5, -2000.0]
    assert parsed.bad.tolist() == [False, True, True, True, True, False]
    assert parsed.reasons == {1: "missing value", 2: "missing value", 3: "cannot read 'abc' as a number", 4: "'inf' is not a finite number"}


# --------------------------------------------------------------------------------------------------
# category


def test_category_vocabulary_is_in_natural_order_with_an_unknown_bucket_for_inputs():
    colour = feature(type="category", name="c")
    colour.fit(np.array(["10", "b", "2", "a", "1.5", "2"], dtype=object))
    assert colour.vocabulary == ["<unknown>", "1.5", "2", "10", "a", "b"]
    encoded = colour.transform(np.array(["2", "zzz", "b"], dtype=object))
    assert encoded.shape == (3, 6) and encoded.dtype == np.float32
    assert encoded.argmax(1).tolist() == [2, 0, 5]  # an unseen value goes to the unknown bucket
    assert encoded.sum(1).tolist() == [1.0, 1.0, 1.0]


def test_category_min_count_sends_rare_values_to_unknown():
    colour = feature(type="category", name="c", min_count=2)
    colour.fit(np.array(["a", "a", "b"], dtype=object))
    assert colour.vocabulary == ["<unknown>", "a"]
    assert colour.indices(np.array(["a", "b"], dtype=object)).tolist() == [1, 0]


def test_category_parse_normalises_numbers_and_marks_missing_values():
    parsed = feature(type="category", name="c").parse(np.array([3.0, " x ", "", None, float("nan"), 2], dtype=object), table_of(c=[0] * 6))
    assert parsed.values.tolist()[:3] == ["3", "x", ""] and parsed.values[5] == "2"
    assert parsed.bad.tolist() == [False, False, True, True, True, False]
    integers = feature(type="category", name="c").parse(np.array([1, 0, 1]), table_of(c=[0] * 3))
    assert integers.values.tolist() == ["1", "0", "1"]


def test_an_unknown_target_label_raises_naming_the_row():
    features = features_of([{"type": "number", "name": "x"}], {"type": "category", "name": "y"})
    train = features.parse(table_of(x=["1", "2"], y=["cat", "dog"]))
    features.fit(train)
    assert features.label_names == ["cat", "dog"]  # no unknown bucket for a target
    other = features.parse(table_of(x=["1", "2", "3"], y=["dog", "cat", "cow"]))
    with pytest.raises(DataError) as info:
        features.transform_target(other)
    assert str(info.value) == "rows.csv, line 4: column 'y': label 'cow' never occurs in the training split (known: cat, dog)"


# --------------------------------------------------------------------------------------------------
# image


def test_grey_array_images():
    images = np.random.default_rng(0).random((5, 6, 4)).astype(np.float32)
    image = feature(type="image", name="im")
    parsed = image.parse(images, table_of(im=images))
    assert parsed.values.shape == (5, 1, 6, 4) and not parsed.bad.any()
    image.fit(parsed.values)
    assert image.shape == (1, 6, 4)
    assert image.mean == pytest.approx([float(images.mean())], rel=1e-5)
    encoded = image.transform(parsed.values)
    assert encoded.mean() == pytest.approx(0.0, abs=1e-5) and encoded.std() == pytest.approx(1.0, rel=1e-4)


def test_rgb_array_images_and_channel_conversion():
    rgb = np.random.default_rng(1).random((3, 4, 4, 3)).astype(np.float32)
    parsed = feature(type="image", name="im").parse(rgb, table_of(im=rgb))
    assert parsed.values.shape == (3, 3, 4, 4)
    np.testing.assert_array_equal(parsed.values[:, 2], rgb[..., 2])
    grey = feature(type="image", name="im", channels=1).parse(rgb, table_of(im=rgb)).values
    np.testing.assert_allclose(grey[:, 0], rgb.mean(axis=3), rtol=1e-6)
    three = feature(type="image", name="im", channels=3).parse(rgb[..., 0], table_of(im=rgb[..., 0])).values
    assert three.shape == (3, 3, 4, 4) and (three[:, 0] == three[:, 2]).all()


def test_array_images_are_resized():
    images = np.ones((2, 8, 8), dtype=np.float32)
    image = feature(type="image", name="im", size=[4, 6], normalize="none")
    parsed = image.parse(images, table_of(im=images))
    assert parsed.values.shape == (2, 1, 4, 6)
    np.testing.assert_allclose(parsed.values, 1.0, rtol=1e-5)
    image.fit(parsed.values)
    assert (image.mean, image.std) == ([0.0], [1.0])  # normalize: none keeps pixels in [0, 1]


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """Save a uint8 array (H x W grey, or H x W x 3 RGB) as a PNG."""
    Image.fromarray(pixels).save(path)
    return path


def test_png_path_column_relative_to_the_csv(tmp_path: Path, csv_dataset: Path):
    table = read_csv(csv_dataset)
    image = feature(type="image", name="picture")
    parsed = image.parse(table.columns["picture"], table)
    assert parsed.values.shape == (60, 1, 8, 8) and not parsed.bad.any()
    expected = np.asarray(Image.open(csv_dataset.parent / "images" / "img0.png"), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(parsed.values[0, 0], expected)


def test_png_files_resize_and_channels(tmp_path: Path):
    write_png(tmp_path / "grey.png", np.full((10, 6), 255, dtype=np.uint8))
    write_png(tmp_path / "rgb.png", np.stack([np.full((10, 6), v, dtype=np.uint8) for v in (0, 51, 255)], axis=2))
    table = Table.single({"p": np.array(["grey.png", "rgb.png"], dtype=object)}, "inline", base_dir=tmp_path)

    rgb = feature(type="image", name="p", channels=3, size=[5, 3]).parse(table.columns["p"], table)
    assert rgb.values.shape == (2, 3, 5, 3) and not rgb.bad.any()
    np.testing.assert_allclose(rgb.values[1, :, 0, 0], [0.0, 0.2, 1.0], atol=1e-6)
    np.testing.assert_allclose(rgb.values[0], 1.0)

    grey = feature(type="image", name="p", channels=1).parse(table.columns["p"], table)
    assert grey.values.shape == (2, 1, 10, 6)
    luminance = (0.299 * 0 + 0.587 * 51 + 0.114 * 255) / 255.0  # PIL's RGB -> L conversion
    assert grey.values[1, 0, 0, 0] == pytest.approx(luminance, abs=1 / 255)


def test_bad_image_files_are_marked_with_reasons(tmp_path: Path):
    write_png(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    write_png(tmp_path / "big.png", np.zeros((5, 5), dtype=np.uint8))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    table = Table.single({"p": np.array(["a.png", "missing.png", "junk.png", "big.png"], dtype=object)}, "inline", base_dir=tmp_path)
    parsed = feature(type="image", name="p").parse(table.columns["p"], table)
    assert parsed.bad.tolist() == [False, True, True, True]
    assert parsed.reasons[1] == f"no such image file {str(tmp_path / 'missing.png')!r}"
    assert parsed.reasons[2].startswith(f"cannot decode image {str(tmp_path / 'junk.png')!r}")
    assert parsed.reasons[3] == f"image {str(tmp_path / 'big.png')!r} is 5x5, others are 4x4; set `size` to resize"


def test_a_confined_data_file_refuses_a_symlink_loop_and_reads_what_it_checked(tmp_path: Path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "loop.png").symlink_to(folder / "loop.png")  # where it leads cannot be told: refused
    write_png(folder / "in.png", np.full((2, 2), 255, dtype=np.uint8))
    (folder / "same.png").symlink_to("in.png")  # a symlink that stays inside is read
    csv = folder / "rows.csv"
    csv.write_text("p\nloop.png\nsame.png\n")
    table = read_csv(csv).confine("pass --allow-outside to read it")
    parsed = feature(type="image", name="p").parse(table.columns["p"], table)
    assert parsed.bad.tolist() == [True, False]
    assert parsed.reasons[0] == f"'loop.png' lies outside the folder of {csv}; pass --allow-outside to read it"
    np.testing.assert_array_equal(parsed.values[1], np.ones((1, 2, 2), dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# the bundle


def test_features_properties_and_transforms(csv_dataset: Path):
    features = features_of(
        [{"type": "number", "name": "size"}, {"type": "category", "name": "colour"}], {"type": "category", "name": "label"}
    )
    table = features.parse(read_csv(csv_dataset))
    features.fit(table)
    assert features.task == "classification" and features.num_outputs == 2
    assert features.label_names == ["big", "small"]
    assert features.columns == ["size", "colour"]
    assert features.input_spec.shape == (5,)  # 1 number + <unknown>, blue, green, red
    inputs = features.transform_inputs(table)
    assert inputs.shape == (60, 5) and inputs.dtype == torch.float32
    targets = features.transform_target(table)
    assert targets.dtype == torch.int64 and targets[:4].tolist() == [1, 0, 1, 0]  # rows alternate small, big


def test_regression_target_decodes_to_its_units():
    features = features_of([{"type": "number", "name": "x"}], {"type": "number", "name": "y"})
    table = features.parse(table_of(x=["1", "2", "3"], y=["10", "20", "60"]))
    features.fit(table)
    assert features.task == "regression" and features.num_outputs == 1 and features.label_names == []
    target = features.transform_target(table)
    assert target.dtype == torch.float32 and target.shape == (3,)
    np.testing.assert_allclose(features.decode_regression(target.numpy()), [10.0, 20.0, 60.0], rtol=1e-6)


def test_state_survives_json_and_gives_identical_transforms(csv_dataset: Path):
    table = read_csv(csv_dataset)
    for inputs in ([{"type": "number", "name": "size", "normalize": "minmax"}, {"type": "category", "name": "colour", "min_count": 2}], [{"type": "image", "name": "picture", "size": [6, 6]}]):
        features = features_of(inputs, {"type": "category", "name": "label"})
        parsed = features.parse(table)
        features.fit(parsed.take(np.arange(40)))
        state = json.loads(json.dumps(features.to_state()))
        assert state == features.to_state()
        again = Features.from_state(state)
        assert again.to_state() == state
        assert (again.task, again.label_names, again.input_spec, again.columns) == (features.task, features.label_names, features.input_spec, features.columns)
        reparsed = again.parse(table)  # a fresh bundle parses raw rows the same way
        assert torch.equal(again.transform_inputs(reparsed), features.transform_inputs(parsed))
        assert torch.equal(again.transform_target(reparsed), features.transform_target(parsed))


def test_state_of_another_version_is_refused():
    features = features_of([{"type": "number", "name": "x"}], {"type": "number", "name": "y"})
    features.fit(features.parse(table_of(x=["1"], y=["2"])))
    state = features.to_state() | {"version": 99}
    with pytest.raises(DataError, match=r"features\.json has version 99; this forgeml reads version 1"):
        Features.from_state(state)


@pytest.mark.parametrize(
    "inputs, target, message",
    [
        ([], {"type": "number", "name": "y"}, "no input features: list them under data.features"),
        ([{"type": "number", "name": "x"}, {"type": "category", "name": "x"}], {"type": "number", "name": "y"}, "data.features names a column twice: ['x', 'x']"),
        ([{"type": "number", "name": "x"}], {"type": "image", "name": "y"}, "data.target: a 'image' column cannot be predicted; use category or number"),
        ([{"type": "number", "name": "x"}], {"type": "number", "name": "x"}, "data.target: column 'x' is also an input feature"),
        ([{"type": "image", "name": "p"}, {"type": "number", "name": "x"}], {"type": "number", "name": "y"}, "an image feature cannot be combined with other input features yet; use one image column"),
    ],
)
def test_bad_feature_bundles(inputs: list, target: dict, message: str):
    with pytest.raises(DataError) as info:
        features_of(inputs, target)
    assert str(info.value) == message


def test_a_missing_column_is_named_with_the_columns_there():
    features = features_of([{"type": "number", "name": "x"}], {"type": "number", "name": "y"})
    with pytest.raises(DataError) as info:
        features.parse(table_of(x=["1"], z=["2"]))
    assert str(info.value) == "rows.csv: no column named 'y' (columns: x, z)"
    assert len(features.parse(table_of(x=["1"], z=["2"]), with_target=False)) == 1
