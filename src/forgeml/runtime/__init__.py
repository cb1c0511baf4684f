"""The edge runtime: an export bundle run by ONNX Runtime, without torch.

    import forgeml.runtime
    model = forgeml.runtime.load("runs/mnist_cnn/export")
    model.predict(["seven.png"])   # [{"label": "7", "probabilities": {...}}]

It takes the same inputs and gives the same outputs as ``forgeml.load(run).predict`` (see
``forgeml.data.raw``): the bundle's ``features.json`` is the run's fitted preprocessing, read by the
same ``Features`` class training wrote it with, so nothing is preprocessed twice in two ways. This
package and what it imports (``forgeml.data`` features and sources, config, errors, files) need only
numpy, onnxruntime, pydantic and pyyaml, plus tokenizers for text and Pillow for image files; it is
installed on a device without torch as the ``forgeml-runtime`` distribution (``runtime/`` in the
repository; README: "On a device without torch").
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from forgeml.data import raw
from forgeml.data.features import Features
from forgeml.data.table import Table
from forgeml.errors import BundleError, DataError
from forgeml.files import sha256_file
from forgeml.inputs import InputSpec

__all__ = ["load", "Runtime", "LanguageRuntime"]

DESCRIPTION = "export.json"
BATCH = 256  # rows per ONNX Runtime call when predicting many inputs


class Runtime:
    """An exported model with its preprocessing, ready to predict raw inputs.

    Attributes:
        bundle: the bundle directory.
        description: the bundle's export.json (input and output contract, labels, hashes).
        features: the fitted preprocessing (the bundle's features.json).
        task: "classification" or "regression".
        label_names: class names in output order (classification).
        temperature: the calibrated temperature the probabilities use (1 without ``forgeml calibrate``).
        model_file: the ONNX file this runtime runs (model.onnx, or model.int8.onnx).
    """

    def __init__(self, bundle: Path, description: dict[str, Any], features: Features, session: Any, model_file: str):
        self.bundle = bundle
        self.description = description
        self.features = features
        self.session = session
        self.model_file = model_file
        self.task = features.task
        self.label_names = features.label_names
        self.temperature = float(description.get("temperature", 1.0))
        self.input_spec: InputSpec = features.input_spec

    # -- arrays in, arrays out

    def outputs(self, inputs: np.ndarray) -> np.ndarray:
        """Raw model outputs (logits, or normalised values for a regressor) for encoded inputs."""
        expected = np.int64 if self.input_spec.kind == "tokens" else np.float32
        inputs = np.ascontiguousarray(inputs, dtype=expected)
        if len(inputs) == 0:
            return np.zeros((0, self.features.num_outputs), dtype=np.float32)
        parts = [self.session.run(None, {"inputs": inputs[i : i + BATCH]})[0] for i in range(0, len(inputs), BATCH)]
        return np.concatenate(parts)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities of encoded inputs, calibrated by the bundle's temperature."""
        return raw.softmax(self.outputs(inputs), self.temperature)

    def parse(self, rows: Table) -> Table:
        """Parse raw rows (a Table with the input columns), as ``Predictor.parse`` does."""
        return self.features.parse(rows, on_bad_row="error", with_target=False, hint="")

    def encode(self, inputs: Any) -> np.ndarray:
        """Raw inputs (see ``predict``) encoded into model inputs."""
        return self.features.encode_inputs(self.parse(raw.to_table(self.features, inputs)))

    # -- raw inputs in, readable predictions out

    def decode(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """Readable predictions: label and probabilities, or a value in the target's units."""
        return raw.decode(self.features, outputs, self.temperature)

    def predict(self, inputs: Any, allow_outside: bool = False) -> list[dict[str, Any]]:
        """Predict raw inputs: the inputs ``forgeml.load(run).predict`` takes (a CSV, JSON Lines or
        Parquet path, image files, an array of images, row dicts, a dict of columns), with the same
        result: one ``{"label", "probabilities"}`` or ``{"value"}`` per row. ``allow_outside`` as
        for ``Predictor.predict``: image paths in a data file stay inside its folder unless given."""
        return self.predict_rows(inputs, allow_outside)[1]

    def predict_rows(self, inputs: Any, allow_outside: bool = False) -> tuple[Table, list[dict[str, Any]]]:
        """Like ``predict``, also returning the parsed rows the predictions are for."""
        parsed = self.parse(raw.to_table(self.features, inputs, allow_outside))
        return parsed, self.decode(self.outputs(self.features.encode_inputs(parsed)))


class LanguageRuntime:
    """An exported GPT with its tokenizer: generates text one cached step per token.

    ``generate`` and ``generate_stream`` take the options of ``Predictor.generate``. Greedy decoding
    (temperature 0) gives the tokens the run gives on torch; sampling draws from numpy's generator,
    so a seed repeats the runtime's own text, not torch's.
    """

    task = "language_modelling"

    def __init__(self, bundle: Path, description: dict[str, Any], corpus: Any, session: Any):
        self.bundle = bundle
        self.description = description
        self.features = corpus
        self.session = session
        self.model_file = "model.onnx"
        cache = description.get("cache") or {}
        try:
            self.layers, self.heads, self.head_dim, self.context = (int(cache[k]) for k in ("layers", "heads", "head_dim", "context"))
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"{bundle / DESCRIPTION}: a language model's bundle states its cache (layers, heads, head_dim, context)") from None

    def _empty(self) -> tuple[np.ndarray, np.ndarray]:
        empty = np.zeros((self.layers, 1, self.heads, 0, self.head_dim), dtype=np.float32)
        return empty, empty

    def _step(self, ids: list[int], cache: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        logits, keys, values = self.session.run(None, {"ids": np.array([ids], dtype=np.int64), "past_keys": cache[0], "past_values": cache[1]})
        return logits[0, -1], (keys, values)

    def tokens(
        self, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
        top_p: Optional[float] = None, seed: Optional[int] = None, eos_id: Optional[int] = None,
    ) -> Iterator[int]:
        """New token ids after ``prompt``, one per cached step (the window logic of ``forgeml generate``)."""
        _check_sampling(prompt, max_new_tokens, temperature, top_k, top_p)
        rng = np.random.default_rng(seed)
        window: deque[int] = deque(prompt, maxlen=self.context)
        logits, cache = self._step(list(window), self._empty())
        for step in range(max_new_tokens):
            token = choose(logits, temperature, top_k, top_p, rng)
            yield token
            if token == eos_id or step == max_new_tokens - 1:
                return
            window.append(token)
            if cache[0].shape[3] < self.context:
                logits, cache = self._step([token], cache)
            else:  # the cache is full: read the last context tokens afresh
                logits, cache = self._step(list(window), self._empty())

    def stream(
        self, prompt: str, max_new_tokens: int = 200, *, temperature: float = 1.0, top_k: Optional[int] = None,
        top_p: Optional[float] = None, seed: Optional[int] = None, eos_id: Optional[int] = None,
    ) -> Iterator[tuple[str, int]]:
        """(new piece of text, tokens so far), as ``Predictor.stream`` gives them (``forgeml serve`` uses either)."""
        ids = self.features.encode(prompt) if prompt else []
        yield from raw.text_pieces(self.tokens(ids, max_new_tokens, temperature, top_k, top_p, seed, eos_id), self.features.decode, eos_id)

    def generate_stream(
        self, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0, top_k: Optional[int] = None,
        top_p: Optional[float] = None, seed: Optional[int] = None,
    ) -> Iterator[str]:
        """Continue ``prompt``, yielding the new text piece by piece (never half a character)."""
        for piece, _ in self.stream(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed):
            yield piece

    def generate(self, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None) -> str:
        """The continuation of ``prompt``."""
        return "".join(self.generate_stream(prompt, max_new_tokens, temperature, top_k, top_p, seed))


def _check_sampling(prompt: list[int], max_new_tokens: int, temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    if not prompt:
        raise DataError("give a prompt of at least one character")
    if max_new_tokens < 0:
        raise DataError(f"max_new_tokens must be 0 or more, not {max_new_tokens}")
    if temperature < 0:
        raise DataError(f"temperature must be 0 (greedy) or more, not {temperature}")
    if top_k is not None and top_k < 1:
        raise DataError(f"top_k must be 1 or more (or None for all tokens), not {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise DataError(f"top_p must be above 0 and at most 1 (or None for all tokens), not {top_p}")


def choose(logits: np.ndarray, temperature: float, top_k: Optional[int], top_p: Optional[float], rng: np.random.Generator) -> int:
    """The next token from a vocabulary-long vector of logits: greedy at temperature 0, else a draw
    after keeping the ``top_k`` most likely and then the smallest set holding ``top_p`` (as torch's
    ``models.generation`` does)."""
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scaled.size:
        kth = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    if top_p is not None and top_p < 1:
        order = np.argsort(-scaled, kind="stable")
        probabilities = raw.softmax(scaled[order][None])[0].astype(np.float64)
        drop = np.cumsum(probabilities) - probabilities >= top_p  # the most likely always stays
        scaled[order[drop]] = -np.inf
    probabilities = np.exp(scaled - scaled.max())
    probabilities /= probabilities.sum()
    return int(rng.choice(len(probabilities), p=probabilities))


def load(bundle_dir: str | Path, int8: bool = False, threads: int | None = None) -> Union[Runtime, LanguageRuntime]:
    """Open an export bundle (``forgeml export`` writes one to RUN/export): a ``Runtime`` for a
    classifier or regressor, a ``LanguageRuntime`` for a language model.

    Args:
        bundle_dir: the bundle directory (model.onnx, features.json, export.json, tokenizer files).
        int8: run model.int8.onnx (written by ``forgeml export --quantize int8``) instead of model.onnx.
        threads: ONNX Runtime's intra-op threads (default: its own choice, all cores).

    Raises:
        BundleError: not a bundle, a file missing or altered since export, or no int8 model in it.
    """
    bundle = Path(bundle_dir)
    description = _description(bundle)
    _verify(bundle, description)
    model_file = "model.int8.onnx" if int8 else "model.onnx"
    if not (bundle / model_file).is_file():
        raise BundleError(f"{bundle}: no {model_file} in this bundle" + (" (export it with --quantize int8)" if int8 else ""))

    def read(name: str) -> bytes:  # a feature's own file, e.g. tokenizer.json
        if not (bundle / name).is_file():
            raise BundleError(f"{bundle / name}: missing from the bundle")
        return (bundle / name).read_bytes()

    if description["task"] == LanguageRuntime.task:
        from forgeml.data.corpus import Corpus

        try:
            corpus = Corpus.from_state(_json(bundle / "features.json"), read)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{bundle / 'features.json'}: not the corpus of a forgeml language model ({type(exc).__name__}: {exc})") from None
        return LanguageRuntime(bundle, description, corpus, _session(bundle / model_file, threads))
    try:
        features = Features.from_state(_json(bundle / "features.json"), read)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{bundle / 'features.json'}: not the fitted features of a forgeml run ({type(exc).__name__}: {exc})") from None
    return Runtime(bundle, description, features, _session(bundle / model_file, threads), model_file)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{path}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return data


def _description(bundle: Path) -> dict[str, Any]:
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle directory (forgeml export RUN writes one to RUN/export)")
    if not (bundle / DESCRIPTION).is_file():
        raise BundleError(f"{bundle}: not an export bundle (no {DESCRIPTION}); forgeml export RUN writes one")
    description = _json(bundle / DESCRIPTION)
    if description.get("format") != "onnx":
        raise BundleError(f"{bundle / DESCRIPTION}: format {description.get('format')!r} is not onnx")
    if description.get("task") not in ("classification", "regression", LanguageRuntime.task):
        raise BundleError(f"{bundle / DESCRIPTION}: task {description.get('task')!r} cannot run here")
    return description


def _verify(bundle: Path, description: dict[str, Any]) -> None:
    """Every file export.json lists a sha256 for is present and unchanged."""
    hashes = description.get("sha256")
    if not isinstance(hashes, dict) or not hashes:
        raise BundleError(f"{bundle / DESCRIPTION}: lists no sha256 of its files; export the run again with this forgeml")
    for name, expected in hashes.items():
        path = bundle / str(name)
        if Path(str(name)).name != name or not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        if sha256_file(path) != expected:
            raise BundleError(f"{path}: changed since export (sha256 differs from export.json)")


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types are not importable by name
        raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None

