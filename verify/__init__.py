"""Exact verification of LIF spiking networks, and soundness checks of other implementations.

- ``exact_bounds(net, x_lower, x_upper, C)``: exact min/max of ``C f`` over spike sets (MILP);
- ``verify_robust(net, x_lower, x_upper, labels)``: robust / not_robust (with a witness) / unknown;
- input sets ``BoxSet``, ``SpikeL0Set``, ``DigitalLinfSet`` (exact encodings, see ``verify.sets``);
- ``enumerate_bounds``: the same answers by exhaustive enumeration, for small sets;
- ``robust_bab``: complete robustness by branch and bound over the input set (``verify.bab``);
  ``spec_bab``: the same search for "``C_i . f >= c_i`` (or ``> c_i``) for every member";
- ``verify.cases`` and ``python -m verify.check``: check another implementation's claimed bounds.
"""
from .bab import BabConfig, BabResult, robust_bab, spec_bab
from .encoding import VerifierError
from .enumerate import enumerate_bounds, enumerate_extremes, enumerate_membrane_extremes, enumerate_robust
from .milp import ExactBounds, Extreme, RobustResult, SampleVerifier, exact_bounds, robust_query, verify_robust
from .sets import BoxSet, DigitalLinfSet, InputSet, LevelSet, SpikeL0Set, sets_from_boxes

__all__ = ["exact_bounds", "verify_robust", "robust_query", "ExactBounds", "Extreme", "RobustResult",
           "SampleVerifier", "VerifierError", "robust_bab", "spec_bab", "BabConfig", "BabResult", "LevelSet", "BoxSet", "SpikeL0Set", "DigitalLinfSet", "InputSet",
           "sets_from_boxes", "enumerate_bounds", "enumerate_extremes", "enumerate_membrane_extremes",
           "enumerate_robust"]
