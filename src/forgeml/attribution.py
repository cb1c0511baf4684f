"""Attributions: how much each part of an input pushed the model toward a class, through Captum.

    method     images / tables (the model's input)        texts (the token embeddings)
    ig         IntegratedGradients from a baseline         LayerIntegratedGradients
    saliency   Saliency, |d output / d input|              the gradient's norm at each token's embedding
    gradcam    LayerGradCam on the last Conv2d, upsampled  (images only)
    occlusion  Occlusion: patches / columns set to the     LayerFeatureAblation: each token's embedding
               baseline, one at a time                     replaced by [UNK]'s, one at a time
    shap       GradientShap over baselines drawn from      KernelShap on tokens (replaced by [UNK])
               the training split
    lime       Lime on patches / columns                   Lime on tokens (replaced by [UNK])

Baselines say what "absent" means: a black image (pixels 0), a table row at the training mean
(standardised inputs 0), a text whose tokens are all [UNK] (padding and special tokens kept).
``attribute`` returns one score per input element (images and tables: the model input's shape,
image channels summed for Grad-CAM) or per token (texts).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from forgeml.adversarial import token_embedding
from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec

METHODS = ("ig", "saliency", "gradcam", "occlusion", "shap", "lime")
PATCH = 4  # occlusion and lime on images: square patches of this many pixels


@dataclass
class AttributionSpace:
    """What attributions are computed over, and what removing a part of an input means.

    Attributes:
        spec: what the model reads.
        baseline: one example in the model's input space meaning "nothing" (images, tables), or None (texts).
        groups: tables: (column name, first, last + 1) of each input column's slice of the vector.
        replacement_id: texts: the id a removed token becomes ([UNK], else padding).
        keep_ids: texts: ids never removed (padding, [CLS], [SEP], ...).
        references: gives a few training inputs: GradientShap's baseline distribution (called only for shap).
    """

    spec: InputSpec
    baseline: Optional[Tensor] = None
    groups: list[tuple[str, int, int]] = field(default_factory=list)
    replacement_id: int = 0
    keep_ids: tuple[int, ...] = ()
    references: Optional[Callable[[], Tensor]] = None

    @property
    def tokens(self) -> bool:
        return self.spec.kind == "tokens"

    def baseline_ids(self, ids: Tensor) -> Tensor:
        """Texts: every token [UNK] (or padding), padding and special tokens left where they are."""
        keep = torch.isin(ids, torch.tensor(self.keep_ids, dtype=ids.dtype, device=ids.device))
        return torch.where(keep, ids, torch.full_like(ids, self.replacement_id))

    def removable(self, ids: Tensor) -> Tensor:
        """Texts: the positions that hold a real token (not padding or a special token)."""
        return ~torch.isin(ids, torch.tensor(self.keep_ids, dtype=ids.dtype, device=ids.device))


def last_conv(model: nn.Module) -> nn.Module:
    """The last ``nn.Conv2d`` of ``model`` (Grad-CAM's layer).

    Raises:
        ConfigError: the model has no convolution.
    """
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ConfigError("--method gradcam needs a convolutional image model (a cnn); use ig, saliency, occlusion, shap or lime")
    return convolutions[-1]


def _feature_mask(space: AttributionSpace, example: Tensor) -> Tensor:
    """Which feature each input element belongs to, for occlusion and lime: image patches, table columns, tokens."""
    if space.tokens:
        return torch.arange(example.shape[-1], device=example.device).unsqueeze(0)
    if space.spec.kind == "image":
        channels, height, width = example.shape[-3:]
        rows = torch.arange(height, device=example.device) // PATCH
        columns = torch.arange(width, device=example.device) // PATCH
        patch = rows[:, None] * ((width + PATCH - 1) // PATCH) + columns[None, :]
        return patch.expand(channels, height, width).unsqueeze(0)
    if space.spec.kind == "sequence":  # windows: all the values of one time step are one feature
        steps, width = example.shape[-2:]
        return torch.arange(steps, device=example.device).unsqueeze(1).expand(steps, width).unsqueeze(0)
    mask = torch.zeros(example.shape[-1], dtype=torch.int64, device=example.device)
    for index, (_, first, last) in enumerate(space.groups):
        mask[first:last] = index
    return mask.unsqueeze(0)


def attribute(model: nn.Module, space: AttributionSpace, inputs: Tensor, targets: Tensor, method: str, seed: int = 0) -> Tensor:
    """Attributions of ``model``'s ``targets`` logits to ``inputs`` (a batch in the model's input space).

    Returns:
        N x (the input's shape) for images and tables, N x L for texts (one score per token).

    Raises:
        ConfigError: an unknown method, or one that does not apply to the model (gradcam without a convolution).
    """
    from captum import attr

    if method not in METHODS:
        raise ConfigError(f"--method: {method!r} is not one of: {', '.join(METHODS)}")
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients", category=UserWarning)
    warnings.filterwarnings("ignore", message="Setting forward, backward hooks and attributes on non-linear", category=UserWarning)
    was_training = model.training
    model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # shap and lime draw samples: the same seed, the same attributions
    try:
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's RNNs cannot run backward in eval mode
            if space.tokens:
                return _token_attributions(attr, model, space, inputs, targets, method).detach()
            return _input_attributions(attr, model, space, inputs, targets, method).detach()
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)


def _input_attributions(attr: object, model: nn.Module, space: AttributionSpace, inputs: Tensor, targets: Tensor, method: str) -> Tensor:
    baseline = space.baseline.to(inputs.device) if space.baseline is not None else torch.zeros_like(inputs[:1])
    baselines = baseline.expand_as(inputs)
    if method == "ig":
        return attr.IntegratedGradients(model).attribute(inputs, baselines=baselines, target=targets, n_steps=32, internal_batch_size=256)
    if method == "saliency":
        return attr.Saliency(model).attribute(inputs, target=targets, abs=True)
    if method == "gradcam":
        if space.spec.kind != "image":
            raise ConfigError("--method gradcam needs an image model; use ig, saliency, occlusion, shap or lime")
        maps = attr.LayerGradCam(model, last_conv(model)).attribute(inputs, target=targets, relu_attributions=True)
        maps = attr.LayerAttribution.interpolate(maps, tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
        return maps.expand_as(inputs) / inputs.shape[1]  # one map, shared by the channels (their sum is the map)
    if method == "occlusion":
        if space.spec.kind == "image":
            window = (inputs.shape[1], PATCH, PATCH)
            return attr.Occlusion(model).attribute(inputs, sliding_window_shapes=window, strides=window, baselines=baselines, target=targets)
        return attr.FeatureAblation(model).attribute(inputs, baselines=baselines, target=targets, feature_mask=_feature_mask(space, inputs[0]))
    if method == "shap":
        references = space.references().to(inputs.device) if space.references is not None else baseline
        return attr.GradientShap(model).attribute(inputs, baselines=references, target=targets, n_samples=16, stdevs=0.0)
    # lime: one example at a time (captum fits one surrogate model per example)
    lime = attr.Lime(model)
    rows = [
        lime.attribute(
            inputs[i : i + 1], baselines=baseline, target=targets[i : i + 1], feature_mask=_feature_mask(space, inputs[i]),
            n_samples=200, perturbations_per_eval=50,
        )
        for i in range(inputs.shape[0])
    ]
    return torch.cat(rows)


def _token_attributions(attr: object, model: nn.Module, space: AttributionSpace, ids: Tensor, targets: Tensor, method: str) -> Tensor:
    """Per-token scores through the token embedding (texts cannot be interpolated or differentiated as ids)."""
    layer = token_embedding(model, space.spec.vocab_size)
    baseline_ids = space.baseline_ids(ids)
    if method == "ig":
        scores = attr.LayerIntegratedGradients(model, layer).attribute(ids, baselines=baseline_ids, target=targets, n_steps=32, internal_batch_size=256)
        return scores.sum(dim=-1)
    if method == "saliency":
        gradients = attr.LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(ids, target=targets)
        return gradients.norm(dim=-1)
    if method == "gradcam":
        raise ConfigError("--method gradcam needs a convolutional image model; for texts use ig, saliency, occlusion, shap or lime")
    if method == "occlusion":  # each token's embedding in turn replaced by the [UNK] embedding
        mask = torch.arange(ids.shape[1], device=ids.device).view(1, -1, 1)
        with torch.no_grad():
            replacement = layer(torch.tensor([[space.replacement_id]], device=ids.device))
        return attr.LayerFeatureAblation(model, layer).attribute(ids, layer_baselines=replacement, target=targets, layer_mask=mask).sum(dim=-1)
    # shap and lime on the ids themselves: each token is kept or replaced by its baseline id (GradientShap
    # would interpolate between ids, which an embedding cannot read), so shap is KernelShap here
    explainer = (attr.KernelShap if method == "shap" else attr.Lime)(lambda batch: model(batch.long()))
    mask = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    rows = []
    for i in range(ids.shape[0]):
        scores = explainer.attribute(
            ids[i : i + 1], baselines=baseline_ids[i : i + 1], target=targets[i : i + 1], feature_mask=mask, n_samples=200, perturbations_per_eval=50
        )
        rows.append(scores.float() * space.removable(ids[i : i + 1]))
    return torch.cat(rows)


def per_feature(space: AttributionSpace, attributions: Tensor) -> Tensor:
    """One score per feature a person reads: image pixels (channels summed), table columns (one-hot
    parts summed), tokens, or steps of a window. N x features."""
    if space.tokens:
        return attributions
    if space.spec.kind == "image":
        return attributions.sum(dim=1).flatten(1)
    if space.spec.kind == "sequence":
        return attributions.sum(dim=-1)
    return torch.stack([attributions[:, first:last].sum(dim=1) for _, first, last in space.groups], dim=1)


def delete(space: AttributionSpace, inputs: Tensor, removed: Tensor) -> Tensor:
    """``inputs`` with the features marked in ``removed`` (N x features, as ``per_feature``) set to
    the baseline: pixels to black, columns to the training mean, tokens to [UNK]."""
    if space.tokens:
        return torch.where(removed, torch.full_like(inputs, space.replacement_id), inputs)
    baseline = (space.baseline if space.baseline is not None else torch.zeros_like(inputs[:1])).to(inputs.device).expand_as(inputs)
    if space.spec.kind == "image":
        mask = removed.view(inputs.shape[0], 1, *inputs.shape[-2:]).expand_as(inputs)
    elif space.spec.kind == "sequence":
        mask = removed.unsqueeze(-1).expand_as(inputs)
    else:
        mask = torch.zeros_like(inputs, dtype=torch.bool)
        for index, (_, first, last) in enumerate(space.groups):
            mask[:, first:last] = removed[:, index : index + 1]
    return torch.where(mask, baseline, inputs)
