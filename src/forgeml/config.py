"""The experiment config: one strict pydantic schema for data, model, training and output.

The root schema is assembled from the registries (sources, features, models), whose members each
own their config class. This module never imports torch at import time.

    cfg = load_config("examples/mnist_cnn.yaml", overrides=["train.lr=0.01"])
    print(dump_config(cfg))
"""

from __future__ import annotations

import copy
import functools
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from forgeml.errors import ConfigError
from forgeml.registry import AUGMENTS, FEATURES, MODELS, SOURCES


class Section(BaseModel):
    """Base of every config class: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(Section):
    """How rows are divided into train / validation / test."""

    validation: float = Field(0.1, ge=0, lt=1, description="Fraction of rows held out for validation.")
    test: float = Field(0.1, ge=0, lt=1, description="Fraction of rows held out for the final test.")
    column: Optional[str] = Field(
        None, description="Column whose values (train / validation / test) assign each row; overrides the fractions."
    )
    stratify: bool = Field(True, description="Keep class proportions equal across splits (classification only; random order).")
    order: Literal["random", "sequential"] = Field(
        "random",
        description="random: a seeded shuffle; sequential: in row order, train first, then validation, then test (time series).",
    )


class CorpusConfig(Section):
    """Language modelling on a text column: the model learns to predict each next token."""

    column: str = Field("text", description="The source column whose rows are the text.")
    tokenizer: Literal["bpe", "char", "pretrained"] = Field(
        "bpe",
        description="bpe: byte-level byte-pair encoding (any text, no unknown tokens); char: one token per character; "
        "pretrained: the tokenizer of model.pretrained, unchanged (model type hf: fine-tuning a pretrained causal LM).",
    )
    vocab_size: int = Field(8192, ge=260, le=2**32 - 1, description="bpe: tokens in the vocabulary, the 256 bytes included.")
    separator: str = Field("\n", description="Appended to every row before the rows are joined into one stream.")


class DataSection(Section):
    """Where the rows come from and what the model sees of them."""

    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="A row that cannot be read: stop with an error naming it, or skip and count it."
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="Train / validation / test split.")
    corpus: Optional[CorpusConfig] = Field(
        None, description="Language modelling on a text column (model type gpt, or hf with a causal LM) instead of features and a target."
    )

    @model_validator(mode="before")
    @classmethod
    def _source_defaults(cls, data: Any) -> Any:
        """`source: mnist5k` is short for `source: {type: builtin, name: mnist5k}`; a source that knows
        its columns (the built-in datasets) fills in `features` and `target` when they are left out, and
        its split settings under the ones the config gives."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("source"), str):
            data["source"] = {"type": "builtin", "name": data["source"]}
        source = data.get("source")
        if data.get("corpus") is not None:  # language modelling: the text itself is the target
            return data
        if isinstance(source, dict) and source.get("type") in SOURCES.names():
            default_columns = getattr(SOURCES.get(source["type"]).config, "default_columns", None)
            columns = default_columns(source) if default_columns else None
            if columns is not None:
                features, target = copy.deepcopy(columns)
                data["features"] = data.get("features") or features
                data["target"] = data.get("target") or target
            # a time series splits in time order unless the config says otherwise
            default_split = getattr(SOURCES.get(source["type"]).config, "default_split", None)
            split = default_split(source) if default_split else None
            if split and isinstance(data.get("split", {}), dict):
                data["split"] = {**split, **data.get("split", {})}
        return data


class EarlyStopping(Section):
    """Stop when the monitored validation metric stops improving."""

    patience: int = Field(5, ge=1, description="Evaluations without improvement before training stops.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


class AdversarialTraining(Section):
    """Train on adversarial examples crafted against the current weights (Madry et al. 2018): the
    model learns to resist the attack. Images are perturbed in pixel space (ε in [0, 1] pixel units),
    tables in standardised inputs, texts in the token embedding (see forgeml attack)."""

    method: Literal["fgsm", "pgd"] = Field(
        "pgd", description="pgd: `steps` projected gradient steps (strong, steps+1 times the cost); fgsm: one step (cheap; use random_start)."
    )
    eps: float = Field(gt=0, description="Radius of the perturbation (MNIST pixels in [0, 1]: 0.3 is the usual benchmark).")
    norm: Literal["linf", "l2"] = Field("linf", description="The norm ε is measured in.")
    steps: int = Field(7, ge=1, description="PGD steps per batch.")
    alpha: Optional[float] = Field(None, gt=0, description="Step size; null: 2.5 ε / steps for pgd, 1.25 ε for fgsm after a random start.")
    random_start: bool = Field(True, description="Start each attack from a random point of the ε-ball (keeps FGSM training from collapsing).")
    ratio: float = Field(1.0, gt=0, le=1, description="Share of each batch replaced by its adversarial examples; the rest stays clean.")
    eps_warmup: int = Field(0, ge=0, description="Optimizer steps over which ε (and the step size) grow linearly from 0 to eps; 0: full ε from the start.")


class PrivacyConfig(Section):
    """Differentially private training with DP-SGD (Opacus): per-example gradients clipped to
    max_grad_norm, Gaussian noise added, batches drawn by Poisson sampling, the ε spent logged."""

    target_epsilon: Optional[float] = Field(
        None, gt=0, description="The privacy budget ε for the whole run: the noise is the least that stays within it (give this or noise_multiplier)."
    )
    noise_multiplier: Optional[float] = Field(
        None, gt=0, description="Noise standard deviation over max_grad_norm, fixed; the ε it spends is reported (give this or target_epsilon)."
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of (ε, δ)-DP: keep it below 1 / training rows.")
    max_grad_norm: float = Field(1.0, gt=0, description="Each example's gradient is clipped to this L2 norm.")
    fix_layers: bool = Field(
        False, description="Replace layers DP-SGD cannot train (BatchNorm -> GroupNorm, LSTM -> DPLSTM, ...) instead of stopping with an error."
    )

    @model_validator(mode="after")
    def _one_budget(self) -> "PrivacyConfig":
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of target_epsilon (the budget, e.g. 8) and noise_multiplier")
        return self


MAX_LR = 10.0  # the largest train.lr accepted: far above any rate that trains (SGD on standardised inputs diverges near 1)


class TrainConfig(Section):
    """The training loop: optimisation, schedule, precision, evaluation and checkpoints."""

    epochs: int = Field(10, ge=1, description="Passes over the training split (training stops at epochs or max_steps).")
    max_steps: Optional[int] = Field(None, ge=1, description="Optimizer steps at most (training stops at epochs or max_steps).")
    batch_size: Union[int, Literal["full"]] = Field(
        64, description="Examples per optimizer step ('full': the whole training split, plain gradient descent)."
    )
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated into one optimizer step.")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="The optimizer.")
    lr: float = Field(1e-3, gt=0, le=MAX_LR, description="Peak learning rate (above 0, at most 10).")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam / AdamW betas.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for AdamW, L2 for SGD and Adam).")
    schedule: Literal["constant", "step", "cosine"] = Field("constant", description="Learning-rate schedule after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warmup from 0 to lr.")
    step_every: int = Field(1000, ge=1, description="'step' schedule: multiply lr by gamma every this many steps.")
    gamma: float = Field(0.1, gt=0, le=1, description="'step' schedule: factor applied every step_every steps.")
    min_lr: float = Field(0.0, ge=0, description="'cosine' schedule: learning rate at the last step.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing for classification.")
    grad_clip: Optional[float] = Field(None, gt=0, description="Clip the global gradient norm to this value.")
    nonfinite: Literal["stop", "skip_step"] = Field(
        "stop",
        description="A step whose loss is nan or inf: stop training with an error (the checkpoints before it are kept), "
        "or skip_step: leave the weights as they are, count it (nonfinite_steps in history and metrics.json) and go on.",
    )
    max_nonfinite_steps: int = Field(10, ge=1, description="skip_step: stop with an error after this many non-finite losses in a row.")
    monitor: str = Field("loss", description="Validation metric used for best weights and early stopping (loss, accuracy, f1_macro, mse, ...).")
    keep_best: bool = Field(True, description="Finish with the weights that scored best on `monitor` (needs a validation split).")
    early_stopping: Optional[EarlyStopping] = Field(None, description="Stop when `monitor` stops improving; null: never.")
    eval_every: Optional[int] = Field(None, ge=1, description="Evaluate on validation every this many steps; null: each epoch.")
    log_every: int = Field(10, ge=1, description="Log training loss every this many steps.")
    checkpoint_every: Optional[int] = Field(None, ge=1, description="Checkpoint every this many steps; null: each epoch. Always at the end.")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept on disk.")
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="fp32; bf16 autocast; fp16 autocast with a GradScaler (CUDA only).")
    deterministic: bool = Field(False, description="Use deterministic algorithms only (slower on GPU; CPU runs are deterministic anyway).")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="With several processes (--nproc): ddp keeps a whole model on every rank; fsdp (FSDP2) shards parameters, "
        "gradients and optimizer state across them, for models that do not fit one device.",
    )
    compile: bool = Field(False, description="torch.compile the model for training steps: faster on GPUs once compiled; the first steps wait for the compiler.")
    tf32: bool = Field(True, description="CUDA: let fp32 matrix multiplies use TensorFloat-32 (much faster on Ampere and later, ~3 digits of mantissa).")
    eval_batch_size: int = Field(512, ge=1, description="Batch size for evaluation and prediction.")
    adversarial: Optional[AdversarialTraining] = Field(None, description="Adversarial training (classification); null: clean examples only.")
    privacy: Optional[PrivacyConfig] = Field(None, description="Differentially private training (DP-SGD); null: ordinary training.")

    @field_validator("lr", mode="before")
    @classmethod
    def _check_lr(cls, value: Any) -> Any:
        # inf, nan or 1e30 is a float like any other, but sends every weight to nan at the first step
        try:
            number = float(value)
        except (TypeError, ValueError):
            return value  # not a number: the type check says so
        if not math.isfinite(number) or number > MAX_LR:
            raise ValueError(f"{number:g} is not a usable learning rate; give a finite number above 0 and at most {MAX_LR:g} (e.g. 0.001)")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda", "mps") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"{value!r} is not one of: auto, cpu, cuda, cuda:N, mps")


class OutputConfig(Section):
    """Where the run directory goes."""

    dir: str = Field("runs", description="Parent directory of run directories.")


PIPELINE_STAGES = ("train", "evaluate", "calibrate", "explain", "attack", "audit", "export", "report")


class EvaluateStage(Section):
    """forgeml pipeline's evaluate stage (forgeml evaluate)."""

    split: Literal["train", "validation", "test"] = Field("test", description="The split evaluated.")


class CalibrateStage(Section):
    """forgeml pipeline's calibrate stage (forgeml calibrate)."""

    bins: int = Field(15, ge=2, description="Confidence bins of the ECE and the reliability diagram.")


class ExplainStage(Section):
    """forgeml pipeline's explain stage: a few test examples, and the faithfulness check."""

    method: str = Field("ig", description="Attribution method for the examples: ig, saliency, gradcam, occlusion, shap or lime.")
    n: int = Field(4, ge=1, description="Test examples explained (pictures in the report).")
    faithfulness: bool = Field(True, description="Also measure each method's deletion curve against random order.")
    faithfulness_n: int = Field(100, ge=1, description="Test examples the faithfulness check measures.")
    faithfulness_methods: list[str] = Field(
        ["ig", "saliency", "gradcam"], min_length=1, description="Methods the faithfulness check measures (those that apply to the model)."
    )


class AttackStage(Section):
    """forgeml pipeline's attack stage (forgeml attack)."""

    method: Literal["fgsm", "pgd"] = Field("pgd", description="fgsm: one signed-gradient step; pgd: projected gradient descent.")
    eps: list[float] = Field([0.05, 0.1, 0.2, 0.3], min_length=1, description="Radii of the perturbation (images: pixel units in [0, 1]).")
    norm: Literal["linf", "l2"] = Field("linf", description="The norm the radius is measured in.")
    steps: int = Field(10, ge=1, description="PGD steps.")
    n: Optional[int] = Field(500, ge=1, description="Test examples attacked; null: the whole split.")


class AuditStage(Section):
    """forgeml pipeline's audit stage (forgeml audit: membership inference)."""

    n: Optional[int] = Field(None, ge=1, description="Members and non-members scored at most; null: as many as the held-out split has.")


class ExportStage(Section):
    """forgeml pipeline's export stage (forgeml export: ONNX with a parity check)."""

    quantize: Literal["none", "int8"] = Field("int8", description="Also build and verify an int8 model.")
    tolerance: float = Field(0.01, ge=0, description="Metric an int8 model may lose.")


class PipelineConfig(Section):
    """What forgeml pipeline runs, in order, and each stage's settings. `pipeline: [train, evaluate]`
    is short for `pipeline: {stages: [train, evaluate]}`."""

    stages: Optional[list[Literal[PIPELINE_STAGES]]] = Field(  # type: ignore[valid-type]
        None,
        description="Stages in order (train, evaluate, calibrate, explain, attack, audit, export, report); null: those that apply to the task.",
    )
    evaluate: EvaluateStage = Field(default_factory=EvaluateStage, description="The evaluate stage.")
    calibrate: CalibrateStage = Field(default_factory=CalibrateStage, description="The calibrate stage.")
    explain: ExplainStage = Field(default_factory=ExplainStage, description="The explain stage.")
    attack: AttackStage = Field(default_factory=AttackStage, description="The attack stage.")
    audit: AuditStage = Field(default_factory=AuditStage, description="The audit stage.")
    export: ExportStage = Field(default_factory=ExportStage, description="The export stage.")

    @model_validator(mode="before")
    @classmethod
    def _stage_list(cls, value: Any) -> Any:
        return {"stages": value} if isinstance(value, list) else value

    @field_validator("stages")
    @classmethod
    def _no_repeats(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("a stage is listed twice")
        return value


class ConfigBase(Section):
    """The root of an experiment config."""

    name: str = Field("run", description="Run name: the run directory is <output.dir>/<name>.")
    seed: int = Field(0, description="Seed for the split, initialisation, shuffling and dropout.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The training loop.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where runs are written.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="What forgeml pipeline runs after training, and how.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        # the run directory is output.dir/name, which --overwrite may replace: a name with a separator
        # or ".." would put it, and what --overwrite deletes, outside output.dir
        if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value or value.startswith("."):
            raise ValueError(f"{value!r} is not a run name; give one folder name without / or \\ that does not start with '.' (e.g. mnist_cnn)")
        return value


def _union(configs: list[type[BaseModel]]) -> Any:
    members = tuple(configs)
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="type")]  # type: ignore[valid-type]


@functools.cache
def root_model() -> type[ConfigBase]:
    """The root config class, with every registered source, feature, augmentation and model type."""
    feature = _union(FEATURES.configs())
    augmentation = _union(AUGMENTS.configs())
    data = create_model(
        "DataConfig",
        __base__=DataSection,
        source=(_union(SOURCES.configs()), Field(description=f"Where rows come from (type: {', '.join(SOURCES.names())}).")),
        features=(
            Optional[list[feature]],  # type: ignore[valid-type]
            Field(None, description="Input columns and how each is encoded; null: the source's defaults."),
        ),
        target=(Optional[feature], Field(None, description="The column to predict; null: the source's default.")),
        augment=(
            Optional[list[augmentation]],  # type: ignore[valid-type]
            Field(
                default_factory=list,
                description="Random changes to training batches, applied in order (random_crop, flip, affine, noise, cutout, mixup, "
                "token_dropout, token_swap); empty: none.",
            ),
        ),
    )
    return create_model(
        "Config",
        __base__=ConfigBase,
        data=(data, Field(description="The data: source, features, target, split.")),
        model=(_union(MODELS.configs()), Field(description=f"The architecture (type: {', '.join(MODELS.names())}).")),
    )


# --------------------------------------------------------------------------------------------------
# loading, overrides, errors


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (data, model, train, ...)")
    return data


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.01")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node: Any = raw
        parts = key.strip().split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} has no item {part}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a section")
    return raw


def _unwrap(annotation: Any) -> Any:
    """Strip Optional / Annotated / list wrappers down to the class or union underneath."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is Union:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
            else:
                return annotation
        else:
            return annotation


def _walk(loc: tuple[Any, ...]) -> tuple[str, Any, Any]:
    """Follow a pydantic error location through the schema.

    Returns the user-facing dotted path (union tags removed), the model class that holds the last
    key (or None), and the annotation found at the end of the location (or None).
    """
    current: Any = root_model()
    parts: list[str] = []
    holder: Any = None
    items = list(loc)
    while items:
        item = items.pop(0)
        current = _unwrap(current)
        if typing.get_origin(current) is Union:
            members = typing.get_args(current)
            if all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
                # discriminated union: the location names the tag
                match = [m for m in members if m.model_fields["type"].annotation.__args__ == (item,)]
                if match:
                    current = match[0]
                    continue
            else:  # a plain union such as int | 'full': the location names the member tried
                return ".".join(parts), holder, current
        if typing.get_origin(current) is dict:
            key_type, value_type = typing.get_args(current)
            parts.append(str(item))
            holder, current = None, value_type
            if items and items[0] == "[key]":  # the error is about the key itself
                items.pop(0)
                current = key_type
            continue
        if typing.get_origin(current) in (list, tuple) and isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
            args = typing.get_args(current)
            current = args[0] if args else None
            continue
        parts.append(str(item))
        if isinstance(current, type) and issubclass(current, BaseModel) and item in current.model_fields:
            holder, current = current, current.model_fields[item].annotation
        else:
            holder, current = (current if isinstance(current, type) else None), None
    return ".".join(parts) or "(top level)", holder, current


def _describe(annotation: Any) -> str:
    """How a type reads in YAML terms: 'full', null, a mapping with type: cnn, int, list."""
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        tag = annotation.model_fields.get("type")
        return f"a mapping with type: {tag.annotation.__args__[0]}" if tag is not None else "a mapping"
    if typing.get_origin(annotation) is Union:
        return " or ".join(_describe(m) for m in typing.get_args(annotation))
    origin = typing.get_origin(annotation)
    return getattr(origin or annotation, "__name__", str(annotation))


def _choices(annotation: Any) -> list[str] | None:
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if typing.get_origin(annotation) is Union:
        literals = [a for a in typing.get_args(annotation) if typing.get_origin(a) is Literal]
        if literals:
            return [str(v) for lit in literals for v in typing.get_args(lit)]
    return None


# errors of a value of the right type outside its bounds: said in pydantic's words, whatever the field's type
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of", "too_short", "too_long"}


def format_validation_error(exc: ValidationError, origin: str = "config") -> str:
    """Turn a pydantic error into lines that name the YAML path and what is allowed."""
    lines = []
    for err in exc.errors():
        kind, loc = err["type"], tuple(err["loc"])
        if kind.startswith("union_tag"):
            path, _, annotation = _walk(loc)
            members = typing.get_args(_unwrap(annotation)) if annotation is not None else ()
            tags = ", ".join(m.model_fields["type"].annotation.__args__[0] for m in members)
            if kind == "union_tag_invalid":
                lines.append(f"{path}.type: {err['ctx']['tag']!r} is not one of: {tags}")
            else:
                lines.append(f"{path}: needs a `type`, one of: {tags}")
            continue
        path, holder, annotation = _walk(loc)
        if kind == "extra_forbidden":
            allowed = ", ".join(holder.model_fields) if holder is not None else "?"
            lines.append(f"{path}: unknown key; allowed keys here: {allowed}")
        elif kind == "missing":
            lines.append(f"{path}: required, but missing")
        elif kind == "value_error":  # a validator's own message (before the union case: Optional fields have validators too)
            lines.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
        elif typing.get_origin(annotation) is Union and kind not in _BOUNDS:  # a value of none of the types
            options = [_describe(m) for m in typing.get_args(annotation)]
            lines.append(f"{path}: {err['input']!r} is not valid; expected {' or '.join(options)}")
        elif kind in ("literal_error", "enum") or (kind.endswith("_type") and _choices(annotation)):
            choices = _choices(annotation) or []
            lines.append(f"{path}: {err['input']!r} is not one of: {', '.join(choices)}")
        else:
            lines.append(f"{path}: {err['msg']} (got {err['input']!r})")
    return "\n".join(f"{origin}: {line}" for line in dict.fromkeys(lines))


def validate_config(raw: dict[str, Any], origin: str = "config") -> Any:
    """Validate a nested dict into the root config, raising ConfigError with readable lines."""
    try:
        return root_model().model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None


def load_config(source: str | Path | dict[str, Any] | BaseModel, overrides: list[str] | None = None) -> Any:
    """Load a config from a YAML path, a dict or a config object, then apply ``--set`` overrides.

    Args:
        source: path to a YAML file, a nested dict, or an already validated config.
        overrides: ``key.path=value`` strings; values are parsed as YAML.

    Returns:
        The validated root config (defaults filled in).

    Raises:
        ConfigError: the file is missing or not YAML, or a value is invalid; the message names the
            YAML path and lists what is allowed.
    """
    if isinstance(source, BaseModel):
        raw: dict[str, Any] = source.model_dump(mode="json")
        origin = "config"
    elif isinstance(source, dict):
        raw, origin = yaml.safe_load(yaml.safe_dump(source, sort_keys=False)), "config"  # deep copy, plain types, order kept
    else:
        raw, origin = read_yaml(source), str(source)
        raw.setdefault("name", Path(source).stem)
    apply_overrides(raw, overrides or [])
    return validate_config(raw, origin)


TOP_LEVEL_ORDER = ("name", "seed", "data", "model", "train", "output", "pipeline")
DATA_ORDER = ("source", "corpus", "features", "target", "augment", "split", "on_bad_row")


def _type_first(data: Any) -> Any:
    """Put each component's `type` key first, where a reader looks for it."""
    if isinstance(data, dict):
        ordered = {"type": data["type"]} if "type" in data else {}
        return ordered | {key: _type_first(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_type_first(item) for item in data]
    return data


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """The fully resolved config as plain data (defaults filled in), in reading order."""
    data = _type_first(cfg.model_dump(mode="json"))
    if "data" in data:  # where rows come from first, how they are split last
        data["data"] = {key: data["data"][key] for key in DATA_ORDER if key in data["data"]} | data["data"]
    return {key: data[key] for key in TOP_LEVEL_ORDER if key in data} | data


def dump_config(cfg: BaseModel) -> str:
    """The fully resolved config as YAML, in schema order."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config, for editors (e.g. the YAML language server)."""
    schema = root_model().model_json_schema()
    # `source: mnist5k` is accepted as short for {type: builtin, name: mnist5k}
    builtin_names = list(typing.get_args(SOURCES.get("builtin").config.model_fields["name"].annotation))
    source = schema["$defs"]["DataConfig"]["properties"]["source"]
    description = source.pop("description", None)
    schema["$defs"]["DataConfig"]["properties"]["source"] = {
        "anyOf": [source, {"type": "string", "enum": builtin_names, "description": "A built-in dataset by name."}],
        **({"description": description} if description else {}),
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "forgeml experiment config"
    return schema
