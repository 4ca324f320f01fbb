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

import numba
import numpy as np

from ..network import SNN, Trace
from .base import Attack, Seed, search_with_restarts
from .constraints import DigitalBox, SpikeBudget, encode, l0_changes
from .gradients import GradientRule, input_gradient, output_currents, rate_loss, uses_plain_forward
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

    def _evaluate(self, spikes, labels, index=None):
        """Loss (on the rule's output) and misclassification on evaluation spikes; keeps the trace for
        the next gradient."""
        trace = self.net.run(spikes, validate=False)
        if index is not None:
            self._cache = (index, spikes, trace)
        rates = trace.rates
        output = rates if self.gradient.output == "rates" else output_currents(trace)
        loss, _ = rate_loss(output, labels, self.loss, self.loss_scale)
        return loss, np.argmax(rates, axis=1) != labels

    def _gradient(self, spikes, labels, index):
        """``input_gradient`` reusing the trace of the last evaluation when it saw the same spikes."""
        trace = None
        cache = getattr(self, "_cache", None)
        if cache is not None:
            cached_index, cached_spikes, cached_trace = cache
            pos = np.searchsorted(cached_index, index)
            if (pos < cached_index.size).all() and np.array_equal(cached_index[np.minimum(pos, cached_index.size - 1)],
                                                                  index):
                # No sample left since: the trace as it is (a raised threshold reuses its first
                # stages). Otherwise the samples' rows, for the plain forward only: a raised-threshold
                # forward of the smaller batch is computed afresh, as it always was.
                whole = pos.size == cached_index.size
                if whole and np.array_equal(cached_spikes, spikes):
                    trace = cached_trace
                elif uses_plain_forward(self.net, self.gradient) and np.array_equal(cached_spikes[:, pos], spikes):
                    trace = _trace_subset(cached_trace, pos)
        return input_gradient(self.net, spikes, labels, self.gradient, self.loss, self.loss_scale, trace=trace)


def _trace_subset(trace: Trace, pos) -> Trace:
    """The samples ``pos`` of a trace (enough for input gradients: no ``op_inputs``)."""
    return Trace(inputs=trace.inputs[:, pos], currents=[a[:, pos] for a in trace.currents],
                 membranes=[a[:, pos] for a in trace.membranes], spikes=[a[:, pos] for a in trace.spikes],
                 threshold=trace.threshold, reset=trace.reset)


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

    def _image_gradient(self, x, labels, maps, width, index=None):
        spikes = encode(x, maps)
        if index is not None:  # the evaluation maps: the last evaluation's trace may be reused
            _, grad, _ = self._gradient(spikes, labels, index)
        else:
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
            grad = self._image_gradient(x, labels[index], rand_maps[:, index], width, index)
            for _ in range(self.eot - 1):
                grad = grad + self._image_gradient(x, labels[index], rng.random(rand_maps[:, index].shape), width)
            return box.subset(index).project(x + self._step_size(radius, it) * np.sign(grad))

        def evaluate(x, index):
            return self._evaluate(encode(x, rand_maps[:, index]), labels[index], index)

        self._cache = None
        if radius == 0:
            return images.copy(), np.zeros(labels.size, dtype=np.int64), {}
        best, iterations = search_with_restarts(images, 0, active, self.restarts, self.steps, init, update, evaluate)
        self._cache = None
        return best, iterations, {"encoder_width_used": width}


class PixelLevels:
    """The reachable spike patterns of every pixel of a box with fixed rand maps, sorted once.

    ``rand_maps [T, B, P]``, ``lower, upper [B, P]``. A pixel's spikes ``1[x > r_t]`` for ``x`` in
    ``[lower, upper]`` switch on in increasing ``r_t`` over the ``m`` maps in ``[lower, upper)``:
    level ``j`` (``j`` of them on) is realizable iff ``j <= m`` and the ``j``-th and ``(j+1)``-th
    sorted maps differ (or ``j`` is 0 or ``m``).
    """

    def __init__(self, rand_maps: np.ndarray, lower: np.ndarray, upper: np.ndarray):
        self.lower, self.upper = lower, upper
        self.in_range = (rand_maps >= lower[None]) & (rand_maps < upper[None])
        key = np.where(self.in_range, rand_maps, np.inf)
        self.order = np.argsort(key, axis=0, kind="stable")
        sorted_maps = np.take_along_axis(key, self.order, axis=0)
        edge = (1,) + rand_maps.shape[1:]
        self.padded = np.concatenate([np.full(edge, -np.inf), sorted_maps, np.full(edge, np.inf)], axis=0)
        self.count = self.in_range.sum(axis=0)
        level = np.arange(rand_maps.shape[0] + 1).reshape((-1,) + (1,) * (rand_maps.ndim - 1))
        distinct = self.padded[1:] > self.padded[:-1]  # r_(j) < r_(j+1), with r_(0) = -inf
        self.valid = (level <= self.count[None]) & (distinct | (level == 0) | (level == self.count[None]))

    def best(self, grad: np.ndarray, spikes: np.ndarray, index: Optional[np.ndarray] = None):
        """``(gain [b, P], value [b, P])`` of the best pattern per pixel for ``grad, spikes [T, b, P]``
        of the samples ``index`` (default: all): the linearized gain ``sum_t g_t (s'_t - s_t)`` and an
        image value in the box realizing it.

        Arithmetic (one fused kernel): the in-range gradient is summed in increasing ``r_t`` in
        ``grad``'s dtype, the current pattern's gain in time order, the difference in float64.
        """
        grad = np.ascontiguousarray(grad)
        samples = self.count.shape[0]
        if index is None:
            index = np.arange(samples)
        index = np.asarray(index)
        if index.ndim != 1 or (index.size and (index.dtype.kind not in "iu" or index.min() < 0
                                               or index.max() >= samples)):
            raise ValueError(f"index must be a 1-D array of sample numbers in [0, {samples}), got "
                             f"{np.array2string(index, threshold=6)} ({index.dtype})")
        index = np.ascontiguousarray(index, dtype=np.int64)
        if grad.ndim != 3 or grad.shape != spikes.shape or grad.shape[1] != index.size or \
                grad.shape[0] != self.in_range.shape[0] or grad.shape[2] != self.in_range.shape[2]:
            raise ValueError(f"grad and spikes must be [T, b, P] = [{self.in_range.shape[0]}, {index.size}, "
                             f"{self.in_range.shape[2]}], got {grad.shape} and {spikes.shape}")
        return _best_levels(grad, np.ascontiguousarray(spikes), index, self.in_range, self.order, self.padded,
                            self.count, self.valid, self.lower, self.upper, grad.dtype.type(0))


@numba.njit(parallel=True, cache=True)
def _best_levels(grad, spikes, index, in_range, order, padded, count, valid, lower, upper,
                 zero):  # pragma: no cover - compiled
    """Kernel of :meth:`PixelLevels.best`: per pixel, the first level of largest prefix sum (level 0:
    nothing switched on), its gain over the current spikes, and the midpoint of its map interval."""
    steps, batch, pixels = grad.shape
    gain = np.empty((batch, pixels))
    value = np.empty((batch, pixels))
    for i in numba.prange(batch):
        n = index[i]
        for p in range(pixels):
            best = 0
            best_objective = 0.0 if valid[0, n, p] else -np.inf
            acc = zero
            for j in range(steps):
                t = order[j, n, p]
                g = grad[t, i, p] if in_range[t, n, p] else zero
                acc = g if j == 0 else acc + g
                objective = np.float64(acc) if valid[j + 1, n, p] else -np.inf
                # the first maximum, a NaN counting as the largest (np.argmax)
                if objective > best_objective or (np.isnan(objective) and not np.isnan(best_objective)):
                    best, best_objective = j + 1, objective
            current = zero
            for t in range(steps):
                g = grad[t, i, p] if (in_range[t, n, p] and spikes[t, i, p] > 0) else zero
                current = g if t == 0 else current + g
            gain[i, p] = best_objective - np.float64(current)
            low, high = lower[n, p], upper[n, p]
            if best == 0:
                v = low
            elif best == count[n, p]:
                v = high
            else:
                v = 0.5 * (padded[best, n, p] + padded[best + 1, n, p])
            value[i, p] = min(max(v, low), high)
    return gain, value


def best_pixel_levels(grad: np.ndarray, rand_maps: np.ndarray, spikes: np.ndarray, lower: np.ndarray,
                      upper: np.ndarray):
    """Exact per-pixel maximizer of the linearized gain over the box, rand maps fixed.

    ``grad, rand_maps, spikes [T, b, P]`` (``spikes = 1[x > r]`` of the current image),
    ``lower, upper [b, P]``. Returns ``(gain [b, P], value [b, P])``: the gain
    ``sum_t g_t (s'_t - s_t)`` of the best reachable pattern ``s'`` and an image value in
    ``[lower, upper]`` that realizes it.
    """
    return PixelLevels(rand_maps, lower, upper).best(grad, spikes)


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
        self._cache = None
        pixels = int(np.prod(images.shape[1:]))
        batch = labels.size
        levels = PixelLevels(rand_maps.reshape(rand_maps.shape[:2] + (pixels,)), box.lower.reshape(batch, pixels),
                             box.upper.reshape(batch, pixels))

        def init(index, restart):
            sub = box.subset(index)
            if restart == 0:
                return images[index].copy()
            return sub.lower + rng.random(sub.lower.shape) * (sub.upper - sub.lower)

        def update(x, index, it):
            spikes = encode(x, rand_maps[:, index])
            _, grad, _ = self._gradient(spikes, labels[index], index)
            shape = (index.size, pixels)
            gain, value = levels.best(grad.reshape(grad.shape[:2] + (pixels,)),
                                      spikes.reshape(spikes.shape[:2] + (pixels,)), index)
            k = self._pixels_per_step(pixels, it)
            gain = np.where(gain > 0, gain, -np.inf)
            top = np.argsort(-gain, axis=1, kind="stable")[:, :k]
            chosen = np.zeros(shape, dtype=bool)
            np.put_along_axis(chosen, top, True, axis=1)
            chosen &= np.isfinite(gain)
            moved = np.where(chosen, value, x.reshape(shape)).reshape(x.shape)
            return box.subset(index).project(moved)

        def evaluate(x, index):
            return self._evaluate(encode(x, rand_maps[:, index]), labels[index], index)

        if box.radius == 0:
            return images.copy(), np.zeros(batch, dtype=np.int64), {}
        best, iterations = search_with_restarts(images, 0, active, self.restarts, self.steps, init, update, evaluate)
        self._cache = None
        return best, iterations, {}

    def _spike(self, spikes, labels, budget: SpikeBudget, active, rng, allowed=None):
        self._cache = None
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
            _, grad, _ = self._gradient(state, labels[index], index)
            gain = grad * (1.0 - 2.0 * state)
            return apply_flips(state, spikes[:, index], gain > 0, gain, budget, per_step, mask(index))

        def evaluate(state, index):
            return self._evaluate(state, labels[index], index)

        def mask(index):
            return None if allowed is None else allowed[:, index]

        if budget.total == 0:
            return spikes.copy(), np.zeros(labels.size, dtype=np.int64), {"l0_budget": 0}
        best, iterations = search_with_restarts(spikes, 1, active, self.restarts, self.steps, init, update, evaluate)
        self._cache = None
        assert (l0_changes(best, spikes) <= budget.total).all()
        return best, iterations, {"l0_budget": budget.total, "flips_per_step_used": per_step,
                                  "spike_size": budget.size}
