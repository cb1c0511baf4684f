"""The training loop, in one file that reads top to bottom.

    for each optimizer step:
        set the learning rate from the schedule
        forward / backward over grad_accum micro-batches (augmented, or adversarial, when asked; under autocast when asked)
        a nan or inf loss: stop, or skip the step (train.nonfinite)
        clip, step, zero the gradients
        log; evaluate on validation; keep the best weights; stop early; checkpoint

Everything random (dropout, shuffling, augmentation) draws from seeded generators whose state goes
into each checkpoint, so a run resumed from a checkpoint continues bit for bit as if it had never stopped.

Under torchrun (see ``training.distributed``) the same loop runs in every process: the model is
wrapped in DDP, which averages gradients over ranks once per optimizer step (the other micro-batches
of an accumulation run under ``no_sync``), or sharded with FSDP2 (``train.strategy: fsdp``), which
reduce-scatters them likewise; each rank's batches are its shard of the same global batch, so the
averaged gradient is the gradient of the global batch. Rank 0 evaluates and broadcasts its numbers,
so all ranks stop together (under FSDP2 every rank runs the evaluation, since each forward pass
gathers the layers from all of them). The logged training loss is the mean over ranks. Only rank 0
gets ``log``, ``progress`` and ``save_checkpoint``; the checkpoint holds every rank's RNG states
(``torch_rank1``, ...) and, under FSDP2 too, whole tensors gathered to rank 0.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from forgeml.adversarial import Adversary
from forgeml.config import TrainConfig
from forgeml.data.augment import Augmenter
from forgeml.data.batches import InMemoryBatches
from forgeml.errors import ConfigError, TrainingError
from forgeml.metrics import lower_is_better, score
from forgeml.training import checkpoint, distributed
from forgeml.training.callbacks import Progress
from forgeml.training.optim import build_optimizer, lr_at
from forgeml.training.privacy import Privacy

# --------------------------------------------------------------------------------------------------
# device and precision


def resolve_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu. An explicit device that is absent is a config error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but no CUDA device is available; use auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ConfigError("train.device: 'mps' asked for, but this machine has no MPS device; use auto or cpu")
    return torch.device(name)


def check_precision(device: torch.device, precision: str) -> None:
    """fp16 training needs a GradScaler, which forgeml supports on CUDA only."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA device (it uses a GradScaler), this run is on {device.type}; use bf16 or fp32")


def autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_deterministic(enabled: bool) -> None:
    # only touch the setting when it changes: the call imports torch._dynamo (about 1.5 s)
    if enabled == torch.are_deterministic_algorithms_enabled():
        return
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled)


# --------------------------------------------------------------------------------------------------
# loss and evaluation

LANGUAGE_MODELLING = "language_modelling"  # predict every next token of a window (data.corpus)


def compute_loss(outputs: torch.Tensor, targets: torch.Tensor, task: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy (classification) or mean squared error (regression), as a float32 scalar.

    Classification targets are class indices (N), or class probabilities (N x C float, what mixup
    makes); label smoothing applies to both.
    """
    if task == "classification":
        return F.cross_entropy(outputs.float(), targets, label_smoothing=label_smoothing)
    if task == LANGUAGE_MODELLING:  # N x T x V logits, N x T next tokens: every position predicts one
        return F.cross_entropy(outputs.flatten(0, 1).float(), targets.flatten(), label_smoothing=label_smoothing)
    return F.mse_loss(outputs.float().squeeze(-1), targets)


LOGITS_PER_BATCH = 1 << 26  # logits a language-model evaluation batch may hold (256 MB in float32)


@torch.no_grad()
def language_model_metrics(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, device: torch.device, precision: str = "fp32"
) -> dict[str, float]:
    """Mean next-token loss and perplexity (exp of it) over windows, batch by batch: the N x T x V
    logits of a whole split would not fit in memory. Batches hold at most ``batch_size`` windows and
    about ``LOGITS_PER_BATCH`` logits (a 49k-token vocabulary makes 200 MB of logits per 1,000 positions)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    start, size = 0, 1  # the first window alone tells the vocabulary, which sizes the batches
    while start < inputs.shape[0]:
        with autocast(device, precision):
            logits = model(inputs[start : start + size].to(device))
        batch_targets = targets[start : start + size].to(device)
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), batch_targets.flatten(), reduction="sum"))
        count += batch_targets.numel()
        start += size
        size = max(1, min(batch_size, LOGITS_PER_BATCH // max(1, logits.shape[1] * logits.shape[2])))
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


@torch.no_grad()
def batched_outputs(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """Model outputs for ``inputs`` in eval mode, in batches, as float32 on the CPU."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, inputs.shape[0], batch_size):
        with autocast(device, precision):
            chunks.append(model(inputs[start : start + batch_size].to(device)).float().cpu())
    model.train(was_training)
    if not chunks:
        return torch.zeros(0)
    return torch.cat(chunks)


def task_metrics(
    outputs: torch.Tensor, targets: torch.Tensor, task: str, num_outputs: int, decode: Callable[[np.ndarray], np.ndarray] | None = None
) -> dict[str, Any]:
    """Loss (on encoded targets) plus the task's metrics (in the data's units) for model outputs."""
    return {"loss": float(compute_loss(outputs, targets, task))} | score(task, outputs.numpy(), targets.numpy(), num_outputs, decode)


# --------------------------------------------------------------------------------------------------
# the loop


def improves(value: float, best: float | None, lower_better: bool, min_delta: float = 0.0) -> bool:
    """Whether a monitored value beats the best so far by more than ``min_delta`` (nan and inf never do)."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if lower_better else value > best + min_delta


@dataclass
class LoopState:
    """Counters that, with the weights, optimizer and RNG states, fully describe where training is."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # micro-batches of the current epoch already used
    samples: int = 0
    best_value: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    # the training loss accumulated since the last log line, so a resumed run logs the same numbers
    loss_since_log: float = 0.0
    steps_since_log: int = 0
    samples_since_log: int = 0
    nonfinite_steps: int = 0  # steps skipped for a nan or inf loss (train.nonfinite: skip_step)
    nonfinite_in_a_row: int = 0


def nonfinite_loss(loss: float, lr: float, cfg: TrainConfig, state: LoopState) -> str | None:
    """Count a step whose loss is nan or inf; the reason to stop training, or None to skip the step.

    Only the loss is looked at: under fp16 the GradScaler skips the steps whose *gradients* overflow
    (and lowers its scale) on its own, and those are not counted here. A non-finite loss is an
    overflow of the forward pass, which no loss scale mends.
    """
    state.nonfinite_steps += 1
    state.nonfinite_in_a_row += 1
    where = f"step {state.step + 1}: the loss is {loss} at lr {lr:g}"
    if cfg.nonfinite == "stop":
        return f"{where}; training stopped; lower train.lr"
    if state.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
        return f"{where}, {state.nonfinite_in_a_row} such steps in a row (train.max_nonfinite_steps); training stopped; lower train.lr"
    return None


@dataclass
class FitResult:
    state: LoopState
    total_steps: int
    validation: dict[str, Any] = field(default_factory=dict)


def fit(
    model: nn.Module,
    batches: InMemoryBatches,
    cfg: TrainConfig,
    *,
    task: str,
    num_outputs: int,
    device: torch.device,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    decode_target: Callable[[np.ndarray], np.ndarray] | None = None,
    save_checkpoint: Callable[[dict[str, bytes], int], None] | None = None,
    resume_files: dict[str, bytes] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
    augment: Augmenter | None = None,
    adversary: Adversary | None = None,
    privacy: Privacy | None = None,
) -> FitResult:
    """Train ``model`` in place on ``batches`` (tensors already on ``device``).

    Args:
        model: the network, on ``device``.
        batches: in-memory training batches.
        cfg: the ``train`` section of the config.
        task: "classification" or "regression".
        num_outputs: classes (classification) or 1.
        device: where the model and tensors live.
        validation: (inputs, targets) for evaluation, early stopping and best weights.
        decode_target: maps normalised regression targets back to the data's units for metrics.
        save_checkpoint: called with the checkpoint files and the step to write them.
        resume_files: a checkpoint's files to continue from.
        log: called with each history record (training logs and evaluations).
        progress: a progress display.
        augment: applied to each training micro-batch (never to validation); its generator state is
            checkpointed with the others.
        adversary: with ``cfg.adversarial``, crafts the adversarial examples that replace a share of
            each (augmented) training micro-batch; its random starts draw from torch's generator.
        privacy: DP-SGD (``cfg.privacy``): per-example gradients are clipped and noised at each step
            (the noise draws from torch's generator), and every log record holds the ε spent.

    Returns:
        The final loop state; the model holds the final (or best, with keep_best) weights.

    Raises:
        TrainingError: a step's loss is nan or inf (train.nonfinite: stop), or was so for
            train.max_nonfinite_steps steps in a row (skip_step).
    """
    check_precision(device, cfg.precision)
    if cfg.monitor != "loss" and validation is not None:
        known = {
            "classification": ("accuracy", "precision_macro", "recall_macro", "f1_macro"),
            LANGUAGE_MODELLING: ("perplexity",),
        }.get(task, ("mse", "mae", "r2"))
        known += ("robust_accuracy",) if adversary is not None else ()  # accuracy under the training attack
        if cfg.monitor not in known:
            raise ConfigError(f"train.monitor: {cfg.monitor!r} is not one of: loss, {', '.join(known)}")
    set_deterministic(cfg.deterministic)
    rank, world = distributed.rank(), distributed.world_size()
    sharded = world > 1 and cfg.strategy == "fsdp"
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    steps_per_epoch = math.ceil(len(batches) / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    lower_better = lower_is_better(cfg.monitor)
    min_delta = cfg.early_stopping.min_delta if cfg.early_stopping else 0.0
    track_best = validation is not None and (cfg.keep_best or cfg.early_stopping is not None)

    state = LoopState()
    best_weights: dict[str, torch.Tensor] | None = None
    epoch_start_rng = batches.generator.get_state()
    if resume_files is not None:
        resumed = checkpoint.unpack(resume_files)
        checkpoint.load_state_dict_tensors(model, resumed.model)
        scaler.load_state_dict(resumed.state.pop("scaler", {}) or scaler.state_dict())
        state = LoopState(**resumed.state)
        best_weights = resumed.best
        suffix = f"_rank{rank}" if rank > 0 else ""
        if "torch" + suffix in resumed.rng:
            torch.set_rng_state(resumed.rng["torch" + suffix])
        else:  # written by fewer processes: this rank continues correctly, but not bit for bit
            torch.manual_seed(state.step * 1_000_003 + rank)
        if device.type == "cuda" and "cuda" + suffix in resumed.rng:
            torch.cuda.set_rng_state(resumed.rng["cuda" + suffix], device)
        if augment is not None and "augment" + suffix in resumed.rng:
            augment.set_state(resumed.rng["augment" + suffix])
        # mid-epoch: replay the epoch's permutation from the generator state at its start
        epoch_start_rng = resumed.rng["epoch_start"]
        batches.generator.set_state(epoch_start_rng if state.batch_in_epoch > 0 else resumed.rng["shuffle"])

    # FSDP2 shards the loaded weights in place (every rank loaded the same) before the optimizer is
    # built on the shards; DDP wraps after loading (it broadcasts rank 0's weights at construction),
    # and evaluation and checkpoints keep using the plain `model` (no "module." prefixes, no collectives)
    if sharded:
        distributed.shard(model)
    optimizer = build_optimizer(model, cfg)
    if resume_files is not None:
        checkpoint.load_optimizer_state(model, optimizer, resumed.optimizer)
    if privacy is not None:  # the wrapper clips and noises per-example gradients before the optimizer's step
        optimizer = privacy.attach(model, optimizer, total_steps)
        if progress is not None:
            progress.message(privacy.describe(total_steps))
    train_model: nn.Module = model
    if world > 1 and not sharded:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # the compiled module shares the weights; only training steps go through it
    forward = torch.compile(train_model) if cfg.compile else train_model
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32

    def evaluate() -> dict[str, Any]:
        assert validation is not None
        if task == LANGUAGE_MODELLING:
            return language_model_metrics(model, validation[0], validation[1], cfg.eval_batch_size, device, cfg.precision)
        outputs = batched_outputs(model, validation[0], cfg.eval_batch_size, device, cfg.precision)
        metrics = task_metrics(outputs, validation[1].cpu(), task, num_outputs, decode_target)
        if adversary is not None:  # robust accuracy overfits before clean accuracy does: it is what to keep the best of
            with autocast(device, cfg.precision):
                metrics["robust_accuracy"] = adversary.robust_accuracy(validation[0], validation[1], cfg.eval_batch_size)
        return metrics

    def make_checkpoint() -> None:
        # every rank's dropout and augmentation generators differ: gather them all (a collective,
        # so every rank gets here), rank 0 writes
        own = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(device)
        if augment is not None:
            own["augment"] = augment.get_state()
        per_rank = distributed.all_gather_object(own)
        loss_since_log = distributed.all_reduce_mean(running_loss).item()
        if sharded or save_checkpoint is not None:  # under FSDP2, gathering the whole state to rank 0 takes every rank
            weights, optimizer_state = checkpoint.state_dict_tensors(model), checkpoint.optimizer_state(model, optimizer)
        if save_checkpoint is None:
            return
        rng = {"shuffle": batches.generator.get_state(), "epoch_start": epoch_start_rng} | per_rank[0]
        for other, states in enumerate(per_rank[1:], start=1):
            rng |= {f"{name}_rank{other}": value.cpu() for name, value in states.items()}
        state.train_seconds = seconds_before + time.perf_counter() - wall_start
        state.loss_since_log = loss_since_log
        saved = asdict(state) | {"scaler": scaler.state_dict() if scaler.is_enabled() else None}
        save_checkpoint(checkpoint.pack(weights, optimizer_state, rng, best_weights, saved), state.step)

    if progress is not None:
        progress.start(state.step, total_steps, math.ceil(total_steps / steps_per_epoch))
    wall_start, seconds_before = time.perf_counter(), state.train_seconds
    model.train()
    running_loss = torch.tensor(state.loss_since_log, dtype=torch.float32, device=device)
    last_log_time = time.perf_counter()
    validation_metrics: dict[str, Any] = {}

    while state.step < total_steps and not state.stopped_early:
        if state.batch_in_epoch == 0:
            epoch_start_rng = batches.generator.get_state()
        micro: list[tuple[torch.Tensor, ...]] = []
        for batch in batches.epoch(start_batch=state.batch_in_epoch):
            micro.append(batch)
            state.batch_in_epoch += 1
            epoch_done = state.batch_in_epoch == len(batches)
            if len(micro) < cfg.grad_accum and not epoch_done:
                continue

            # -- one optimizer step over the accumulated micro-batches
            lr = lr_at(state.step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), dtype=torch.float32, device=device)
            for index, (inputs, targets) in enumerate(micro):
                if augment is not None:
                    inputs, targets = augment(inputs, targets)
                # DDP: all-reduce the gradients once, after the last micro-batch's backward
                last = index == len(micro) - 1
                if sharded:  # FSDP2: likewise, reduce-scatter only after the last micro-batch
                    model.set_requires_gradient_sync(last)  # type: ignore[operator]
                with train_model.no_sync() if world > 1 and not sharded and not last else nullcontext():  # type: ignore[operator]
                    with autocast(device, cfg.precision):
                        if adversary is not None and cfg.adversarial is not None:
                            # ε grows linearly over eps_warmup steps: a fresh model cannot fit at the full radius
                            ramp = cfg.adversarial.eps_warmup
                            strength = min(1.0, (state.step + 1) / ramp) if ramp else 1.0
                            outputs = adversary.training_outputs(forward, inputs, targets, cfg.adversarial.ratio, strength)
                        else:
                            outputs = forward(inputs)
                    loss = compute_loss(outputs, targets, task, cfg.label_smoothing)
                    if len(micro) > 1:  # a mean over the accumulated micro-batches
                        loss = loss / len(micro)
                    scaler.scale(loss).backward()
                step_loss += loss.detach()
                state.samples_since_log += inputs.shape[0] * world
                state.samples += inputs.shape[0] * world
            # the one CPU-GPU sync per step (and, over several processes, an all-reduce, so that every
            # rank decides alike): weights must never take a step from a nan or inf loss
            loss_value = distributed.all_reduce_mean(step_loss).item()
            if math.isfinite(loss_value):
                state.nonfinite_in_a_row = 0
                running_loss += step_loss
                state.steps_since_log += 1  # the logged loss is the mean over the steps taken
                if cfg.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:  # nothing is stepped or checkpointed from it: the checkpoints and best weights so far stay finite
                stop = nonfinite_loss(loss_value, lr, cfg, state)
                if stop is not None:
                    if progress is not None:
                        progress.stop()
                    raise TrainingError(stop)
            optimizer.zero_grad(set_to_none=True)
            micro = []
            state.step += 1
            if epoch_done:
                state.epoch += 1
                state.batch_in_epoch = 0
            final = state.step >= total_steps

            # -- log the training loss
            if state.step % cfg.log_every == 0 or final:
                now = time.perf_counter()
                # the mean over ranks of the loss summed on each since the last line
                mean_loss = distributed.all_reduce_mean(running_loss).item() / max(state.steps_since_log, 1)
                rate = state.samples_since_log / max(now - last_log_time, 1e-9)
                if log is not None:
                    record = {"step": state.step, "epoch": state.epoch, "split": "train", "loss": mean_loss, "lr": lr, "examples_per_s": rate}
                    if cfg.nonfinite == "skip_step":
                        record["nonfinite_steps"] = state.nonfinite_steps
                    if state.steps_since_log == 0:  # every step since the last line was skipped: no loss to show
                        del record["loss"]
                    log(record | ({"epsilon": privacy.epsilon(state.step)} if privacy is not None else {}))
                if progress is not None and state.steps_since_log:
                    progress.update(state.step, epoch=max(1, state.epoch + (state.batch_in_epoch > 0)), loss=mean_loss, rate=rate)
                running_loss.zero_()
                state.steps_since_log, state.samples_since_log = 0, 0
                last_log_time = now

            # -- evaluate, keep the best weights, stop early (time spent here is left out of ex/s)
            pause_start = time.perf_counter()
            due = (state.step % cfg.eval_every == 0) if cfg.eval_every else epoch_done
            if validation is not None and (due or final):
                # rank 0 evaluates (the weights are the same everywhere) and its numbers decide for
                # every rank, so early stopping and the best weights stay in lockstep
                validation_metrics = distributed.broadcast_object(evaluate() if rank == 0 or sharded else None)
                value = validation_metrics[cfg.monitor]
                shown = {"classification": "accuracy", LANGUAGE_MODELLING: "perplexity"}.get(task, "mse")
                summary = f"{cfg.monitor} {value:.4f}" + (f"  {shown} {validation_metrics[shown]:.4f}" if shown != cfg.monitor else "")
                if log is not None:
                    record = {k: v for k, v in validation_metrics.items() if k != "confusion_matrix"}
                    log({"step": state.step, "epoch": state.epoch, "split": "validation", **record})
                if progress is not None:
                    progress.evaluation(state.step, summary)
                if track_best:
                    if improves(value, state.best_value, lower_better, min_delta):
                        state.best_value, state.best_step = float(value), state.step
                        state.evals_without_improvement = 0
                        best_weights = checkpoint.state_dict_tensors(model)
                    else:
                        state.evals_without_improvement += 1
                        if cfg.early_stopping is not None and state.evals_without_improvement >= cfg.early_stopping.patience:
                            state.stopped_early = True
                            if progress is not None:
                                progress.message(
                                    f"early stopping at step {state.step}: validation {cfg.monitor} has not improved "
                                    f"for {cfg.early_stopping.patience} evaluations (best {state.best_value:.4f} at step {state.best_step})"
                                )

            # -- checkpoint
            due = (state.step % cfg.checkpoint_every == 0) if cfg.checkpoint_every else epoch_done
            if due or final or state.stopped_early:
                make_checkpoint()
            last_log_time += time.perf_counter() - pause_start
            if final or state.stopped_early:
                break

    state.train_seconds = seconds_before + time.perf_counter() - wall_start
    if progress is not None:
        progress.stop()
    if track_best and cfg.keep_best and best_weights is not None:
        checkpoint.load_state_dict_tensors(model, best_weights)
    return FitResult(state, total_steps, validation_metrics)


def seed_everything(seed: int) -> None:
    """Seed torch (initialisation, dropout) and numpy."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
