"""Hypothesis strategies and assertion helpers to property-test bound implementations against refsnn.

Import them into another project's pytest suite::

    from refsnn.testing import snn_strategy, box_strategy, spec_strategy, assert_bounds_sound

``assert_bounds_sound(bound_fn, net, x_lower, x_upper, C, method="enumerate"|"milp"|"sample")``
compares ``bound_fn``'s claims with real inputs (exhaustive enumeration, the exact MILP verifier
of ``verify``, or an adversarial search) and raises ``BoundViolation`` with a witness input.
The pytest plugin (``refsnn.testing.plugin``, registered as a ``pytest11`` entry point) compiles
refsnn's Numba kernels before the first example of a session that uses this package, so a plain
``python -m pytest`` keeps hypothesis' default deadline; it also registers the hypothesis profiles
``refsnn-ci`` and ``refsnn-thorough``.
"""
from .assertions import (BoundViolation, TrueExtremes, assert_bounds_contain, assert_bounds_sound,
                         assert_certificates_sound, assert_membrane_bounds_sound, true_extremes)
from .strategies import box_strategy, input_set_strategy, snn_strategy, spec_strategy

__all__ = ["snn_strategy", "box_strategy", "spec_strategy", "input_set_strategy", "assert_bounds_sound",
           "assert_membrane_bounds_sound", "assert_certificates_sound", "assert_bounds_contain", "true_extremes",
           "BoundViolation", "TrueExtremes"]
