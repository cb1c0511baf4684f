"""The edge runtime: an export bundle predicts raw inputs exactly as the run's Predictor does (same
classes, outputs within 1e-4) for an image CNN (arrays and PNG files), a table MLP, a text model, a
regressor and a series forecaster; an exported GPT generates with its key/value cache what the run
generates on torch, past its context; in a virtualenv holding only forgeml-runtime's declared
dependencies all of it works without torch in sys.modules; a bundle altered after export is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import REPO, line_data, tiny_config, write_reviews
from PIL import Image

import forgeml
import forgeml.runtime as runtime
from forgeml.errors import BundleError, DataError
from forgeml.export import run as export

pytestmark = pytest.mark.usefixtures("single_thread_torch")

STEPS = {"epochs": 1, "max_steps": 4, "batch_size": 16}
RUNTIME_PYTHON = REPO / ".venv-runtime" / "bin" / "python"


def exported(run: Path) -> Path:
    export(run, repeats=1, save=False)
    return run / "export"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime")


@pytest.fixture(scope="module")
def gpt_bundle(root: Path) -> Path:
    (root / "corpus.txt").write_text("\n".join(["the cat sat on the mat. the dog lay on the rug."] * 200) + "\n")
    config = {
        "name": "gpt",
        "data": {"source": {"type": "text_files", "path": str(root / "corpus.txt")}, "corpus": {"column": "text", "tokenizer": "char"}, "split": {"validation": 0.1, "test": 0.1}},
        "model": {"type": "gpt", "layers": 2, "heads": 2, "dim": 32, "context": 24, "dropout": 0.0},
        "train": {"optimizer": "adamw", "lr": 0.01, "batch_size": 16, "max_steps": 60, "epochs": 1000, "eval_every": 60, "log_every": 30},
    }
    run = forgeml.train(config, out=root / "gpt", quiet=True).run_dir
    result = export(run, repeats=3, save=False)
    assert result.rows[1]["max_abs_diff"] < 1e-4 and result.rows[1]["metric"] < 1e-4  # whole windows, and the cached decode
    return run / "export"


@pytest.fixture(scope="module")
def bundles(root: Path) -> dict[str, Path]:
    """One bundle per kind of input, each from a run of a few steps."""
    write_reviews(root / "reviews.csv", rows=120)
    reviews = {
        "source": {"type": "csv", "path": str(root / "reviews.csv")},
        "features": [{"type": "text", "name": "text", "tokenizer": "word", "max_length": 16}],
        "target": {"type": "category", "name": "label"},
        "split": {"validation": 0.2, "test": 0.3},
    }
    line = line_data()
    configs = {
        "cnn": tiny_config(),
        "table": tiny_config(data={"source": "breast_cancer", "split": {"validation": 0.15, "test": 0.2}}, model={"type": "mlp", "hidden": [8]}, train=STEPS),
        "text": tiny_config(data=reviews, model={"type": "textcnn", "embedding_dim": 8, "filters": 8, "kernels": [2, 3]}, train=STEPS),
        "line": tiny_config(data=line, model={"type": "linear"}, train=STEPS),
        "series": tiny_config(data={"source": "sunspots"}, model={"type": "rnn", "cell": "gru", "hidden_size": 8, "pooling": "last"}, train=STEPS),
    }
    return {name: exported(forgeml.train(config, out=root / name, quiet=True).run_dir) for name, config in configs.items()}


def raw_inputs(predictor: Any, directory: Path) -> dict[str, Any]:
    """The run's test split as a user would give it: image arrays (and PNG files of the first few),
    a dict of columns, or for a series the raw column with its history (a CSV file)."""
    _, _, table = predictor.split("test")
    kind = predictor.features.input_spec.kind
    if kind == "image":
        images = table.columns[predictor.features.columns[0]][:, 0]  # N x 1 x H x W -> N x H x W
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for i, image in enumerate(images[:4]):
            Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8), mode="L").save(directory / f"{i}.png")
            files.append(str(directory / f"{i}.png"))
        return {"arrays": images, "files": files}
    if kind == "sequence":
        values = predictor._dataset.split("train").columns["activity"][:, -1]  # the series' values, one per row
        csv = directory / "series.csv"
        directory.mkdir(parents=True, exist_ok=True)
        csv.write_text("activity\n" + "\n".join(f"{v:.1f}" for v in values[:60]) + "\n")
        return {"csv": str(csv)}
    return {"columns": {name: [str(v) if kind == "tokens" else float(v) for v in table.columns[name]] for name in predictor.features.columns}}


def assert_same_predictions(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        if "label" in b:
            assert a["label"] == b["label"]
            assert a["probabilities"].keys() == b["probabilities"].keys()
            assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in b["probabilities"]) <= 1e-4
        else:
            assert abs(a["value"] - b["value"]) <= 1e-4 * max(1.0, abs(b["value"]))


def test_each_bundle_predicts_raw_inputs_as_the_predictor_does(bundles: dict[str, Path], root: Path):
    for name, bundle in bundles.items():
        predictor = forgeml.load(bundle.parent)
        edge = runtime.load(bundle)
        assert edge.task == predictor.task and edge.label_names == predictor.label_names
        for kind, inputs in raw_inputs(predictor, root / "inputs" / name).items():
            assert_same_predictions(edge.predict(inputs), predictor.predict(inputs))
        encoded = predictor.split("test")[0]
        assert np.abs(edge.outputs(encoded.numpy()) - predictor.outputs(encoded).numpy()).max() <= 1e-4, name


def test_an_exported_gpt_generates_with_its_cache_what_the_run_generates(gpt_bundle: Path):
    edge, predictor = runtime.load(gpt_bundle), forgeml.load(gpt_bundle.parent)
    assert isinstance(edge, runtime.LanguageRuntime) and edge.context == 24
    described = json.loads((gpt_bundle / "export.json").read_text())
    assert described["cache"] == {"layers": 2, "heads": 2, "head_dim": 16, "context": 24} and described["input"]["names"] == ["ids", "past_keys", "past_values"]
    greedy = edge.generate("the cat", 60, temperature=0)  # 7 + 60 tokens: the cache fills and starts afresh
    assert greedy == predictor.generate("the cat", 60, temperature=0) and len(greedy) == 60
    sampled = [edge.generate("the", 30, temperature=0.8, top_k=5, top_p=0.9, seed=s) for s in (3, 3, 4)]
    assert sampled[0] == sampled[1] != sampled[2] and len(sampled[0]) == 30
    assert "".join(edge.generate_stream("the dog", 20, temperature=0)) == predictor.generate("the dog", 20, temperature=0)
    with pytest.raises(DataError, match="top_p must be above 0"):
        edge.generate("the", 5, top_p=0)


def test_the_runtime_applies_the_calibrated_temperature(bundles: dict[str, Path], tmp_path: Path):
    bundle = shutil.copytree(bundles["cnn"], tmp_path / "bundle")
    description = json.loads((bundle / "export.json").read_text())
    description["temperature"] = 4.0
    (bundle / "export.json").write_text(json.dumps(description))
    encoded = forgeml.load(bundles["cnn"].parent).split("test")[0].numpy()[:8]
    plain, warm = runtime.load(bundles["cnn"]), runtime.load(bundle)
    logits = plain.outputs(encoded)
    assert np.allclose(warm.probabilities(encoded), np.exp(logits / 4) / np.exp(logits / 4).sum(axis=1, keepdims=True), atol=1e-6)
    assert warm.probabilities(encoded).max() < plain.probabilities(encoded).max()


def test_an_altered_or_incomplete_bundle_is_refused(bundles: dict[str, Path], tmp_path: Path):
    bundle = shutil.copytree(bundles["text"], tmp_path / "bundle")
    (bundle / "tokenizer.json").write_text((bundle / "tokenizer.json").read_text().replace('"fresh"', '"frish"', 1) + " ")
    with pytest.raises(BundleError, match=r"tokenizer.json: changed since export"):
        runtime.load(bundle)
    (bundle / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer.json: missing from the bundle"):
        runtime.load(bundle)
    with pytest.raises(BundleError, match="not an export bundle"):
        runtime.load(bundles["text"].parent)
    with pytest.raises(BundleError, match="no such bundle directory"):
        runtime.load(tmp_path / "nothing")
    with pytest.raises(BundleError, match=r"no model.int8.onnx in this bundle \(export it with --quantize int8\)"):
        runtime.load(bundles["text"], int8=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "export.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="expected a JSON object"):
        runtime.load(tmp_path / "bad")


def test_wrong_inputs_get_one_line_errors(bundles: dict[str, Path]):
    cnn, table = runtime.load(bundles["cnn"]), runtime.load(bundles["table"])
    with pytest.raises(DataError, match=r"this model takes 1 channels, 8x8"):
        cnn.predict(np.zeros((2, 8, 8, 4), dtype=np.float32))
    with pytest.raises(DataError, match="N x H x W or N x H x W x C"):
        cnn.predict(np.zeros((8,), dtype=np.float32))
    with pytest.raises(DataError, match="input rows need the columns"):
        table.predict([{"nothing": 1}])
    with pytest.raises(DataError, match="no such image file"):
        cnn.predict(["missing.png"])


# the script the virtualenv without torch runs: each bundle's predictions of the given raw inputs
EDGE_SCRIPT = """
import json, sys
import numpy as np
import forgeml.runtime
jobs = json.loads(open(sys.argv[1]).read())
out = {}
for key, (bundle, inputs) in jobs.items():
    if isinstance(inputs, dict) and "npy" in inputs:
        inputs = np.load(inputs["npy"])
    if isinstance(inputs, dict) and "generate" in inputs:
        out[key] = forgeml.runtime.load(bundle).generate(inputs["generate"], 60, temperature=0)
        continue
    out[key] = forgeml.runtime.load(bundle).predict(inputs)
heavy = sorted(m for m in ("torch", "transformers", "peft", "captum", "opacus") if m in sys.modules)
print(json.dumps({"predictions": out, "heavy_modules": heavy}))
"""


def test_in_a_virtualenv_without_torch_bundles_predict_as_the_predictor(bundles: dict[str, Path], gpt_bundle: Path, root: Path):
    build = subprocess.run(["make", "-s", "runtime"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    check = subprocess.run([str(RUNTIME_PYTHON), "-c", "import torch"], capture_output=True, text=True, timeout=60)
    assert check.returncode != 0 and "No module named 'torch'" in check.stderr  # the environment really has no torch
    jobs, expected = {}, {}
    for name, bundle in bundles.items():
        predictor = forgeml.load(bundle.parent)
        for kind, inputs in raw_inputs(predictor, root / "venv-inputs" / name).items():
            given: Any = inputs
            if isinstance(inputs, np.ndarray):
                np.save(root / f"{name}.npy", inputs)
                given = {"npy": str(root / f"{name}.npy")}
            jobs[f"{name}/{kind}"] = [str(bundle), given]
            expected[f"{name}/{kind}"] = predictor.predict(inputs)
    jobs["gpt/generate"] = [str(gpt_bundle), {"generate": "the cat"}]
    (root / "jobs.json").write_text(json.dumps(jobs))
    result = subprocess.run([str(RUNTIME_PYTHON), "-c", EDGE_SCRIPT, str(root / "jobs.json")], capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["heavy_modules"] == []
    assert sorted(answer["predictions"]) == sorted([*expected, "gpt/generate"]) and len(expected) >= 6
    assert answer["predictions"].pop("gpt/generate") == forgeml.load(gpt_bundle.parent).generate("the cat", 60, temperature=0)
    for key, predictions in expected.items():
        assert_same_predictions(answer["predictions"][key], predictions)
