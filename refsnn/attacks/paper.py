"""The paper's attack (Liang et al. 2021, used in section 4.1 of Liang et al. 2022), as released in
liangling76/snn_attack, with the threat models of :mod:`refsnn.attacks.constraints`.

Gradient-to-spike conversion (G2S, eq. 6 first line): with ``g = dL/ds`` (BPTT, surrogate, the
penultimate stage firing at a raised threshold while the gradient is taken), every element is
selected with probability ``|g| / max|g|`` (max over the sample) and a selected element is set to
``1`` where ``g > 0`` and to ``0`` where ``g < 0`` (untargeted: the loss grows). When the gradient
of a sample is all zero, each bit is flipped with probability 0.05 instead.

Digital inputs (eq. 6 second line): the spike change is mapped back to the image as
``dx = mean_t (s'_t - s_t)``, ``x <- x + dx - c (x_prev - xhat)`` (``c = 0.1``), then ``x`` is
projected onto the l-inf box around ``xhat`` and onto [0, 1]; spikes are re-sampled from the new
image (fresh rand maps, as the authors; ``resample=False`` keeps the evaluation maps) for the
next gradient. 25 iterations, per-sample early stop.

Spike inputs: the same G2S flips, then at most ``budget.per_step`` of them are applied per iteration
(largest ``|g|`` first) and at most ``budget.total`` elements differ from the clean input.

Deviations from the release (all in the config of each result): success and early stop are judged
on the evaluation rand maps, not on the freshly sampled spikes; a prediction is read with
``argmax`` (ties to the lowest class) rather than "unique maximum"; the authors' MSE bound on
``x - xhat`` (1.0, inactive in their setup) is replaced by the l-inf box; the raised threshold is
expressed as a ratio of the network's threshold (their 0.3 -> 1.0 is ``10/3``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..network import SNN
from .base import Attack, Seed
from .constraints import DigitalBox, SpikeBudget, encode, l0_changes, select_flips
from .gradients import AUTHORS_THRESHOLD_RATIO, GradientRule, input_gradient


def gradient_to_spikes(spikes: np.ndarray, grad: np.ndarray, rng: np.random.Generator,
                       zero_grad_flip_prob: float = 0.05):
    """G2S conversion of one iteration. ``spikes, grad [T, B, *in]``.

    Returns ``(target [T, B, *in] uint8, priority [T, B, *in])``: the spikes after all sampled flips
    and a priority per element (``|g| / max|g|``, or a uniform draw for the random flips of samples
    whose gradient is all zero) used when a budget keeps only some flips.
    """
    batch = spikes.shape[1]
    grad_abs = np.abs(grad)
    grad_max = np.moveaxis(grad_abs, 1, 0).reshape(batch, -1).max(axis=1, initial=0.0)
    scale = np.where(grad_max > 0, grad_max, 1.0).reshape((1, batch) + (1,) * (spikes.ndim - 2))
    probability = grad_abs / scale
    draw = rng.random(spikes.shape)
    selected = probability >= draw
    target = spikes.copy()
    target[selected & (grad > 0)] = 1
    target[selected & (grad < 0)] = 0
    priority = probability
    dead = grad_max == 0
    if dead.any():
        flip_draw = rng.random((spikes.shape[0], int(dead.sum())) + spikes.shape[2:])
        flipped = flip_draw > 1.0 - zero_grad_flip_prob
        target[:, dead] = np.where(flipped, 1 - spikes[:, dead], spikes[:, dead])
        priority = priority.copy()
        priority[:, dead] = flip_draw
    return target, priority


class PaperAttack(Attack):
    """The paper's attack (module docstring). ``PaperAttack(net, eps, kind="digital")(images, y, rand_maps)``.

    ``restore``: the pull back towards the clean image (authors' ``cw = 0.1``); ``resample``: draw
    fresh rand maps for each gradient (digital; authors: yes); ``zero_grad_flip_prob``: random
    flips when the gradient vanishes; ``per_step_divisor``: spike flips per iteration are
    ``size eps / divisor`` (default 2 for FC, 6 for CONV).
    """

    name = "paper"

    def __init__(self, net: SNN, eps: float, kind: str = "digital", convention: str = "paper",
                 steps: int = 25, gradient: Optional[GradientRule] = None, loss: str = "ce",
                 loss_scale: float = 1.0, restore: float = 0.1, resample: bool = True,
                 zero_grad_flip_prob: float = 0.05, per_step_divisor: Optional[float] = None,
                 seed: Seed = 0, T: int = 10):
        if gradient is None:
            gradient = GradientRule("bptt", penultimate_threshold_ratio=AUTHORS_THRESHOLD_RATIO)
        super().__init__(net, eps, kind, convention, steps, gradient, loss, loss_scale, seed, T)
        if not 0.0 <= zero_grad_flip_prob <= 1.0:
            raise ValueError(f"zero_grad_flip_prob must lie in [0, 1], got {zero_grad_flip_prob}")
        self.restore = float(restore)
        self.resample = bool(resample)
        self.zero_grad_flip_prob = float(zero_grad_flip_prob)
        self.per_step_divisor = per_step_divisor

    def config(self) -> dict:
        config = super().config()
        config.update(restore=self.restore, zero_grad_flip_prob=self.zero_grad_flip_prob)
        if self.kind == "digital":
            config["resample"] = self.resample
        return config

    def _digital(self, images, labels, rand_maps, box: DigitalBox, active, rng):
        x = images.copy()
        iterations = np.zeros(labels.size, dtype=np.int64)
        grad_spikes = encode(images, rand_maps)
        todo = np.flatnonzero(active)
        plain = None  # net.run of grad_spikes[:, todo], when the success check just computed it
        for _ in range(self.steps):
            if todo.size == 0:
                break
            spikes = grad_spikes[:, todo]
            _, grad, _ = input_gradient(self.net, spikes, labels[todo], self.gradient, self.loss, self.loss_scale,
                                        trace=plain)
            target, _ = gradient_to_spikes(spikes, grad, rng, self.zero_grad_flip_prob)
            step = (target.astype(np.float64) - spikes).mean(axis=0)
            current = x[todo]
            moved = box.subset(todo).project(current + step - self.restore * (current - images[todo]))
            x[todo] = moved
            iterations[todo] += 1
            eval_spikes = encode(moved, rand_maps[:, todo])
            if self.resample:
                grad_spikes[:, todo] = encode(moved, rng.random(eval_spikes.shape))
            else:
                grad_spikes[:, todo] = eval_spikes
            wrong, checked = self._check(eval_spikes, labels[todo])
            # without resampling the next gradient sees these very spikes: reuse the pass if the batch stays
            plain = checked if not self.resample and not wrong.any() else None
            todo = todo[~wrong]
        return x, iterations, {}

    def _spike(self, spikes, labels, budget: SpikeBudget, active, rng, allowed=None):
        adv = spikes.copy()
        iterations = np.zeros(labels.size, dtype=np.int64)
        todo = np.flatnonzero(active) if budget.total > 0 else np.zeros(0, dtype=np.int64)
        plain = None  # net.run of adv[:, todo], when the success check just computed it
        for _ in range(self.steps):
            if todo.size == 0:
                break
            current, clean = adv[:, todo], spikes[:, todo]
            _, grad, _ = input_gradient(self.net, current, labels[todo], self.gradient, self.loss, self.loss_scale,
                                        trace=plain)
            target, priority = gradient_to_spikes(current, grad, rng, self.zero_grad_flip_prob)
            adv[:, todo] = apply_flips(current, clean, target != current, priority, budget,
                                       allowed=None if allowed is None else allowed[:, todo])
            iterations[todo] += 1
            wrong, checked = self._check(adv[:, todo], labels[todo])
            plain = checked if not wrong.any() else None
            todo = todo[~wrong]
        return adv, iterations, {"l0_budget": budget.total, "flips_per_step": budget.per_step,
                                 "spike_size": budget.size}


def apply_flips(current: np.ndarray, clean: np.ndarray, candidate: np.ndarray, priority: np.ndarray,
                budget: SpikeBudget, per_step: Optional[int] = None, allowed: Optional[np.ndarray] = None
                ) -> np.ndarray:
    """Flips the selected ``candidate`` bits of ``current`` within the l0 budget (``[T, b, *in]``),
    only where ``allowed`` (if given)."""
    steps_T, batch = current.shape[:2]
    per_step = budget.per_step if per_step is None else per_step
    if allowed is not None:
        candidate = candidate & allowed

    def rows(a):
        return np.moveaxis(a, 1, 0).reshape(batch, -1)

    new_allowed = budget.total - l0_changes(current, clean)
    chosen = select_flips(rows(priority), rows(candidate), rows(current == clean), new_allowed, per_step)
    chosen = np.moveaxis(chosen.reshape((batch, steps_T) + current.shape[2:]), 0, 1)
    return np.where(chosen, 1 - current, current).astype(np.uint8)
