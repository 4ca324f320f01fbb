"""Sound output bounds of an SNN over a box of spike trains: the public entry point.

```python
from refsnn.bounds import compute_bounds, margin_spec
lower, upper = compute_bounds(net, x_lower, x_upper, method="crown-ibp", C=margin_spec(labels, 10))
certified = (lower > 0).all(axis=1)     # strictly positive: a margin bound of 0 is a tie, not robust
```

Methods (all bound ``C f`` where ``f`` is the vector of output rates over the box's ``T'`` steps):

- ``"ibp"``: S-IBP (Alg. 1; eqs. 7, 9, 11), interval arithmetic on ``C`` and the rate intervals;
- ``"crown-ibp"``: the paper's S-CROWN (Alg. 2; eqs. 8, 10, 15-18) on S-IBP's intermediate bounds,
  with every stability and chord decision made on the outward-rounded membrane interval (sound for
  the network as executed; occasionally tighter than the paper's formulas in exact arithmetic,
  docs/BOUNDS.md);
- ``"best"``: the intersection of S-IBP, S-CROWN and the trivial range of ``C f`` (rates lie in
  ``[0, 1]``), what a user certifying a model wants: S-CROWN's chord lines of a step function
  reach below 0 and above 1 and are often looser than S-IBP.

Every bound is rounded outward (see ``refsnn.relaxations``): it contains what the network computes
in its own dtype, in any summation order.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .alpha import alpha_bounds_of_box
from .crown import CrownResult, crown_bounds, crown_bounds_of_box
from .crown_full import full_crown_bounds_of_box
from .ibp import (IntervalBounds, ibp_spec_bounds, interval_bounds, interval_bounds_of_box, output_rounding_margin,
                  prepare_stages)
from .input_sets import (BinaryBox, DigitalLinfBox, SpikeL0Box, binary_box, digital_linf_set,
                         spike_l0_set)
from .relaxations import Precision
from .spec import best_bounds, margin_spec, normalize_spec, trivial_bounds

METHODS = ("ibp", "crown-ibp", "crown-ibp-paper", "best", "alpha", "crown")

__all__ = ["compute_bounds", "interval_bounds", "crown_bounds", "trivial_bounds", "margin_spec", "certify",
           "IntervalBounds", "CrownResult", "binary_box", "digital_linf_set", "spike_l0_set", "BinaryBox",
           "DigitalLinfBox", "SpikeL0Box", "METHODS"]


def compute_bounds(net, x_lower, x_upper, method: str = "ibp", C=None) -> Tuple[np.ndarray, np.ndarray]:
    """Bounds ``(lower, upper)``, each ``[B, n_spec]``, of ``C f`` over all inputs in the box.

    ``x_lower/x_upper [T', B, *input_shape]`` of 0/1 (the horizon is ``T'``); ``C`` is
    ``[B, n_spec, n_out]``, ``[n_spec, n_out]`` or None (identity: bounds of the rates).
    ``method``: ``"ibp"``, ``"crown-ibp"`` (S-CROWN, eq. 8's chord case decided on the outward-rounded
    S-IBP intervals), ``"crown-ibp-paper"`` (S-CROWN with the paper's chord choices, decided on S-IBP's
    intervals without margins; docs/BOUNDS.md), ``"best"`` (S-IBP and ``crown-ibp`` intersected with
    the trivial range), ``"alpha"`` (optimized relaxations, refsnn.alpha) or
    ``"crown"`` (full S-CROWN, refsnn.crown_full). All arithmetic is float64.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS} "
                         "('best' = intersection of S-IBP, S-CROWN and the trivial range)")
    box = binary_box(x_lower, x_upper, net)  # validated once per call, stages prepared once
    batch = box.x_lower.shape[1]
    C = normalize_spec(C, batch, net.n_outputs)
    stages = prepare_stages(net)
    if method == "alpha":
        result = alpha_bounds_of_box(net, box, C, stages)
        return result.lower, result.upper
    if method == "crown":
        lower, upper, _ = full_crown_bounds_of_box(net, box, C, stages)
        return lower, upper
    intermediate = interval_bounds_of_box(net, box, stages)
    ibp_lower, ibp_upper = ibp_spec_bounds(intermediate, C)
    if method == "ibp":
        return ibp_lower, ibp_upper
    if method == "crown-ibp-paper":
        plain = interval_bounds_of_box(net, box, stages, rule=Precision.plain(net))
        crown = crown_bounds_of_box(net, box, C, stages, intermediate=intermediate, return_coefficients=False,
                                    chord_interval=plain)
        return crown.lower, crown.upper
    crown = crown_bounds_of_box(net, box, C, stages, intermediate=intermediate, return_coefficients=False)
    if method == "crown-ibp":
        return crown.lower, crown.upper
    margin = output_rounding_margin(C, intermediate.rule, intermediate.steps)
    return best_bounds(C, margin, [(ibp_lower, ibp_upper), (crown.lower, crown.upper)])


def certify(net, x_lower, x_upper, labels, method: str = "best") -> np.ndarray:
    """``[B]`` bool: every margin ``f_y - f_j`` has a lower bound STRICTLY above 0 over the box.

    A bound of exactly 0 is a tie (outputs are multiples of 1/T', ties are common): not robust.
    """
    lower, _ = compute_bounds(net, x_lower, x_upper, method=method, C=margin_spec(labels, net.n_outputs))
    return np.all(lower > 0.0, axis=1)
