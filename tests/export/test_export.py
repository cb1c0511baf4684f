"""ONNX export: the bundle's outputs equal torch's on the test split (real onnxruntime), the int8
model is verified too, a parity failure is an error that leaves nothing behind, and the command
line prints the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import run_cli, tiny_config, write_reviews

import forgeml
from forgeml.errors import ExportError
from forgeml.export import run as export

pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return forgeml.train(tiny_config(), out=tmp_path_factory.mktemp("export") / "cnn", quiet=True).run_dir


def onnx_outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"inputs": inputs})[0]


def test_a_cnn_bundle_matches_torch_and_describes_itself(cnn: Path):
    result = export(cnn, quantize="int8", repeats=3)
    bundle = cnn / "export"
    assert result.bundle == str(bundle)
    assert sorted(p.name for p in bundle.iterdir()) == ["export.json", "features.json", "model.int8.onnx", "model.onnx"]
    predictor = forgeml.load(cnn)
    inputs = predictor.split("test")[0]
    np.testing.assert_allclose(onnx_outputs(bundle / "model.onnx", inputs.numpy()), predictor.outputs(inputs).numpy(), atol=1e-4)
    names = [r["name"] for r in result.rows]
    assert names[:2] == ["torch fp32", "onnxruntime fp32"] and names[2].startswith("onnxruntime int8 ") and result.mode in ("dynamic", "static")
    torch_row, fp32, int8 = result.rows
    assert fp32["max_abs_diff"] < 1e-4 and fp32["metric"] == torch_row["metric"]
    assert torch_row["metric"] - int8["metric"] <= 0.01
    assert all(r[k] > 0 for r in result.rows for k in ("p50_b1_ms", "p95_b1_ms", "p50_b32_ms", "p95_b32_ms", "size_bytes"))
    described = json.loads((bundle / "export.json").read_text())
    assert described["input"] == {"name": "inputs", "kind": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}
    assert described["label_names"] == [str(i) for i in range(10)]
    assert described["model_sha256"] == json.loads((cnn / "manifest.json").read_text())["files"]["model.safetensors"]
    recorded = json.loads((cnn / "export.json").read_text())["onnx"]
    assert recorded["rows"] == result.rows and recorded["bundle"] == str(bundle)


def test_a_parity_failure_is_an_error_and_leaves_no_bundle(cnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import forgeml.export as stage

    monkeypatch.setattr(stage, "PARITY", 0.0)  # no model matches exactly: the check must fire
    with pytest.raises(ExportError, match="ONNX parity failed.*nothing was written"):
        export(cnn, out=tmp_path / "bundle", repeats=1, save=False)
    assert not (tmp_path / "bundle").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]


def test_token_models_export_with_a_dynamic_sequence_axis(tmp_path: Path):
    write_reviews(tmp_path / "reviews.csv", rows=120)
    data = {
        "source": {"type": "csv", "path": str(tmp_path / "reviews.csv")},
        "features": [{"type": "text", "name": "text", "tokenizer": "word", "max_length": 16}],
        "target": {"type": "category", "name": "label"},
        "split": {"validation": 0.2, "test": 0.3},
    }
    train = {"epochs": 1, "max_steps": 3, "batch_size": 16}
    transformer = forgeml.train(tiny_config(data=data, model={"type": "transformer", "dim": 16, "heads": 2, "layers": 1}, train=train), out=tmp_path / "transformer", quiet=True).run_dir
    result = export(transformer, repeats=2)
    assert result.rows[1]["max_abs_diff"] < 1e-4
    predictor = forgeml.load(transformer)
    inputs = predictor.split("test")[0].numpy()
    shorter = inputs[:3, :9]  # another batch size and sequence length than the export's example
    np.testing.assert_allclose(onnx_outputs(transformer / "export" / "model.onnx", shorter), predictor.model(__import__("torch").from_numpy(shorter)).detach().numpy(), atol=1e-4)
    assert json.loads((transformer / "export" / "export.json").read_text())["input"]["shape"] == ["batch", "sequence"]
    lstm = forgeml.train(tiny_config(data=data, model={"type": "rnn", "cell": "lstm", "embedding_dim": 8, "hidden_size": 8}, train=train), out=tmp_path / "lstm", quiet=True).run_dir
    with pytest.raises(ExportError, match="model type 'rnn' could not be exported.*packed sequences"):
        export(lstm, save=False)
    assert not (lstm / "export").exists()


def test_the_command_line_prints_the_check(cnn: Path, tmp_path: Path):
    done = run_cli("export", str(cnn), "--out", str(tmp_path / "bundle"), env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "onnxruntime fp32" in done.stdout and "torch fp32" in done.stdout and f"written: {tmp_path / 'bundle'}" in done.stdout
    assert "torchvision" not in done.stdout + done.stderr
    wrong = run_cli("export", str(cnn), "--quantize", "int4")
    assert wrong.returncode == 2 and "int4" in wrong.stderr
