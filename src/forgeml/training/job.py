"""A training job: from a config to a finished run directory.

    config -> run dir (config.yaml) -> rows, split -> features fitted on train (features.json)
                                    or a corpus -> tokenizer.json, tokens/<split>.bin
           -> model -> the loop (history.jsonl, checkpoints/) -> model.safetensors, metrics.json, manifest.json

Under torchrun every process runs this job: each loads the same data with the same seed and takes
its shard of every batch (``train.batch_size`` is the global batch, split evenly over the processes);
only rank 0 creates and writes the run directory and prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save as save_tensors

from forgeml import locks
from forgeml.adversarial import Adversary, InputSpace, input_space
from forgeml.config import config_to_dict, dump_config, load_config
from forgeml.data.augment import Augmenter
from forgeml.data.batches import InMemoryBatches, PoissonBatches
from forgeml.data.corpus import EVALUATION_WINDOWS, TOKENS_DIR, Corpus, WindowBatches, evaluation_windows
from forgeml.data.dataset import SPLITS, load_dataset
from forgeml.errors import ConfigError, RunDirError, TrainingError
from forgeml.metrics import persistence_scores
from forgeml.inputs import InputSpec
from forgeml.models.gpt import GPTConfig, flops_per_token, num_parameters
from forgeml.pretrained import BASE_MODEL, identity
from forgeml.registry import MODELS, SOURCES
from forgeml.run import CHECKPOINTS, RunDir
from forgeml.training import distributed
from forgeml.training.callbacks import Progress
from forgeml.training.checkpoint import state_dict_tensors
from forgeml.training.privacy import Privacy, check_layers
from forgeml.training.loop import (
    LANGUAGE_MODELLING,
    batched_outputs,
    check_precision,
    fit,
    language_model_metrics,
    resolve_device,
    seed_everything,
    task_metrics,
)

# Keys that may change when a run is resumed: training for longer is the common reason to resume.
RESUMABLE_CHANGES = {"train.epochs", "train.max_steps"}


@dataclass
class TrainResult:
    """What ``forgeml.train`` returns: where the run is and its final metrics per split."""

    run_dir: Path
    metrics: dict[str, Any]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {"train.lr": 0.01, ...}."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _check_resumable(saved: dict[str, Any], new: dict[str, Any], run: RunDir) -> None:
    old_flat, new_flat = flatten(saved), flatten(new)
    changed = sorted(
        k
        for k in old_flat.keys() | new_flat.keys()
        if old_flat.get(k) != new_flat.get(k) and k not in RESUMABLE_CHANGES and not k.startswith("pipeline.")  # what runs after training
    )
    if changed:
        raise ConfigError(
            f"{run.path}: the config differs from the run's config.yaml in {', '.join(changed[:8])}; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume"
        )


def train(
    config: Any,
    *,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    live_progress: bool | None = None,
    quiet: bool = False,
    command: list[str] | None = None,
) -> TrainResult:
    """Train a model from a config and write a complete run directory.

    Args:
        config: a YAML path, a dict, or a validated config.
        out: the run directory (default ``<output.dir>/<name>``).
        overrides: ``key.path=value`` strings applied on top of the config.
        resume: an existing run directory to continue from its newest complete checkpoint.
        overwrite: replace an existing run directory at ``out``.
        live_progress: force the live progress bar on or off (default: on for a terminal).
        quiet: no progress output at all.
        command: the command line that started training, recorded in metrics.json.

    Returns:
        The run directory and the final metrics per split.

    Raises:
        ForgeError: a bad config, unreadable data, or a run directory that cannot be used; TrainingError when
            the loss becomes nan or inf (the run keeps its checkpoints from before).
    """
    cfg = load_config(config, overrides)
    resolved = config_to_dict(cfg)
    device = resolve_device(cfg.train.device)
    check_precision(device, cfg.train.precision)
    process = distributed.init_from_env(device)
    try:
        target = Path(resume) if resume is not None else run_path(cfg, out)
        existed = target.exists()
        with locks.writing(target, command, create=resume is None) if process.is_main else contextlib.nullcontext():
            try:
                result = _train_as(process, config, cfg, resolved, target, resume, overwrite, live_progress, quiet, command)
            except BaseException:
                if process.is_main and not existed and target.is_dir() and [p.name for p in target.iterdir()] == [locks.LOCK]:
                    shutil.rmtree(target)  # refused before it began: the folder the lock made goes too
                raise
        # every rank finished before any closes its connections: a gloo rank whose peer hangs up while
        # its last message is still in flight aborts ("terminate called without an active exception")
        distributed.barrier()
        return result
    finally:
        distributed.cleanup()


def run_path(cfg: Any, out: str | Path | None) -> Path:
    """Where a new run goes: ``out`` as given, or ``<output.dir>/<name>``, which must stay inside
    output.dir (the name is one folder name; a link named like the run must not lead elsewhere).

    Raises:
        RunDirError: ``<output.dir>/<name>`` is a link.
    """
    if out is not None:
        return Path(out)
    path = Path(cfg.output.dir) / cfg.name
    if path.is_symlink():
        raise RunDirError(f"{path}: is a link (to {os.readlink(path)}); runs are written inside output.dir, so give --out to write elsewhere")
    return path


def per_rank_batch_size(batch_size: int | str, world_size: int) -> int | None:
    """This process's share of the global ``train.batch_size`` (None: the whole split, "full").

    Raises:
        ConfigError: the global batch does not split evenly over the processes.
    """
    if batch_size == "full":
        return None
    if int(batch_size) % world_size:
        raise ConfigError(
            f"train.batch_size: {batch_size} does not split evenly over {world_size} processes; it is the global batch "
            f"(examples per optimizer step over all processes), so give a multiple of {world_size}"
        )
    return int(batch_size) // world_size


def _train_as(
    process: distributed.DistInfo,
    config: Any,
    cfg: Any,
    resolved: dict[str, Any],
    out: str | Path | None,
    resume: str | Path | None,
    overwrite: bool,
    live_progress: bool | None,
    quiet: bool,
    command: list[str] | None,
) -> TrainResult:
    echo = (lambda text: None) if quiet or not process.is_main else (lambda text: print(text, flush=True))
    per_rank_batch_size(cfg.train.batch_size, process.world_size)  # before anything is written
    resume_files = None
    if resume is not None:  # every rank reads the checkpoint itself; only rank 0 removes what a killed write left
        run = RunDir.open(resume)
        _check_resumable(run.read_yaml("config.yaml"), resolved, run)
        removed = run.remove_leftovers() if process.is_main else []
        if removed:
            echo(f"removed what interrupted writes left in {run.path}: {', '.join(removed)}")
        found = run.load_checkpoint(warn=lambda text: echo(f"warning: {text}"))
        if found is None:
            echo(f"{run.path}: no usable checkpoint; starting from the beginning")
        else:
            name, resume_files = found
            echo(f"resuming {run.path} from checkpoint {name}")
    elif process.is_main:
        try:
            run = RunDir.create(out, overwrite=overwrite)
        except BaseException:
            distributed.broadcast_object(None)  # let the other ranks stop too
            raise
        distributed.broadcast_object(str(run.path))
    else:
        path = distributed.broadcast_object(None)
        if path is None:
            raise RunDirError("rank 0 could not create the run directory (its error says why)")
        run = RunDir(path)
    if process.is_main:
        run.write_bytes("config.yaml", dump_config(cfg).encode())
    try:
        result = _train_in(run, cfg, process, resume_files, echo, live_progress, quiet, command)
    except BaseException as exc:
        if not process.is_main:  # the run directory is rank 0's to keep or remove
            raise
        if resume is None and not run.checkpoint_names():
            if run.replaced is not None:  # nothing of the new run is worth keeping: the one it replaced comes back
                run.restore_replaced()
            else:
                shutil.rmtree(run.path, ignore_errors=True)  # nothing worth keeping: leave no half run behind
            raise
        run.drop_replaced()  # the new run has a checkpoint to resume from
        if isinstance(exc, TrainingError) and run.checkpoint_names():  # resumed as it is, it would diverge again at the same step
            echo(f"the run keeps its checkpoints from before the loss diverged (the newest: {run.path / CHECKPOINTS / run.checkpoint_names()[0]})")
        elif run.checkpoint_names():
            echo(f"training stopped; continue it with: forgeml train {config if isinstance(config, (str, Path)) else 'CONFIG'} --resume {run.path}")
        raise
    if process.is_main:
        run.drop_replaced()
    return result


@dataclass
class Prepared:
    """The data side of a run, ready for the loop: what the job needs, whatever the task."""

    task: str
    inputs: InputSpec
    num_outputs: int
    batches: Any  # InMemoryBatches (rows) or WindowBatches (a corpus)
    validation: tuple[torch.Tensor, torch.Tensor] | None
    description: str
    sizes: str  # "train 1,439, validation 179, test 179 rows"
    final_metrics: Callable[[torch.nn.Module], dict[str, dict[str, Any]]]  # per split, after training
    decode: Callable[[Any], Any] | None = None
    skipped_rows: int = 0
    summary: Callable[[dict[str, Any]], str] = lambda metrics: ""
    attack_space: Callable[[torch.nn.Module], InputSpace] | None = None  # where train.adversarial perturbs inputs (rows only)


def _save_data_state(run: RunDir, state: dict[str, Any], files: dict[str, bytes], resuming: bool, write: bool = True) -> None:
    """Write features.json and its files (tokenizer.json); a resumed run must find them unchanged.
    ``write`` False (ranks other than 0): only check."""
    if resuming and (
        run.read_json("features.json") != state or any(not (run / n).is_file() or (run / n).read_bytes() != b for n, b in files.items())
    ):
        raise ConfigError(f"{run.path}: the data or its preprocessing changed since the run started; start a new run")
    if not write:
        return
    run.write_json("features.json", state)
    for name, content in files.items():
        run.write_bytes(name, content)


def _prepare_rows(run: RunDir, cfg: Any, process: distributed.DistInfo, resuming: bool) -> Prepared:
    """Rows, split, features fitted on the training split only; batches of whole tensors in memory
    (every rank loads all of them and takes its shard of each batch)."""
    device = process.device
    dataset = load_dataset(cfg.data, cfg.seed)
    features = dataset.features
    tables = {name: dataset.split(name) for name in SPLITS}
    features.fit(tables["train"])
    state = features.to_state() | {"splits": dataset.split_summary(), "skipped_rows": dataset.skipped}
    _save_data_state(run, state, features.files(), resuming, write=process.is_main)
    tensors = {
        name: (features.transform_inputs(table), features.transform_target(table)) for name, table in tables.items() if len(table)
    }
    train_x, train_y = (t.to(device) for t in tensors["train"])
    batch_size = per_rank_batch_size(cfg.train.batch_size, process.world_size)
    decode = features.decode_regression if features.task == "regression" else None

    def final_metrics(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
        metrics: dict[str, dict[str, Any]] = {}
        for name, (inputs, targets) in tensors.items():
            outputs = batched_outputs(model, inputs, cfg.train.eval_batch_size, device, cfg.train.precision)
            metrics[name] = task_metrics(outputs, targets, features.task, features.num_outputs, decode)
            baseline = features.persistence(tables[name])
            if baseline is not None:  # a forecaster is only useful if it beats "tomorrow = today"
                metrics[name] |= persistence_scores(*baseline)
        return metrics

    def summary(metrics: dict[str, Any]) -> str:
        key = "accuracy" if features.task == "classification" else "mse"
        text = f"{key} {metrics[key]:.4f}"
        if "persistence_mae" in metrics:
            text += f" (mae {metrics['mae']:.4f}; persistence baseline mae {metrics['persistence_mae']:.4f})"
        return text

    return Prepared(
        task=features.task,
        inputs=features.input_spec,
        num_outputs=features.num_outputs,
        batches=(
            # DP-SGD's accounting assumes each example joins each step independently (Poisson sampling)
            PoissonBatches((train_x, train_y), batch_size or len(train_y), seed=cfg.seed)
            if cfg.train.privacy is not None
            else InMemoryBatches(
                (train_x, train_y), batch_size, shuffle=batch_size is not None, seed=cfg.seed, rank=process.rank, world_size=process.world_size
            )
        ),
        validation=tuple(t.to(device) for t in tensors["validation"]) if "validation" in tensors else None,  # type: ignore[arg-type]
        description=dataset.description + _scrubbed(features),
        sizes=", ".join(f"{n} {len(t):,}" for n, t in tables.items()) + " rows",
        final_metrics=final_metrics,
        decode=decode,
        skipped_rows=sum(dataset.skipped.values()),
        summary=summary,
        attack_space=lambda model: input_space(model, features.input_spec, train_x, features.image_normalisation).to(device),
    )


def _scrubbed(features: Any) -> str:
    """What scrub_pii replaced in each text column, for the first line of the training log."""
    parts = []
    for feature in features.inputs:
        if getattr(feature.cfg, "scrub_pii", False):
            found = ", ".join(f"{count:,} {kind}" for kind, count in sorted(feature.pii_found.items())) or "none found"
            parts.append(f"; personal data scrubbed from {feature.cfg.name!r}: {found}")
    return "".join(parts)


def _prepare_corpus(run: RunDir, cfg: Any, process: distributed.DistInfo, resuming: bool) -> Prepared:
    """A text corpus tokenized into token files in the run; random windows of them for training.
    Rank 0 tokenizes; the other ranks wait for it and read its token files."""
    device = process.device
    context = getattr(cfg.model, "context", None)
    if context is None:
        raise ConfigError(
            f"data.corpus (language modelling) needs a model that predicts next tokens: model.type gpt or hf (a causal LM), not {cfg.model.type}"
        )
    pretrained = None
    if cfg.data.corpus.tokenizer == "pretrained":
        if cfg.model.type != "hf":
            raise ConfigError(f"data.corpus.tokenizer: pretrained reads model.pretrained's tokenizer; it needs model.type hf, not {cfg.model.type}")
        pretrained = cfg.model.pretrained
    elif cfg.model.type == "hf":
        raise ConfigError("model.type hf reads ids from its own tokenizer: set data.corpus.tokenizer: pretrained")
    if cfg.train.batch_size == "full":
        raise ConfigError("train.batch_size: 'full' does not apply to language modelling; give windows per batch, e.g. 32")
    source = SOURCES.build(cfg.data.source)
    if process.is_main:
        corpus = Corpus(cfg.data.corpus, context, pretrained)
        # tokens go to a scratch folder first: a resumed run whose text changed must keep its own files
        scratch = run / ".tokens.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            corpus.build(source.table, cfg.data.split, cfg.seed, scratch)
            _save_data_state(run, corpus.to_state(), corpus.files(), resuming)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        shutil.rmtree(run / TOKENS_DIR, ignore_errors=True)
        scratch.replace(run / TOKENS_DIR)
    distributed.barrier()  # rank 0's token files are complete
    if not process.is_main:
        corpus = Corpus.from_state(run.read_json("features.json"), lambda name: (run / name).read_bytes())
    tokens = {name: corpus.tokens(run / TOKENS_DIR, name) for name in SPLITS}
    windows = {name: evaluation_windows(t, context, EVALUATION_WINDOWS) for name, t in tokens.items()}
    windows = {name: w for name, w in windows.items() if len(w[0])}

    def final_metrics(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
        return {
            name: language_model_metrics(model, inputs, targets, cfg.train.eval_batch_size, device, cfg.train.precision)
            for name, (inputs, targets) in windows.items()
        }

    return Prepared(
        task=LANGUAGE_MODELLING,
        inputs=corpus.input_spec,
        num_outputs=corpus.num_outputs,
        batches=WindowBatches(
            tokens["train"],
            context,
            per_rank_batch_size(cfg.train.batch_size, process.world_size) or 1,
            seed=cfg.seed,
            device=device,
            rank=process.rank,
            world_size=process.world_size,
        ),
        validation=tuple(t.to(device) for t in windows["validation"]) if "validation" in windows else None,  # type: ignore[arg-type]
        description=f"{source.description} as a {cfg.data.corpus.tokenizer} corpus (vocabulary {corpus.vocab_size:,})",
        sizes=", ".join(f"{n} {len(t):,}" for n, t in tokens.items()) + " tokens",
        final_metrics=final_metrics,
        summary=lambda metrics: f"loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.2f}",
    )


# dense bf16 peaks (FLOP/s) of the GPUs an MFU is reported against; other devices get tokens/s only
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def known_peak_flops(device: torch.device) -> float | None:
    """The published dense bf16 peak of ``device`` (a GPU in PEAK_FLOPS), else None."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def _throughput_log(
    append: Callable[[dict[str, Any]], None], model: torch.nn.Module, model_cfg: Any, device: torch.device
) -> Callable[[dict[str, Any]], None]:
    """For a GPT, add tokens/s to each training log record and, on a GPU whose peak is known, the
    model FLOPs utilisation: tokens/s x FLOPs per token (6N + 12·L·H·Q·T) / peak."""
    if not isinstance(model_cfg, GPTConfig):
        return append
    context = model_cfg.context
    per_token = flops_per_token(model_cfg, num_parameters(model), context)
    peak = known_peak_flops(device)

    def log(record: dict[str, Any]) -> None:
        if "examples_per_s" in record:
            record["tokens_per_s"] = record["examples_per_s"] * context
            if peak is not None:
                record["mfu"] = record["tokens_per_s"] * per_token / peak
        append(record)

    return log


def _privacy(cfg: Any, data: Prepared, process: distributed.DistInfo) -> Privacy | None:
    """DP-SGD for the run when train.privacy asks for it; what it cannot be combined with is refused here."""
    settings = cfg.train.privacy
    if settings is None:
        return None
    refused = [
        (data.task == LANGUAGE_MODELLING, "language modelling (data.corpus)"),
        (process.distributed, "several processes (--nproc)"),
        (cfg.train.grad_accum > 1, "train.grad_accum > 1"),
        (cfg.train.grad_clip is not None, "train.grad_clip (DP-SGD clips each example's gradient to max_grad_norm instead)"),
        (cfg.train.adversarial is not None, "train.adversarial"),
        (cfg.train.nonfinite == "skip_step", "train.nonfinite: skip_step (which steps it skips depends on the examples in them)"),
    ]
    for applies, what in refused:
        if applies:
            raise ConfigError(f"train.privacy: DP-SGD cannot be combined with {what}")
    batches = data.batches
    return Privacy(settings, batches.sample_rate, batches.batch_size)


def _train_in(
    run: RunDir,
    cfg: Any,
    process: distributed.DistInfo,
    resume_files: dict[str, bytes] | None,
    echo: Any,
    live_progress: bool | None,
    quiet: bool,
    command: list[str] | None,
) -> TrainResult:

    # -- data: rows and features fitted on the training split, or a tokenized corpus
    prepare = _prepare_corpus if cfg.data.corpus is not None else _prepare_rows
    data = prepare(run, cfg, process, resume_files is not None)
    device, main = process.device, process.is_main

    # -- model
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = MODELS.build(cfg.model, inputs=data.inputs, num_outputs=data.num_outputs).to(device)
    privacy = _privacy(cfg, data, process)
    if privacy is not None:  # a layer DP-SGD cannot train stops the run here, before any step, or is replaced
        model = check_layers(model, cfg.train.privacy.fix_layers)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # fewer when frozen or LoRA
    resolved = getattr(model, "resolved", None)
    if resolved is not None and main:  # a pretrained base model: record which one, down to its weights' sha256
        base = identity(resolved)
        if resume_files is not None and (run / BASE_MODEL).is_file() and run.read_json(BASE_MODEL) != base:
            raise ConfigError(f"{run.path}: the pretrained base model is not the one the run started from ({run / BASE_MODEL})")
        run.write_json(BASE_MODEL, base)
    if process.distributed:  # but not the same dropout masks: each rank draws its own
        torch.manual_seed(cfg.seed + process.rank)
    # training batches only; a data.augment item that does not fit the inputs stops here, before any step
    augment = (
        Augmenter(cfg.data.augment, data.inputs, data.num_outputs, data.task, cfg.seed + process.rank, device) if cfg.data.augment else None
    )

    adversary = None
    adversarial = cfg.train.adversarial
    if adversarial is not None:
        if data.task != "classification" or data.attack_space is None:
            raise ConfigError(f"train.adversarial: adversarial training is for classifiers; this run's task is {data.task}")
        adversary = Adversary(
            model, data.attack_space(model), adversarial.method, adversarial.eps, adversarial.norm, adversarial.steps,
            adversarial.alpha, adversarial.random_start,
        )

    processes = f" x {process.world_size} processes" if process.distributed else ""
    size = f"{parameters:,} parameters" if trainable == parameters else f"{trainable:,} of {parameters:,} parameters trainable"
    echo(f"training {cfg.model.type} ({size}) on {data.description}: {data.sizes}; device {device}{processes}; run {run.path}")
    if resume_files is None and main:
        (run / "history.jsonl").unlink(missing_ok=True)
    progress = None if quiet or not main else Progress(live=live_progress)
    started = time.perf_counter()

    def save_checkpoint(files: dict[str, bytes], step: int) -> None:
        run.save_checkpoint(step, files, keep=cfg.train.keep_checkpoints)

    if resume_files is not None and main:  # history after the checkpoint is about to be re-done
        run.truncate_history(json.loads(resume_files["state.json"])["step"])
    result = fit(
        model,
        data.batches,
        cfg.train,
        task=data.task,
        num_outputs=data.num_outputs,
        device=device,
        validation=data.validation,
        decode_target=data.decode,
        save_checkpoint=save_checkpoint if main else None,
        resume_files=resume_files,
        log=_throughput_log(run.append_history, model, cfg.model, device) if main else None,
        progress=progress,
        augment=augment,
        adversary=adversary,
        privacy=privacy,
    )

    # -- final weights and metrics on every split (under FSDP2 both take every rank: the layers are spread over them)
    sharded = distributed.is_sharded(model)
    weights = state_dict_tensors(model) if main or sharded else {}
    metrics = data.final_metrics(model) if main or sharded else {}
    if not main:  # rank 0 writes the run; wait for it so every rank returns its metrics
        return TrainResult(run.path, distributed.broadcast_object(None))

    run.write_bytes("model.safetensors", save_tensors(weights))
    summary = {
        "task": data.task,
        "splits": metrics,
        "training": {
            "steps": result.state.step,
            "total_steps": result.total_steps,
            "epochs": result.state.epoch,
            "examples": result.state.samples,
            "best_step": result.state.best_step,
            "best_value": result.state.best_value,
            "monitor": cfg.train.monitor,
            "stopped_early": result.state.stopped_early,
            "seconds": round(result.state.train_seconds, 3),
            "parameters": parameters,
            "trainable_parameters": trainable,
            "device": str(device),
            "processes": process.world_size,
            "skipped_rows": data.skipped_rows,
            "nonfinite_steps": result.state.nonfinite_steps,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "command": command if command is not None else list(sys.argv),
        },
    }
    if privacy is not None:
        summary["privacy"] = asdict(privacy.report(result.state.step))
    run.write_json("metrics.json", summary)
    run.write_manifest()
    if (run / TOKENS_DIR).is_dir():  # the token files are artifacts of the run too
        run.write_manifest([f"{TOKENS_DIR}/{p.name}" for p in sorted((run / TOKENS_DIR).glob("*.bin"))])
    elapsed = time.perf_counter() - started
    split_name = next(name for name in ("test", "validation", "train") if name in metrics)
    echo(f"done in {elapsed:.1f}s: {split_name} {data.summary(metrics[split_name])}; run directory {run.path}")
    return TrainResult(run.path, distributed.broadcast_object(summary))
