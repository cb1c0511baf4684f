"""Image files beyond 8-bit RGB: 16-bit and float pixels are scaled by their full range (not clipped
at 255), and an image over max_image_pixels is refused from its header, before decoding, with one
line naming it, in training (the CLI), predict (the Predictor) and serve (a 4xx)."""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from e2e.support import assert_user_error, forge
from helpers import tiny_config
from PIL import Image

import forgeml
from forgeml.data.features import PILLOW_MAX_IMAGE_PIXELS
from forgeml.data.table import Table
from forgeml.errors import DataError
from forgeml.registry import FEATURES
from forgeml.serve import build_app
from forgeml.serve.settings import ServeSettings

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, pixels: np.ndarray | None = None) -> bytes:
    """A PNG written by hand, so it may be what Pillow cannot write (16-bit RGB) or lie about its size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    sample = ">u2" if bit_depth == 16 else "u1"
    rows = b"" if pixels is None else b"".join(b"\x00" + row.astype(sample).tobytes() for row in pixels)  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def bomb(path: Path) -> Path:
    """A 67-byte PNG whose header claims 20000 x 20000 grey pixels (400 million)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(20000, 20000, 8, 0))
    return path


def read(paths: list[Path | bytes], **cfg: Any) -> Any:
    feature = FEATURES.build(FEATURES.get("image").config.model_validate({"type": "image", "name": "p", **cfg}))
    column = np.empty(len(paths), dtype=object)
    column[:] = [p if isinstance(p, bytes) else str(p) for p in paths]
    return feature.parse(column, Table.single({"p": column}, "inline"))


def test_sixteen_bit_and_float_greys_read_as_their_eight_bit_copy(tmp_path: Path):
    source = np.random.default_rng(0).random((6, 5))
    eight, sixteen = np.round(source * 255).astype(np.uint8), np.round(source * 65535).astype(np.uint16)
    Image.fromarray(eight).save(tmp_path / "8.png")
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    Image.fromarray(sixteen.astype(">u2")).save(tmp_path / "16b.tif")
    Image.fromarray(sixteen.astype(np.int32)).save(tmp_path / "32.tif")
    Image.fromarray(source.astype(np.float32)).save(tmp_path / "float.tif")
    files = [tmp_path / name for name in ("8.png", "16.png", "16b.tif", "32.tif", "float.tif")]
    assert [Image.open(f).mode for f in files] == ["L", "I;16", "I;16B", "I", "F"]
    parsed = read(files)
    assert not parsed.bad.any()
    assert np.array_equal(parsed.values[0, 0], eight / np.float32(255))  # 8-bit reads as before
    for deep in parsed.values[1:]:
        assert np.abs(deep[0] - source).max() < 1e-5  # not white: 16-bit is divided by 65535
        assert np.abs(deep[0] - parsed.values[0, 0]).max() <= 0.5 / 255 + 1e-6
    resized = read(files, size=[4, 3], channels=3).values
    assert resized.shape == (5, 3, 4, 3) and np.array_equal(resized[:, 0], resized[:, 2])
    assert np.abs(resized[1:] - resized[0]).max() <= 1 / 255


def test_sixteen_bit_rgb_reads_within_an_eighth_bit_and_bad_deep_pixels_are_named(tmp_path: Path):
    pixels = np.random.default_rng(1).integers(0, 65536, (4, 3, 3))
    (tmp_path / "rgb16.png").write_bytes(png_bytes(3, 4, 16, 2, pixels))
    Image.fromarray(np.full((2, 2), 70000, np.int32)).save(tmp_path / "wide.tif")
    Image.fromarray(np.full((2, 2), 2.5, np.float32)).save(tmp_path / "bright.tif")
    parsed = read([tmp_path / "rgb16.png", tmp_path / "wide.tif", tmp_path / "bright.tif"])
    assert np.abs(parsed.values[0] - pixels.transpose(2, 0, 1) / 65535).max() <= 1 / 255  # Pillow keeps the high byte
    assert parsed.bad.tolist() == [False, True, True]
    assert parsed.reasons[1] == f"image {str(tmp_path / 'wide.tif')!r} has pixels from 70000 to 70000; forgeml reads 'I' pixels as 16-bit integers (0 to 65535)"
    assert parsed.reasons[2] == f"image {str(tmp_path / 'bright.tif')!r} has pixels from 2.5 to 2.5; forgeml reads 'F' pixels as floats in [0, 1]"


def test_an_image_over_max_image_pixels_is_refused_from_its_header(tmp_path: Path):
    assert PILLOW_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "small.png")
    huge = bomb(tmp_path / "bomb.png")
    parsed = read([huge, huge.read_bytes(), tmp_path / "small.png"])
    assert parsed.bad.tolist() == [True, True, False]
    over = "has 400,000,000 pixels (20000 wide, 20000 high), over max_image_pixels (89,478,485)"
    assert parsed.reasons[0].startswith(f"image {str(tmp_path / 'bomb.png')!r} {over}")
    assert parsed.reasons[1].startswith(f"image bytes {over}")
    assert read([tmp_path / "small.png"], max_image_pixels=19).reasons[0].startswith(f"image {str(tmp_path / 'small.png')!r} has 20 pixels (5 wide, 4 high)")
    assert not read([tmp_path / "small.png"], max_image_pixels=20).bad.any()
    assert Image.MAX_IMAGE_PIXELS == PILLOW_MAX_IMAGE_PIXELS  # Pillow's own limit is restored


def test_training_on_a_folder_with_a_bomb_is_one_line_at_the_cli(tmp_path: Path):
    for label in ("a", "b"):
        for i in range(5):
            (tmp_path / "pets" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(tmp_path / "pets" / label / f"{i}.png")
    bomb(tmp_path / "pets" / "b" / "huge.png")
    config = tiny_config(data={"source": {"type": "image_folder", "path": str(tmp_path / "pets")}, "split": {"validation": 0.2, "test": 0.2}})
    (tmp_path / "pets.yaml").write_text(json.dumps(config))
    result = forge("train", tmp_path / "pets.yaml", "--out", tmp_path / "run")
    assert_user_error(result, "huge.png' has 400,000,000 pixels (20000 wide, 20000 high), over max_image_pixels (89,478,485)")
    config["data"]["features"] = [{"type": "image", "name": "image", "max_image_pixels": 63}]
    (tmp_path / "pets" / "b" / "huge.png").unlink()
    with pytest.raises(DataError, match=r"pets/[ab], line \d: column 'image': image '.*\.png' has 64 pixels \(8 wide, 8 high\), over max_image_pixels \(63\)"):
        forgeml.train(config, out=tmp_path / "run", quiet=True)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits CNN trained far enough to tell digits apart (the 8-bit copies get confident labels)."""
    steps = {"epochs": 1, "max_steps": 30, "batch_size": 32, "lr": 0.05, "log_every": 10, "checkpoint_every": 30}
    return forgeml.train(tiny_config(train=steps), out=tmp_path_factory.mktemp("images") / "run", quiet=True).run_dir


def test_a_sixteen_bit_digit_predicts_as_its_eight_bit_copy_and_a_bomb_is_refused(digits: Path, tmp_path: Path):
    predictor = forgeml.load(digits)
    images = predictor.split("test")[2].columns["image"][:6, 0]
    files = []
    for i, image in enumerate(images):
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp_path / f"{i}-8.png")
        Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(tmp_path / f"{i}-16.png")
        files += [tmp_path / f"{i}-8.png", tmp_path / f"{i}-16.png"]
    decoded = predictor.parse(predictor.to_table(files)).columns["image"]
    assert np.abs(decoded[1::2] - decoded[::2]).max() <= 0.5 / 255 + 1e-6 and np.abs(decoded[1::2] - images[:, None]).max() < 1e-5
    answers = predictor.predict(files)
    assert [a["label"] for a in answers] == ["4", "4", "7", "7", "3", "3", "3", "3", "4", "4", "4", "4"]
    for eight, sixteen in zip(answers[::2], answers[1::2]):  # read clipped, as before, the 16-bit copies differ by up to 0.67
        assert max(abs(sixteen["probabilities"][k] - p) for k, p in eight["probabilities"].items()) < 0.01
    with pytest.raises(DataError, match=r"image '.*bomb\.png' has 400,000,000 pixels \(20000 wide, 20000 high\), over max_image_pixels"):
        predictor.predict([bomb(tmp_path / "bomb.png")])


def test_serve_answers_an_over_size_upload_with_a_4xx(digits: Path, tmp_path: Path):
    upload = base64.b64encode(bomb(tmp_path / "bomb.png").read_bytes()).decode()
    with TestClient(build_app(ServeSettings(target=str(digits)))) as client:
        deadline = time.monotonic() + 60  # the model loads in the background
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = client.post("/v1/predict", json={"instances": [upload]})
    assert answer.status_code == 422
    assert "image bytes has 400,000,000 pixels (20000 wide, 20000 high), over max_image_pixels (89,478,485)" in answer.json()["error"]
