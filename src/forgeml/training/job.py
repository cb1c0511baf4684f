"""A training job: from a config to a finished run directory.

    config -> run dir (config.yaml) -> rows, split -> features fitted on train (features.json)
           -> model -> the loop (history.jsonl, checkpoints/) -> model.safetensors, metrics.json, manifest.json
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_tensors

from forgeml.config import config_to_dict, dump_config, load_config
from forgeml.data.augment import Augmenter
from forgeml.data.batches import InMemoryBatches
from forgeml.data.dataset import SPLITS, load_dataset
from forgeml.errors import ConfigError
from forgeml.metrics import persistence_scores
from forgeml.registry import MODELS
from forgeml.run import RunDir
from forgeml.training.callbacks import Progress
from forgeml.training.checkpoint import state_dict_tensors
from forgeml.training.loop import batched_outputs, check_precision, fit, resolve_device, seed_everything, task_metrics

# Keys that may change when a run is resumed: training for longer is the common reason to resume.
RESUMABLE_CHANGES = {"train.epochs", "train.max_steps"}


@dataclass
class TrainResult:
    """What ``forgeml.train`` returns: where the run is and its final metrics per split."""

    run_dir: Path
    metrics: dict[str, Any]


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _check_resumable(saved: dict[str, Any], new: dict[str, Any], run: RunDir) -> None:
    old_flat, new_flat = _flatten(saved), _flatten(new)
    changed = sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k) and k not in RESUMABLE_CHANGES)
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
        ForgeError: a bad config, unreadable data, or a run directory that cannot be used.
    """
    cfg = load_config(config, overrides)
    resolved = config_to_dict(cfg)
    echo = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    device = resolve_device(cfg.train.device)
    check_precision(device, cfg.train.precision)
    resume_files = None
    if resume is not None:
        run = RunDir.open(resume)
        _check_resumable(run.read_yaml("config.yaml"), resolved, run)
        found = run.load_checkpoint(warn=lambda text: echo(f"warning: {text}"))
        if found is None:
            echo(f"{run.path}: no usable checkpoint; starting from the beginning")
        else:
            name, resume_files = found
            echo(f"resuming {run.path} from checkpoint {name}")
    else:
        run = RunDir.create(out if out is not None else Path(cfg.output.dir) / cfg.name, overwrite=overwrite)
    run.write_bytes("config.yaml", dump_config(cfg).encode())
    try:
        return _train_in(run, cfg, device, resume_files, echo, live_progress, quiet, command)
    except BaseException:
        if resume is None and not run.checkpoint_names():
            shutil.rmtree(run.path, ignore_errors=True)  # nothing worth keeping: leave no half run behind
        elif run.checkpoint_names():
            echo(f"training stopped; continue it with: forgeml train {config if isinstance(config, (str, Path)) else 'CONFIG'} --resume {run.path}")
        raise


def _train_in(
    run: RunDir,
    cfg: Any,
    device: torch.device,
    resume_files: dict[str, bytes] | None,
    echo: Any,
    live_progress: bool | None,
    quiet: bool,
    command: list[str] | None,
) -> TrainResult:

    # -- data: rows, split, features fitted on the training split only
    dataset = load_dataset(cfg.data, cfg.seed)
    features = dataset.features
    tables = {name: dataset.split(name) for name in SPLITS}
    features.fit(tables["train"])
    state = features.to_state() | {"splits": dataset.split_summary(), "skipped_rows": dataset.skipped}
    files = features.files()  # e.g. tokenizer.json
    if resume_files is not None and (
        run.read_json("features.json") != state or any(not (run / n).is_file() or (run / n).read_bytes() != b for n, b in files.items())
    ):
        raise ConfigError(f"{run.path}: the data or its preprocessing changed since the run started; start a new run")
    run.write_json("features.json", state)
    for name, content in files.items():
        run.write_bytes(name, content)
    tensors = {
        name: (features.transform_inputs(table), features.transform_target(table)) for name, table in tables.items() if len(table)
    }

    # -- model
    seed_everything(cfg.seed)
    model = MODELS.build(cfg.model, inputs=features.input_spec, num_outputs=features.num_outputs).to(device)
    parameters = sum(p.numel() for p in model.parameters())

    train_x, train_y = (t.to(device) for t in tensors["train"])
    batch_size = None if cfg.train.batch_size == "full" else int(cfg.train.batch_size)
    batches = InMemoryBatches((train_x, train_y), batch_size, shuffle=batch_size is not None, seed=cfg.seed)
    validation = tuple(t.to(device) for t in tensors["validation"]) if "validation" in tensors else None
    # training batches only; a data.augment item that does not fit the inputs stops here, before any step
    augment = Augmenter(cfg.data.augment, features.input_spec, features.num_outputs, features.task, cfg.seed, device) if cfg.data.augment else None

    echo(
        f"training {cfg.model.type} ({parameters:,} parameters) on {dataset.description}: "
        f"{', '.join(f'{n} {len(t):,}' for n, t in tables.items())} rows; device {device}; run {run.path}"
    )
    if resume_files is None:
        (run / "history.jsonl").unlink(missing_ok=True)
    decode = features.decode_regression if features.task == "regression" else None
    progress = None if quiet else Progress(live=live_progress)
    started = time.perf_counter()

    def save_checkpoint(files: dict[str, bytes], step: int) -> None:
        run.save_checkpoint(step, files, keep=cfg.train.keep_checkpoints)

    if resume_files is not None:  # history after the checkpoint is about to be re-done
        run.truncate_history(json.loads(resume_files["state.json"])["step"])
    result = fit(
        model,
        batches,
        cfg.train,
        task=features.task,
        num_outputs=features.num_outputs,
        device=device,
        validation=validation,  # type: ignore[arg-type]
        decode_target=decode,
        save_checkpoint=save_checkpoint,
        resume_files=resume_files,
        log=run.append_history,
        progress=progress,
        augment=augment,
    )

    # -- final weights and metrics on every split
    run.write_bytes("model.safetensors", save_tensors(state_dict_tensors(model)))
    metrics: dict[str, Any] = {}
    for name, (inputs, targets) in tensors.items():
        outputs = batched_outputs(model, inputs, cfg.train.eval_batch_size, device, cfg.train.precision)
        metrics[name] = task_metrics(outputs, targets, features.task, features.num_outputs, decode)
        baseline = features.persistence(tables[name])
        if baseline is not None:  # a forecaster is only useful if it beats "tomorrow = today"
            metrics[name] |= persistence_scores(*baseline)
    summary = {
        "task": features.task,
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
            "device": str(device),
            "skipped_rows": sum(dataset.skipped.values()),
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "command": command if command is not None else list(sys.argv),
        },
    }
    run.write_json("metrics.json", summary)
    run.write_manifest()
    elapsed = time.perf_counter() - started
    split_name = next(name for name in ("test", "validation", "train") if name in metrics)
    key = "accuracy" if features.task == "classification" else "mse"
    versus = ""
    if "persistence_mae" in metrics[split_name]:
        result_mae, baseline_mae = metrics[split_name]["mae"], metrics[split_name]["persistence_mae"]
        versus = f" (mae {result_mae:.4f}; persistence baseline mae {baseline_mae:.4f})"
    echo(f"done in {elapsed:.1f}s: {split_name} {key} {metrics[split_name][key]:.4f}{versus}; run directory {run.path}")
    return TrainResult(run.path, summary)

