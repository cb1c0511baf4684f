"""Augmentations, each pinned on small hand-made batches; the Augmenter's seeding, state and kind
checks; the data.augment config schema."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from forgeml.config import validate_config
from forgeml.data.augment import Augmenter, affine_theta, beta_samples, log_gamma_samples
from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.registry import AUGMENTS

CPU = torch.device("cpu")
UNK_ID = 1
TOKENS = InputSpec("tokens", (6,), vocab_size=20, pad_id=0, unk_id=UNK_ID)
VECTOR = InputSpec("vector", (8,))


def image_spec(images: torch.Tensor) -> InputSpec:
    return InputSpec("image", tuple(images.shape[1:]))


def augment(items: list[dict[str, Any]], inputs: torch.Tensor, targets: torch.Tensor | None = None, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``data.augment`` items (validated as the config does) over one batch with a fresh Augmenter."""
    spec = options.pop("spec", None) or (image_spec(inputs) if inputs.dim() == 4 else VECTOR)
    targets = torch.zeros(inputs.shape[0], dtype=torch.long) if targets is None else targets
    augmenter = Augmenter(configs(items), spec, options.pop("num_outputs", 3), options.pop("task", "classification"), options.pop("seed", 0), CPU)
    return augmenter(inputs, targets)


def configs(items: list[dict[str, Any]]) -> list[Any]:
    return [AUGMENTS.get(item["type"]).config.model_validate(item) for item in items]


def numbered_images(rows: int = 64, channels: int = 2, size: int = 5) -> torch.Tensor:
    """Images whose every pixel holds a different value (1, 2, 3, ...)."""
    return torch.arange(1, rows * channels * size * size + 1, dtype=torch.float32).view(rows, channels, size, size)


# --------------------------------------------------------------------------------------------------
# images


def test_flip_with_p_1_mirrors_every_image_and_p_0_none():
    images = numbered_images(4)
    assert torch.equal(augment([{"type": "flip", "p": 1.0}], images)[0], torch.flip(images, dims=[-1]))
    assert torch.equal(augment([{"type": "flip", "p": 1.0, "vertical": True}], images)[0], torch.flip(images, dims=[-2]))
    assert torch.equal(augment([{"type": "flip", "p": 0.0}], images)[0], images)


def test_flip_chooses_per_image():
    images = numbered_images(64)
    out = augment([{"type": "flip", "p": 0.5}], images)[0]
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    same = (out == images).flatten(1).all(1)
    assert torch.all(flipped ^ same)  # each image whole: flipped or untouched
    assert 16 < int(flipped.sum()) < 48


@pytest.mark.parametrize("fill", ["zeros", "reflect"])
def test_random_crop_is_a_shifted_copy_at_a_random_offset(fill: str):
    images = numbered_images(64)
    out = augment([{"type": "random_crop", "padding": 1, "fill": fill}], images)[0]
    assert out.shape == images.shape
    padded = F.pad(images, (1, 1, 1, 1), mode="constant" if fill == "zeros" else "reflect")
    offsets = []
    for image, source in zip(out, padded):
        matches = [(dy, dx) for dy in range(3) for dx in range(3) if torch.equal(image, source[:, dy : dy + 5, dx : dx + 5])]
        assert len(matches) == 1
        offsets.append(matches[0])
    assert len(set(offsets)) == 9  # every shift of up to one pixel occurs in 64 images


def test_reflect_padding_must_be_smaller_than_the_image():
    with pytest.raises(ConfigError) as info:
        augment([{"type": "random_crop", "padding": 5, "fill": "reflect"}], numbered_images(2))
    assert str(info.value) == "data.augment[0] (random_crop): padding 5 with fill: reflect needs images larger than that, these are 5x5; use fill: zeros"


def test_affine_without_rotation_shift_or_zoom_is_the_identity():
    images = torch.randn(4, 3, 6, 7)
    out = augment([{"type": "affine", "degrees": 0, "translate": 0, "scale": [1, 1]}], images)[0]
    assert torch.allclose(out, images, atol=1e-5)


def test_affine_rotates_and_zooms_about_the_centre():
    images = numbered_images(16)  # 5x5: the centre pixel sits at normalised (0, 0)
    out = augment([{"type": "affine", "degrees": 180, "translate": 0, "scale": [0.5, 2.0]}], images)[0]
    assert torch.allclose(out[:, :, 2, 2], images[:, :, 2, 2], atol=1e-4)
    assert not torch.allclose(out, images, atol=1e-3)


def test_affine_rotation_keeps_pixel_distances_on_non_square_images():
    height, width = 4, 10
    angle = torch.tensor([0.3, math.pi / 2, -1.0])
    theta = affine_theta(angle, torch.zeros(3, 2), torch.ones(3), height, width)
    pixels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -3.0]])  # (x, y) from the centre
    half = torch.tensor([width / 2, height / 2])
    moved = (theta[:, :, :2] @ (pixels / half).T).transpose(1, 2) * half  # back to pixel units
    assert torch.allclose(moved.norm(dim=-1), pixels.norm(dim=-1).expand(3, 3), atol=1e-5)
    assert torch.allclose(moved[1, 0], torch.tensor([0.0, -1.0]), atol=1e-6)  # a quarter turn


def test_noise_has_the_configured_standard_deviation():
    out = augment([{"type": "noise", "std": 0.1}], torch.zeros(8, 3, 32, 32))[0]
    assert float(out.std()) == pytest.approx(0.1, rel=0.03)
    assert abs(float(out.mean())) < 0.005
    vectors = augment([{"type": "noise", "std": 0.5}], torch.ones(1000, 8))[0]  # numbers too
    assert float((vectors - 1).std()) == pytest.approx(0.5, rel=0.03)


def test_cutout_zeroes_one_size_by_size_square_inside_each_image():
    images = torch.ones(32, 2, 10, 10)
    out = augment([{"type": "cutout", "size": 3, "p": 1.0}], images)[0]
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1])  # the same square in every channel
    for mask in zero[:, 0]:
        rows, columns = mask.nonzero(as_tuple=True)
        assert len(rows) == 9
        assert rows.max() - rows.min() == 2 and columns.max() - columns.min() == 2  # one 3x3 block
    corners = {(int(m.nonzero()[0, 0]), int(m.nonzero()[0, 1])) for m in zero[:, 0]}
    assert len(corners) > 10 and all(0 <= r <= 7 and 0 <= c <= 7 for r, c in corners)
    assert torch.equal(augment([{"type": "cutout", "size": 3, "p": 0.0}], images)[0], images)


def test_cutout_larger_than_the_image():
    with pytest.raises(ConfigError) as info:
        augment([{"type": "cutout", "size": 6}], numbered_images(2))
    assert str(info.value) == "data.augment[0] (cutout): size 6 is larger than the 5x5 images"


# --------------------------------------------------------------------------------------------------
# mixup


def test_mixup_blends_inputs_and_makes_class_probabilities():
    inputs = torch.eye(8)  # row i is example i, so a mixed row shows which examples went into it
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mixed, targets = augment([{"type": "mixup", "alpha": 0.4}], inputs, labels, num_outputs=4)
    assert targets.shape == (8, 4) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(8)) and bool((targets >= 0).all())
    assert torch.allclose(mixed.sum(1), torch.ones(8)) and bool((mixed >= 0).all())  # convex combinations
    assert all(int((row > 0).sum()) <= 2 for row in mixed)  # of two examples
    weights = {round(float(mixed[i, i]), 5) for i in range(8) if mixed[i, i] < 1}
    assert len(weights) == 1  # one blend weight for the whole batch
    assert torch.allclose(targets, mixed @ F.one_hot(labels, 4).float())  # targets mixed like the inputs


def test_mixup_mixes_regression_targets():
    inputs = torch.eye(8)
    values = torch.linspace(-1, 1, 8)
    mixed, targets = augment([{"type": "mixup", "alpha": 1.0}], inputs, values, task="regression", num_outputs=1)
    assert targets.shape == (8,)
    assert torch.allclose(targets, mixed @ values)


@pytest.mark.parametrize("alpha", [0.2, 2.0])
def test_beta_samples_have_the_beta_mean_and_variance(alpha: float):
    draws = beta_samples(alpha, (50_000,), torch.Generator().manual_seed(0), CPU)
    assert bool(((draws >= 0) & (draws <= 1)).all())
    assert float(draws.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(draws.var()) == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.03)


@pytest.mark.parametrize("shape", [0.3, 1.0, 4.0])
def test_gamma_samples_have_the_gamma_mean_and_variance(shape: float):
    draws = log_gamma_samples(shape, (50_000,), torch.Generator().manual_seed(1), CPU).exp()
    assert float(draws.mean()) == pytest.approx(shape, rel=0.03)
    assert float(draws.var()) == pytest.approx(shape, rel=0.06)


# --------------------------------------------------------------------------------------------------
# tokens


def test_token_dropout_writes_unk_over_real_tokens_only():
    tokens = torch.randint(2, 20, (64, 6))
    tokens[:, 4:] = 0  # right padding
    tokens[::3, 1] = 0  # and some padding in the middle
    out = augment([{"type": "token_dropout", "p": 0.5}], tokens, spec=TOKENS)[0]
    changed = out != tokens
    assert bool((out[tokens == 0] == 0).all())  # padding untouched
    assert bool((out[changed] == UNK_ID).all())
    assert 0.4 < float(changed.sum()) / float((tokens != 0).sum()) < 0.6
    all_dropped = augment([{"type": "token_dropout", "p": 1.0}], tokens, spec=TOKENS)[0]
    assert torch.equal(all_dropped, torch.where(tokens == 0, 0, UNK_ID))


def test_token_dropout_needs_an_unknown_token_other_than_padding():
    with pytest.raises(ConfigError, match=r"data\.augment\[0\] \(token_dropout\): the tokenizer pads with its unknown token \(id 1\)"):
        augment([{"type": "token_dropout"}], torch.ones(2, 6, dtype=torch.long), spec=InputSpec("tokens", (6,), vocab_size=20, pad_id=1, unk_id=1))
    with pytest.raises(ConfigError, match=r"\(token_dropout\): the tokenizer has no unknown token"):
        augment([{"type": "token_dropout"}], torch.ones(2, 6, dtype=torch.long), spec=InputSpec("tokens", (6,), vocab_size=20, pad_id=0))


def test_token_augmentation_leaves_special_tokens_where_they_are():
    # BERT-style: [CLS]=101 ... [SEP]=102 then padding 0; [UNK]=100
    spec = InputSpec("tokens", (8,), vocab_size=200, pad_id=0, unk_id=100, special_ids=(101, 102))
    tokens = torch.tensor([[101, 5, 6, 7, 8, 102, 0, 0]] * 16)
    dropped = augment([{"type": "token_dropout", "p": 1.0}], tokens, spec=spec)[0]
    assert dropped.tolist() == [[101, 100, 100, 100, 100, 102, 0, 0]] * 16
    swapped = augment([{"type": "token_swap", "p": 1.0}], tokens, spec=spec)[0]
    assert swapped.tolist() == [[101, 6, 8, 5, 7, 102, 0, 0]] * 16


def test_token_swap_with_p_1_swaps_even_then_odd_pairs_of_real_tokens():
    tokens = torch.tensor([[5, 6, 7, 8, 0, 0], [5, 0, 6, 7, 0, 0], [9, 0, 0, 0, 0, 0]])
    out = augment([{"type": "token_swap", "p": 1.0}], tokens, spec=TOKENS)[0]
    # real tokens 5 6 7 8 -> pairs (0,1), (2,3): 6 5 8 7 -> pair (1,2): 6 8 5 7; padding stays put
    assert out.tolist() == [[6, 8, 5, 7, 0, 0], [6, 0, 7, 5, 0, 0], [9, 0, 0, 0, 0, 0]]


def test_token_swap_keeps_each_rows_tokens_and_its_padding():
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, 20, (64, 6), generator=generator)
    tokens[torch.rand(64, 6, generator=generator) < 0.3] = 0
    out = augment([{"type": "token_swap", "p": 0.3}], tokens, spec=TOKENS)[0]
    assert torch.equal(out == 0, tokens == 0)
    assert torch.equal(out.sort(1).values, tokens.sort(1).values)
    assert 0 < int((out != tokens).sum()) < int((tokens != 0).sum())


# --------------------------------------------------------------------------------------------------
# the Augmenter: seeding, state, kinds

IMAGE_ITEMS = [
    {"type": "random_crop", "padding": 1},
    {"type": "flip"},
    {"type": "affine"},
    {"type": "noise"},
    {"type": "cutout", "size": 2, "p": 0.5},
    {"type": "mixup"},
]


def test_the_same_seed_gives_the_same_batches_and_another_seed_others():
    images, labels = numbered_images(16), torch.arange(16) % 3
    first = augment(IMAGE_ITEMS, images, labels, seed=5)
    again = augment(IMAGE_ITEMS, images, labels, seed=5)
    other = augment(IMAGE_ITEMS, images, labels, seed=6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_set_state_replays_and_the_global_rng_is_left_alone():
    images, labels = numbered_images(16), torch.arange(16) % 3
    augmenter = Augmenter(configs(IMAGE_ITEMS), image_spec(images), 3, "classification", 0, CPU)
    augmenter(images, labels)
    state = augmenter.get_state()
    global_state = torch.get_rng_state()
    second = augmenter(images, labels)
    assert torch.equal(torch.get_rng_state(), global_state)
    third = augmenter(images, labels)
    assert not torch.equal(second[0], third[0])  # the stream moves on
    augmenter.set_state(state)
    replayed = augmenter(images, labels)
    assert torch.equal(replayed[0], second[0]) and torch.equal(replayed[1], second[1])


def test_an_augmentation_for_another_input_kind_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        Augmenter(configs([{"type": "token_swap"}, {"type": "flip"}]), TOKENS, 2, "classification", 0, CPU)
    assert str(info.value) == (
        "data.augment[1] (flip): applies to image inputs, but this model is given tokens inputs "
        "(token ids (length 6, vocabulary 20)); for tokens inputs use: token_dropout, token_swap"
    )
    with pytest.raises(ConfigError, match=r"data\.augment\[0\] \(mixup\): applies to image and vector inputs, but this model is given tokens"):
        Augmenter(configs([{"type": "mixup"}]), TOKENS, 2, "classification", 0, CPU)


# --------------------------------------------------------------------------------------------------
# config


def with_augment(items: Any) -> dict[str, Any]:
    config = tiny_config()
    config["data"]["augment"] = items
    return config


def test_the_config_accepts_every_augmentation_in_order():
    items = [
        {"type": "random_crop", "padding": 4},
        {"type": "flip", "p": 0.5},
        {"type": "affine", "degrees": 10, "translate": 0.1, "scale": [0.9, 1.1]},
        {"type": "noise", "std": 0.1},
        {"type": "cutout", "size": 8, "p": 1.0},
        {"type": "mixup", "alpha": 0.2},
        {"type": "token_dropout", "p": 0.1},
        {"type": "token_swap", "p": 0.1},
    ]
    cfg = validate_config(with_augment(items))
    assert [item.type for item in cfg.data.augment] == [item["type"] for item in items]
    assert cfg.data.augment[2].scale == (0.9, 1.1)
    assert validate_config(tiny_config()).data.augment == []
    assert validate_config(with_augment(None)).data.augment is None


def config_message(items: Any) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(with_augment(items))
    return str(info.value)


def test_the_config_rejects_unknown_types_keys_and_values():
    assert config_message([{"type": "flip"}, {"type": "rotate"}]) == (
        "config: data.augment[1].type: 'rotate' is not one of: random_crop, flip, affine, noise, cutout, mixup, token_dropout, token_swap"
    )
    assert config_message([{"type": "flip", "prob": 0.5}]) == "config: data.augment[0].prob: unknown key; allowed keys here: type, p, vertical"
    assert config_message([{"type": "affine", "scale": [1.1, 0.9]}]) == (
        "config: data.augment[0].scale: [1.1, 0.9] is not a range [low, high] with 0 < low <= high, e.g. [0.9, 1.1]"
    )
    assert config_message([{"type": "noise", "std": 0}]).startswith("config: data.augment[0].std: Input should be greater than 0")
    assert config_message([{"type": "random_crop", "fill": "edge"}]) == "config: data.augment[0].fill: 'edge' is not one of: zeros, reflect"
