"""Shared by the training-loop tests: ``run_fit`` trains a fresh seeded model with ``fit`` as the job
does, keeping every checkpoint and log line (the ``digits`` fixture it trains on is in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from helpers import tiny_config

from forgeml.adversarial import Adversary, input_space
from forgeml.config import load_config
from forgeml.data.augment import Augmenter
from forgeml.data.batches import InMemoryBatches, PoissonBatches
from forgeml.inputs import InputSpec
from forgeml.registry import MODELS
from forgeml.training.loop import FitResult, fit, seed_everything
from forgeml.training.privacy import Privacy, check_layers

CPU = torch.device("cpu")
MLP = {"type": "mlp", "hidden": [32]}


@dataclass
class Digits:
    """Encoded digits splits (8x8 images, 10 classes)."""

    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]
    inputs: InputSpec


@dataclass
class Outcome:
    """What one ``fit`` call produced: the model, the result, checkpoint files by step, the log and
    the augmenter (when there was one)."""

    model: torch.nn.Module
    result: FitResult
    checkpoints: dict[int, dict[str, bytes]]
    logs: list[dict[str, Any]]
    augmenter: Augmenter | None = None


def run_fit(
    data: Digits,
    model: dict[str, Any] = MLP,
    resume_files: dict[str, bytes] | None = None,
    with_validation: bool = True,
    augment: list[dict[str, Any]] | None = None,
    augmenter_class: type[Augmenter] = Augmenter,
    **train: Any,
) -> Outcome:
    """Train a fresh, seeded model on the digits with ``fit``, as the job does, keeping every checkpoint.

    ``augment`` is a ``data.augment`` list, applied by an ``augmenter_class`` built as the job builds one.
    """
    settings = {"epochs": 1, "batch_size": 64, "lr": 0.01, "log_every": 10, "checkpoint_every": None, **train}
    config = tiny_config(model=model, train=settings)
    config["data"]["augment"] = augment or []
    cfg = load_config(config)
    seed_everything(cfg.seed)
    net = MODELS.build(cfg.model, inputs=data.inputs, num_outputs=10)
    augmenter = augmenter_class(cfg.data.augment, data.inputs, 10, "classification", cfg.seed, CPU) if cfg.data.augment else None
    batch_size = None if cfg.train.batch_size == "full" else cfg.train.batch_size
    privacy = None
    if cfg.train.privacy is not None:  # as the job does: Poisson batches, layers checked, DP-SGD in the loop
        batches: Any = PoissonBatches(data.train, batch_size or len(data.train[1]), seed=cfg.seed)
        privacy = Privacy(cfg.train.privacy, batches.sample_rate, batches.batch_size)
        net = check_layers(net, cfg.train.privacy.fix_layers)
    else:
        batches = InMemoryBatches(data.train, batch_size, shuffle=batch_size is not None, seed=cfg.seed)
    adversarial = cfg.train.adversarial
    adversary = None
    if adversarial is not None:  # pixels in the model's own units here: what matters is that it runs as the job runs it
        space = input_space(net, data.inputs, data.train[0])
        adversary = Adversary(net, space, adversarial.method, adversarial.eps, adversarial.norm, adversarial.steps, adversarial.alpha)
    checkpoints: dict[int, dict[str, bytes]] = {}
    logs: list[dict[str, Any]] = []
    result = fit(
        net,
        batches,
        cfg.train,
        task="classification",
        num_outputs=10,
        device=CPU,
        validation=data.validation if with_validation else None,
        save_checkpoint=lambda files, step: checkpoints.__setitem__(step, files),
        resume_files=resume_files,
        log=logs.append,
        augment=augmenter,
        adversary=adversary,
        privacy=privacy,
    )
    return Outcome(net, result, checkpoints, logs, augmenter)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold exactly equal tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
