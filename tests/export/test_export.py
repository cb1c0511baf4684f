"""ONNX export: the bundle's outputs equal torch's on the test split (real onnxruntime) for a table
MLP, an image CNN, token models and a regressor; the int8 model is verified too; a parity failure is
an error that leaves nothing behind; int8 language models and packed recurrent models are refused; the
command line prints the check."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import diverged_copy, line_data, run_cli, tiny_config, write_reviews
from onnx import numpy_helper

import forgeml
import forgeml.export as stage
from forgeml.errors import ExportError
from forgeml.export import run as export

pytestmark = pytest.mark.usefixtures("single_thread_torch")

ROW_KEYS = {"name", "max_abs_diff", "metric_name", "metric", "size_bytes", "p50_b1_ms", "p95_b1_ms", "p50_b32_ms", "p95_b32_ms"}
RESULT_KEYS = {"bundle", "format", "opset", "quantize", "mode", "rows", "threads", "test_rows", "seconds"}
STEPS = {"epochs": 1, "max_steps": 4, "batch_size": 16}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def cnn(root: Path) -> Path:
    return forgeml.train(tiny_config(), out=root / "cnn", quiet=True).run_dir


@pytest.fixture(scope="module")
def table(root: Path) -> Path:
    config = tiny_config(data={"source": "breast_cancer", "split": {"validation": 0.15, "test": 0.2}}, model={"type": "mlp", "hidden": [8]}, train=STEPS)
    return forgeml.train(config, out=root / "table", quiet=True).run_dir


@pytest.fixture(scope="module")
def reviews(root: Path) -> dict:
    write_reviews(root / "reviews.csv", rows=120)
    return {
        "source": {"type": "csv", "path": str(root / "reviews.csv")},
        "features": [{"type": "text", "name": "text", "tokenizer": "word", "max_length": 16}],
        "target": {"type": "category", "name": "label"},
        "split": {"validation": 0.2, "test": 0.3},
    }


@pytest.fixture(scope="module")
def transformer(root: Path, reviews: dict) -> Path:
    config = tiny_config(data=reviews, model={"type": "transformer", "dim": 16, "heads": 2, "layers": 1}, train=STEPS)
    return forgeml.train(config, out=root / "transformer", quiet=True).run_dir


@pytest.fixture(scope="module")
def cli_export(transformer: Path, root: Path):
    """``forgeml export TRANSFORMER --json`` as a real subprocess, started as soon as the run exists
    (the first test asks for it) so that it runs on the second core beside the in-process tests."""
    bundle = root / "cli-bundle"
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(run_cli, "export", str(transformer), "--out", str(bundle), "--json", env={"OMP_NUM_THREADS": "1"}), bundle


def onnx_outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"inputs": inputs})[0]


def torch_outputs(run: Path, inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return forgeml.load(run).model.eval()(inputs).numpy()


def test_a_cnn_bundle_matches_torch_with_its_int8_model_and_describes_itself(cli_export, cnn: Path):
    # a tiny CNN's 180 test digits: one digit is 0.0056, and which ones int8 flips varies by CPU and library build
    result = export(cnn, quantize="int8", repeats=3, tolerance=0.03)
    bundle = cnn / "export"
    assert result.bundle == str(bundle) and result.format == "onnx" and result.opset in (17, 18)
    assert sorted(p.name for p in bundle.iterdir()) == ["export.json", "features.json", "model.int8.onnx", "model.onnx"]
    plain = cnn.parent / "plain"
    plain.mkdir()
    assert bundle.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkdtemp's 0700
    assert not [p for p in cnn.iterdir() if p.name.startswith(".export")]  # no temporary directory left
    inputs = forgeml.load(cnn).split("test")[0]
    np.testing.assert_allclose(onnx_outputs(bundle / "model.onnx", inputs.numpy()), torch_outputs(cnn, inputs), rtol=0, atol=1e-4)

    assert [r["name"] for r in result.rows] == ["torch fp32", "onnxruntime fp32", "onnxruntime int8"]
    assert all(set(r) == ROW_KEYS for r in result.rows)
    torch_row, fp32, int8 = result.rows
    assert fp32["max_abs_diff"] < 1e-4 and fp32["metric"] == torch_row["metric"] and fp32["metric_name"] == "accuracy"
    assert result.mode in ("dynamic", "static") and int8["metric_name"] == "accuracy" and 0 <= int8["metric"] <= 1
    assert fp32["metric"] - int8["metric"] <= 0.03 and int8["size_bytes"] == (bundle / "model.int8.onnx").stat().st_size
    assert all(r[k] > 0 for r in result.rows for k in ("p50_b1_ms", "p95_b1_ms", "p50_b32_ms", "p95_b32_ms", "size_bytes"))
    int8_outputs = onnx_outputs(bundle / "model.int8.onnx", inputs.numpy())
    assert np.abs(int8_outputs - torch_outputs(cnn, inputs)).max() == pytest.approx(int8["max_abs_diff"], rel=1e-5)

    described = json.loads((bundle / "export.json").read_text())
    assert described["input"] == {"name": "inputs", "kind": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8], "dynamic_axes": {"0": "batch"}}
    assert described["output"] == {"name": "outputs", "dtype": "float32", "shape": ["batch", 10], "dynamic_axes": {"0": "batch"}}
    assert described["label_names"] == [str(i) for i in range(10)] and described["run"] == str(cnn.resolve())
    assert described["model_sha256"] == json.loads((cnn / "manifest.json").read_text())["files"]["model.safetensors"]
    assert described["verification"]["rows"] == result.rows and described["task"] == "classification"
    assert (bundle / "features.json").read_bytes() == (cnn / "features.json").read_bytes()
    recorded = json.loads((cnn / "export.json").read_text())["onnx"]
    assert set(recorded) == RESULT_KEYS and recorded["rows"] == result.rows and recorded["bundle"] == str(bundle)
    assert recorded["quantize"] == "int8" and recorded["mode"] == result.mode and recorded["seconds"] > 0


def test_a_table_mlp_matches_torch(table: Path, tmp_path: Path):
    result = export(table, out=tmp_path / "bundle", repeats=2, save=False)
    inputs = forgeml.load(table).split("test")[0]
    np.testing.assert_allclose(onnx_outputs(tmp_path / "bundle" / "model.onnx", inputs.numpy()), torch_outputs(table, inputs), rtol=0, atol=1e-4)
    assert [r["name"] for r in result.rows] == ["torch fp32", "onnxruntime fp32"] and result.mode is None
    assert json.loads((tmp_path / "bundle" / "export.json").read_text())["input"]["shape"] == ["batch", 30]
    assert not (table / "export.json").exists()  # save=False


def test_token_models_export_with_a_dynamic_sequence_axis_and_their_tokenizer(root: Path, reviews: dict):
    model = {"type": "textcnn", "embedding_dim": 8, "filters": 4}
    run = forgeml.train(tiny_config(data=reviews, model=model, train=STEPS), out=root / "textcnn", quiet=True).run_dir
    result = export(run, repeats=2)
    bundle = run / "export"
    assert sorted(p.name for p in bundle.iterdir()) == ["export.json", "features.json", "model.onnx", "tokenizer.json"]
    assert (bundle / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    inputs = forgeml.load(run).split("test")[0]
    np.testing.assert_allclose(onnx_outputs(bundle / "model.onnx", inputs.numpy()), torch_outputs(run, inputs), rtol=0, atol=1e-4)
    assert result.rows[1]["max_abs_diff"] < 1e-4
    shorter = inputs[:3, :9]  # another batch size and sequence length than the export's example
    np.testing.assert_allclose(onnx_outputs(bundle / "model.onnx", shorter.numpy()), torch_outputs(run, shorter), rtol=0, atol=1e-4)
    described = json.loads((bundle / "export.json").read_text())
    assert described["input"] == {"name": "inputs", "kind": "tokens", "dtype": "int64", "shape": ["batch", "sequence"], "dynamic_axes": {"0": "batch", "1": "sequence"}}
    assert described["label_names"] == ["fresh", "rotten"]


def test_a_packed_lstm_is_refused_by_name(root: Path, reviews: dict):
    lstm = forgeml.train(tiny_config(data=reviews, model={"type": "rnn", "cell": "lstm", "embedding_dim": 4, "hidden_size": 4}, train={**STEPS, "max_steps": 1}), out=root / "lstm", quiet=True).run_dir
    with pytest.raises(ExportError, match="model type 'rnn' could not be exported.*packed sequences") as error:
        export(lstm, save=False)
    assert "\n" not in str(error.value)
    assert not (lstm / "export").exists() and not [p for p in lstm.iterdir() if p.name.startswith(".export")]


def test_a_regressor_is_checked_by_its_mse(tmp_path: Path):
    data = line_data()
    run = forgeml.train(tiny_config(data=data, model={"type": "linear"}, train=STEPS), out=tmp_path / "linear", quiet=True).run_dir
    result = export(run, quantize="int8", tolerance=10.0, repeats=1)
    assert [r["metric_name"] for r in result.rows] == ["mse"] * 3 and result.rows[1]["max_abs_diff"] < 1e-4
    assert result.rows[1]["metric"] == pytest.approx(result.rows[0]["metric"], rel=1e-5)
    assert forgeml.load(run).task == "regression"


def corrupted_export(source: Path):
    """An _export that writes a copy of an exported model with one weight changed."""

    def write(model, example, path, tokens, model_type):
        graph = onnx.load(str(source))
        weights = next(t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and numpy_helper.to_array(t).size > 4)
        weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) + 0.5, weights.name))
        onnx.save(graph, str(path))

    return write


def test_a_parity_failure_is_an_error_and_leaves_no_bundle(cnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if not (cnn / "export" / "model.onnx").exists():
        export(cnn, repeats=1)
    good = tmp_path / "good.onnx"
    shutil.copyfile(cnn / "export" / "model.onnx", good)
    recorded = (cnn / "export.json").read_bytes()
    monkeypatch.setattr(stage, "_export", corrupted_export(good))
    with pytest.raises(ExportError, match="ONNX parity failed.*nothing was written"):
        export(cnn, out=tmp_path / "bundle", repeats=1)
    assert not (tmp_path / "bundle").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]
    assert (cnn / "export.json").read_bytes() == recorded  # a failed export records nothing

    monkeypatch.setattr(stage, "_export", lambda model, example, path, *_: shutil.copyfile(good, path))
    with pytest.raises(ExportError, match="int8 quantisation lost more accuracy than the tolerance -1.0.*nothing was written"):
        export(cnn, quantize="int8", tolerance=-1.0, out=tmp_path / "bundle", repeats=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.onnx"]


def test_weights_that_hold_a_nan_fail_parity_and_leave_no_bundle(table: Path, tmp_path: Path):
    # every comparison with nan is false: "max |diff| nan" used to pass as verified
    run = diverged_copy(table, tmp_path / "diverged")
    with pytest.raises(ExportError) as error:
        export(run, repeats=1)
    assert str(error.value) == (
        "ONNX parity failed: torch's outputs hold nan or inf on 113 of 113 test examples: "
        "the weights are unusable (train the model again, e.g. with a lower train.lr); nothing was written"
    )
    assert not (run / "export").exists() and not (run / "export.json").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".export")]


def test_what_cannot_be_exported_is_refused(cnn: Path, tmp_path: Path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog lay on the rug.\n" * 60)
    lm = {
        "data": {"source": {"type": "text_files", "path": str(corpus)}, "corpus": {"column": "text", "tokenizer": "char"}, "split": {"validation": 0.1, "test": 0.1}},
        "model": {"type": "gpt", "layers": 1, "heads": 2, "dim": 8, "context": 8},
        "train": {"batch_size": 4, "max_steps": 1, "epochs": 1},
    }
    lm_run = forgeml.train(tiny_config(**lm), out=tmp_path / "lm", quiet=True).run_dir
    with pytest.raises(ExportError, match="--quantize int8 covers classifiers and regressors so far"):
        export(lm_run, quantize="int8")
    assert not (lm_run / "export").exists()
    with pytest.raises(ExportError, match="--quantize: 'int4'"):
        export(cnn, quantize="int4")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="is not an export bundle"):
        export(cnn, out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_the_command_line_exports_a_transformer_and_prints_the_check_as_json(cli_export: tuple[Future, Path], transformer: Path):
    call, bundle = cli_export
    done = call.result()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == RESULT_KEYS and result["bundle"] == str(bundle) and result["mode"] is None
    assert [r["name"] for r in result["rows"]] == ["torch fp32", "onnxruntime fp32"] and result["rows"][1]["max_abs_diff"] < 1e-4
    assert json.loads((transformer / "export.json").read_text())["onnx"]["rows"] == result["rows"]
    inputs = forgeml.load(transformer).split("test")[0]
    np.testing.assert_allclose(onnx_outputs(bundle / "model.onnx", inputs.numpy()), torch_outputs(transformer, inputs), rtol=0, atol=1e-4)
    np.testing.assert_allclose(onnx_outputs(bundle / "model.onnx", inputs[:5, :11].numpy()), torch_outputs(transformer, inputs[:5, :11]), rtol=0, atol=1e-4)
    assert "torchvision" not in done.stdout + done.stderr
