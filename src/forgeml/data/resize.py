"""Antialiased bilinear resizing of image arrays in numpy.

This is the resize the image feature applies to array images (built-in datasets, arrays given to
``predict``). It is written in numpy, not torch, so that the edge runtime (``forgeml.runtime``),
which never imports torch, preprocesses exactly as training did. The algorithm is the one torch's
``interpolate(mode="bilinear", align_corners=False, antialias=True)`` and Pillow use: each output
pixel is a normalised triangle-filter average whose support widens with the downscaling factor, so
shrinking averages every input pixel instead of skipping some. The suite checks it against torch.
"""

from __future__ import annotations

import numpy as np


def _weights(size_in: int, size_out: int) -> np.ndarray:
    """The (size_out x size_in) matrix of one axis: row i holds the filter weights of output pixel i."""
    scale = size_in / size_out
    support = max(scale, 1.0)  # the triangle's half-width in input pixels
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    for i in range(size_out):
        centre = scale * (i + 0.5)
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), size_in)
        taps = np.arange(first, last)
        weights = np.clip(1.0 - np.abs((taps - centre + 0.5) * inverse), 0.0, None)
        total = weights.sum()
        if total > 0:
            matrix[i, first:last] = weights / total
    return matrix


def resize_bilinear(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize N x C x H x W float images to N x C x size[0] x size[1] (antialiased bilinear)."""
    height, width = int(size[0]), int(size[1])
    rows = _weights(images.shape[-2], height).astype(np.float32)
    columns = _weights(images.shape[-1], width).astype(np.float32)
    return np.einsum("ih,nchw,jw->ncij", rows, images.astype(np.float32, copy=False), columns, optimize=True).astype(np.float32)
