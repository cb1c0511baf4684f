"""Adversarial examples: FGSM and PGD in the L∞ or L2 norm, for ``forgeml attack`` and for
adversarial training (``train.adversarial``).

Where the perturbation lives depends on what the model reads (``InputSpec.kind``):

    image             pixels in [0, 1]: the model reads (pixels - mean) / std, so the attack undoes
                      that, perturbs the pixels and clips them to [0, 1]; ε is in pixel units
                      (ε = 0.3 on MNIST is the usual benchmark)
    vector, sequence  the model's own standardised inputs, clipped to the range each input value
                      takes in the training split; ε is in standard deviations of the training split
    tokens            ids cannot be nudged, so the perturbation is added to the output of the token
                      embedding; ε is in units of the standard deviation of the embedding table

Every attack is returned as a perturbation ``delta`` in that space (``Adversary.attack``), and
``Adversary.outputs`` runs the model on the perturbed inputs, so the same two calls serve the
attack stage and the training loop. L∞ attacks go through ``captum.robust`` (FGSM, PGD); L2 steps
along the normalised gradient (steepest ascent in L2), which captum's PGD does not do (it steps by
the gradient's sign, an L∞ step, and then projects).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec

Method = Literal["fgsm", "pgd"]
Norm = Literal["linf", "l2"]


@dataclass
class InputSpace:
    """Where an attack perturbs the inputs.

    Attributes:
        kind: "pixels" (images), "inputs" (the model's inputs as they are) or "embeddings" (tokens).
        shift, scale: model input = (raw - shift) / scale (pixels); None: raw is the model input.
        low, high: bounds of raw values (floats, or tensors of one example's shape); None: unbounded.
        unit: ε is multiplied by this (the embedding table's standard deviation for tokens, else 1).
        embedding: the token embedding module whose output is perturbed (tokens only).
        description: one line saying what ε is measured in, for reports.
    """

    kind: Literal["pixels", "inputs", "embeddings"]
    shift: Optional[Tensor] = None
    scale: Optional[Tensor] = None
    low: Any = None
    high: Any = None
    unit: float = 1.0
    embedding: Optional[nn.Module] = None
    description: str = ""

    def to(self, device: torch.device) -> "InputSpace":
        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, Tensor) else value

        return InputSpace(
            self.kind, move(self.shift), move(self.scale), move(self.low), move(self.high), self.unit, self.embedding, self.description
        )


def token_embedding(model: nn.Module, vocab_size: int) -> nn.Module:
    """The module that turns token ids into vectors: a Hugging Face model's input embeddings, else
    the first ``nn.Embedding`` over the whole vocabulary.

    Raises:
        ConfigError: the model has no such module.
    """
    for module in model.modules():
        get = getattr(module, "get_input_embeddings", None)
        if callable(get) and isinstance(get(), nn.Module):
            return get()
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings == vocab_size:
            return module
    raise ConfigError(f"{model.__class__.__name__} has no token embedding over the {vocab_size:,}-token vocabulary to perturb")


def input_space(
    model: nn.Module, spec: InputSpec, train_inputs: Optional[Tensor] = None, image_norm: Optional[tuple[list[float], list[float]]] = None
) -> InputSpace:
    """The space attacks on ``model`` perturb (see the module docstring).

    Args:
        model: the network.
        spec: what it reads.
        train_inputs: the training split's model inputs (vector and sequence inputs: their range bounds the attack).
        image_norm: the image feature's per-channel (mean, std).
    """
    if spec.kind == "image":
        mean, std = image_norm if image_norm is not None else ([0.0] * spec.shape[0], [1.0] * spec.shape[0])
        return InputSpace(
            "pixels",
            shift=torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            scale=torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
            low=0.0,
            high=1.0,
            description="pixel values in [0, 1]",
        )
    if spec.kind == "tokens":
        embedding = token_embedding(model, spec.vocab_size)
        unit = float(embedding.weight.detach().float().std())
        return InputSpace(
            "embeddings",
            unit=unit,
            embedding=embedding,
            description=f"token embedding space (text ids cannot be perturbed); ε in standard deviations of the embedding table ({unit:.4g})",
        )
    low = high = None
    if train_inputs is not None and len(train_inputs):
        low, high = train_inputs.amin(dim=0, keepdim=True).float(), train_inputs.amax(dim=0, keepdim=True).float()
    return InputSpace("inputs", low=low, high=high, description="standardised inputs, clipped to the training range of each value")


@contextmanager
def _replaced_output(module: nn.Module, make: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While inside, ``module``'s output ``o`` is replaced by ``make(o)``."""
    handle = module.register_forward_hook(lambda _module, _inputs, output: make(output))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, batch norm statistics untouched) while examples are crafted; cuDNN's
    RNN kernels cannot run backward in eval mode, so they are off meanwhile."""
    was_training = model.training
    model.eval()
    try:
        with torch.backends.cudnn.flags(enabled=False):
            yield
    finally:
        model.train(was_training)


def _l2_normalise(tensor: Tensor) -> Tensor:
    norms = tensor.flatten(1).norm(dim=1).clamp_min(1e-12)
    return tensor / norms.view(-1, *([1] * (tensor.dim() - 1)))


def _clip(values: Tensor, low: Any, high: Any) -> Tensor:
    if low is None and high is None:
        return values
    return torch.clamp(values, min=low, max=high)


def _l2_attack(
    loss: Callable[[Tensor], Tensor], start: Tensor, eps: float, steps: int, alpha: float, random_start: bool, low: Any, high: Any
) -> Tensor:
    """Projected steepest ascent in L2: step ``alpha`` along the per-example normalised gradient,
    project back into the ε-ball around ``start``, clip to the bounds."""
    current = start
    if random_start:  # uniform in the ball: a random direction, radius eps * u^(1/d)
        direction = _l2_normalise(torch.randn_like(start))
        dims = start[0].numel()
        radius = eps * torch.rand(start.shape[0], device=start.device, dtype=start.dtype) ** (1.0 / dims)
        current = _clip(start + direction * radius.view(-1, *([1] * (start.dim() - 1))), low, high)
    for _ in range(steps):
        current = current.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss(current).sum(), current)
        stepped = current.detach() + alpha * _l2_normalise(gradient)
        delta = torch.renorm(stepped - start, 2, 0, eps)  # each example's change at most eps long
        current = _clip(start + delta, low, high)
    return current.detach()


def _linf_attack(
    forward: Callable[[Tensor], Tensor],
    start: Tensor,
    targets: Tensor,
    method: Method,
    eps: float,
    steps: int,
    alpha: float,
    random_start: bool,
    low: Any,
    high: Any,
) -> Tensor:
    """captum.robust's FGSM / PGD, with a per-example loss (captum's default mean would shrink every
    gradient by the batch size) and no gradient threshold (captum treats entries under 1e-6 as zero,
    which leaves confidently classified examples unattacked and overstates robustness)."""
    from captum.robust import FGSM, PGD

    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients", category=UserWarning)
    lower = float("-inf") if low is None else low
    upper = float("inf") if high is None else high

    def per_example_loss(outputs: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(outputs.float(), target, reduction="none")

    if method == "fgsm" and not random_start:
        fgsm = FGSM(forward, per_example_loss, lower_bound=lower, upper_bound=upper)
        fgsm.zero_thresh = 0.0
        return fgsm.perturb(start, eps, target=targets).detach()
    pgd = PGD(forward, per_example_loss, lower_bound=lower, upper_bound=upper)
    pgd.fgsm.zero_thresh = 0.0
    return pgd.perturb(start, eps, alpha, steps, targets, random_start=random_start, norm="Linf").detach()


def default_step(method: Method, eps: float, steps: int, random_start: bool) -> float:
    """FGSM: ε (1.25 ε after a random start, Wong et al. 2020); PGD: 2.5 ε / steps (Madry et al. 2018)."""
    if method == "fgsm":
        return 1.25 * eps if random_start else eps
    return 2.5 * eps / max(steps, 1)


class Adversary:
    """Crafts adversarial examples against a classifier and runs the model on them.

    Args:
        model: the network (its own module, not a DDP wrapper).
        space: where to perturb (``input_space``).
        method: fgsm (one step) or pgd (``steps`` projected steps).
        eps: the radius of the perturbation, in the space's units.
        norm: linf or l2.
        steps: PGD steps (FGSM: 1).
        alpha: the step size; None: ``default_step``.
        random_start: start from a random point of the ε-ball.
    """

    def __init__(
        self,
        model: nn.Module,
        space: InputSpace,
        method: Method = "pgd",
        eps: float = 0.3,
        norm: Norm = "linf",
        steps: int = 20,
        alpha: Optional[float] = None,
        random_start: bool = True,
    ):
        if method not in ("fgsm", "pgd") or norm not in ("linf", "l2"):
            raise ConfigError(f"unknown attack {method!r} in norm {norm!r}: methods are fgsm and pgd, norms linf and l2")
        self.model = model
        self.space = space
        self.method = method
        self.norm = norm
        self.steps = 1 if method == "fgsm" else steps
        self.eps = eps * space.unit
        self.alpha = (alpha * space.unit) if alpha is not None else default_step(method, self.eps, self.steps, random_start)
        self.random_start = random_start

    def _raw(self, inputs: Tensor) -> Tensor:
        """The inputs in the attacked space (pixels, inputs, or the token embeddings)."""
        space = self.space
        if space.kind == "pixels":
            return inputs * space.scale + space.shift
        if space.kind == "embeddings":
            with torch.no_grad():
                return space.embedding(inputs).float()  # type: ignore[misc]
        return inputs

    def outputs(self, forward: Callable[[Tensor], Tensor], inputs: Tensor, delta: Optional[Tensor]) -> Tensor:
        """Model outputs for ``inputs`` moved by ``delta`` (in the attacked space; None: unchanged).

        ``forward`` is what computes outputs from model inputs: the model, or its DDP or compiled
        wrapper in training. For tokens, gradients still reach the embedding table.
        """
        if delta is None:
            return forward(inputs)
        space = self.space
        if space.kind == "pixels":
            return forward(inputs + delta / space.scale)
        if space.kind == "embeddings":
            with _replaced_output(space.embedding, lambda output: output + delta.to(output.dtype)):  # type: ignore[arg-type]
                return forward(inputs)
        return forward(inputs + delta)

    def attack(self, inputs: Tensor, targets: Tensor, strength: float = 1.0) -> Tensor:
        """The adversarial perturbation of each example (in the attacked space), crafted in eval mode
        to raise the cross-entropy of its true class ``targets``; ``strength`` scales ε and the step."""
        space = self.space
        eps, alpha = self.eps * strength, self.alpha * strength
        start = self._raw(inputs).detach()
        low, high = space.low, space.high
        if isinstance(low, Tensor) and isinstance(high, Tensor):
            # an input already outside the training range stays where it is on that side: clipping it
            # back would move it further than eps
            low, high = torch.minimum(low, start), torch.maximum(high, start)

        def forward(raw: Tensor) -> Tensor:
            if space.kind == "embeddings":
                with _replaced_output(space.embedding, lambda output: raw.to(output.dtype)):  # type: ignore[arg-type]
                    return self.model(inputs)
            return self.model((raw - space.shift) / space.scale if space.kind == "pixels" else raw)

        with _attack_mode(self.model):
            if self.norm == "linf":
                adversarial = _linf_attack(forward, start, targets, self.method, eps, self.steps, alpha, self.random_start, low, high)
            else:
                def loss(raw: Tensor) -> Tensor:
                    return F.cross_entropy(forward(raw).float(), targets, reduction="none")

                adversarial = _l2_attack(loss, start, eps, self.steps, alpha, self.random_start, low, high)
        return adversarial - start

    def training_outputs(
        self, forward: Callable[[Tensor], Tensor], inputs: Tensor, targets: Tensor, ratio: float = 1.0, strength: float = 1.0
    ) -> Tensor:
        """Outputs for a training batch whose first ``ratio`` share of examples is replaced by
        adversarial examples (crafted against the current weights, ε scaled by ``strength``), the
        rest left clean."""
        attacked = int(round(ratio * inputs.shape[0]))
        if attacked == 0 or strength <= 0:
            return forward(inputs)
        delta = self.attack(inputs[:attacked], targets[:attacked], strength)
        if attacked < inputs.shape[0]:
            delta = torch.cat([delta, delta.new_zeros((inputs.shape[0] - attacked, *delta.shape[1:]))])
        return self.outputs(forward, inputs, delta)

    def robust_accuracy(self, inputs: Tensor, targets: Tensor, batch_size: int) -> float:
        """The share of examples still classified as ``targets`` after the attack, batch by batch."""
        correct = 0
        for start in range(0, inputs.shape[0], batch_size):
            batch, batch_targets = inputs[start : start + batch_size], targets[start : start + batch_size]
            delta = self.attack(batch, batch_targets)
            with torch.no_grad(), _attack_mode(self.model):
                correct += int((self.outputs(self.model, batch, delta).argmax(dim=-1) == batch_targets).sum())
        return correct / max(1, inputs.shape[0])
