"""The one inference path: ``load(run_dir)`` returns a ``Predictor``.

Every stage after training (evaluate, predict, explain, attack, export, serve, report) starts here,
so preprocessing exists exactly once: raw input -> Features (fitted state from features.json) ->
model (weights from model.safetensors) -> labels and probabilities, or values.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file

from forgeml.attribution import AttributionSpace, attribute, per_feature
from forgeml.config import validate_config
from forgeml.data.corpus import EVALUATION_WINDOWS, TOKENS_DIR, Corpus, evaluation_windows
from forgeml.data import raw
from forgeml.data.dataset import load_dataset
from forgeml.data.features import Features
from forgeml.data.table import Table
from forgeml import locks
from forgeml.errors import DataError, RunDirError
from forgeml.models.generation import generate
from forgeml.models.hf import is_adapted, merge
from forgeml.pretrained import BASE_MODEL, identity
from forgeml.registry import MODELS
from forgeml.run import RunDir
from forgeml.training.checkpoint import load_state_dict_tensors
from forgeml.training.loop import LANGUAGE_MODELLING, batched_outputs, resolve_device
from forgeml.training.privacy import check_layers

RUN_FILES = ("config.yaml", "features.json", "model.safetensors")
CALIBRATION = "calibration.json"  # written by forgeml calibrate: the temperature the probabilities use


class Predictor:
    """A trained model with its preprocessing, ready to predict raw inputs.

    Attributes:
        run: the run directory.
        config: the run's resolved config.
        features: fitted preprocessing (features.json).
        model: the network in eval mode.
        task: "classification" or "regression".
        label_names: class names in output order (classification).
        temperature: logits are divided by it before the softmax (1 unless ``forgeml calibrate``
            fitted one; see ``forgeml.calibration``).
    """

    def __init__(self, run: RunDir, config: Any, features: Features, model: torch.nn.Module, device: torch.device):
        self.run = run
        self.config = config
        self.features = features
        self.model = model.eval()
        self.device = device
        self.task = features.task
        self.label_names = getattr(features, "label_names", [])
        self.batch_size = config.train.eval_batch_size
        self.temperature = 1.0

    # -- tensors in, tensors out

    def outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw model outputs (logits, or normalised values for regression) for encoded inputs."""
        return batched_outputs(self.model, inputs, self.batch_size, self.device)

    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities for encoded inputs (classification only), calibrated by the run's temperature."""
        return torch.softmax(self.outputs(inputs) / self.temperature, dim=-1)

    def parse(self, rows: Table) -> Table:
        """Parse raw rows (a Table with the input columns): the rows that can be predicted, with their
        origins. A sequence model leaves out the first rows of a series, which have no full window."""
        return self.features.parse(rows, on_bad_row="error", with_target=False, hint="")

    def encode(self, rows: Table) -> torch.Tensor:
        """Encode raw rows (a Table with the input columns) into model inputs."""
        return self.features.transform_inputs(self.parse(rows))

    # -- the run's own data

    @functools.cached_property
    def _dataset(self) -> Any:
        dataset = load_dataset(self.config.data, self.config.seed)
        expected = self.run.read_json("features.json").get("splits", {})
        if expected and dataset.split_summary() != expected:
            raise RunDirError(
                f"{self.run.path}: the data no longer splits as it did in training "
                f"(rows {dataset.split_summary()['rows']} vs {expected.get('rows')}); the source files changed"
            )
        return dataset

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor, Table]:
        """Encoded inputs and targets of one of the run's splits, and its parsed rows."""
        if name not in ("train", "validation", "test"):
            raise DataError(f"split {name!r} is not one of: train, validation, test")
        if self.task == LANGUAGE_MODELLING:
            raise DataError(f"{self.run.path} is a language model: score it with language_model_metrics() or forgeml evaluate")
        table = self._dataset.split(name)
        if len(table) == 0:
            raise DataError(f"{self.run.path}: the {name} split of this run is empty")
        return self.features.transform_inputs(table), self.features.transform_target(table), table

    def windows(self, name: str, limit: int = EVALUATION_WINDOWS) -> tuple[torch.Tensor, torch.Tensor]:
        """A language model's held-out windows of one split (inputs and next tokens), from its token files."""
        if self.task != LANGUAGE_MODELLING:
            raise DataError(f"{self.run.path} is not a language model; use split()")
        tokens = self.features.tokens(self.run / TOKENS_DIR, name)
        inputs, targets = evaluation_windows(tokens, self.features.context, limit)
        if len(inputs) == 0:
            raise DataError(f"{self.run.path}: the {name} split holds too few tokens for one window of {self.features.context}")
        return inputs, targets

    # -- text generation (language models)

    def generate_stream(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Continue ``prompt``, yielding the new text piece by piece as tokens are chosen.

        Sampling is reproducible from ``seed``; temperature 0 is greedy. Pieces never split a
        character: bytes of an unfinished UTF-8 character wait for the token that completes it.
        """
        for piece, _ in self.stream(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed):
            yield piece

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        eos_id: int | None = None,
    ) -> Iterator[tuple[str, int]]:
        """``generate_stream`` that also says how many tokens have been chosen with each piece, and
        stops after ``eos_id`` (a chat model's end of turn; its text is not yielded)."""
        if self.task != LANGUAGE_MODELLING:
            raise DataError(f"{self.run.path} is a {self.task} model; generate needs a language model (data.corpus with model.type gpt or a pretrained causal LM)")
        ids = self.features.encode(prompt) if prompt else []
        if not ids:
            raise DataError("give a prompt of at least one character")
        tokens = generate(self.model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_id=eos_id)
        yield from raw.text_pieces(tokens, self.features.decode, eos_id)

    def generate(self, prompt: str, max_new_tokens: int = 200, **sampling: Any) -> str:
        """The continuation of ``prompt`` (see ``generate_stream`` for the options)."""
        return "".join(self.generate_stream(prompt, max_new_tokens, **sampling))

    # -- attributions

    @functools.cached_property
    def attribution_space(self) -> AttributionSpace:
        """What attributions are computed over and what "absent" means (see ``forgeml.attribution``)."""
        spec = self.features.input_spec
        if spec.kind == "tokens":
            replacement = spec.unk_id if spec.unk_id is not None else spec.pad_id
            return AttributionSpace(spec, replacement_id=replacement, keep_ids=(spec.pad_id, *spec.special_ids))
        if spec.kind == "image":
            mean, std = self.features.image_normalisation or ([0.0], [1.0])
            black = (0 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
            return AttributionSpace(spec, baseline=black.expand(1, *spec.shape).clone(), references=self._train_sample)
        # tables and windows: "absent" is the training split's average example
        train = self._train_sample(limit=None)
        groups, first = [], 0
        for feature in self.features.inputs if spec.kind == "vector" else []:
            groups.append((feature.cfg.name, first, first + feature.width))
            first += feature.width
        return AttributionSpace(spec, baseline=train.mean(dim=0, keepdim=True), groups=groups, references=self._train_sample)

    def _train_sample(self, limit: int | None = 16) -> torch.Tensor:
        inputs = self.split("train")[0]
        if limit is None or len(inputs) <= limit:
            return inputs
        return inputs[torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))[:limit]]

    def feature_names(self, encoded: torch.Tensor) -> list[list[str]]:
        """The names of the features ``per_feature`` scores, for each encoded example: its tokens
        (texts), the input columns (tables), "t-K" time steps (windows) or "row,column" pixels (images)."""
        spec = self.features.input_spec
        if spec.kind == "tokens":
            tokenizer = self.features.inputs[0].tokenizer
            return [[tokenizer.id_to_token(int(i)) or "" for i in row] for row in encoded]
        if spec.kind == "vector":
            return [[name for name, _, _ in self.attribution_space.groups]] * len(encoded)
        if spec.kind == "sequence":
            return [[f"t-{spec.shape[0] - step}" for step in range(spec.shape[0])]] * len(encoded)
        return [[f"{r},{c}" for r in range(spec.shape[1]) for c in range(spec.shape[2])]] * len(encoded)

    def explain(self, inputs: Any, method: str = "ig", target: str | None = None) -> list[dict[str, Any]]:
        """Attributions for raw inputs (as ``predict`` takes them): how much each pixel, column or
        token pushed the model toward ``target`` (default: the predicted class).

        Returns:
            One dict per input: ``label`` (predicted), ``target`` (the class explained) and its
            ``probability``, ``names`` and ``scores`` (one per feature a person reads, see
            ``attribution.per_feature``), and ``attributions`` (the raw tensor, the model input's shape
            or one per token).

        Raises:
            ForgeError: not a classifier, an unknown class or method.
        """
        if self.task != "classification":
            raise DataError(f"{self.run.path} is a {self.task} model; explanations are for classifiers")
        parsed = self.parse(self.to_table(inputs))
        encoded = self.features.transform_inputs(parsed)
        return self.explain_encoded(encoded, method, target)

    def explain_encoded(self, encoded: torch.Tensor, method: str = "ig", target: str | None = None) -> list[dict[str, Any]]:
        """``explain`` for inputs already encoded (a batch in the model's input space)."""
        probabilities = self.probabilities(encoded)
        predicted = probabilities.argmax(dim=-1)
        if target is not None and target not in self.label_names:
            raise DataError(f"--target: {target!r} is not a class of this model ({', '.join(self.label_names[:20])})")
        targets = torch.full_like(predicted, self.label_names.index(target)) if target is not None else predicted
        space = self.attribution_space
        raw = torch.cat([
            attribute(self.model, space, encoded[start : start + 64].to(self.device), targets[start : start + 64].to(self.device), method).cpu()
            for start in range(0, len(encoded), 64)
        ])
        scores = per_feature(space, raw)
        names = self.feature_names(encoded)
        return [
            {
                "label": self.label_names[int(predicted[i])],
                "target": self.label_names[int(targets[i])],
                "probability": float(probabilities[i, targets[i]]),
                "names": names[i],
                "scores": scores[i],
                "attributions": raw[i],
            }
            for i in range(len(encoded))
        ]

    # -- raw inputs in, readable predictions out

    def decode(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        """Readable predictions: label and probabilities, or a value in the target's units."""
        return raw.decode(self.features, outputs.numpy(), self.temperature)

    def predict(self, inputs: Any, allow_outside: bool = False) -> list[dict[str, Any]]:
        """Predict raw inputs.

        Args:
            inputs: a CSV, JSON Lines or Parquet path; image file paths (a path or a list of paths); a numpy
                array of images; a list of row dicts; a dict of columns; or a ``Table`` (see ``forgeml.data.raw``).
            allow_outside: read image paths in a data file that lead out of its folder (absolute,
                ``..``, symlinks); by default such a row is refused. Paths given here are always read.

        Returns:
            One dict per input row: ``{"label", "probabilities"}`` or ``{"value"}``. For a sequence
            model, one per row with a full window of history (the last is the forecast past the end).

        Raises:
            DataError: a file is missing, a column is absent, a value cannot be read, or an image
                path in a data file leads out of its folder.
        """
        return self.predict_rows(inputs, allow_outside)[1]

    def predict_rows(self, inputs: Any, allow_outside: bool = False) -> tuple[Table, list[dict[str, Any]]]:
        """Like ``predict``, also returning the parsed rows the predictions are for (their ``where()``
        names the file and line of each)."""
        if self.task == LANGUAGE_MODELLING:
            raise DataError(f"{self.run.path} is a language model: continue a text with forgeml generate (or Predictor.generate)")
        parsed = self.parse(self.to_table(inputs, allow_outside))
        return parsed, self.decode(self.outputs(self.features.transform_inputs(parsed)))

    def to_table(self, inputs: Any, allow_outside: bool = False) -> Table:
        """Raw inputs (see ``predict``) as a Table of the model's input columns."""
        return raw.to_table(self.features, inputs, allow_outside)


def load(run_dir: str | Path, device: str = "cpu") -> Predictor:
    """Open a finished run directory for inference.

    Args:
        run_dir: a directory written by ``forgeml train``.
        device: where to run the model ("cpu", "cuda", "auto", ...).

    Raises:
        RunDirError: the directory is not a run, is unfinished, or a file is missing or corrupt, or
            a command is writing it.
    """
    with locks.reading(run_dir):  # a consistent snapshot: no writer replaces a file while the run is read
        return _load(run_dir, device)


def _load(run_dir: str | Path, device: str) -> Predictor:
    run = RunDir.open(run_dir)
    run.verify(RUN_FILES)
    config = validate_config(run.read_yaml("config.yaml"), origin=str(run / "config.yaml"))

    def read(name: str) -> bytes:  # a feature's own file, e.g. tokenizer.json
        run.verify([name])
        return (run / name).read_bytes()

    state = run.read_json("features.json")
    features: Any = Corpus.from_state(state, read) if state.get("task") == LANGUAGE_MODELLING else Features.from_state(state, read)
    torch_device = resolve_device(device)
    model = MODELS.build(config.model, inputs=features.input_spec, num_outputs=features.num_outputs)
    if config.train.privacy is not None and config.train.privacy.fix_layers:  # trained with DP-SGD's replacement layers
        model = check_layers(model, fix=True)
    resolved = getattr(model, "resolved", None)  # a pretrained base: the weights the run stored are trained on it
    if resolved is not None and (run / BASE_MODEL).is_file() and identity(resolved) != run.read_json(BASE_MODEL):
        raise RunDirError(
            f"{run / BASE_MODEL}: the pretrained model found now ({resolved.description}) is not the one this run was trained from"
        )
    try:
        load_state_dict_tensors(model, load_file(run / "model.safetensors"))
    except (RuntimeError, OSError) as exc:
        raise RunDirError(f"{run / 'model.safetensors'}: does not fit the model in config.yaml ({str(exc).splitlines()[0]})") from None
    if is_adapted(model):  # a LoRA run: later stages (export, serve) see one ordinary model
        model = merge(model)
    predictor = Predictor(run, config, features, model.to(torch_device), torch_device)
    if (run / CALIBRATION).is_file():
        try:
            run.verify([CALIBRATION])
            calibration = run.read_json(CALIBRATION)
        except RunDirError as exc:  # the model is still usable; its probabilities are the uncalibrated ones
            warnings.warn(f"{exc}; its temperature is not applied (run forgeml calibrate again)", stacklevel=2)
        else:
            if calibration.get("model_sha256") == model_sha256(run):  # fitted to these weights, not to a model trained since
                predictor.temperature = float(calibration["temperature"])
    return predictor


def model_sha256(run: RunDir) -> str | None:
    """The sha256 of the run's model.safetensors, as recorded in its manifest: what a stage's result
    records to say which weights it was computed from."""
    return run.read_json("manifest.json").get("files", {}).get("model.safetensors")


