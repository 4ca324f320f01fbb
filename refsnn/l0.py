"""Certificates against EVERY spike train within ``k`` bit flips of a clean one (``--set spike-any-k``).

The paper's spike-domain set (eq. 12) frees ``round(size * eps)`` randomly PICKED positions per step;
a certificate for it says nothing about flips elsewhere ("we cannot guarantee the robustness of a
spike input under a given l0-norm"). The set here is the whole l0 ball around the clean train
``x0 [T', *in]``:

- ``per_step=True``: at most ``k`` flips in EACH time step;
- ``per_step=False``: at most ``k`` flips in total over the ``T'`` steps (a subset of the former).

Bounds:

1. First stage: the current ``I_t = W x_t + b`` (any linear chain) is exactly bounded over the ball:
   flipping input ``j`` changes neuron ``i``'s current by ``d_ij = W_ij (1 - 2 x0_j)``, so
   ``min I_t[i] = W x0_t + b + (sum of the k most negative d_ij)`` and ``max`` likewise with the k
   most positive (both budgets: one step can take all k flips). Rounded outward like S-IBP.
2. Membranes, spikes, deeper stages: S-IBP (eqs. 7, 9, 11) from these currents, optionally refined by
   back-substitution (``method="crown"``, full S-CROWN).
3. S-CROWN / optimized S-CROWN: the back-substitution of ``refsnn.alpha`` down to the input gives
   ``C f(x) >= sum_t lam_t . x_t + bias`` for every ``x`` in the enclosing box, hence in the ball; the
   linear form is minimized EXACTLY over the ball: ``sum_t lam_t . x0_t`` plus the sum of the ``k``
   most negative changes ``lam_tj (1 - 2 x0_tj)`` per step (``per_step``) or over all steps.

Sound for every member of the ball (``tests/test_l0_anyk.py``: exhaustive enumeration and the MILP
verifier's l0 encoding, ``verify.sets.SpikeL0Set``).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from .alpha import alpha_bounds, backsub, linear_chain, stage_tables
from .crown_full import membrane_refiner
from .ibp import PreparedStage, ibp_spec_bounds, interval_bounds, prepare_stages
from .input_sets import _as_binary
from .relaxations import UNIT_ROUNDOFF_FLOAT64, gamma, output_rounding_margin
from .spec import best_bounds, margin_spec, normalize_spec

U64 = UNIT_ROUNDOFF_FLOAT64
ANYK_METHODS = ("ibp", "crown-ibp", "best", "alpha", "crown")


def _sum_smallest(values: np.ndarray, k: int, axis: int = -1) -> np.ndarray:
    """Sum of the ``k`` smallest entries along ``axis`` (all of them if ``k >= size``)."""
    size = values.shape[axis]
    if k <= 0:
        return np.zeros(np.delete(values.shape, axis if axis >= 0 else values.ndim + axis))
    if k >= size:
        return values.sum(axis=axis)
    return np.partition(values, k - 1, axis=axis).take(np.arange(k), axis=axis).sum(axis=axis)


def _smallest_mask(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of ``k`` smallest entries along the last axis (ties broken by position)."""
    size = values.shape[-1]
    if k >= size:
        return np.ones(values.shape, dtype=bool)
    mask = np.zeros(values.shape, dtype=bool)
    if k > 0:
        index = np.argpartition(values, k - 1, axis=-1)[..., :k]
        np.put_along_axis(mask, index, True, axis=-1)
    return mask


def check_ball(clean, k) -> Tuple[np.ndarray, int]:
    clean = _as_binary(clean, "clean")
    if clean.ndim < 3:
        raise ValueError(f"the clean spike trains are time-major [T', B, *input_shape], got shape {clean.shape}")
    if int(k) != k or k < 0:
        raise ValueError(f"k (number of flips) must be an integer >= 0, got {k!r}")
    return clean, int(k)


class L0Concretizer:
    """Minimum of ``sum_t lam_t . x_t`` over the any-k-flips ball around ``x0 [T', B, n_in]``
    (``mask``, same shape, 0/1: only those bits may flip; None: all)."""

    def __init__(self, clean: np.ndarray, k: int, per_step: bool = True, mask: Optional[np.ndarray] = None):
        steps, batch = clean.shape[:2]
        self.x0 = clean.reshape(steps, batch, -1).astype(np.float64)
        self.k = int(k)
        self.per_step = bool(per_step)
        self.mask = None if mask is None else np.asarray(mask).reshape(self.x0.shape) != 0

    def _copy(self, x0, mask):
        other = L0Concretizer.__new__(L0Concretizer)
        other.x0, other.k, other.per_step, other.mask = x0, self.k, self.per_step, mask
        return other

    def truncated(self, steps: int) -> "L0Concretizer":
        return self._copy(self.x0[:steps], None if self.mask is None else self.mask[:steps])

    def select(self, index) -> "L0Concretizer":
        return self._copy(self.x0[:, index], None if self.mask is None else self.mask[:, index])

    def _changes(self, lam):
        sign = (1.0 - 2.0 * self.x0)[:, :, None, :]
        changes = np.minimum(lam * sign, 0.0)
        if self.mask is not None:  # a bit that may not flip changes nothing
            changes = np.where(self.mask[:, :, None, :], changes, 0.0)
        return changes, sign

    def value(self, lam: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``lam [T', B, R, n_in]`` -> ``(min value [B, R], rounding bound [B, R])``."""
        at_clean = np.einsum("tbrj,tbj->br", lam, self.x0)
        changes, _ = self._changes(lam)
        if self.per_step:
            flips = _sum_smallest(changes, self.k, axis=-1).sum(axis=0)
        else:
            flat = np.moveaxis(changes, 0, 2).reshape(changes.shape[1], changes.shape[2], -1)
            flips = _sum_smallest(flat, self.k, axis=-1)
        steps, n_in = lam.shape[0], lam.shape[-1]
        n_terms = steps * n_in + self.k * (steps if self.per_step else 1) + 8
        return at_clean + flips, gamma(2 * n_terms, U64) * np.abs(lam).sum(axis=(0, 3))

    def gradient(self, lam: np.ndarray) -> np.ndarray:
        changes, sign = self._changes(lam)
        if self.per_step:
            chosen = _smallest_mask(changes, self.k)
        else:
            flat = np.moveaxis(changes, 0, 2)
            shape = flat.shape
            chosen = np.moveaxis(_smallest_mask(flat.reshape(shape[0], shape[1], -1), self.k).reshape(shape), 2, 0)
        return self.x0[:, :, None, :] + np.where(chosen & (changes < 0.0), sign, 0.0)


def _first_stage_matrix(stage: PreparedStage) -> np.ndarray:
    """The first stage's linear map as a matrix ``[n, n_in]`` (exact for Linear; conv via the basis)."""
    if len(stage.ops) and stage.ops[-1].kind == "linear" and all(op.kind == "flatten" for op in stage.ops[:-1]):
        return stage.ops[-1].weight
    n_in = int(np.prod(stage.input_shape))
    basis = np.eye(n_in).reshape((n_in,) + stage.input_shape)
    return linear_chain(stage, basis).T


def topk_current_interval(stage: PreparedStage, clean: np.ndarray, k: int,
                          mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact ``(I_l, I_u)`` ``[T', B, n]`` of the first stage's current over ``k`` flips of ``clean``
    (``[T', B, *in]``) at each step (``mask``, same shape, 0/1: only those bits may flip), widened by
    the float64 rounding of this computation (the network-vs-exact margin is added by the caller, as
    in S-IBP)."""
    weight = _first_stage_matrix(stage)
    n, n_in = weight.shape
    steps, batch = clean.shape[:2]
    x0 = clean.reshape(steps * batch, n_in).astype(np.float64)
    allowed = None if mask is None else np.asarray(mask).reshape(steps * batch, n_in) != 0
    base = x0 @ weight.T + stage.bias
    lower = np.empty_like(base)
    upper = np.empty_like(base)
    for row in range(x0.shape[0]):
        flip = 1.0 - 2.0 * x0[row]
        if allowed is not None:
            flip = np.where(allowed[row], flip, 0.0)
        change = weight * flip[None, :]     # [n, n_in]: effect of flipping each input (0: may not flip)
        lower[row] = base[row] + _sum_smallest(np.minimum(change, 0.0), k)
        upper[row] = base[row] - _sum_smallest(-np.maximum(change, 0.0), k)
    magnitude = np.abs(weight).sum(axis=1) + np.abs(stage.bias)
    widen = gamma(n_in + 2 * k + 8, U64) * magnitude
    return (lower - widen).reshape(steps, batch, n), (upper + widen).reshape(steps, batch, n)


# The intermediates of the blocks of ``shared_intermediate`` active in this Python thread (None: none).
_SHARED = threading.local()


@contextlib.contextmanager
def shared_intermediate() -> Iterator[None]:
    """Inside the block, ``anyk_intermediate`` without a ``hook`` computes once per (network object,
    clean train, ``k``, ``per_step``, ``refine``, ``mask``) and returns the same ``(bounds, stages)``
    again after that (callers only read them). For one question about one ball (``verify.bab``: its
    root bound, the ball's minimizers and the MILP's big-M intervals); the network must not change
    inside the block. A nested block uses the outer one's results; they are dropped when the
    outermost block ends."""
    outer = getattr(_SHARED, "cache", None)
    if outer is None:
        _SHARED.cache = {}
    try:
        yield
    finally:
        if outer is None:
            _SHARED.cache = None


def anyk_intermediate(net, clean, k: int, per_step: bool = True, refine: bool = False,
                      stages=None, hook: Optional[Callable] = None, mask: Optional[np.ndarray] = None):
    """Intermediate bounds over the ball (S-IBP from the exact first-stage currents; with ``refine``
    every unstable membrane is also bounded by back-substitution over the ball).

    ``hook(inner) -> refine hook`` (optional): a caller's ``refine`` hook of
    ``refsnn.ibp.interval_bounds`` composed with ``inner`` (full S-CROWN's, or None), e.g. the spike
    splits of ``verify.bab``; the bounds then hold for the members whose spikes obey it. ``stages``:
    the net's prepared stages (None: prepared here). ``mask`` (``clean``'s shape, 0/1): only those
    bits may flip (None: all). Samples of ``clean`` that are all the same train (a batch of
    branch-and-bound nodes of one ball) share one first-stage computation. Without a ``hook``,
    computed once per question inside a ``shared_intermediate`` block."""
    clean, k = check_ball(clean, k)
    mask = None if mask is None else _as_binary(mask, "mask")
    if mask is not None and mask.shape != clean.shape:
        raise ValueError(f"mask has shape {mask.shape}, the clean trains {clean.shape}")
    cache = getattr(_SHARED, "cache", None)
    if cache is None or hook is not None:  # a node's splits are its own: never shared
        return _anyk_intermediate(net, clean, k, per_step, refine, stages, hook, mask)
    # an all-ones mask is the unmasked ball
    key = (id(net), clean.shape, clean.dtype.str, clean.tobytes(), k, bool(per_step), bool(refine),
           None if mask is None or mask.all() else mask.tobytes())
    hit = cache.get(key)
    if hit is None or hit[0] is not net:  # the entry holds its network: an id is not reused meanwhile
        hit = cache[key] = (net, _anyk_intermediate(net, clean, k, per_step, refine, stages, None, mask))
    return hit[1]


def _enclosing_box(clean: np.ndarray, k: int, mask: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The box around the ball: every bit that may flip (the mask's, or all; none at ``k = 0``) free
    in [0, 1], the others at their clean value."""
    free = (np.ones_like(clean) if mask is None else mask) if k > 0 else np.zeros_like(clean)
    return (np.where(free == 1, 0, clean).astype(clean.dtype), np.where(free == 1, 1, clean).astype(clean.dtype))


def _anyk_intermediate(net, clean, k: int, per_step: bool, refine: bool, stages=None,
                       hook: Optional[Callable] = None, mask: Optional[np.ndarray] = None):
    stages = prepare_stages(net) if stages is None else stages
    x_lower, x_upper = _enclosing_box(clean, k, mask)
    steps, batch = clean.shape[:2]
    same = batch > 1 and np.array_equal(clean, np.broadcast_to(clean[:, :1], clean.shape)) and (
        mask is None or np.array_equal(mask, np.broadcast_to(mask[:, :1], mask.shape)))
    if same:
        one_lower, one_upper = topk_current_interval(stages[0], clean[:, :1], k,
                                                     None if mask is None else mask[:, :1])
        current_lower = np.repeat(one_lower, batch, axis=1)
        current_upper = np.repeat(one_upper, batch, axis=1)
    else:
        current_lower, current_upper = topk_current_interval(stages[0], clean, k, mask)

    def first_current(stage, spike_lower, spike_upper):
        return current_lower.reshape(steps * batch, -1), current_upper.reshape(steps * batch, -1)

    inner = membrane_refiner(stages, L0Concretizer(clean, k, per_step, mask)) if refine else None
    chosen = hook(inner) if hook is not None else inner
    bounds = interval_bounds(net, x_lower, x_upper, stages=stages, first_current=first_current, refine=chosen)
    bounds.method = "anyk-crown" if refine else "anyk-ibp"
    return bounds, stages


def anyk_bounds(net, clean, k: int, C=None, method: str = "best", per_step: bool = True,
                iterations: int = 20, mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Sound ``(lower, upper) [B, S]`` of ``C f`` over every spike train within ``k`` flips of ``clean``
    (``[T', B, *input_shape]`` 0/1) per time step (``per_step``) or in total.

    ``method``: ``"ibp"``, ``"crown-ibp"`` (S-CROWN on the S-IBP intermediates, exact concretization
    over the ball), ``"best"`` (intersection of both and the trivial range), ``"alpha"`` (optimized
    relaxations, intersected with ``best``), ``"crown"`` (full S-CROWN intermediates, then as ``best``).
    ``mask`` (``clean``'s shape, 0/1): only those bits may flip (None: all).
    """
    lower, upper, _, _ = anyk_node_bounds(net, clean, k, C, method, per_step, iterations, mask=mask)
    return lower, upper


def anyk_node_bounds(net, clean, k: int, C=None, method: str = "best", per_step: bool = True,
                     iterations: int = 20, hook: Optional[Callable] = None, stages=None,
                     mask: Optional[np.ndarray] = None):
    """``anyk_bounds`` with a ``hook`` on the intermediate bounds (``anyk_intermediate``: the spike
    splits of a branch-and-bound node over the ball) -> ``(lower, upper) [B, S]``, the intermediate
    bounds, and S-CROWN's input coefficients of the lower bounds ``[T', B, S, *in]`` (None for
    ``"ibp"`` and ``"alpha"``). ``mask`` (``clean``'s shape, 0/1): the ball of flips of those bits
    only (None: all). With a hook the bounds hold for the ball's members whose exact spikes
    lie in the hook's clipped intervals (those with the node's spike values)."""
    if method not in ANYK_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {ANYK_METHODS}")
    clean, k = check_ball(clean, k)
    if tuple(clean.shape[2:]) != tuple(net.input_shape):
        raise ValueError(f"clean spikes have per-sample shape {tuple(clean.shape[2:])}, the network expects "
                         f"{tuple(net.input_shape)}")
    steps, batch = clean.shape[:2]
    C = normalize_spec(C, batch, net.n_outputs)
    n_spec = C.shape[1]
    bounds, stages = anyk_intermediate(net, clean, k, per_step, refine=(method == "crown"), stages=stages,
                                       hook=hook, mask=mask)
    ibp_lower, ibp_upper = ibp_spec_bounds(bounds, C)
    if method == "ibp":
        return ibp_lower, ibp_upper, bounds, None
    concretizer = L0Concretizer(clean, k, per_step, mask)
    margin = output_rounding_margin(C, bounds.rule, steps)
    lam = None
    if method == "alpha":
        x_lower, x_upper = _enclosing_box(clean, k, mask)
        result = alpha_bounds(net, x_lower, x_upper, C, iterations=iterations, intermediate=bounds,
                              concretizer=concretizer)
        lower, upper = result.lower, result.upper
    else:
        spec = np.concatenate([C, -C], axis=1)
        tables = [stage_tables(bounds, j, stage) for j, stage in enumerate(stages)]
        back = backsub(stages, tables, spec, concretizer)
        rows = back.sound
        lam = back.lam_x[:, :, :n_spec].reshape((steps, batch, n_spec) + tuple(clean.shape[2:]))
        lower = rows[:, :n_spec] - margin
        upper = -rows[:, n_spec:] + margin
        if method == "crown-ibp":
            return lower, upper, bounds, lam
    lower, upper = best_bounds(C, margin, [(ibp_lower, ibp_upper), (lower, upper)])
    return lower, upper, bounds, lam


def anyk_minimizers(net, clean, k: int, C=None, per_step: bool = True, mask: Optional[np.ndarray] = None
                    ) -> np.ndarray:
    """``[T', B, S, *input_shape]`` uint8: per sample and row of ``C``, the train of the ball (``k``
    flips of ``clean`` per step, or in total) that minimizes S-CROWN's linear lower bound of ``C f``
    (item 3 of the module docstring: the clean train with the ``k`` most negative coefficient
    changes flipped). Where the bound is tight these trains come closest to the row's minimum:
    starting points for a search, not a bound. ``mask``: only those bits may flip (None: all)."""
    clean, k = check_ball(clean, k)
    steps, batch = clean.shape[:2]
    C = normalize_spec(C, batch, net.n_outputs)
    bounds, stages = anyk_intermediate(net, clean, k, per_step, mask=mask)
    concretizer = L0Concretizer(clean, k, per_step, mask)
    tables = [stage_tables(bounds, j, stage) for j, stage in enumerate(stages)]
    lam = backsub(stages, tables, C, concretizer).lam_x
    x = concretizer.gradient(lam.reshape(lam.shape[:3] + (-1,)))
    return np.rint(x).astype(np.uint8).reshape(x.shape[:3] + tuple(clean.shape[2:]))


def certify_anyk(net, clean, labels, k: int, method: str = "best", per_step: bool = True, **kwargs) -> np.ndarray:
    """``[B]`` bool: every margin ``f_y - f_j`` is STRICTLY positive for every train within ``k`` flips."""
    lower, _ = anyk_bounds(net, clean, k, margin_spec(np.asarray(labels), net.n_outputs), method, per_step, **kwargs)
    return np.all(lower > 0.0, axis=1)


__all__ = ["anyk_bounds", "anyk_node_bounds", "anyk_minimizers", "certify_anyk", "anyk_intermediate",
           "shared_intermediate", "topk_current_interval", "L0Concretizer",
           "ANYK_METHODS"]
