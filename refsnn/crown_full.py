"""Full S-CROWN (``method="crown"``): intermediate membrane bounds from backward passes as well,
intersected with S-IBP's, then the final back-substitution of ``refsnn.crown`` on them.

The paper's S-CROWN (``"crown-ibp"``) relaxes every neuron around S-IBP's membrane intervals. Here,
stage by stage and time step by time step, the membrane ``m_t[k]`` of every neuron that S-IBP
leaves unstable is bounded by back-substitution (Alg. 2 started at ``m_t[k]`` instead of the output,
with the paper's relaxations (eqs. 8, 10) around the already refined bounds of every earlier step
and stage), and the interval becomes ``[max(ibp_l, crown_l), min(ibp_u, crown_u)]``. Stability,
the reset interval (eq. 9) and every later S-IBP step (eqs. 7, 9, 11) then use the refined
interval. Cost: two backward passes per unstable neuron and step (rows batched), so this is for
small nets (MNIST FC: about a second per sample).

Soundness: the backward pass bounds the network's own float membrane (its rounding terms include
S-IBP's network-vs-exact margins, as in ``refsnn.crown``); the intersection of two sound intervals is
sound; everything else is S-IBP's rule on smaller intervals.

``interval_pass`` (S-IBP with two hooks: an exact first-layer current interval, used by the
any-k-flips set of ``refsnn.l0``, and a membrane refinement) is shared by both modules.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .alpha import BoxConcretizer, backsub, stage_tables
from .crown import crown_bounds, normalize_spec
from .ibp import IntervalBounds, PreparedStage, ibp_spec_bounds, prepare_stages
from .input_sets import binary_box
from .relaxations import Fire, Reset, RoundingRule


def interval_pass(net, x_lower, x_upper, *, stages: Optional[Sequence[PreparedStage]] = None,
                  first_current: Optional[Callable] = None, refine: Optional[Callable] = None) -> IntervalBounds:
    """S-IBP (``refsnn.ibp.interval_bounds``) over ``[x_lower, x_upper]`` (``[T', B, *in]`` 0/1) with hooks.

    ``first_current(stage, spike_lower, spike_upper) -> (I_l, I_u)`` (flat ``[T' * B, n]``, before the
    rounding margin) replaces eq. 11 at the first stage. ``refine(bounds, k, t) -> (m_l, m_u)``
    (``[B, n]``) is called after the (widened) membrane interval of stage ``k``, step ``t`` is in
    ``bounds.mem_lower/upper[k][t]`` and may return a tighter sound interval; ``bounds`` holds every
    earlier step and stage.
    """
    box = binary_box(x_lower, x_upper, net)
    rule = RoundingRule.for_network(net)
    stages = prepare_stages(net) if stages is None else stages
    steps, batch = box.x_lower.shape[:2]
    alpha = net.decay
    tight_magnitude = rule.net_dtype != "float64"
    result = IntervalBounds("ibp", net.firing, net.threshold, alpha, rule, steps, batch)
    spike_lower = box.x_lower.reshape((steps * batch,) + box.x_lower.shape[2:]).astype(np.float64)
    spike_upper = box.x_upper.reshape(spike_lower.shape).astype(np.float64)
    for k, stage in enumerate(stages):
        n = stage.n_neurons
        cur_lower, cur_upper, center = stage.interval(spike_lower, spike_upper)
        if k == 0 and first_current is not None:
            cur_lower, cur_upper = first_current(stage, spike_lower, spike_upper)
            center = (cur_lower + cur_upper) * 0.5
        magnitude = stage.magnitude(spike_upper if tight_magnitude else None)
        margin = rule.current_margin(magnitude, stage.n_terms)
        cur_lower = (cur_lower - margin).reshape(steps, batch, n)
        cur_upper = (cur_upper + margin).reshape(steps, batch, n)
        if tight_magnitude:
            magnitude = magnitude.reshape(steps, batch, n)
            margin = margin.reshape(steps, batch, n)
        else:
            magnitude = magnitude.reshape(1, 1, n)
            margin = margin.reshape(1, 1, n)
        shape = (steps, batch, n)
        mem_lower, mem_upper, mem_margin = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        reset_lower, reset_upper = np.zeros(shape), np.zeros(shape)
        state = np.zeros(shape, dtype=np.int8)
        result.current_lower.append(cur_lower)
        result.current_upper.append(cur_upper)
        result.mem_lower.append(mem_lower)
        result.mem_upper.append(mem_upper)
        result.reset_lower.append(reset_lower)
        result.reset_upper.append(reset_upper)
        result.state.append(state)
        result.current_margin.append(margin)
        result.current_magnitude.append(magnitude)
        result.current_center.append(center.reshape(steps, batch, n))
        result.mem_margin.append(mem_margin)
        carried_lower = np.zeros((batch, n))
        carried_upper = np.zeros((batch, n))
        for t in range(steps):
            low = cur_lower[t] + carried_lower
            high = cur_upper[t] + carried_upper
            size = np.maximum(np.abs(cur_lower[t]), np.abs(cur_upper[t])) \
                + np.maximum(np.abs(carried_lower), np.abs(carried_upper))
            mem_margin[t] = rule.membrane_margin(size)
            mem_lower[t] = low - mem_margin[t]
            mem_upper[t] = high + mem_margin[t]
            if refine is not None:
                refined_lower, refined_upper = refine(result, k, t)
                mem_lower[t] = np.maximum(mem_lower[t], refined_lower)
                mem_upper[t] = np.minimum(mem_upper[t], refined_upper)
            state[t] = Fire.classify(mem_lower[t], mem_upper[t], rule, net.firing)
            reset_lower[t], reset_upper[t] = Reset.interval(mem_lower[t], mem_upper[t], state[t], rule)
            carried_lower = alpha * reset_lower[t]
            carried_upper = alpha * reset_upper[t]
        spike_lo, spike_hi = Fire.interval(state)
        neuron_shape = (steps, batch) + stage.neuron_shape
        for name in ("current_lower", "current_upper", "mem_lower", "mem_upper", "reset_lower", "reset_upper",
                     "state"):
            getattr(result, name)[k] = getattr(result, name)[k].reshape(neuron_shape)
        result.spike_lower.append(spike_lo.reshape(neuron_shape))
        result.spike_upper.append(spike_hi.reshape(neuron_shape))
        spike_lower = spike_lo.reshape((steps * batch,) + stage.neuron_shape)
        spike_upper = spike_hi.reshape(spike_lower.shape)
    last_lower = result.spike_lower[-1].reshape(steps, batch, -1)
    last_upper = result.spike_upper[-1].reshape(steps, batch, -1)
    result.rate_lower = last_lower.sum(axis=0) / steps
    result.rate_upper = last_upper.sum(axis=0) / steps
    return result


class _FlatView:
    """``IntervalBounds``-like view whose stage ``k`` arrays are flat ``[T', B, n]`` (during the pass)."""

    def __init__(self, bounds: IntervalBounds, stages):
        self.__dict__.update(bounds.__dict__)
        flat = lambda arrays: [a.reshape(a.shape[0], a.shape[1], -1) for a in arrays]  # noqa: E731
        for name in ("mem_lower", "mem_upper", "reset_lower", "reset_upper", "state"):
            setattr(self, name, flat(getattr(bounds, name)))


def membrane_refiner(stages: Sequence[PreparedStage], concretizer, max_rows: int = 2048) -> Callable:
    """The ``refine`` hook of ``interval_pass``: back-substitution bounds of every unstable membrane.

    ``concretizer`` minimizes the input's linear form (``BoxConcretizer`` or the l0 ball's); it is
    truncated to the ``t + 1`` steps of each query. Rows (two per neuron) are batched ``max_rows``
    at a time, per sample.
    """
    def refine(bounds: IntervalBounds, k: int, t: int):
        lower = bounds.mem_lower[k][t].reshape(bounds.batch, -1).copy()
        upper = bounds.mem_upper[k][t].reshape(bounds.batch, -1).copy()
        if k == 0 and t == 0:
            return lower, upper  # the current itself: S-IBP's interval is already exact up to rounding
        unstable = Fire.classify(lower, upper, bounds.rule, bounds.firing) == 2
        if not unstable.any():
            return lower, upper
        view = _FlatView(bounds, stages)
        tables = [stage_tables(view, j, stages[j], steps=t + 1) for j in range(k + 1)]
        conc = concretizer.truncated(t + 1)
        n = stages[k].n_neurons
        for b in range(bounds.batch):
            neurons = np.flatnonzero(unstable[b])
            if neurons.size == 0:
                continue
            tabs_b = [_select_sample(tab, b) for tab in tables]
            conc_b = conc.select(slice(b, b + 1))
            per = max(1, max_rows // 2)
            for start in range(0, neurons.size, per):
                chosen = neurons[start:start + per]
                rows = chosen.size
                inject = np.zeros((1, 2 * rows, n))
                inject[0, np.arange(rows), chosen] = 1.0
                inject[0, rows + np.arange(rows), chosen] = -1.0
                result = backsub(stages[:k + 1], tabs_b, None, conc_b, inject=inject)
                sound = result.sound[0]
                lower[b, chosen] = np.maximum(lower[b, chosen], sound[:rows])
                upper[b, chosen] = np.minimum(upper[b, chosen], -sound[rows:])
        return lower, upper

    return refine


def _select_sample(tab, b: int):
    from .alpha import StageTables
    pick = {name: getattr(tab, name)[:, b:b + 1] for name in
            ("state", "mem_lower", "mem_upper", "lam_max", "mu_max", "default_lower", "default_upper",
             "mem_mag", "carry_mag", "fwd_scale")}
    return StageTables(bias=tab.bias, th_lo=tab.th_lo, th_hi=tab.th_hi, decay=tab.decay,
                       n_transpose_terms=tab.n_transpose_terms, **pick)


def full_crown_intermediate(net, x_lower, x_upper, concretizer=None, first_current=None) -> IntervalBounds:
    """Intermediate bounds of full S-CROWN (every unstable membrane also bounded by back-substitution)."""
    box = binary_box(x_lower, x_upper, net)
    stages = prepare_stages(net)
    if concretizer is None:
        concretizer = BoxConcretizer(box.x_lower.astype(np.float64), box.x_upper.astype(np.float64))
    refine = membrane_refiner(stages, concretizer)
    bounds = interval_pass(net, box.x_lower, box.x_upper, stages=stages, first_current=first_current, refine=refine)
    bounds.method = "crown"
    return bounds


def full_crown_bounds(net, x_lower, x_upper, C=None):
    """``method="crown"``: ``(lower, upper) [B, S]``, S-CROWN on full-S-CROWN intermediate bounds,
    intersected with S-IBP on the same (refined) intermediates and the trivial range."""
    from .bounds import trivial_bounds
    from .ibp import output_rounding_margin

    box = binary_box(x_lower, x_upper, net)
    batch = box.x_lower.shape[1]
    C = normalize_spec(C, batch, net.n_outputs)
    intermediate = full_crown_intermediate(net, box.x_lower, box.x_upper)
    crown = crown_bounds(net, box.x_lower, box.x_upper, C, intermediate=intermediate, return_coefficients=False)
    ibp_lower, ibp_upper = ibp_spec_bounds(intermediate, C)
    trivial_lower, trivial_upper = trivial_bounds(C)
    margin = output_rounding_margin(C, intermediate.rule, intermediate.steps)
    lower = np.maximum(np.maximum(ibp_lower, crown.lower), trivial_lower - margin)
    upper = np.minimum(np.minimum(ibp_upper, crown.upper), trivial_upper + margin)
    return lower, upper, intermediate


__all__ = ["interval_pass", "membrane_refiner", "full_crown_intermediate", "full_crown_bounds"]
