"""The one inference path: ``forgeml.load(run)`` reproduces the trained model and predicts raw inputs
(image files, a CSV file, row dicts, columns), and refuses a run whose files are missing or corrupt."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import REPO, make_csv_dataset, tiny_config
from safetensors.torch import load as load_tensors
from safetensors.torch import load_file, save_file

import forgeml
from forgeml.data.table import Table
from forgeml.errors import DataError, RunDirError
from forgeml.run import RunDir
from forgeml.training.job import train
from forgeml.training.loop import task_metrics

pytestmark = pytest.mark.usefixtures("single_thread_torch")


@dataclass
class Trained:
    """A finished run and the CSV dataset it was trained on."""

    run_dir: Path
    csv: Path
    metrics: dict[str, Any]


def csv_run(root: Path, features: list[dict], model: dict) -> Trained:
    """Train on the helpers.py CSV dataset (60 rows; label: big / small) into ``root/run``."""
    csv = make_csv_dataset(root / "data")
    config = tiny_config(
        name="csv",
        data={
            "source": {"type": "csv", "path": str(csv)},
            "features": features,
            "target": {"type": "category", "name": "label"},
            "split": {"validation": 0.2, "test": 0.2},
        },
        model=model,
        train={"max_steps": 8, "batch_size": 16, "lr": 0.02, "checkpoint_every": 4, "eval_every": 2},
    )
    result = train(config, out=root / "run", quiet=True)
    return Trained(result.run_dir, csv, result.metrics)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory, single_thread_torch: None) -> Trained:
    """A small CNN on the CSV's image-path column."""
    return csv_run(tmp_path_factory.mktemp("image"), [{"type": "image", "name": "picture"}], {"type": "cnn", "blocks": [{"channels": 4}], "dense": [8]})


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory, single_thread_torch: None) -> Trained:
    """An MLP on the CSV's number and category columns."""
    features = [{"type": "number", "name": "size"}, {"type": "category", "name": "colour"}]
    return csv_run(tmp_path_factory.mktemp("table"), features, {"type": "mlp", "hidden": [8]})


def copy_run(run: Trained, destination: Path) -> Path:
    """A private copy of a run directory, for tests that damage it."""
    return Path(shutil.copytree(run.run_dir, destination / "run"))


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts of strings."""
    header, *lines = path.read_text().splitlines()
    return [dict(zip(header.split(","), line.split(","))) for line in lines]


# --------------------------------------------------------------------------------------------------
# load reproduces the model that training ended with


@pytest.mark.parametrize("which", ["image_run", "table_run"])
def test_load_gives_the_outputs_of_the_model_in_memory(which: str, request: pytest.FixtureRequest):
    run: Trained = request.getfixturevalue(which)
    predictor = forgeml.load(run.run_dir)
    assert predictor.task == "classification" and predictor.label_names == ["big", "small"]
    assert not predictor.model.training
    for split in ("train", "validation", "test"):
        inputs, targets, _ = predictor.split(split)
        scores = task_metrics(predictor.outputs(inputs), targets, "classification", 2)
        # metrics.json was computed from the in-memory model at the end of training: loss and
        # confusion matrix agree exactly only if the loaded model gives the very same outputs
        assert scores == run.metrics["splits"][split], split
    assert json.loads((run.run_dir / "metrics.json").read_text()) == run.metrics


def test_public_train_then_load_in_a_fresh_interpreter(tmp_path: Path):
    """``forgeml.train`` then ``forgeml.load``, as a user writes it (a fresh process: see test_imports.py)."""
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO / "tests")!r})
import forgeml
from helpers import tiny_config
result = forgeml.train(tiny_config(), out={str(tmp_path / "run")!r}, quiet=True)
predictor = forgeml.load(result.run_dir)
from forgeml.training.loop import task_metrics  # only after forgeml.train(): see test_imports.py
inputs, targets, _ = predictor.split("test")
print(json.dumps(task_metrics(predictor.outputs(inputs), targets, "classification", 10) == result.metrics["splits"]["test"]))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "true"


def test_the_final_weights_are_the_best_checkpointed_weights(image_run: Trained):
    run = RunDir.open(image_run.run_dir)
    name, files = run.load_checkpoint()
    assert name == "step-000008"
    best = load_tensors(files["best.safetensors"])
    final = load_file(image_run.run_dir / "model.safetensors")
    assert final.keys() == best.keys() and all(torch.equal(final[k], best[k]) for k in final)
    assert image_run.metrics["training"]["best_step"] in (2, 4, 6, 8)


def test_run_directory_contents(image_run: Trained):
    names = sorted(p.name for p in image_run.run_dir.iterdir())
    assert names == [".lock", "checkpoints", "config.yaml", "features.json", "history.jsonl", "manifest.json", "metrics.json", "model.safetensors"]
    assert sorted(json.loads((image_run.run_dir / "manifest.json").read_text())["files"]) == [
        "config.yaml", "features.json", "history.jsonl", "metrics.json", "model.safetensors",
    ]  # fmt: skip
    assert RunDir.open(image_run.run_dir).checkpoint_names() == ["step-000008", "step-000004"]  # keep_checkpoints: 2


# --------------------------------------------------------------------------------------------------
# raw inputs


def test_predict_image_files(image_run: Trained, tmp_path: Path):
    predictor = forgeml.load(image_run.run_dir)
    inputs, _, table = predictor.split("test")
    all_rows = csv_rows(image_run.csv)
    files = []
    for i, line in enumerate(table.line.tolist()):  # copy the test split's images out of the dataset
        files.append(Path(shutil.copy(image_run.csv.parent / all_rows[line - 2]["picture"], tmp_path / f"test{i}.png")))
    predictions = predictor.predict(files)
    probabilities = torch.softmax(predictor.outputs(inputs), dim=-1).numpy()
    assert len(predictions) == len(files) == 12
    for prediction, expected in zip(predictions, probabilities):
        assert prediction["label"] == ["big", "small"][int(expected.argmax())]
        assert list(prediction["probabilities"]) == ["big", "small"]
        assert [prediction["probabilities"][name] for name in ("big", "small")] == pytest.approx(expected.tolist(), abs=2e-6)
    assert predictor.predict(str(files[0])) == predictions[:1]  # one path, as a string


def test_predict_a_csv_file_resolves_image_paths_from_its_folder(image_run: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    predictor = forgeml.load(image_run.run_dir)
    folder = tmp_path / "inputs"
    (folder / "pics").mkdir(parents=True)
    rows = csv_rows(image_run.csv)[:5]
    for i, row in enumerate(rows):
        shutil.copy(image_run.csv.parent / row["picture"], folder / "pics" / f"{i}.png")
    (folder / "batch.csv").write_text("picture,note\n" + "".join(f"pics/{i}.png,x\n" for i in range(5)))
    monkeypatch.chdir(tmp_path)  # neither the CSV's folder nor the run's
    from_csv = predictor.predict(folder / "batch.csv")
    from_rows = predictor.predict([{"picture": str(image_run.csv.parent / row["picture"])} for row in rows])
    assert from_csv == from_rows and len(from_csv) == 5


def test_image_paths_in_a_data_file_stay_in_its_folder_unless_allowed(image_run: Trained, tmp_path: Path):
    predictor = forgeml.load(image_run.run_dir)
    picture = image_run.csv.parent / csv_rows(image_run.csv)[0]["picture"]
    outside, folder = tmp_path / "outside", tmp_path / "inputs"
    outside.mkdir()
    (folder / "pics").mkdir(parents=True)
    target = outside / "x.png"
    (folder / "link.png").symlink_to(target)  # a symlink out of the folder
    expected = predictor.predict([picture])
    csv = folder / "batch.csv"
    remedy = "pass --allow-outside (allow_outside=True in Python) to read it"
    for written in ("../outside/x.png", str(target), "link.png", "pics/../../outside/x.png"):
        csv.write_text(f"picture\n{written}\n")
        refused = f"{csv}, line 2: column 'picture': {written!r} lies outside the folder of {csv}; {remedy}"
        messages = []
        for exists in (False, True):  # the same answer whether or not the file outside exists
            if exists:
                shutil.copy(picture, target)
            with pytest.raises(DataError) as info:
                predictor.predict(csv)
            messages.append(str(info.value))
            if exists:
                assert predictor.predict(csv, allow_outside=True) == expected, written
                target.unlink()
        assert messages == [refused, refused], written
        with pytest.raises(DataError, match=r"no such image file"):  # allowed, it is read, and found missing
            predictor.predict(csv, allow_outside=True)
    shutil.copy(picture, target)
    assert predictor.predict([folder / "link.png"]) == expected  # given directly: read through the symlink
    # JSON Lines and Parquet files are confined the same way; inside the folder nothing changes
    import pyarrow
    import pyarrow.parquet

    shutil.copy(picture, folder / "pics" / "in.png")
    (folder / "rows.jsonl").write_text(json.dumps({"picture": "../outside/x.png"}) + "\n")
    pyarrow.parquet.write_table(pyarrow.table({"picture": [str(target)]}), folder / "rows.parquet")
    for data_file, written in ((folder / "rows.jsonl", "../outside/x.png"), (folder / "rows.parquet", str(target))):
        with pytest.raises(DataError, match=f"{re.escape(repr(written))} lies outside the folder of {re.escape(str(data_file))}; pass --allow-outside"):
            predictor.predict(data_file)
        assert predictor.predict(data_file, allow_outside=True) == expected
    csv.write_text(f"picture\npics/in.png\n{folder / 'pics' / 'in.png'}\n")  # relative, or absolute inside the folder
    assert predictor.predict(csv) == expected * 2


def test_predict_rows_columns_and_tables_agree(table_run: Trained):
    predictor = forgeml.load(table_run.run_dir)
    rows = [{"size": "4.9", "colour": "red"}, {"size": 0.7, "colour": "blue", "extra": 1}, {"size": 1, "colour": "purple"}]
    from_rows = predictor.predict(rows)
    from_columns = predictor.predict({"size": ["4.9", 0.7, 1], "colour": ["red", "blue", "purple"]})
    from_table = predictor.predict(Table.single({"size": np.array([4.9, 0.7, 1.0]), "colour": np.array(["red", "blue", "purple"], dtype=object)}, "t"))
    assert from_rows == from_columns == from_table
    assert [p["label"] for p in from_rows] == ["big", "small", "small"]  # big rows have size ~5, small ~1
    for prediction in from_rows:
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_a_csv_of_the_training_rows_matches_the_split(table_run: Trained):
    predictor = forgeml.load(table_run.run_dir)
    inputs, targets, table = predictor.split("test")
    everything = predictor.predict(table_run.csv)  # the whole file; the label column is ignored
    by_line = {line: p for line, p in zip(range(2, 62), everything)}
    expected = torch.softmax(predictor.outputs(inputs), dim=-1).numpy()
    for line, probabilities in zip(table.line.tolist(), expected):
        assert [by_line[line]["probabilities"][n] for n in ("big", "small")] == pytest.approx(probabilities.tolist(), abs=2e-6)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([{"size": 1.0}], "input rows need the columns size, colour; missing colour"),
        ([], "nothing to predict: give a CSV file, image files, or rows"),
        (["notes.txt"], "give one CSV or JSON Lines file, or image files"),
        ([{"size": "big", "colour": "red"}], "input, line 1: column 'size': cannot read 'big' as a number"),
    ],
)
def test_predict_bad_inputs(table_run: Trained, inputs: Any, message: str):
    with pytest.raises(DataError) as info:
        forgeml.load(table_run.run_dir).predict(inputs)
    assert str(info.value).startswith(message)


def test_image_files_for_a_model_without_an_image_input(table_run: Trained, image_run: Trained):
    picture = image_run.csv.parent / "images" / "img0.png"
    with pytest.raises(DataError, match=r"this model takes the columns size, colour, not images: give a CSV file"):
        forgeml.load(table_run.run_dir).predict([picture])
    with pytest.raises(DataError, match=r"nope\.png: no such image file"):
        forgeml.load(image_run.run_dir).predict([picture.parent / "nope.png"])


# --------------------------------------------------------------------------------------------------
# damaged runs


def test_a_corrupt_model_file_is_detected(image_run: Trained, tmp_path: Path):
    run_dir = copy_run(image_run, tmp_path)
    model = run_dir / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last weight
    model.write_bytes(bytes(data))
    with pytest.raises(RunDirError) as info:
        forgeml.load(run_dir)
    assert str(info.value) == f"{model}: corrupt (its sha256 does not match manifest.json)"
    model.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(RunDirError, match=r"model\.safetensors: corrupt"):
        forgeml.load(run_dir)
    model.unlink()
    with pytest.raises(RunDirError, match=r"model\.safetensors: missing from the run directory"):
        forgeml.load(run_dir)


def test_weights_that_do_not_fit_the_config(image_run: Trained, tmp_path: Path):
    run_dir = copy_run(image_run, tmp_path)
    save_file({"0.weight": torch.zeros(2, 2)}, run_dir / "model.safetensors")
    RunDir(run_dir).write_manifest(["model.safetensors"])  # consistent with the manifest, wrong for the model
    with pytest.raises(RunDirError, match=r"model\.safetensors: does not fit the model in config\.yaml \(the stored tensors do not fit"):
        forgeml.load(run_dir)


def test_a_tensor_of_another_shape_is_named_with_both_shapes(image_run: Trained, tmp_path: Path):
    run_dir = copy_run(image_run, tmp_path)
    tensors = load_file(run_dir / "model.safetensors")
    name = next(n for n in sorted(tensors) if tensors[n].ndim)
    shape = list(tensors[name].shape)
    tensors[name] = torch.zeros(shape[0] + 1, *shape[1:])
    save_file(tensors, run_dir / "model.safetensors")
    RunDir(run_dir).write_manifest(["model.safetensors"])
    with pytest.raises(RunDirError) as info:
        forgeml.load(run_dir)
    assert str(info.value) == (
        f"{run_dir / 'model.safetensors'}: does not fit the model in config.yaml "
        f"(tensor {name!r} is {[shape[0] + 1, *shape[1:]]} in the stored weights, {shape} in the model)"
    )


def test_a_manifest_cut_down_to_hide_a_change_is_refused(image_run: Trained, tmp_path: Path):
    run_dir = copy_run(image_run, tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["files"]["model.safetensors"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirError, match=r"manifest\.json: does not list model\.safetensors, so the run cannot be checked"):
        forgeml.load(run_dir)
    (run_dir / "manifest.json").write_text(json.dumps(list(manifest["files"])))
    with pytest.raises(RunDirError, match=r"manifest\.json: not a forgeml manifest .*found a list\)$"):
        forgeml.load(run_dir)


def test_an_unfinished_run_or_another_directory(image_run: Trained, tmp_path: Path):
    run_dir = copy_run(image_run, tmp_path)
    (run_dir / "manifest.json").unlink()
    with pytest.raises(RunDirError, match=r"no manifest\.json; the run did not finish"):
        forgeml.load(run_dir)
    with pytest.raises(RunDirError, match=r"not a forgeml run directory \(no config\.yaml\)"):
        forgeml.load(tmp_path)


def test_changed_source_data_is_detected(table_run: Trained, tmp_path: Path):
    run_dir = copy_run(table_run, tmp_path)
    original = table_run.csv.read_text()
    try:
        table_run.csv.write_text(original + "1.0,red,images/img0.png,small\n")
        predictor = forgeml.load(run_dir)
        with pytest.raises(RunDirError, match=r"the data no longer splits as it did in training"):
            predictor.split("test")
    finally:
        table_run.csv.write_text(original)


def test_unknown_split_name(table_run: Trained):
    with pytest.raises(DataError, match=r"^split 'dev' is not one of: train, validation, test$"):
        forgeml.load(table_run.run_dir).split("dev")


def test_predict_resizes_images_of_another_size_to_the_training_size(image_run: Trained, tmp_path: Path):
    from PIL import Image

    predictor = forgeml.load(image_run.run_dir)
    small = Image.open(image_run.csv.parent / csv_rows(image_run.csv)[0]["picture"])
    small.resize((8, 8)).save(tmp_path / "same.png")
    # a 32x32 RGB copy: converted to one channel and resized (nearest neighbour x4, then bilinear back)
    small.convert("RGB").resize((32, 32), Image.NEAREST).save(tmp_path / "large.png")
    same, large = predictor.predict([tmp_path / "same.png", tmp_path / "large.png"])
    assert large["label"] == same["label"]
    assert large["probabilities"]["big"] == pytest.approx(same["probabilities"]["big"], abs=0.05)


def test_predict_a_json_lines_file_equals_the_same_rows(table_run: Trained, tmp_path: Path):
    import json

    predictor = forgeml.load(table_run.run_dir)
    rows = [{"size": float(r["size"]), "colour": r["colour"]} for r in csv_rows(table_run.csv)[:4]]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert predictor.predict(tmp_path / "rows.jsonl") == predictor.predict(rows)
