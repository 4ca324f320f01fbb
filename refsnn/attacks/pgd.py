"""Stronger-than-the-paper attacks: PGD with EOT/restarts/step schedules (digital), greedy flips.

``PGD`` (digital only): signed-gradient ascent on the image, projected onto the l-inf box and
[0, 1]. The image gradient is formed from ``dL/ds_t`` by an *encoder rule*:

- ``"mean"``: straight-through encoder, ``dL/dx = mean_t dL/ds_t`` (the paper's eq. 6 mapping);
- ``"smooth"``: the encoder ``1[x > r_t]`` is relaxed to ``sigmoid((x - r_t) / w)``, so
  ``dL/dx = sum_t dL/ds_t * sigmoid'((x - r_t) / w) / w``; with the rand maps fixed only the time
  steps whose ``r_t`` lies near ``x`` (within the box, ``w`` = the box radius by default) can change,
  and only those count.

EOT averages the image gradient over the evaluation maps and ``eot - 1`` fresh draws.
Restart 0 starts at the clean image, later restarts uniformly in the box. Step size
``alpha = step_scale * radius`` per step, constant or cosine-decayed to 0 over the steps.

``GreedyFlip``: first-order greedy search in spike space.

- ``kind="spike"``: each step flips the ``k`` bits with the largest first-order gain
  ``g * (1 - 2 s)`` (> 0 only), within the l0 budget (reverting a flip is free);
- ``kind="digital"``: with the rand maps fixed, a pixel's spikes ``1[x > r_t]`` can only take
  ``m + 1`` patterns in the box (``m`` = number of ``r_t`` in ``[lower, upper)``), switched on in
  increasing ``r_t``. For each pixel the pattern with the largest linearized gain ``sum_t g_t s_t``
  is found exactly (sort + prefix sums) and the ``k`` pixels with the largest gains move to an image
  value realizing it. ``k`` starts at ``fraction * pixels`` and decays geometrically to 1.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..network import SNN
from .base import Attack, Seed, search_with_restarts
from .constraints import DigitalBox, SpikeBudget, encode, l0_changes
from .gradients import GradientRule, input_gradient, rate_loss
from .paper import apply_flips

ENCODER_RULES = ("mean", "smooth")
SCHEDULES = ("constant", "cosine")


class _SearchAttack(Attack):
    """Shared evaluation for the iterative searches (loss and prediction with the unmodified net)."""

    def __init__(self, net, eps, kind, convention, steps, gradient, loss, loss_scale, seed, T, restarts):
        super().__init__(net, eps, kind, convention, steps, gradient, loss, loss_scale, seed, T)
        if int(restarts) < 1:
            raise ValueError(f"restarts must be >= 1 (restart 0 starts at the clean input), got {restarts}")
        self.restarts = int(restarts)

    def config(self) -> dict:
        return {**super().config(), "restarts": self.restarts}

    def _evaluate(self, spikes, labels):
        rates = self.net.run(spikes, validate=False).rates
        loss, _ = rate_loss(rates, labels, self.loss, self.loss_scale)
        return loss, np.argmax(rates, axis=1) != labels


class PGD(_SearchAttack):
    """``PGD(net, eps, steps=50, restarts=1, eot=1)(images, y, rand_maps)`` (digital inputs only)."""

    name = "pgd"

    def __init__(self, net: SNN, eps: float, kind: str = "digital", convention: str = "paper",
                 steps: int = 50, restarts: int = 1, eot: int = 1, step_scale: float = 0.25,
                 schedule: str = "cosine", encoder: str = "smooth", encoder_width: Optional[float] = None,
                 gradient: Optional[GradientRule] = None, loss: str = "ce", loss_scale: float = 1.0,
                 seed: Seed = 0, T: int = 10):
        if kind != "digital":
            raise ValueError("PGD works on images (kind='digital'); use GreedyFlip or PaperAttack for spikes")
        super().__init__(net, eps, kind, convention, steps, gradient, loss, loss_scale, seed, T, restarts)
        if int(eot) < 1:
            raise ValueError(f"eot must be >= 1 (1 = the evaluation maps only), got {eot}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if encoder not in ENCODER_RULES:
            raise ValueError(f"encoder must be one of {ENCODER_RULES}, got {encoder!r}")
        if step_scale <= 0 or (encoder_width is not None and encoder_width <= 0):
            raise ValueError("step_scale and encoder_width must be > 0")
        self.eot, self.step_scale, self.schedule = int(eot), float(step_scale), schedule
        self.encoder, self.encoder_width = encoder, encoder_width

    def config(self) -> dict:
        return {**super().config(), "eot": self.eot, "step_scale": self.step_scale, "schedule": self.schedule,
                "encoder": self.encoder, "encoder_width": self.encoder_width}

    def _step_size(self, radius: float, it: int) -> float:
        alpha = self.step_scale * radius
        if self.schedule == "cosine":
            alpha *= 0.5 * (1.0 + np.cos(np.pi * it / max(1, self.steps)))
        return alpha

    def _image_gradient(self, x, labels, maps, width):
        spikes = encode(x, maps)
        _, grad, _ = input_gradient(self.net, spikes, labels, self.gradient, self.loss, self.loss_scale)
        if self.encoder == "mean":
            return grad.mean(axis=0)
        z = (x[None] - maps) / width
        sig = 0.5 * (1.0 + np.tanh(0.5 * z))
        return (grad * sig * (1.0 - sig)).sum(axis=0) / width

    def _digital(self, images, labels, rand_maps, box: DigitalBox, active, rng):
        radius = box.radius
        width = self.encoder_width if self.encoder_width is not None else max(radius, 1e-3)

        def init(index, restart):
            if restart == 0:
                return images[index].copy()
            sub = box.subset(index)
            return sub.lower + rng.random(sub.lower.shape) * (sub.upper - sub.lower)

        def update(x, index, it):
            grad = self._image_gradient(x, labels[index], rand_maps[:, index], width)
            for _ in range(self.eot - 1):
                grad = grad + self._image_gradient(x, labels[index], rng.random(rand_maps[:, index].shape), width)
            return box.subset(index).project(x + self._step_size(radius, it) * np.sign(grad))

        def evaluate(x, index):
            return self._evaluate(encode(x, rand_maps[:, index]), labels[index])

        if radius == 0:
            return images.copy(), np.zeros(labels.size, dtype=np.int64), {}
        best, iterations = search_with_restarts(images, 0, active, self.restarts, self.steps, init, update, evaluate)
        return best, iterations, {"encoder_width_used": width}


def best_pixel_levels(grad: np.ndarray, rand_maps: np.ndarray, spikes: np.ndarray, lower: np.ndarray,
                      upper: np.ndarray):
    """Exact per-pixel maximizer of the linearized gain over the box, rand maps fixed.

    ``grad, rand_maps, spikes [T, b, P]`` (``spikes = 1[x > r]`` of the current image),
    ``lower, upper [b, P]``. Returns ``(gain [b, P], value [b, P])``: the gain
    ``sum_t g_t (s'_t - s_t)`` of the best reachable pattern ``s'`` and an image value in
    ``[lower, upper]`` that realizes it.
    """
    in_range = (rand_maps >= lower[None]) & (rand_maps < upper[None])
    key = np.where(in_range, rand_maps, np.inf)
    order = np.argsort(key, axis=0, kind="stable")
    sorted_maps = np.take_along_axis(key, order, axis=0)
    sorted_grad = np.take_along_axis(np.where(in_range, grad, 0.0), order, axis=0)
    steps_T = grad.shape[0]
    prefix = np.concatenate([np.zeros((1,) + grad.shape[1:]), np.cumsum(sorted_grad, axis=0)], axis=0)
    count = in_range.sum(axis=0)
    level = np.arange(steps_T + 1).reshape((-1,) + (1,) * (grad.ndim - 1))
    # Level j (j in-range spikes on) is realizable iff j <= m and the j-th and (j+1)-th maps differ.
    padded = np.concatenate([np.full((1,) + grad.shape[1:], -np.inf), sorted_maps,
                             np.full((1,) + grad.shape[1:], np.inf)], axis=0)
    distinct = padded[1:] > padded[:-1]  # [T + 1, ...]: r_(j) < r_(j+1), with r_(0) = -inf
    valid = (level <= count[None]) & (distinct | (level == 0) | (level == count[None]))
    objective = np.where(valid, prefix, -np.inf)
    best_level = np.argmax(objective, axis=0)
    current = np.where(in_range & (spikes > 0), grad, 0.0).sum(axis=0)
    gain = np.take_along_axis(objective, best_level[None], axis=0)[0] - current
    below = np.take_along_axis(padded, best_level[None], axis=0)[0]      # r_(j)
    above = np.take_along_axis(padded, best_level[None] + 1, axis=0)[0]  # r_(j+1)
    with np.errstate(invalid="ignore"):  # -inf + inf at the end levels, which the where discards
        midpoint = 0.5 * (below + above)
    value = np.where(best_level == 0, lower, np.where(best_level == count, upper, midpoint))
    return gain, np.clip(value, lower, upper)


class GreedyFlip(_SearchAttack):
    """Greedy first-order flips (module docstring). Spikes: ``GreedyFlip(net, eps, kind="spike")(spikes, y)``.

    ``flips_per_step``: spike flips per step (default: the paper's per-iteration cap);
    ``fraction``: digital, share of pixels moved in the first step (decays to one pixel).
    """

    name = "greedy"

    def __init__(self, net: SNN, eps: float, kind: str = "digital", convention: str = "paper",
                 steps: int = 50, restarts: int = 1, flips_per_step: Optional[int] = None,
                 fraction: float = 0.1, gradient: Optional[GradientRule] = None, loss: str = "ce",
                 loss_scale: float = 1.0, seed: Seed = 0, T: int = 10):
        super().__init__(net, eps, kind, convention, steps, gradient, loss, loss_scale, seed, T, restarts)
        if flips_per_step is not None and int(flips_per_step) < 1:
            raise ValueError(f"flips_per_step must be >= 1, got {flips_per_step}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
        self.flips_per_step = flips_per_step
        self.fraction = float(fraction)

    def config(self) -> dict:
        extra = {"fraction": self.fraction} if self.kind == "digital" else {"flips_per_step": self.flips_per_step}
        return {**super().config(), **extra}

    def _pixels_per_step(self, pixels: int, it: int) -> int:
        first = max(1.0, self.fraction * pixels)
        decay = first ** (-it / max(1, self.steps - 1))
        return max(1, int(round(first * decay)))

    def _digital(self, images, labels, rand_maps, box: DigitalBox, active, rng):
        pixels = int(np.prod(images.shape[1:]))

        def flat(a, index):
            return a[:, index].reshape(a.shape[0], index.size, pixels)

        def init(index, restart):
            sub = box.subset(index)
            if restart == 0:
                return images[index].copy()
            return sub.lower + rng.random(sub.lower.shape) * (sub.upper - sub.lower)

        def update(x, index, it):
            spikes = encode(x, rand_maps[:, index])
            _, grad, _ = input_gradient(self.net, spikes, labels[index], self.gradient, self.loss, self.loss_scale)
            sub = box.subset(index)
            shape = (index.size, pixels)
            gain, value = best_pixel_levels(grad.reshape(grad.shape[:2] + (pixels,)), flat(rand_maps, index),
                                            spikes.reshape(spikes.shape[:2] + (pixels,)),
                                            sub.lower.reshape(shape), sub.upper.reshape(shape))
            k = self._pixels_per_step(pixels, it)
            gain = np.where(gain > 0, gain, -np.inf)
            top = np.argsort(-gain, axis=1, kind="stable")[:, :k]
            chosen = np.zeros(shape, dtype=bool)
            np.put_along_axis(chosen, top, True, axis=1)
            chosen &= np.isfinite(gain)
            moved = np.where(chosen, value, x.reshape(shape)).reshape(x.shape)
            return sub.project(moved)

        def evaluate(x, index):
            return self._evaluate(encode(x, rand_maps[:, index]), labels[index])

        if box.radius == 0:
            return images.copy(), np.zeros(labels.size, dtype=np.int64), {}
        best, iterations = search_with_restarts(images, 0, active, self.restarts, self.steps, init, update, evaluate)
        return best, iterations, {}

    def _spike(self, spikes, labels, budget: SpikeBudget, active, rng, allowed=None):
        per_step = self.flips_per_step if self.flips_per_step is not None else budget.per_step

        def init(index, restart):
            clean = spikes[:, index]
            if restart == 0 or budget.total == 0:
                return clean.copy()
            priority = rng.random(clean.shape)
            candidate = np.ones(clean.shape, dtype=bool)
            random_budget = SpikeBudget(budget.total, budget.total, budget.size)
            return apply_flips(clean, clean, candidate, priority, random_budget, rng.integers(1, budget.total + 1),
                               mask(index))

        def update(state, index, it):
            _, grad, _ = input_gradient(self.net, state, labels[index], self.gradient, self.loss, self.loss_scale)
            gain = grad * (1.0 - 2.0 * state)
            return apply_flips(state, spikes[:, index], gain > 0, gain, budget, per_step, mask(index))

        def evaluate(state, index):
            return self._evaluate(state, labels[index])

        def mask(index):
            return None if allowed is None else allowed[:, index]

        if budget.total == 0:
            return spikes.copy(), np.zeros(labels.size, dtype=np.int64), {"l0_budget": 0}
        best, iterations = search_with_restarts(spikes, 1, active, self.restarts, self.steps, init, update, evaluate)
        assert (l0_changes(best, spikes) <= budget.total).all()
        return best, iterations, {"l0_budget": budget.total, "flips_per_step_used": per_step,
                                  "spike_size": budget.size}
