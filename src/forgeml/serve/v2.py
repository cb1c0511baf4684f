"""The Open Inference Protocol v2 (the REST shape of KServe and Triton) beside forgeml's own API.

    GET  /v2                          server metadata
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}            model metadata: inputs and outputs (name, datatype, shape)
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}/infer      {"inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name"}]}

An infer request gives either the model's raw columns, one input tensor per column (BYTES for a text
or a base64 image, numbers for a number column, [N, T] values for a forecaster's series), or the
already encoded model input as one tensor named ``inputs`` (FP32, INT64 token ids), the shape
``/v2/models/{name}`` states under ``parameters.encoded_input``. Outputs are ``label`` (BYTES) and
``probabilities`` for a classifier, ``value`` for a regressor, and ``outputs`` (the raw logits or
normalised values) for both. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from forgeml.serve.model import RequestError, ServedModel

NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
ENCODED = "inputs"


class InferTensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(description="The input's name: a column of the model, or 'inputs' for the encoded model input.")
    shape: list[int] = Field(description="The tensor's shape, e.g. [2] for two texts, [2, 1, 28, 28] for two encoded images.")
    datatype: str = Field(description="BOOL, UINT8 ... INT64, FP16, FP32, FP64 or BYTES.")
    data: list[Any] = Field(description="The values in row-major order (flat or nested).")
    parameters: Optional[dict[str, Any]] = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: Optional[list[RequestedOutput]] = None


def _flat(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:  # iterative, so deeply nested data cannot exhaust the recursion limit
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def tensor_values(tensor: InferTensor, where: str) -> np.ndarray:
    """A request tensor as a numpy array of its shape (object array for BYTES)."""
    if any(d < 0 for d in tensor.shape) or len(tensor.shape) > 8:
        raise RequestError(f"{where}.shape: {tensor.shape} is not a tensor shape")
    flat = _flat(tensor.data)
    size = math.prod(tensor.shape)
    if len(flat) != size:
        raise RequestError(f"{where}.data: {len(flat)} values for shape {tensor.shape} ({size} values)")
    if tensor.datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise RequestError(f"{where}.data: BYTES values must be strings")
        array = np.empty(size, dtype=object)
        array[:] = flat
        return array.reshape(tensor.shape)
    if tensor.datatype not in NUMERIC:
        raise RequestError(f"{where}.datatype: {tensor.datatype!r} is not one of {', '.join([*NUMERIC, 'BYTES'])}")
    if any(isinstance(v, bool) != (tensor.datatype == "BOOL") or not isinstance(v, (int, float)) for v in flat):
        raise RequestError(f"{where}.data: {tensor.datatype} values must be {'booleans' if tensor.datatype == 'BOOL' else 'numbers'}")
    try:
        array = np.asarray(flat, dtype=NUMERIC[tensor.datatype]).reshape(tensor.shape)
    except (OverflowError, ValueError):
        raise RequestError(f"{where}.data: a value does not fit {tensor.datatype}") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise RequestError(f"{where}.data: values must be finite")
    return array


def encode_request(model: ServedModel, request: InferRequest, max_text_chars: int) -> np.ndarray:
    """The encoded model input of an infer request (raw columns or the encoded tensor)."""
    names = [t.name for t in request.inputs]
    if len(set(names)) != len(names):
        raise RequestError("inputs: an input name is given twice")
    if names == [ENCODED] and ENCODED not in [c["name"] for c in model.columns()]:
        return _encoded(model, request.inputs[0])
    columns = [c["name"] for c in model.columns()]
    unknown = [n for n in names if n not in columns]
    if unknown or sorted(names) != sorted(columns):
        what = f"unknown input {unknown[0]!r}" if unknown else f"missing input {sorted(set(columns) - set(names))[0]!r}"
        raise RequestError(f"inputs: {what}; this model takes {', '.join(columns)} (or the encoded tensor {ENCODED!r})")
    values = {t.name: tensor_values(t, f"inputs[{i}]") for i, t in enumerate(request.inputs)}
    counts = {len(v) if v.ndim else 1 for v in values.values()}
    if len(counts) != 1 or any(v.ndim == 0 for v in values.values()):
        raise RequestError("inputs: every input needs the same first dimension (one row per instance)")
    rows = counts.pop()
    if model.input_spec.kind == "sequence":
        instances = [{n: [float(x) for x in np.asarray(v[i]).reshape(-1)] for n, v in values.items()} for i in range(rows)]
    else:
        for i, (name, array) in enumerate(values.items()):
            if array.ndim > 2 or (array.ndim == 2 and array.shape[1] != 1):
                raise RequestError(f"inputs[{i}].shape: give [N] or [N, 1] for column {name!r}")
        instances = [{n: _python(v.reshape(-1)[i]) for n, v in values.items()} for i in range(rows)]
    return model.encode(instances, max_text_chars, where="instances")


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _encoded(model: ServedModel, tensor: InferTensor) -> np.ndarray:
    spec = model.input_spec
    expected = "INT64" if spec.kind == "tokens" else "FP32"
    allowed = ("INT64", "INT32") if spec.kind == "tokens" else ("FP32", "FP64", "FP16")
    if tensor.datatype not in allowed:
        raise RequestError(f"inputs[0].datatype: the encoded input is {expected}, not {tensor.datatype}")
    if len(tensor.shape) != 1 + len(spec.shape) or list(tensor.shape[1:]) != list(spec.shape) or tensor.shape[0] < 1:
        raise RequestError(f"inputs[0].shape: the encoded input is [N, {', '.join(map(str, spec.shape))}]; got {tensor.shape}")
    array = tensor_values(tensor, "inputs[0]")
    if spec.kind == "tokens" and ((array < 0).any() or (array >= spec.vocab_size).any()):
        raise RequestError(f"inputs[0].data: token ids must lie in [0, {spec.vocab_size})")
    return array.astype(np.int64 if spec.kind == "tokens" else np.float32)


def output_tensors(model: ServedModel, outputs: np.ndarray, wanted: Optional[list[str]]) -> list[dict[str, Any]]:
    rows = len(outputs)
    tensors: dict[str, dict[str, Any]] = {}
    if model.task == "classification":
        probabilities = model.probabilities(outputs)
        labels = [model.label_names[int(i)] for i in probabilities.argmax(axis=1)]
        tensors["label"] = {"name": "label", "shape": [rows], "datatype": "BYTES", "data": labels}
        tensors["probabilities"] = {"name": "probabilities", "shape": list(probabilities.shape), "datatype": "FP32", "data": probabilities.reshape(-1).tolist()}
    else:
        values = [float(v) for v in model.features.decode_regression(outputs)]
        tensors["value"] = {"name": "value", "shape": [rows], "datatype": "FP64", "data": values}
    tensors["outputs"] = {"name": "outputs", "shape": list(outputs.shape), "datatype": "FP32", "data": outputs.astype(np.float32).reshape(-1).tolist()}
    if wanted is None:
        return list(tensors.values())
    unknown = [n for n in wanted if n not in tensors]
    if unknown:
        raise HTTPException(400, f"outputs: unknown output {unknown[0]!r}; this model gives {', '.join(tensors)}")
    return [tensors[n] for n in wanted]


def model_metadata(model: ServedModel) -> dict[str, Any]:
    spec = model.input_spec
    kinds = {"text": "BYTES", "image": "BYTES", "category": "BYTES", "number": "FP64", "sequence": "FP64"}
    inputs = [
        {"name": c["name"], "datatype": kinds.get(c["type"], "BYTES"), "shape": [-1, -1] if c["type"] == "sequence" else [-1]}
        for c in model.columns()
    ]
    if model.task == "classification":
        outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]}, {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.label_names)]}]
    else:
        outputs = [{"name": "value", "datatype": "FP64", "shape": [-1]}]
    outputs.append({"name": "outputs", "datatype": "FP32", "shape": [-1, int(model.features.num_outputs)]})
    encoded = {"name": ENCODED, "datatype": "INT64" if spec.kind == "tokens" else "FP32", "shape": [-1, *spec.shape]}
    return {
        "name": model.name, "versions": ["1"], "platform": "onnxruntime" if model.backend == "onnx" else "pytorch",
        "inputs": inputs, "outputs": outputs,
        "parameters": {"encoded_input": encoded, "label_names": model.label_names, "task": model.task},
    }


def add_v2_routes(app: FastAPI, state: Any) -> None:
    from importlib.metadata import version as package_version

    def named(name: str) -> ServedModel:
        model, batcher = state.require_model()
        if batcher is None:
            raise HTTPException(400, f"model {model.name!r} is a language model: the Open Inference Protocol here serves classifiers and regressors; use /v1/completions")
        if name != model.name:
            raise HTTPException(404, f"unknown model {name[:100]!r}; this server has {model.name!r}")
        return model

    @app.get("/v2", summary="OIP server metadata.")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "forgeml", "version": package_version("forgeml"), "extensions": []}

    @app.get("/v2/health/live", summary="OIP liveness.")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="OIP readiness (503 until the model is loaded).")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    @app.get("/v2/models/{name}", summary="OIP model metadata.")
    @app.get("/v2/models/{name}/versions/{version}", include_in_schema=False)
    async def metadata(name: str, version: str = "1") -> dict[str, Any]:
        return model_metadata(named(name))

    @app.get("/v2/models/{name}/ready", summary="OIP model readiness.")
    @app.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(name: str, version: str = "1") -> JSONResponse:
        model = named(name)
        return JSONResponse({"name": model.name, "ready": state.ready}, status_code=200 if state.ready else 503)

    @app.post("/v2/models/{name}/infer", summary="OIP inference.")
    @app.post("/v2/models/{name}/versions/{version}/infer", include_in_schema=False)
    async def infer(name: str, body: InferRequest, version: str = "1") -> dict[str, Any]:
        named(name)
        model, outputs = await state.infer(lambda m: encode_request(m, body, state.settings.max_text_chars))
        wanted = [o.name for o in body.outputs] if body.outputs else None
        answer: dict[str, Any] = {"model_name": model.name, "model_version": "1", "outputs": output_tensors(model, outputs, wanted)}
        if body.id is not None:
            answer["id"] = body.id
        return answer
