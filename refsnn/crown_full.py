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

Both this module and the any-k-flips set of ``refsnn.l0`` run S-IBP through the hooks of
``refsnn.ibp.interval_bounds`` (an exact first-layer current interval, a membrane refinement).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .alpha import BoxConcretizer, backsub, stage_tables
from .crown import crown_bounds_of_box
from .ibp import IntervalBounds, PreparedStage, ibp_spec_bounds, interval_bounds_of_box, prepare_stages
from .input_sets import BinaryBox, binary_box
from .relaxations import Fire, output_rounding_margin
from .spec import best_bounds, normalize_spec


class _FlatView:
    """``IntervalBounds``-like view whose stage ``k`` arrays are flat ``[T', B, n]`` (during the pass)."""

    def __init__(self, bounds: IntervalBounds, stages):
        self.__dict__.update(bounds.__dict__)
        self._bounds = bounds
        flat = lambda arrays: [a.reshape(a.shape[0], a.shape[1], -1) for a in arrays]  # noqa: E731
        for name in ("mem_lower", "mem_upper", "reset_lower", "reset_upper", "state"):
            setattr(self, name, flat(getattr(bounds, name)))

    def __getattr__(self, name):
        # the fields IntervalBounds derives when asked (current_margin, spike bounds); a view that was never
        # initialised (copy, pickle) has no bounds to ask and must say AttributeError, as attribute lookups do
        bounds = self.__dict__.get("_bounds")
        if bounds is None:
            raise AttributeError(name)
        return getattr(bounds, name)


def membrane_refiner(stages: Sequence[PreparedStage], concretizer, max_rows: int = 2048) -> Callable:
    """The ``refine`` hook of ``refsnn.ibp.interval_bounds``: back-substitution bounds of every unstable
    membrane.

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
            tabs_b = [tab.select_sample(b) for tab in tables]
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


def full_crown_intermediate(net, x_lower, x_upper, concretizer=None, first_current=None) -> IntervalBounds:
    """Intermediate bounds of full S-CROWN (every unstable membrane also bounded by back-substitution)."""
    box = binary_box(x_lower, x_upper, net)
    return full_crown_intermediate_of_box(net, box, prepare_stages(net), concretizer, first_current)


def full_crown_intermediate_of_box(net, box: BinaryBox, stages: Sequence[PreparedStage], concretizer=None,
                                   first_current=None) -> IntervalBounds:
    """``full_crown_intermediate`` of an already validated box with prepared stages."""
    if concretizer is None:
        concretizer = BoxConcretizer.of_box(box)
    refine = membrane_refiner(stages, concretizer)
    bounds = interval_bounds_of_box(net, box, stages, first_current=first_current, refine=refine)
    bounds.method = "crown"
    return bounds


def full_crown_bounds(net, x_lower, x_upper, C=None):
    """``method="crown"``: ``(lower, upper) [B, S]``, S-CROWN on full-S-CROWN intermediate bounds,
    intersected with S-IBP on the same (refined) intermediates and the trivial range."""
    box = binary_box(x_lower, x_upper, net)
    C = normalize_spec(C, box.x_lower.shape[1], net.n_outputs)
    return full_crown_bounds_of_box(net, box, C, prepare_stages(net))


def full_crown_bounds_of_box(net, box: BinaryBox, C: np.ndarray, stages: Sequence[PreparedStage]):
    """``full_crown_bounds`` of an already validated box, normalized ``C`` and prepared stages."""
    intermediate = full_crown_intermediate_of_box(net, box, stages)
    crown = crown_bounds_of_box(net, box, C, stages, intermediate=intermediate, return_coefficients=False)
    margin = output_rounding_margin(C, intermediate.rule, intermediate.steps)
    lower, upper = best_bounds(C, margin, [ibp_spec_bounds(intermediate, C), (crown.lower, crown.upper)])
    return lower, upper, intermediate


__all__ = ["membrane_refiner", "full_crown_intermediate", "full_crown_bounds"]
