"""Differentially private training (DP-SGD, Abadi et al. 2016) through Opacus.

Each step, every example's gradient is clipped to ``max_grad_norm`` (Opacus computes per-example
gradients with hooks on the model's layers), the clipped gradients are summed, Gaussian noise of
standard deviation ``noise_multiplier x max_grad_norm`` is added, and the sum is divided by the
expected batch size. Batches are Poisson samples (``data.batches.PoissonBatches``): each example
is in each step independently with probability q = batch_size / rows. The RDP accountant turns
(noise multiplier, q, steps) into the (ε, δ) spent; with ``target_epsilon`` the noise multiplier is
the smallest that keeps the whole run within it.

Layers that mix the examples of a batch (BatchNorm) have no per-example gradients; recurrent and
attention layers need Opacus's own versions. ``check_layers`` names the first such layer and its
replacement before training starts, or swaps them when ``fix_layers`` is set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from forgeml.config import PrivacyConfig
from forgeml.errors import ConfigError

REPLACEMENTS = {
    "BatchNorm1d": "GroupNorm (in a cnn: batch_norm: false)",
    "BatchNorm2d": "GroupNorm (in a cnn: batch_norm: false)",
    "BatchNorm3d": "GroupNorm",
    "SyncBatchNorm": "GroupNorm",
    "InstanceNorm1d": "InstanceNorm without track_running_stats",
    "InstanceNorm2d": "InstanceNorm without track_running_stats",
    "LSTM": "Opacus's DPLSTM",
    "GRU": "Opacus's DPGRU",
    "RNN": "Opacus's DPRNN",
    "MultiheadAttention": "Opacus's DPMultiheadAttention",
}


def check_layers(model: nn.Module, fix: bool) -> nn.Module:
    """``model`` if DP-SGD can train it; with ``fix``, a copy whose unsupported layers are replaced
    by Opacus's fixers (BatchNorm -> GroupNorm, LSTM -> DPLSTM, ...).

    Raises:
        ConfigError: an unsupported layer and ``fix`` is off; the message names the layer and its replacement.
    """
    from opacus.validators import ModuleValidator

    validators = ModuleValidator.VALIDATORS  # filled in by importing opacus.validators: layer class -> check
    problems = [(name, module) for name, module in model.named_modules() if type(module) in validators and validators[type(module)](module)]
    if not problems:
        return model
    if fix:
        fixed = ModuleValidator.fix(model)
        remaining = ModuleValidator.validate(fixed.train(), strict=False)
        if remaining:
            raise ConfigError(f"train.privacy.fix_layers: Opacus could not make the model trainable with DP-SGD ({remaining[0]})")
        return fixed
    name, module = problems[0]
    kind = type(module).__name__
    replacement = REPLACEMENTS.get(kind, "a layer Opacus supports")
    raise ConfigError(
        f"train.privacy: layer {name!r} ({kind}) cannot be trained with DP-SGD (no per-example gradients); "
        f"replace it with {replacement}, or set train.privacy.fix_layers: true to convert it"
    )


# Rényi orders the accountant minimises over: Opacus's defaults stop at 63, which short runs (few
# steps) outgrow; the bound is tightest at the best order, so more orders only make it tighter
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + list(range(64, 257, 4)) + [320, 384, 512, 768, 1024]


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The ε of (ε, δ)-DP after ``steps`` DP-SGD steps (RDP accountant)."""
    from opacus.accountants import RDPAccountant

    if steps <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta, alphas=ALPHAS))


@dataclass
class PrivacyReport:
    """What a DP run spent, for metrics.json and the log."""

    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    steps: int
    accountant: str = "rdp"


class Privacy:
    """DP-SGD for one run: the noise calibrated to the budget, the optimizer that privatises each
    step, and the ε spent so far.

    Args:
        cfg: ``train.privacy``.
        sample_rate: q, the probability that an example is in a step's batch.
        expected_batch_size: the mean batch size (q x rows); the noised sum is divided by it.
    """

    def __init__(self, cfg: PrivacyConfig, sample_rate: float, expected_batch_size: int):
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.expected_batch_size = expected_batch_size
        self.noise_multiplier: Optional[float] = cfg.noise_multiplier
        self._grad_sample: Any = None

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.Optimizer:
        """Hook per-example gradients into ``model`` (in place) and wrap ``optimizer`` so each step
        clips, sums and noises them. Returns the optimizer to step.

        Raises:
            ConfigError: ``target_epsilon`` cannot be reached in ``total_steps`` steps at any noise level.
        """
        from opacus import GradSampleModule
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        if self.noise_multiplier is None:
            try:
                self.noise_multiplier = float(
                    get_noise_multiplier(
                        target_epsilon=self.cfg.target_epsilon,
                        target_delta=self.cfg.delta,
                        sample_rate=self.sample_rate,
                        steps=total_steps,
                        accountant="rdp",
                        alphas=ALPHAS,
                    )
                )
            except ValueError as exc:
                raise ConfigError(f"train.privacy.target_epsilon: {self.cfg.target_epsilon} cannot be reached ({exc})") from None
        # the hooks sit on model's own layers, so calling model (or a compiled model) records per-example gradients
        self._grad_sample = GradSampleModule(model)
        # Opacus's backward hooks fire on the first layer even though the inputs need no gradient: expected
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed", category=UserWarning)
        return DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.cfg.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
        )

    def epsilon(self, steps: int) -> float:
        """The ε spent after ``steps`` steps."""
        assert self.noise_multiplier is not None, "attach() first"
        return epsilon_spent(self.noise_multiplier, self.sample_rate, steps, self.cfg.delta)

    def describe(self, total_steps: int) -> str:
        """One line for the log: the noise and what the whole run will spend."""
        return (
            f"DP-SGD: noise multiplier {self.noise_multiplier:.4f}, gradients clipped to {self.cfg.max_grad_norm:g}, "
            f"sample rate {self.sample_rate:.4g} (batches of {self.expected_batch_size} on average): "
            f"ε {self.epsilon(total_steps):.3f} at δ {self.cfg.delta:g} after {total_steps:,} steps"
        )

    def report(self, steps: int) -> PrivacyReport:
        assert self.noise_multiplier is not None, "attach() first"
        return PrivacyReport(
            round(self.epsilon(steps), 6), self.cfg.delta, self.noise_multiplier, self.sample_rate, self.cfg.max_grad_norm, steps
        )
