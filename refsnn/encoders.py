"""Input encoders: Bernoulli rate coding for digital images (the paper's eq. 13), events pass through.

The rand maps are explicit so that the clean sample, the bound set and the attack can reuse the
very same draws: ``x_t = 1[xhat > rand_t]`` with ``rand_t ~ U(0, 1)``.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def check_images(images) -> np.ndarray:
    """Validates digital images ``[B, *shape]`` with values in [0, 1] and returns them as float64."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim < 2:
        raise ValueError(f"images must be [B, *shape], got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or infinite values")
    if images.min(initial=0.0) < 0.0 or images.max(initial=0.0) > 1.0:
        raise ValueError(f"images must lie in [0, 1] (got range [{images.min()}, {images.max()}]); "
                         "divide 8-bit pixels by 255")
    return images


def draw_rand_maps(rng: np.random.Generator, steps: int, images_shape) -> np.ndarray:
    """Uniform rand maps ``[T, B, *shape]`` from an explicit generator."""
    if steps < 1:
        raise ValueError(f"the number of time steps must be >= 1, got {steps}")
    return rng.random((steps,) + tuple(images_shape))


def bernoulli_encode(images, rand_maps) -> np.ndarray:
    """Spikes ``x_t = 1[xhat > rand_t]`` as uint8 ``[T, B, *shape]`` (eq. 13)."""
    images = check_images(images)
    rand_maps = np.asarray(rand_maps)
    if rand_maps.shape[1:] != images.shape:
        raise ValueError(f"rand maps {rand_maps.shape} do not match images {images.shape}: "
                         "expected [T, *images.shape]")
    return (images[None] > rand_maps).astype(np.uint8)


def rate_encode(images, steps: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Draws rand maps and encodes: returns ``(spikes [T, B, *shape] uint8, rand_maps [T, B, *shape])``."""
    images = check_images(images)
    rand_maps = draw_rand_maps(rng, steps, images.shape)
    return bernoulli_encode(images, rand_maps), rand_maps
