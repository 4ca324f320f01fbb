"""Threat models of the attacks: the digital l-inf box and the spike l0 budget.

Digital inputs (rate-coded images, eq. 13 ``s_t = 1[x > r_t]``):

- ``convention="paper"`` (the paper's text, and the set the S-IBP/S-CROWN bounds certify): the
  adversarial image lies in ``[xhat - eps/2, xhat + eps/2]``, i.e. l-inf radius ``eps / 2``;
- ``convention="authors"`` (liangling76/certify_snn): radius ``eps``.

Both are intersected with ``[0, 1]``. With rand maps ``r_t`` fixed, every image of the box gives
spikes between ``1[lower > r_t]`` and ``1[upper > r_t]`` (the bounds' input set): ``spike_bounds``.

Spike inputs (event data): the adversary flips bits of the ``[T, *input_shape]`` spike tensor of a
sample. The total budget is ``round(size * eps)`` changed elements w.r.t. the clean input
(``size = T * prod(input_shape)``, halves rounded up as ``refsnn.input_sets.l0_count``; the paper's
"size * eps picked positions", counted over the whole spike tensor rather than per time step), and
the paper's attack changes at most ``round(size * eps / 2)`` elements per iteration for FC networks
and ``round(size * eps / 6)`` for convolutional ones. An optional ``allowed`` mask
``[T, B, *input_shape]`` confines the flips further, e.g. to the positions a
``refsnn.input_sets.spike_l0_set`` frees (the set the bounds certify).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..input_sets import CONVENTIONS, check_convention, check_eps, linf_radius  # noqa: F401  (defined there)
from ..network import SNN

@dataclass(frozen=True)
class DigitalBox:
    """``[lower, upper] = [max(xhat - radius, 0), min(xhat + radius, 1)]``, each ``[B, *shape]``."""

    lower: np.ndarray
    upper: np.ndarray
    radius: float

    @classmethod
    def around(cls, images: np.ndarray, eps: float, convention: str = "paper") -> "DigitalBox":
        radius = linf_radius(eps, convention)
        images = np.asarray(images, dtype=np.float64)
        return cls(np.maximum(images - radius, 0.0), np.minimum(images + radius, 1.0), radius)

    def project(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.lower, self.upper)

    def contains(self, x: np.ndarray) -> np.ndarray:
        """Per-sample bool ``[B]``: ``x`` lies in the box exactly (no tolerance)."""
        inside = (x >= self.lower) & (x <= self.upper)
        return inside.reshape(inside.shape[0], -1).all(axis=1)

    def subset(self, index) -> "DigitalBox":
        return DigitalBox(self.lower[index], self.upper[index], self.radius)

    def spike_bounds(self, rand_maps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Spikes reachable from the box with fixed rand maps: ``(1[lower > r], 1[upper > r])`` ``[T, B, *shape]``."""
        return ((self.lower[None] > rand_maps).astype(np.uint8),
                (self.upper[None] > rand_maps).astype(np.uint8))


def encode(images: np.ndarray, rand_maps: np.ndarray) -> np.ndarray:
    """``1[x > r_t]`` as uint8 ``[T, B, *shape]`` (eq. 13) without re-validating ``images``."""
    return (images[None] > rand_maps).astype(np.uint8)


def is_convolutional(net: SNN) -> bool:
    return any(layer.kind == "conv2d" for layer in net.layers)


@dataclass(frozen=True)
class SpikeBudget:
    """l0 budget of spike attacks: ``total`` changed elements per sample, ``per_step`` per iteration."""

    total: int
    per_step: int
    size: int

    @classmethod
    def for_network(cls, net: SNN, steps_T: int, eps: float, per_step_divisor: float = None) -> "SpikeBudget":
        """The paper's budget: ``round(size eps)`` in all, ``round(size eps / d)`` per step,
        ``d = 2`` for FC and ``6`` for convolutional networks unless ``per_step_divisor`` is given."""
        eps = check_eps(eps)
        size = int(steps_T * np.prod(net.input_shape))
        divisor = per_step_divisor if per_step_divisor is not None else (6.0 if is_convolutional(net) else 2.0)
        if divisor <= 0:
            raise ValueError(f"per_step_divisor must be > 0, got {divisor}")
        total = _round_half_up(size * eps)
        per_step = min(total, _round_half_up(size * eps / divisor))
        if total > 0 and per_step == 0:
            per_step = 1  # a budget of a few flips must still be usable; recorded in the config
        return cls(total=total, per_step=per_step, size=size)


def _round_half_up(value: float) -> int:
    return int(np.floor(value + 0.5))


def l0_changes(spikes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Number of changed elements per sample ``[B]`` between two ``[T, B, ...]`` spike tensors."""
    diff = np.asarray(spikes) != np.asarray(reference)
    return np.moveaxis(diff, 1, 0).reshape(diff.shape[1], -1).sum(axis=1)


def select_flips(priority: np.ndarray, candidate: np.ndarray, is_new: np.ndarray, new_allowed: np.ndarray,
                 per_step: int) -> np.ndarray:
    """Which candidate flips to apply, per sample (rows of ``[B, n]`` arrays).

    A flip is *new* when it moves a bit away from the clean input (costs one unit of the l0 budget)
    and a *revert* otherwise (frees one). New flips are taken in decreasing ``priority`` while
    ``new_allowed [B]`` lasts; then at most ``per_step`` flips in all, again by priority.
    """
    neg = -np.inf
    new_priority = np.where(candidate & is_new, priority, neg)
    rank_new = _ranks_descending(new_priority)
    keep = candidate & (~is_new | (rank_new < np.asarray(new_allowed)[:, None]))
    rank_all = _ranks_descending(np.where(keep, priority, neg))
    return keep & (rank_all < per_step)


def _ranks_descending(values: np.ndarray) -> np.ndarray:
    order = np.argsort(-values, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(values.shape[0])[:, None]
    ranks[rows, order] = np.arange(values.shape[1])[None, :]
    return ranks
