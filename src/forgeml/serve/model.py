"""The model a server holds: a run's Predictor (torch) or an export bundle's Runtime (ONNX Runtime),
behind one small interface, and the translation of JSON instances into the rows they hold.

Requests never reach preprocessing of their own: instances become a ``Table`` and go through the
model's fitted ``Features`` (``parse`` then ``encode_inputs``), exactly as ``forgeml predict`` does,
so the server answers what the command line answers.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from forgeml.data import raw
from forgeml.data.table import Table
from forgeml.errors import BundleError, DataError, ForgeError

BUNDLE_DESCRIPTION = "export.json"


class RequestError(ForgeError):
    """A request the model cannot answer: the message names the field (``instances[2].image``)."""


@dataclass
class ServedModel:
    """A loaded model: how to encode instances, run a batch and decode its outputs.

    Attributes:
        name: the model's name (/v2/models/{name}).
        backend: "torch" or "onnx".
        features: the fitted preprocessing.
        run_outputs: encoded inputs (numpy) -> raw outputs (numpy), one model call.
        temperature: the calibrated temperature of a classifier's probabilities.
        identity: what the model is: run path, bundle, weights sha256.
    """

    name: str
    backend: str
    features: Any
    run_outputs: Callable[[np.ndarray], np.ndarray]
    temperature: float
    identity: dict[str, Any]

    @property
    def task(self) -> str:
        return self.features.task

    @property
    def label_names(self) -> list[str]:
        return self.features.label_names

    @property
    def input_spec(self) -> Any:
        return self.features.input_spec

    def columns(self) -> list[dict[str, str]]:
        """The input columns an instance holds, with their kinds (number, category, text, image, sequence)."""
        return [{"name": f.cfg.name, "type": f.cfg.type} for f in self.features.inputs]

    def decode(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        return raw.decode(self.features, outputs, self.temperature)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        return raw.softmax(outputs, self.temperature)

    # -- instances (JSON) -> encoded model inputs

    def encode(self, instances: list[Any], max_text_chars: int, where: str = "instances") -> np.ndarray:
        """Encode the instances of a request; a bad one raises RequestError naming it."""
        if not isinstance(instances, list) or not instances:
            raise RequestError(f"{where}: give a non-empty list of instances")
        if self.input_spec.kind == "sequence":
            return np.concatenate([self._encode_series(item, f"{where}[{i}]") for i, item in enumerate(instances)])
        columns = {c["name"]: [] for c in self.columns()}
        for i, item in enumerate(instances):
            for name, value in self._fields(item, f"{where}[{i}]", max_text_chars).items():
                columns[name].append(value)
        table = Table(
            {name: _column(values) for name, values in columns.items()},
            [f"{where}[{i}]" for i in range(len(instances))],
            np.arange(len(instances)),
            np.zeros(len(instances), dtype=np.int64),  # line 0: errors name the instance alone
            None,
        )
        return self._parse_and_encode(table)

    def _parse_and_encode(self, table: Table) -> np.ndarray:
        try:
            parsed = self.features.parse(table, on_bad_row="error", with_target=False, hint="")
            return self.features.encode_inputs(parsed)
        except DataError as exc:
            raise RequestError(str(exc)) from None

    def _fields(self, item: Any, where: str, max_text_chars: int) -> dict[str, Any]:
        """One instance as {column: value}: a JSON object with every input column, or for a model of
        one input column the bare value."""
        names = [c["name"] for c in self.columns()]
        if not isinstance(item, dict):
            if len(names) != 1:
                raise RequestError(f"{where}: give an object with the fields {', '.join(names)}")
            item = {names[0]: item}
        missing = [n for n in names if n not in item]
        if missing:
            raise RequestError(f"{where}: missing field {missing[0]!r} (an instance holds {', '.join(names)})")
        unknown = [k for k in item if k not in names]
        if unknown:
            raise RequestError(f"{where}: unknown field {str(unknown[0])[:80]!r} (an instance holds {', '.join(names)})")
        return {f.cfg.name: self._value(f, item[f.cfg.name], f"{where}.{f.cfg.name}", max_text_chars) for f in self.features.inputs}

    @staticmethod
    def _value(feature: Any, value: Any, where: str, max_text_chars: int) -> Any:
        kind = feature.cfg.type
        if kind == "image":
            if not isinstance(value, str):
                raise RequestError(f"{where}: give the image file's bytes as a base64 string")
            return decode_base64(value, where)
        if kind == "text":
            if not isinstance(value, str):
                raise RequestError(f"{where}: give a string")
            if len(value) > max_text_chars:
                raise RequestError(f"{where}: the text has {len(value):,} characters; this server takes at most {max_text_chars:,}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) and value is not None:
            raise RequestError(f"{where}: give a {'number' if kind == 'number' else 'string or number'}")
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(f"{where}: not a finite number")
        return value

    def _encode_series(self, item: Any, where: str) -> np.ndarray:
        """A forecaster's instance: {column: [values, oldest first]}; the answer is the forecast after the last."""
        names = [c["name"] for c in self.columns()]
        length = int(self.input_spec.shape[0])
        if not isinstance(item, dict) or sorted(item) != sorted(names):
            raise RequestError(f"{where}: give an object {{{', '.join(f'{n!r}: [values]' for n in names)}}} with the last {length} or more values of each")
        for name in names:
            values = item[name]
            if not isinstance(values, list) or len(values) < length:
                raise RequestError(f"{where}.{name}: give a list of at least {length} values, oldest first")
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
                raise RequestError(f"{where}.{name}: give finite numbers")
        rows = len(item[names[0]])
        if any(len(item[n]) != rows for n in names):
            raise RequestError(f"{where}: every field needs the same number of values")
        table = Table({n: np.asarray(item[n], dtype=object) for n in names}, [where], np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64), None)
        return self._parse_and_encode(table)[-1:]


def _column(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values  # element by element: bytes and strings stay whole objects
    return column


def decode_base64(text: str, where: str) -> bytes:
    """The bytes of a base64 string (a ``data:...;base64,`` URL prefix is allowed)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: not valid base64") from None
    if not data:
        raise RequestError(f"{where}: the image is empty")
    return data


# --------------------------------------------------------------------------------------------------
# loading


def is_bundle(path: Path) -> bool:
    return (path / BUNDLE_DESCRIPTION).is_file() and not (path / "config.yaml").is_file()


def load_model(target: str | Path, backend: Optional[str] = None, name: Optional[str] = None, threads: Optional[int] = None) -> ServedModel:
    """Load what ``forgeml serve TARGET`` serves: a run (torch by default, or its export bundle with
    ``backend="onnx"``) or an export bundle (onnx only).

    Raises:
        ForgeError: not a run or a bundle, no bundle for the onnx backend, a language model.
    """
    path = Path(target)
    if not path.is_dir():
        raise DataError(f"{path}: no such run directory or export bundle")
    if is_bundle(path):
        if backend == "torch":
            raise BundleError(f"{path} is an export bundle: it runs with --backend onnx (serve the run directory for torch)")
        return _onnx(path, name or _bundle_name(path), threads, {"bundle": str(path.resolve())})
    if backend == "onnx":
        bundle = path / "export"
        if not (bundle / BUNDLE_DESCRIPTION).is_file():
            raise BundleError(f"{path} has no export bundle: run forgeml export {path} first, or serve it with --backend torch")
        return _onnx(bundle, name or path.resolve().name, threads, {"run": str(path.resolve()), "bundle": str(bundle.resolve())})
    return _torch(path, name or path.resolve().name, threads)


def _bundle_name(bundle: Path) -> str:
    resolved = bundle.resolve()
    return resolved.parent.name if resolved.name == "export" else resolved.name


def _onnx(bundle: Path, name: str, threads: Optional[int], identity: dict[str, Any]) -> ServedModel:
    from forgeml.runtime import load

    runtime = load(bundle, threads=threads)
    identity = {**identity, "model_sha256": runtime.description.get("model_sha256"), "model_file": runtime.model_file}
    if runtime.task == "language_modelling":  # generation: one cached ONNX step per token
        from forgeml.serve.openai import ServedLanguageModel

        return ServedLanguageModel(name, runtime, identity, backend="onnx")  # type: ignore[return-value]
    return ServedModel(name, "onnx", runtime.features, runtime.outputs, runtime.temperature, identity)


def _torch(run: Path, name: str, threads: Optional[int]) -> ServedModel:
    import torch

    from forgeml.predictor import load, model_sha256

    if threads is not None:
        torch.set_num_threads(threads)
    predictor = load(run)
    if predictor.task not in ("classification", "regression"):
        from forgeml.serve.openai import ServedLanguageModel

        return ServedLanguageModel(name, predictor, {"run": str(run.resolve()), "model_sha256": model_sha256(predictor.run)})  # type: ignore[return-value]

    def run_outputs(encoded: np.ndarray) -> np.ndarray:
        return predictor.outputs(torch.from_numpy(encoded)).numpy()

    identity = {"run": str(run.resolve()), "model_sha256": model_sha256(predictor.run)}
    return ServedModel(name, "torch", predictor.features, run_outputs, predictor.temperature, identity)


def describe(model: ServedModel) -> dict[str, Any]:
    """What /v1/metadata answers: the input schema, the labels and which model this is."""
    spec = model.input_spec
    return {
        "name": model.name,
        "task": model.task,
        "backend": model.backend,
        "inputs": model.columns(),
        "input": {"kind": spec.kind, "shape": list(spec.shape)},
        "label_names": model.label_names,
        "temperature": model.temperature,
        "model": model.identity,
    }
