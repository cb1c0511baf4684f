"""Export a run's model to ONNX, with a parity check, saved in the run as ``export.json``.

``forgeml export RUN`` writes a bundle directory (``RUN/export`` by default):

    model.onnx        the network, a dynamic batch axis (and sequence axis for token ids)
    model.int8.onnx   with --quantize int8: the int8 model (dynamic or static QDQ, whichever is faster)
    features.json     the fitted preprocessing, and the tokenizer files it names
    export.json       what the bundle holds: inputs, outputs, labels, the run's hashes, the check

Then it verifies itself on the run's whole test split: for torch (eager, fp32), ONNX Runtime fp32
and the int8 model, the largest absolute difference of the outputs from torch's, the task metric,
the file size and the latency (p50, p95) at batch 1 and 32. Parity is an error, not a warning: an
fp32 model whose outputs differ from torch's by more than 1e-4 of the largest output, or an int8
model that loses more than the tolerance (accuracy for a classifier; for a regressor, MSE rising by
more than that fraction), leaves no bundle behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from forgeml import locks
from forgeml.errors import ExportError
from forgeml.files import replace_dir, staging_dir
from forgeml.metrics import score
from forgeml.predictor import LANGUAGE_MODELLING, Predictor, load, model_sha256
from forgeml.run import sha256_file

RESULT = "export.json"
BUNDLE = "export"
OPSET = 18
PARITY = 1e-4
TORCH = "torch's"  # the reference every runtime is compared against, as check_finite names it
CALIBRATION_ROWS = 256
RECURRENT = ("rnn", "attention")  # on token ids they pack sequences, which torch.export cannot trace so far


@dataclass
class ExportResult:
    """An exported bundle and its verification.

    Attributes:
        bundle: the bundle directory.
        rows: one per runtime (torch fp32, onnxruntime fp32, onnxruntime int8): name, max_abs_diff
            (against torch), metric_name (accuracy, or mse for regressors) and metric on the test split, size_bytes, and latency
            p50_b1_ms, p95_b1_ms, p50_b32_ms, p95_b32_ms.
        mode: the int8 quantisation kept (dynamic or static), or None.
    """

    bundle: str
    format: str
    opset: int
    quantize: str
    mode: Optional[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    threads: int = 1
    test_rows: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@locks.writes_run
def run(
    target: str | Path | Predictor,
    quantize: str = "none",
    out: Optional[str | Path] = None,
    tolerance: float = 0.01,
    threads: int = 1,
    repeats: int = 20,
    save: bool = True,
) -> ExportResult:
    """Export a run to ONNX and verify the bundle on the test split.

    Args:
        target: a run directory or a Predictor.
        quantize: none, or int8 (also build and verify an int8 model).
        out: the bundle directory (default RUN/export); replaced when it exists.
        tolerance: what an int8 model may lose: accuracy (0.01 is one point), or for a regressor the
            fraction its test MSE may rise by (0.01: 1%).
        threads: CPU threads of torch and ONNX Runtime while timing.
        repeats: timed calls per batch size.
        save: record the result in the run's export.json.

    Raises:
        ExportError: the model cannot be exported, or the bundle fails its parity check.
    """
    if quantize not in ("none", "int8"):
        raise ExportError(f"--quantize: {quantize!r} is not one of: none, int8")
    started = time.perf_counter()
    predictor = target if isinstance(target, Predictor) else load(target)
    bundle = Path(out) if out is not None else predictor.run / BUNDLE
    if bundle.exists() and not (bundle.is_dir() and (not any(bundle.iterdir()) or (bundle / RESULT).is_file())):
        raise ExportError(f"--out {bundle} exists and is not an export bundle (no export.json in it): not replacing it")
    if predictor.task == LANGUAGE_MODELLING:
        result = _language_model(predictor, bundle, quantize, threads, repeats)
        result.seconds = round(time.perf_counter() - started, 3)
        if save:
            predictor.run.record(RESULT, "onnx", result.to_dict())
        return result
    inputs, targets, _ = predictor.split("test")
    if len(inputs) == 0:
        raise ExportError(f"{predictor.run.path} has no test split to verify the exported model on")
    model = predictor.model.cpu().eval()
    tokens = predictor.features.input_spec.kind == "tokens"

    bundle.parent.mkdir(parents=True, exist_ok=True)
    work = staging_dir(bundle.parent, bundle.name)
    try:
        reference = _torch_outputs(model, inputs)
        check_finite(TORCH, reference)  # before the export: nothing can match weights that diverged
        _export(model, inputs[: min(4, len(inputs))], work / "model.onnx", tokens, predictor.config.model.type)
        result = ExportResult(str(bundle), "onnx", OPSET, quantize, None, threads=threads, test_rows=int(len(inputs)))
        torch_row = _row("torch fp32", reference, reference, targets, predictor, None, _torch_latency(model, inputs, threads, repeats))
        fp32 = _outputs(work / "model.onnx", inputs, threads)
        check_finite("ONNX Runtime's", fp32)
        fp32_row = _row("onnxruntime fp32", fp32, reference, targets, predictor, work / "model.onnx", _ort_latency(work / "model.onnx", inputs, threads, repeats))
        result.rows = [torch_row, fp32_row]
        largest = max(1.0, float(np.abs(reference).max()))
        if not fp32_row["max_abs_diff"] <= PARITY * largest:
            raise ExportError(
                f"ONNX parity failed: the fp32 model's outputs differ from torch's by {fp32_row['max_abs_diff']:.3g} "
                f"(allowed {PARITY * largest:.3g}, 1e-4 of the largest output); nothing was written"
            )
        if quantize == "int8":
            result.mode, int8_row = _int8(predictor, model, inputs, targets, reference, work, torch_row, fp32_row, tolerance, threads, repeats)
            result.rows.append(int8_row)
        _write_bundle(predictor, work, result, _interface(predictor, tokens))
        replace_dir(work, bundle)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    result.seconds = round(time.perf_counter() - started, 3)
    if save:
        predictor.run.record(RESULT, "onnx", result.to_dict())
    return result


# --------------------------------------------------------------------------------------------------
# exporting


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, tokens: bool, model_type: str) -> None:
    """torch.onnx's dynamo exporter, with a dynamic batch axis (and a sequence axis for token ids);
    its progress lines are kept off the user's screen."""
    batch = torch.export.Dim("batch", min=1)
    axes = {0: batch, 1: torch.export.Dim("sequence", min=1)} if tokens else {0: batch}
    if tokens and example.shape[1] < 2:
        example = torch.nn.functional.pad(example, (0, 2 - example.shape[1]))
    if len(example) < 2:  # a batch of one would be specialised away
        example = example.repeat(2, *[1] * (example.dim() - 1))
    captured = io.StringIO()
    import logging

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision is not installed"
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notices
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=["inputs"], output_names=["outputs"],
                dynamic_shapes=(axes,), opset_version=OPSET, verbose=False,
            )
            program.save(str(path), external_data=False)
    except Exception as exc:  # the exporter's own failure: name the model and the first line of why
        cause = exc.__cause__ or exc  # torch.onnx wraps torch.export's error in a page of advice
        first = next((line for line in str(cause).splitlines() if line.strip()), "")
        hint = "; on token ids recurrent models (rnn, attention) run packed sequences, which torch.export cannot trace yet" if tokens and model_type in RECURRENT else ""
        raise ExportError(f"model type {model_type!r} could not be exported to ONNX: {type(cause).__name__}: {_plain(first)[:300]}{hint}") from None


def _plain(text: str) -> str:
    """Text without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _language_model(predictor: Predictor, bundle: Path, quantize: str, threads: int, repeats: int) -> ExportResult:
    """A GPT's bundle: the graph with its key/value cache (``export.language``), verified, then written."""
    from forgeml.export.language import INPUTS, OUTPUTS, WINDOWS, cache_shape, export_language_model

    if quantize != "none":
        raise ExportError("--quantize int8 covers classifiers and regressors so far; export a language model with --quantize none")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    work = staging_dir(bundle.parent, bundle.name)
    try:
        rows = export_language_model(predictor, work, threads, repeats)
        result = ExportResult(str(bundle), "onnx", OPSET, quantize, None, rows, threads, test_rows=WINDOWS)
        interface = {
            "input": {"names": INPUTS, "ids": {"dtype": "int64", "shape": [1, "sequence"]}, "past": {"dtype": "float32", "shape": ["layers", 1, "heads", "past", "head_dim"]}},
            "output": {"names": OUTPUTS, "logits": {"dtype": "float32", "shape": [1, "sequence", predictor.features.vocab_size]}},
            "cache": cache_shape(predictor.model),
        }
        _write_bundle(predictor, work, result, interface)
        replace_dir(work, bundle)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return result


def _interface(predictor: Predictor, tokens: bool) -> dict[str, Any]:
    """What a classifier's or regressor's graph takes and gives (export.json's input and output)."""
    spec = predictor.features.input_spec
    axes = {"0": "batch", "1": "sequence"} if tokens else {"0": "batch"}
    return {
        "input": {
            "name": "inputs",
            "kind": spec.kind,
            "dtype": "int64" if tokens else "float32",
            "shape": ["batch", "sequence"] if tokens else ["batch", *spec.shape],
            "dynamic_axes": axes,
        },
        "output": {"name": "outputs", "dtype": "float32", "shape": ["batch", int(predictor.features.num_outputs)], "dynamic_axes": {"0": "batch"}},
    }


def _write_bundle(predictor: Predictor, work: Path, result: ExportResult, interface: dict[str, Any]) -> None:
    run = predictor.run
    shutil.copyfile(run / "features.json", work / "features.json")
    state = run.read_json("features.json")
    extra = sorted({v for v in _strings(state) if v.endswith(".json") and v != "features.json" and (run / v).is_file()})
    for name in extra:  # tokenizer files features.json names
        shutil.copyfile(run / name, work / name)
    description = {
        "format": "onnx",
        "opset": OPSET,
        "run": str(run.path.resolve()),
        "model_type": predictor.config.model.type,
        "model_sha256": model_sha256(run),
        "manifest_sha256": sha256_file(run / "manifest.json"),
        "task": predictor.task,
        **interface,
        "label_names": predictor.label_names,
        "temperature": predictor.temperature,
        "files": sorted(p.name for p in work.iterdir()) + ["export.json"],
        # what the runtime checks on load: a bundle copied to a device arrives whole or is refused
        "sha256": {p.name: sha256_file(p) for p in sorted(work.iterdir()) if p.is_file() and not p.name.startswith(".")},
        "verification": result.to_dict(),
    }
    (work / "export.json").write_text(json.dumps(description, indent=2) + "\n")


def _strings(data: Any) -> list[str]:
    if isinstance(data, dict):
        return [s for v in data.values() for s in _strings(v)]
    if isinstance(data, list):
        return [s for v in data for s in _strings(v)]
    return [data] if isinstance(data, str) else []


# --------------------------------------------------------------------------------------------------
# verifying


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _outputs(path: Path, inputs: torch.Tensor, threads: int, batch: int = 256) -> np.ndarray:
    session = _session(path, threads)
    array = inputs.numpy()
    return np.concatenate([session.run(None, {"inputs": array[i : i + batch]})[0] for i in range(0, len(array), batch)])


def _torch_outputs(model: torch.nn.Module, inputs: torch.Tensor, batch: int = 256) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]).numpy()


def check_finite(runtime: str, outputs: np.ndarray, what: str = "test examples") -> None:
    """Parity means nothing over nan or inf (every comparison with nan is false): such outputs fail it.

    Raises:
        ExportError: an output is nan or inf.
    """
    finite = np.isfinite(outputs)
    if not finite.all():
        rows = int((~finite.reshape(len(finite), -1).all(axis=1)).sum())
        why = "the weights are unusable (train the model again, e.g. with a lower train.lr)" if runtime == TORCH else "torch's are finite"
        raise ExportError(f"ONNX parity failed: {runtime} outputs hold nan or inf on {rows} of {len(finite)} {what}: {why}; nothing was written")


def _row(name: str, outputs: np.ndarray, reference: np.ndarray, targets: torch.Tensor, predictor: Predictor, path: Optional[Path], latency: dict[str, float]) -> dict[str, Any]:
    decode = predictor.features.decode_regression if predictor.task == "regression" else None
    scores = score(predictor.task, outputs, targets.numpy(), len(predictor.label_names), decode)
    metric = "accuracy" if predictor.task == "classification" else "mse"
    size = path.stat().st_size if path is not None else (predictor.run / "model.safetensors").stat().st_size
    return {"name": name, "max_abs_diff": float(np.abs(outputs - reference).max()), "metric_name": metric, "metric": float(scores[metric]), "size_bytes": int(size), **latency}


def _loss(reference: dict[str, Any], row: dict[str, Any]) -> float:
    """What a row lost against the fp32 row: accuracy points, or the fraction by which MSE rose."""
    if reference["metric_name"] == "mse":
        return (row["metric"] - reference["metric"]) / max(reference["metric"], 1e-12)
    return reference["metric"] - row["metric"]


def _percentiles(times: list[float]) -> tuple[float, float]:
    values = np.array(times) * 1000
    return round(float(np.percentile(values, 50)), 4), round(float(np.percentile(values, 95)), 4)


def _timed(call: Any, repeats: int) -> list[float]:
    call()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def _batches(inputs: torch.Tensor) -> dict[int, torch.Tensor]:
    return {1: inputs[:1], 32: inputs[:32] if len(inputs) >= 32 else inputs.repeat((32 + len(inputs) - 1) // len(inputs), *[1] * (inputs.dim() - 1))[:32]}


def _torch_latency(model: torch.nn.Module, inputs: torch.Tensor, threads: int, repeats: int) -> dict[str, float]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {}
        for size, batch in _batches(inputs).items():
            with torch.no_grad():
                p50, p95 = _percentiles(_timed(lambda: model(batch), repeats))
            out |= {f"p50_b{size}_ms": p50, f"p95_b{size}_ms": p95}
        return out
    finally:
        torch.set_num_threads(previous)


def _ort_latency(path: Path, inputs: torch.Tensor, threads: int, repeats: int) -> dict[str, float]:
    session = _session(path, threads)
    out = {}
    for size, batch in _batches(inputs).items():
        array = batch.numpy()
        p50, p95 = _percentiles(_timed(lambda: session.run(None, {"inputs": array}), repeats))
        out |= {f"p50_b{size}_ms": p50, f"p95_b{size}_ms": p95}
    return out


def _int8(
    predictor: Predictor, model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, reference: np.ndarray,
    work: Path, torch_row: dict, fp32_row: dict, tolerance: float, threads: int, repeats: int,
) -> tuple[str, dict[str, Any]]:
    """Build the int8 candidates (dynamic; static QDQ calibrated on training examples for models
    with convolutions), verify each, and keep the fastest at batch 1 within the tolerance."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / ".prepared.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            quant_pre_process(str(work / "model.onnx"), str(prepared), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing only helps; quantise the plain model instead
            shutil.copyfile(work / "model.onnx", prepared)
    candidates: dict[str, Path] = {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # e.g. constant tensors with a zero range
        warnings.simplefilter("ignore")
        try:
            quantize_dynamic(str(prepared), str(work / ".dynamic.onnx"), weight_type=QuantType.QInt8)
            candidates["dynamic"] = work / ".dynamic.onnx"
        except Exception:  # noqa: BLE001 - an operator set dynamic quantisation cannot handle
            pass
        if any(isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) for m in model.modules()):
            train = predictor.split("train")[0][:CALIBRATION_ROWS].numpy()
            try:
                quantize_static(str(prepared), str(work / ".static.onnx"), _Reader(train), quant_format=QuantFormat.QDQ, per_channel=True)
                candidates["static"] = work / ".static.onnx"
            except Exception:  # noqa: BLE001
                pass
    rows = {}
    for mode, path in candidates.items():
        outputs = _outputs(path, inputs, threads)
        rows[mode] = _row("onnxruntime int8", outputs, reference, targets, predictor, path, _ort_latency(path, inputs, threads, repeats))
    passing = {m: r for m, r in rows.items() if _loss(fp32_row, r) <= tolerance}
    if not passing:
        lost = ", ".join(f"{m} {_loss(fp32_row, r):.4f}" for m, r in rows.items()) or "no int8 model could be built"
        what = "raised the test MSE by more than the fraction" if fp32_row["metric_name"] == "mse" else f"lost more {fp32_row['metric_name']} than"
        raise ExportError(f"int8 quantisation {what} the tolerance {tolerance} ({lost}); nothing was written")
    chosen = min(passing, key=lambda m: passing[m]["p50_b1_ms"])
    os.replace(candidates[chosen], work / "model.int8.onnx")
    for path in [prepared, *candidates.values()]:
        if path.exists():
            path.unlink()
    row = dict(passing[chosen])
    row["size_bytes"] = (work / "model.int8.onnx").stat().st_size
    return chosen, row


class _Reader:
    """Calibration batches for static quantisation: training examples, 32 at a time."""

    def __init__(self, examples: np.ndarray):
        self.batches = iter([examples[i : i + 32] for i in range(0, len(examples), 32)])

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        batch = next(self.batches, None)
        return None if batch is None else {"inputs": batch}
