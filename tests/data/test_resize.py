"""The numpy resize the image feature (and so the edge runtime) uses equals torch's antialiased
bilinear interpolation, shrinking and enlarging, to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgeml.data.resize import resize_bilinear


@pytest.mark.parametrize(
    ("shape", "size"),
    [((2, 1, 8, 8), (28, 28)), ((2, 3, 28, 28), (8, 8)), ((1, 1, 28, 28), (14, 20)), ((1, 3, 17, 9), (9, 17)), ((1, 1, 5, 5), (5, 3))],
)
def test_resize_matches_torch_antialiased_bilinear(shape: tuple[int, ...], size: tuple[int, int]):
    images = np.random.default_rng(0).random(shape).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(images), size=size, mode="bilinear", align_corners=False, antialias=True).numpy()
    resized = resize_bilinear(images, size)
    assert resized.shape == expected.shape and resized.dtype == np.float32
    assert np.abs(resized - expected).max() < 1e-6


def test_a_constant_image_stays_constant():
    assert np.allclose(resize_bilinear(np.full((1, 1, 9, 13), 0.25, np.float32), (4, 30)), 0.25)
