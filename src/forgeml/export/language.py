"""Export a GPT run to ONNX with its key/value cache, so that the edge runtime generates one token
per model call instead of re-reading the whole text each step.

The graph takes ``ids`` (1 x T, int64) and the cache of the positions read so far, ``past_keys`` and
``past_values`` (layers x 1 x heads x P x head_dim, float32; P = 0 for a prompt), and returns the
next-token ``logits`` (1 x T x vocabulary) with ``present_keys`` / ``present_values`` for all P + T
positions, the cache of the next call. P + T never exceeds the model's context; the runtime starts
the cache afresh over the last ``context`` tokens when it is full, as ``forgeml generate`` does.

It is verified before anything is written: the whole-window logits of the test split's held-out
windows against torch's, and a cached decode (half a window as the prompt, then one token at a time)
against the whole-window logits at every position.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from forgeml.errors import ExportError
from forgeml.export import TORCH, check_finite
from forgeml.models.gpt import GPT, ConcatCache

WINDOWS = 16  # held-out windows the parity check reads
INPUTS = ["ids", "past_keys", "past_values"]
OUTPUTS = ["logits", "present_keys", "present_values"]


class CachedStep(nn.Module):
    """One generation step of a GPT with its cache as tensors in and out (the exported graph)."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt
        self.layers = len(gpt.blocks)

    def forward(self, ids: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = ConcatCache(past_keys, past_values)
        logits = self.gpt(ids, cache)
        keys = torch.stack([cache.present[i][0] for i in range(self.layers)])
        values = torch.stack([cache.present[i][1] for i in range(self.layers)])
        return logits, keys, values


def cache_shape(gpt: GPT) -> dict[str, int]:
    attention = gpt.blocks[0].attention
    dim = gpt.token_embedding.embedding_dim
    return {"layers": len(gpt.blocks), "heads": int(attention.heads), "head_dim": dim // int(attention.heads), "context": int(gpt.context)}


def export_language_model(predictor: Any, work: Path, threads: int, repeats: int) -> list[dict[str, Any]]:
    """Write ``work/model.onnx`` for a GPT run and verify it; returns the verification rows.

    Raises:
        ExportError: not a forgeml GPT (a pretrained causal LM is served with torch so far), or parity failed.
    """
    model = predictor.model.cpu().eval()
    if not isinstance(model, GPT):
        raise ExportError(
            f"{predictor.run.path}: model type {predictor.config.model.type!r} is a pretrained causal LM; export covers forgeml's gpt "
            "language models so far (serve this one with forgeml serve, on torch)"
        )
    shape = cache_shape(model)
    step = CachedStep(model).eval()
    empty = torch.zeros(shape["layers"], 1, shape["heads"], 2, shape["head_dim"])
    # The TorchScript exporter, not dynamo: torch 2.13's dynamo export of this graph computes the
    # attention over a non-empty cache about 3e-4 off (the whole-window pass is exact), which the
    # parity check below catches; the TorchScript graph is exact to float rounding.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                step, (torch.zeros(1, 3, dtype=torch.long), empty, empty), str(work / "model.onnx"), dynamo=False,
                input_names=INPUTS, output_names=OUTPUTS, opset_version=18,
                dynamic_axes={"ids": {1: "sequence"}, "past_keys": {3: "past"}, "past_values": {3: "past"}, "logits": {1: "sequence"},
                              "present_keys": {3: "total"}, "present_values": {3: "total"}},
            )
        except Exception as exc:  # noqa: BLE001 - the exporter's own failure, in one line
            raise ExportError(f"the GPT could not be exported to ONNX: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    return _verify(predictor, model, work / "model.onnx", shape, threads, repeats)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _verify(predictor: Any, model: GPT, path: Path, shape: dict[str, int], threads: int, repeats: int) -> list[dict[str, Any]]:
    windows = predictor.windows("test", limit=WINDOWS)[0]
    session = _session(path, threads)
    empty = np.zeros((shape["layers"], 1, shape["heads"], 0, shape["head_dim"]), dtype=np.float32)
    whole_diff = cached_diff = 0.0
    largest = 1.0
    for window in windows:
        ids = window[None].numpy()
        with torch.no_grad():
            reference = model(window[None]).numpy()
        check_finite(TORCH, reference[0], "positions of a test window")
        largest = max(largest, float(np.abs(reference).max()))
        whole = session.run(None, {"ids": ids, "past_keys": empty, "past_values": empty})[0]
        whole_diff = max(whole_diff, float(np.abs(whole - reference).max()))
        half = max(1, ids.shape[1] // 2)
        logits, keys, values = session.run(None, {"ids": ids[:, :half], "past_keys": empty, "past_values": empty})
        steps = [logits[0]]
        for position in range(half, ids.shape[1]):
            logits, keys, values = session.run(None, {"ids": ids[:, position : position + 1], "past_keys": keys, "past_values": values})
            steps.append(logits[0])
        check_finite("ONNX Runtime's", np.concatenate([whole[0], *steps]), "positions of a test window, whole and cached")
        cached_diff = max(cached_diff, float(np.abs(np.concatenate(steps) - reference[0]).max()))
    allowed = 1e-4 * largest
    if not max(whole_diff, cached_diff) <= allowed:
        raise ExportError(
            f"ONNX parity failed: the language model's logits differ from torch's by {max(whole_diff, cached_diff):.3g} "
            f"({'cached decode' if cached_diff > whole_diff else 'whole windows'}; allowed {allowed:.3g}); nothing was written"
        )
    torch_ms, onnx_ms = _step_latency(model, session, shape, threads, repeats)
    common = {"metric_name": "max_abs_diff_cached", "size_bytes": 0}
    return [
        {"name": "torch fp32", "max_abs_diff": 0.0, **common, "metric": 0.0, "p50_token_ms": torch_ms, "size_bytes": (predictor.run / "model.safetensors").stat().st_size},
        {"name": "onnxruntime fp32", "max_abs_diff": whole_diff, **common, "metric": cached_diff, "p50_token_ms": onnx_ms, "size_bytes": path.stat().st_size},
    ]


def _step_latency(model: GPT, session: Any, shape: dict[str, int], threads: int, repeats: int) -> tuple[float, float]:
    """p50 milliseconds of one cached step (one new token after half a context), torch and ONNX Runtime."""
    past = max(1, shape["context"] // 2)
    keys = np.random.default_rng(0).standard_normal((shape["layers"], 1, shape["heads"], past, shape["head_dim"])).astype(np.float32)
    ids = np.zeros((1, 1), dtype=np.int64)
    times_onnx, times_torch = [], []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    step = CachedStep(model).eval()
    try:
        for _ in range(repeats + 1):
            started = time.perf_counter()
            session.run(None, {"ids": ids, "past_keys": keys, "past_values": keys})
            times_onnx.append(time.perf_counter() - started)
            started = time.perf_counter()
            with torch.no_grad():
                step(torch.from_numpy(ids), torch.from_numpy(keys), torch.from_numpy(keys))
            times_torch.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return round(float(np.median(times_torch[1:])) * 1000, 4), round(float(np.median(times_onnx[1:])) * 1000, 4)
