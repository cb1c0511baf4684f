"""Augmentation: random changes to training batches, as tensor operations on the training device.

    data:
      augment:                                   # applied in this order, to training batches only
        - {type: random_crop, padding: 4}
        - {type: flip, p: 0.5}
        - {type: mixup, alpha: 0.2}

Each augmentation registers under its YAML ``type`` with its config class and says which input kinds
(``InputSpec.kind``) it applies to. It is built once per run from its config and the model input, then
called on whole batches: no loop over examples, no copy to the CPU.

An ``Augmenter`` runs the list. Every random draw comes from its own ``torch.Generator`` on the
training device, never the global RNG, so turning augmentation on leaves the dropout and shuffling
streams as they were; the generator's state goes into each checkpoint, so a resumed run continues
bit for bit. Validation, evaluation and prediction never see it.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator

from forgeml.config import Section
from forgeml.errors import ConfigError
from forgeml.inputs import InputKind, InputSpec
from forgeml.registry import AUGMENTS


# The augmentation generator is seeded with the run seed plus this, so that on the CPU its draws do
# not repeat those of the shuffling generator (seeded with the run seed itself).
SEED_OFFSET = 1


class Augmentation:
    """Base of the augmentations: built once per run, then called on each training batch.

    Subclasses set ``kinds`` (the input kinds they apply to) and implement ``__call__``; those with
    limits that depend on the input (image size, padding id) check them in ``__init__`` and raise
    ValueError, which the Augmenter reports with the YAML path.
    """

    kinds: tuple[InputKind, ...] = ()

    def __init__(self, cfg: Any, *, inputs: InputSpec, task: str, num_outputs: int):
        self.cfg = cfg

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _uniform(size: tuple[int, ...], low: float, high: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, device=like.device, dtype=like.dtype)


def _chosen(rows: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A boolean per row, true with probability p (always drawn, so the stream does not depend on p)."""
    return torch.rand(rows, generator=generator, device=device) < p


# --------------------------------------------------------------------------------------------------
# images: N x C x H x W


class RandomCropConfig(Section):
    """Pad the image, then crop it back to its size at a random offset: shifts of up to `padding` pixels."""

    type: Literal["random_crop"] = Field(description="Pad, then crop back to the original size at a random offset.")
    padding: int = Field(4, ge=1, description="Pixels added on each side; the image moves by up to this many pixels each way.")
    fill: Literal["zeros", "reflect"] = Field(
        "zeros", description="zeros: pad with 0 (the mean pixel after standard normalisation); reflect: mirror the border pixels."
    )


@AUGMENTS.register("random_crop", RandomCropConfig)
class RandomCrop(Augmentation):
    kinds = ("image",)

    def __init__(self, cfg: RandomCropConfig, *, inputs: InputSpec, task: str, num_outputs: int):
        super().__init__(cfg, inputs=inputs, task=task, num_outputs=num_outputs)
        height, width = inputs.shape[1:]
        if cfg.fill == "reflect" and cfg.padding >= min(height, width):
            raise ValueError(f"padding {cfg.padding} with fill: reflect needs images larger than that, these are {height}x{width}; use fill: zeros")

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows, channels, height, width = inputs.shape
        pad = self.cfg.padding
        padded = F.pad(inputs, (pad, pad, pad, pad), mode="constant" if self.cfg.fill == "zeros" else "reflect")
        top = torch.randint(0, 2 * pad + 1, (rows, 1), generator=generator, device=inputs.device)
        left = torch.randint(0, 2 * pad + 1, (rows, 1), generator=generator, device=inputs.device)
        # two gathers with per-example index grids: rows top..top+H-1, then columns left..left+W-1
        row_index = (top + torch.arange(height, device=inputs.device)).view(rows, 1, height, 1)
        padded = padded.gather(2, row_index.expand(rows, channels, height, width + 2 * pad))
        column_index = (left + torch.arange(width, device=inputs.device)).view(rows, 1, 1, width)
        return padded.gather(3, column_index.expand(rows, channels, height, width)), targets


class FlipConfig(Section):
    """Mirror each image with probability p."""

    type: Literal["flip"] = Field(description="Mirror images left-to-right (or top-to-bottom).")
    p: float = Field(0.5, ge=0, le=1, description="Probability that an image is flipped.")
    vertical: bool = Field(False, description="Flip top-to-bottom instead of left-to-right (images with no up, such as microscopy).")


@AUGMENTS.register("flip", FlipConfig)
class Flip(Augmentation):
    kinds = ("image",)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        flip = _chosen(inputs.shape[0], self.cfg.p, generator, inputs.device).view(-1, 1, 1, 1)
        return torch.where(flip, inputs.flip(-2 if self.cfg.vertical else -1), inputs), targets


class AffineConfig(Section):
    """Rotate, shift and zoom each image by random amounts (bilinear; uncovered pixels become 0)."""

    type: Literal["affine"] = Field(description="Random rotation, translation and scaling.")
    degrees: float = Field(10.0, ge=0, le=180, description="Rotate by an angle drawn uniformly from [-degrees, degrees].")
    translate: float = Field(0.1, ge=0, le=1, description="Shift by up to this fraction of the width (and of the height), each way.")
    scale: tuple[float, float] = Field((0.9, 1.1), description="Zoom by a factor drawn uniformly from [low, high]; above 1 enlarges.")

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"{list(value)} is not a range [low, high] with 0 < low <= high, e.g. [0.9, 1.1]")
        return value


def affine_theta(angle: torch.Tensor, shift: torch.Tensor, zoom: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The N x 2 x 3 matrices for ``F.affine_grid`` that rotate by ``angle`` (radians), zoom by
    ``zoom`` and then shift by ``shift`` (x, y in normalised units, where 2 spans the image).

    affine_grid asks, for each output pixel, where in the input it comes from: the inverse transform.
    The rotation is done in pixel units, so the off-diagonal terms carry the aspect ratio; rotating in
    normalised units would shear images that are not square.
    """
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    matrix = torch.stack([torch.stack([cos, sin * height / width], -1), torch.stack([-sin * width / height, cos], -1)], -2)
    offset = -(matrix @ shift.unsqueeze(-1))
    return torch.cat([matrix, offset], dim=-1)


@AUGMENTS.register("affine", AffineConfig)
class Affine(Augmentation):
    kinds = ("image",)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows, height, width = inputs.shape[0], inputs.shape[-2], inputs.shape[-1]
        limit = math.radians(self.cfg.degrees)
        angle = _uniform((rows,), -limit, limit, generator, inputs)
        shift = _uniform((rows, 2), -2 * self.cfg.translate, 2 * self.cfg.translate, generator, inputs)
        zoom = _uniform((rows,), *self.cfg.scale, generator, inputs)
        theta = affine_theta(angle, shift, zoom, height, width)
        grid = F.affine_grid(theta, list(inputs.shape), align_corners=False)
        return F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False), targets


class NoiseConfig(Section):
    """Add Gaussian noise to every value."""

    type: Literal["noise"] = Field(description="Additive Gaussian noise.")
    std: float = Field(0.1, gt=0, description="Standard deviation of the noise, in the inputs' normalised units.")


@AUGMENTS.register("noise", NoiseConfig)
class Noise(Augmentation):
    kinds = ("image", "vector", "sequence")  # any float input; numbers are normalised, so std is in standard deviations

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return inputs + self.cfg.std * noise, targets


class CutoutConfig(Section):
    """Set a square of each image to 0, at a random place inside the image."""

    type: Literal["cutout"] = Field(description="Blank out a random square (DeVries and Taylor, 2017).")
    size: int = Field(8, ge=1, description="Side of the square in pixels; it always lies wholly inside the image.")
    p: float = Field(1.0, ge=0, le=1, description="Probability that an image gets a square.")


@AUGMENTS.register("cutout", CutoutConfig)
class Cutout(Augmentation):
    kinds = ("image",)

    def __init__(self, cfg: CutoutConfig, *, inputs: InputSpec, task: str, num_outputs: int):
        super().__init__(cfg, inputs=inputs, task=task, num_outputs=num_outputs)
        height, width = inputs.shape[1:]
        if cfg.size > min(height, width):
            raise ValueError(f"size {cfg.size} is larger than the {height}x{width} images")

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows, height, width, size = inputs.shape[0], inputs.shape[-2], inputs.shape[-1], self.cfg.size
        device = inputs.device
        top = torch.randint(0, height - size + 1, (rows, 1), generator=generator, device=device)
        left = torch.randint(0, width - size + 1, (rows, 1), generator=generator, device=device)
        chosen = _chosen(rows, self.cfg.p, generator, device)
        row = torch.arange(height, device=device)
        column = torch.arange(width, device=device)
        in_rows = (row >= top) & (row < top + size)  # N x H
        in_columns = (column >= left) & (column < left + size)  # N x W
        square = in_rows[:, :, None] & in_columns[:, None, :] & chosen[:, None, None]
        return inputs.masked_fill(square[:, None], 0.0), targets


# --------------------------------------------------------------------------------------------------
# mixing examples: images and vectors, classification or regression


class MixupConfig(Section):
    """Blend each example (and its target) with another from the same batch (Zhang et al., 2018)."""

    type: Literal["mixup"] = Field(description="Blend pairs of examples and their targets.")
    alpha: float = Field(0.2, gt=0, description="The blend weight is drawn from Beta(alpha, alpha); small alpha keeps most blends near one example.")


# Tries per Gamma draw: each is accepted with probability above 0.95, so all of them fail with
# probability below 1e-10 (the last try is then used, a slightly off draw rather than an error).
GAMMA_TRIES = 8


def log_gamma_samples(shape: float, size: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Logs of Gamma(shape, 1) draws, all taken from ``generator``.

    torch's own Gamma (and so Beta) sampler takes no generator, only the global RNG. This is
    Marsaglia and Tsang's method (2000), vectorised with a fixed number of tries, so it needs no
    CPU round trip. For shape < 1 it uses their boost Gamma(a) = Gamma(a + 1) * U^(1/a), in logs
    because for small shapes the draws underflow float32.
    """
    boost = shape < 1
    a = shape + 1 if boost else shape
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    normal = torch.randn((*size, GAMMA_TRIES), generator=generator, device=device)
    uniform = torch.rand((*size, GAMMA_TRIES), generator=generator, device=device)
    v = (1 + c * normal) ** 3
    log_v = torch.log(v.clamp_min(torch.finfo(v.dtype).tiny))
    accepted = (v > 0) & (torch.log(uniform) < 0.5 * normal**2 + d - d * v + d * log_v)
    first = torch.where(accepted.any(-1), accepted.int().argmax(-1), GAMMA_TRIES - 1)
    log_sample = math.log(d) + log_v.gather(-1, first.unsqueeze(-1)).squeeze(-1)
    if boost:
        extra = torch.rand(size, generator=generator, device=device).clamp_min(torch.finfo(torch.float32).tiny)
        log_sample = log_sample + torch.log(extra) / shape
    return log_sample


def beta_samples(alpha: float, size: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Draws from Beta(alpha, alpha) taken from ``generator``: X / (X + Y) for X, Y ~ Gamma(alpha)."""
    first = log_gamma_samples(alpha, size, generator, device)
    second = log_gamma_samples(alpha, size, generator, device)
    return torch.sigmoid(first - second)  # = X / (X + Y), computed from the logs


@AUGMENTS.register("mixup", MixupConfig)
class Mixup(Augmentation):
    """One blend weight per batch, as in the paper; classification targets become class probabilities."""

    kinds = ("image", "vector")

    def __init__(self, cfg: MixupConfig, *, inputs: InputSpec, task: str, num_outputs: int):
        super().__init__(cfg, inputs=inputs, task=task, num_outputs=num_outputs)
        self.task, self.num_outputs = task, num_outputs

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        weight = beta_samples(self.cfg.alpha, (1,), generator, inputs.device)
        partner = torch.randperm(inputs.shape[0], generator=generator, device=inputs.device)
        if self.task == "classification" and not targets.is_floating_point():  # indices -> probabilities
            targets = F.one_hot(targets, self.num_outputs).to(inputs.dtype)
        x_weight = weight.to(inputs.dtype).view(-1, *[1] * (inputs.dim() - 1))
        y_weight = weight.to(targets.dtype).view(-1, *[1] * (targets.dim() - 1))
        mixed_inputs = x_weight * inputs + (1 - x_weight) * inputs[partner]
        mixed_targets = y_weight * targets + (1 - y_weight) * targets[partner]
        return mixed_inputs, mixed_targets


# --------------------------------------------------------------------------------------------------
# token ids: N x L, padded with pad_id


class TokenDropoutConfig(Section):
    """Replace random tokens with the unknown token, so the model does not lean on any single word."""

    type: Literal["token_dropout"] = Field(description="Replace random tokens with the tokenizer's unknown token ([UNK]).")
    p: float = Field(0.1, ge=0, le=1, description="Probability that a token (never padding or a special token such as [CLS]) becomes [UNK].")


def _fixed(inputs: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Where augmentation must leave token ids alone: padding and special tokens ([CLS], [SEP], ...)."""
    fixed = inputs == spec.pad_id
    if spec.special_ids:
        fixed |= torch.isin(inputs, torch.tensor(spec.special_ids, device=inputs.device))
    return fixed


@AUGMENTS.register("token_dropout", TokenDropoutConfig)
class TokenDropout(Augmentation):
    kinds = ("tokens",)

    def __init__(self, cfg: TokenDropoutConfig, *, inputs: InputSpec, task: str, num_outputs: int):
        super().__init__(cfg, inputs=inputs, task=task, num_outputs=num_outputs)
        if inputs.unk_id is None:
            raise ValueError("the tokenizer has no unknown token to write (byte-level BPE never needs one); use token_swap, or a word tokenizer")
        if inputs.unk_id == inputs.pad_id:
            raise ValueError(f"the tokenizer pads with its unknown token (id {inputs.pad_id}), so a dropped token would read as padding")
        self.spec = inputs

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        drop = (torch.rand(inputs.shape, generator=generator, device=inputs.device) < self.cfg.p) & ~_fixed(inputs, self.spec)
        return inputs.masked_fill(drop, int(self.spec.unk_id)), targets  # type: ignore[arg-type]


class TokenSwapConfig(Section):
    """Swap random tokens with their next neighbour: small changes of word order."""

    type: Literal["token_swap"] = Field(description="Swap random tokens with the next token.")
    p: float = Field(0.1, ge=0, le=1, description="Probability that a token swaps places with the next non-padding token.")


@AUGMENTS.register("token_swap", TokenSwapConfig)
class TokenSwap(Augmentation):
    """Swaps are chosen among pairs starting at even positions, then among pairs starting at odd ones,
    so that no two swaps in a pass overlap; a token moves at most two places. Positions count real
    tokens only: padding and special tokens ([CLS], [SEP], ...) stay where they are, wherever they are."""

    kinds = ("tokens",)

    def __init__(self, cfg: TokenSwapConfig, *, inputs: InputSpec, task: str, num_outputs: int):
        super().__init__(cfg, inputs=inputs, task=task, num_outputs=num_outputs)
        self.spec = inputs

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows, length = inputs.shape
        real = ~_fixed(inputs, self.spec)
        # move each row's real tokens to its front (in order), swap there, and put them back
        order = torch.argsort((~real).int(), dim=1, stable=True)
        packed = inputs.gather(1, order)
        real_count = real.sum(1, keepdim=True)
        position = torch.arange(length, device=inputs.device)
        for parity in (0, 1):
            draw = torch.rand((rows, length), generator=generator, device=inputs.device) < self.cfg.p
            start = draw & (position % 2 == parity) & (position + 1 < real_count)  # swap (i, i + 1)
            end = torch.zeros_like(start)
            end[:, 1:] = start[:, :-1]  # position i + 1 of each swap
            packed = packed.gather(1, position + start.long() - end.long())
        return inputs.scatter(1, order, packed), targets


# --------------------------------------------------------------------------------------------------
# the list, as the training loop uses it


class Augmenter:
    """The ``data.augment`` list, built for one run and applied in order to training batches.

    Args:
        configs: the validated ``data.augment`` items.
        inputs: what the model is given; each augmentation must apply to its kind.
        num_outputs: classes (classification) or 1.
        task: "classification" or "regression".
        seed: the run seed (the generator uses seed + SEED_OFFSET).
        device: the training device, where the batches and the generator live.

    Raises:
        ConfigError: an augmentation does not apply to this input kind, or does not fit the inputs
            (a cutout larger than the images, say); the message names ``data.augment[i]``.
    """

    def __init__(self, configs: Sequence[BaseModel], inputs: InputSpec, num_outputs: int, task: str, seed: int, device: torch.device):
        self.steps: list[Augmentation] = []
        for index, cfg in enumerate(configs):
            name: str = cfg.type  # type: ignore[attr-defined]
            component = AUGMENTS.get(name).component
            where = f"data.augment[{index}] ({name})"
            if inputs.kind not in component.kinds:
                fitting = [name for name in AUGMENTS.names() if inputs.kind in AUGMENTS.get(name).component.kinds]
                raise ConfigError(
                    f"{where}: applies to {' and '.join(component.kinds)} inputs, but this model is given "
                    f"{inputs.kind} inputs ({inputs.describe()}); for {inputs.kind} inputs use: {', '.join(fitting) or 'none'}"
                )
            try:
                self.steps.append(component(cfg, inputs=inputs, task=task, num_outputs=num_outputs))
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        self.generator = torch.Generator(device=device).manual_seed(seed + SEED_OFFSET)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch, augmented. Classification targets become N x C probabilities after mixup."""
        for step in self.steps:
            inputs, targets = step(inputs, targets, self.generator)
        return inputs, targets

    def get_state(self) -> torch.Tensor:
        """The generator state (a CPU byte tensor), for checkpoints."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
