"""Input sets of the paper (section 3.2) as binary boxes ``x_lower <= x <= x_upper`` over spike trains.

Every set is a box of spike trains ``[T', B, *input_shape]`` of 0/1; its ``T'`` (number of time
steps) is the horizon of the bound and need not equal the inference ``T``.

- ``binary_box``: a generic box, validated.
- ``digital_linf_set`` (eqs. 13-14): an image ``xhat`` in [0, 1], radius ``r`` and FIXED rand maps
  ``rand_t`` (shared with the clean sample): ``x_upper_t = 1[xhat + r > rand_t]``,
  ``x_lower_t = 1[xhat - r > rand_t]``, ``x_clean_t = 1[xhat > rand_t]``. The paper's text uses
  ``r = eps / 2`` (``convention="paper"``, default); the authors' released code uses ``r = eps``
  (``convention="authors"``).
- ``spike_l0_set`` (eq. 12 and Alg. 1): per time step and sample, ``round(size(x_t) * eps)``
  positions drawn without replacement by a seeded generator are freed (``upper = 1``,
  ``lower = 0``; ``mode="paper"``), or every bit is freed independently with probability ``eps``
  (``mode="authors"``, the authors' released code).

Values near 0 and 1 (digital sets). Rand maps lie in ``[0, 1)``. A pixel of value 1 spikes at
every step in the clean sample (``1 > rand``); a pixel of value 0 never spikes in the clean
sample nor in ``x_lower`` (``0 - r > rand`` is false). The perturbed image is taken in the
l-inf ball clipped to ``[0, 1]``; clipping changes nothing: ``min(1, xhat + r) > rand`` iff
``xhat + r > rand`` because ``rand < 1``, and ``max(0, xhat - r) > rand`` iff ``xhat - r > rand``
because ``rand >= 0``. So ``x_upper`` may spike where ``xhat`` is 0 (wherever ``r > rand``): that
IS the set. The box over-approximates the exact set (one pixel's bits over time are coupled
through one perturbed value); bounds computed on the box are sound for the exact set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

# The conventions of the input sets, defined once (bounds, attacks, certify, training read them here).
DEFAULT_ROBUST_T = 3     # T': time steps of the bound set (the paper trains and certifies on 3)
CONVENTIONS = ("paper", "authors")
L0_MODES = ("paper", "authors")


def check_eps(eps: float) -> float:
    """``eps`` as a float; a finite number ``>= 0`` (else ``ValueError``)."""
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def check_convention(convention: str) -> str:
    """The digital l-inf convention: ``"paper"`` (radius eps/2) or ``"authors"`` (radius eps)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be 'paper' (l-inf radius eps/2, the paper's text and the bounds' set) "
                         f"or 'authors' (radius eps, liangling76/certify_snn), got {convention!r}")
    return convention


def linf_radius(eps: float, convention: str = "paper") -> float:
    """l-inf radius of the digital set for ``eps``: ``eps / 2`` (paper, eq. 14) or ``eps`` (authors)."""
    eps = check_eps(eps)
    return eps / 2.0 if check_convention(convention) == "paper" else eps


def _as_binary(value, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != bool and not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must hold 0/1 spikes as numbers or booleans, got dtype {array.dtype}")
    if array.dtype != bool:
        if not np.all((array == 0) | (array == 1)):
            bad = array[(array != 0) & (array != 1)].ravel()[:3]
            raise ValueError(f"{name} must be binary (0/1), found values such as {bad.tolist()}; "
                             "encode images first (refsnn.encoders / digital_linf_set)")
    return array.astype(np.uint8)


@dataclass(frozen=True)
class BinaryBox:
    """A validated box of spike trains; iterates as ``(x_lower, x_upper)`` (uint8, ``[T', B, *in]``)."""

    x_lower: np.ndarray
    x_upper: np.ndarray
    description: str = "binary box"

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.x_lower
        yield self.x_upper

    @property
    def steps(self) -> int:
        return self.x_lower.shape[0]

    @property
    def n_free(self) -> np.ndarray:
        """Number of free bits per sample ``[B]``."""
        free = self.x_upper != self.x_lower
        return free.reshape(free.shape[0], free.shape[1], -1).sum(axis=(0, 2))


def binary_box(x_lower, x_upper, net=None, description: str = "binary box") -> BinaryBox:
    """Validates a box ``x_lower <= x <= x_upper`` of 0/1 spike trains ``[T', B, *input_shape]``.

    With ``net`` the per-sample shape must equal ``net.input_shape``.
    """
    x_lower = _as_binary(x_lower, "x_lower")
    x_upper = _as_binary(x_upper, "x_upper")
    if x_lower.shape != x_upper.shape:
        raise ValueError(f"x_lower {x_lower.shape} and x_upper {x_upper.shape} must have the same shape")
    if x_lower.ndim < 3:
        raise ValueError(f"boxes are time-major [T', B, *input_shape], got shape {x_lower.shape}")
    if x_lower.shape[0] < 1 or x_lower.shape[1] < 1:
        raise ValueError(f"a box needs at least one time step and one sample, got shape {x_lower.shape}")
    if net is not None and tuple(x_lower.shape[2:]) != tuple(net.input_shape):
        raise ValueError(f"the box has per-sample shape {tuple(x_lower.shape[2:])} but the network expects "
                         f"{tuple(net.input_shape)}; arrays are [T', B, *input_shape]")
    if np.any(x_lower > x_upper):
        count = int(np.count_nonzero(x_lower > x_upper))
        raise ValueError(f"x_lower > x_upper at {count} positions; the box is empty there "
                         "(swap the arguments or fix the set)")
    return BinaryBox(x_lower, x_upper, description)


@dataclass(frozen=True)
class DigitalLinfBox:
    """Eqs. 13-14 box; iterates as ``(x_lower, x_upper, x_clean)``. ``radius`` is what was applied.

    The box of spike trains of a digital l-inf set (``verify.sets.DigitalLinfSet`` is the exact set)."""

    x_lower: np.ndarray
    x_upper: np.ndarray
    x_clean: np.ndarray
    eps: float
    radius: float
    convention: str

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.x_lower
        yield self.x_upper
        yield self.x_clean

    @property
    def box(self) -> BinaryBox:
        return BinaryBox(self.x_lower, self.x_upper,
                         f"digital l-inf eps={self.eps} ({self.convention}: radius {self.radius})")


def digital_linf_set(images, eps: float, rand_maps, convention: str = "paper") -> DigitalLinfBox:
    """Box of spike trains reachable from ``images [B, *shape]`` in [0, 1] within l-inf ``eps``.

    ``rand_maps [T', B, *shape]`` in ``[0, 1)`` are the Bernoulli draws shared with the clean
    sample. ``convention="paper"``: radius ``eps / 2`` (the paper's eq. 14); ``"authors"``:
    radius ``eps`` (liangling76/certify_snn). Returns uint8 ``x_lower, x_upper, x_clean``.
    """
    from .encoders import check_images

    radius = linf_radius(eps, convention)
    eps = float(eps)
    images = check_images(images)
    rand_maps = np.asarray(rand_maps, dtype=np.float64)
    if rand_maps.ndim != images.ndim + 1 or rand_maps.shape[1:] != images.shape:
        raise ValueError(f"rand_maps {rand_maps.shape} must be [T', *images.shape] = [T', {images.shape}]")
    if rand_maps.shape[0] < 1:
        raise ValueError("rand_maps need at least one time step")
    if rand_maps.size and (rand_maps.min() < 0.0 or rand_maps.max() >= 1.0):
        raise ValueError("rand_maps must lie in [0, 1) (draw them with refsnn.encoders.draw_rand_maps)")
    x_upper = (images[None] + radius > rand_maps).astype(np.uint8)
    x_lower = (images[None] - radius > rand_maps).astype(np.uint8)
    x_clean = (images[None] > rand_maps).astype(np.uint8)
    return DigitalLinfBox(x_lower, x_upper, x_clean, eps, radius, convention)


@dataclass(frozen=True)
class SpikeL0Box:
    """Spike-domain set (eq. 12) as a box; iterates as ``(x_lower, x_upper)``; ``free`` marks the freed bits.

    (``verify.sets.SpikeL0Set`` is a different set: the whole l0 ball around a clean train.)"""

    x_lower: np.ndarray
    x_upper: np.ndarray
    free: np.ndarray
    eps: float
    mode: str
    n_free_per_step: Optional[int]

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.x_lower
        yield self.x_upper

    @property
    def box(self) -> BinaryBox:
        return BinaryBox(self.x_lower, self.x_upper, f"spike l0 eps={self.eps} ({self.mode})")


def l0_count(size: int, eps: float) -> int:
    """``round(size * eps)`` with halves rounded up (Python's ``round`` rounds halves to even)."""
    return int(np.floor(size * eps + 0.5))


def spike_l0_set(spikes, eps: float, rng: np.random.Generator, mode: str = "paper") -> SpikeL0Box:
    """Frees bits of the clean spike trains ``spikes [T', B, *shape]`` (eq. 12 / Alg. 1).

    ``mode="paper"``: per time step and sample exactly ``round(size(x_t) * eps)`` positions
    (uniform without replacement, halves rounded up); ``mode="authors"``: each bit freed
    independently with probability ``eps``. ``rng`` is an explicit ``np.random.Generator``.
    """
    if mode not in L0_MODES:
        raise ValueError(f"mode must be 'paper' (round(size * eps) positions per step) or 'authors' "
                         f"(each bit free with probability eps), got {mode!r}")
    eps = float(eps)
    if not np.isfinite(eps) or not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be a fraction in [0, 1], got {eps}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator, e.g. np.random.default_rng(seed)")
    spikes = _as_binary(spikes, "spikes")
    if spikes.ndim < 3:
        raise ValueError(f"spikes must be time-major [T', B, *shape], got shape {spikes.shape}")
    steps, batch = spikes.shape[:2]
    size = int(np.prod(spikes.shape[2:]))
    draws = rng.random((steps, batch, size))
    if mode == "paper":
        count = l0_count(size, eps)
        if count == 0:
            free = np.zeros_like(draws, dtype=bool)
        else:
            # Positions of the `count` smallest draws of each (step, sample) row: a uniform subset
            # without replacement, exactly `count` of them.
            chosen = np.argpartition(draws, count - 1, axis=-1)[..., :count]
            free = np.zeros(draws.shape, dtype=bool)
            np.put_along_axis(free, chosen, True, axis=-1)
    else:
        count = None
        free = draws < eps
    free = free.reshape(spikes.shape)
    x_lower = np.where(free, 0, spikes).astype(np.uint8)
    x_upper = np.where(free, 1, spikes).astype(np.uint8)
    return SpikeL0Box(x_lower, x_upper, free, eps, mode, count)
