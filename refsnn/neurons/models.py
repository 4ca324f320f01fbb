"""The registry of neuron models (``SNN(reset=...)``) and their scalar rules compiled for the kernels.

Below ``refsnn.kernels`` and ``refsnn.operator``, which compile their loops with these rules; the
NumPy-facing functions of ``refsnn.neurons`` sit above the kernels.
"""
from __future__ import annotations

import hashlib
import inspect
import types

import numba

import refsnn.neurons.lif as lif  # the model files themselves, not the package that imports this module
import refsnn.neurons.subtract as subtract

from ..validation import RESET_MODES, check_reset

NEURON_MODELS = {lif.NAME: lif, subtract.NAME: subtract}
assert tuple(NEURON_MODELS) == RESET_MODES


def neuron_model(reset: str = "zero") -> types.ModuleType:
    """The module of the neuron model ``reset`` (``"zero"``: the paper's LIF, ``"subtract"``)."""
    return NEURON_MODELS[check_reset(reset)]


# The scalar rules a kernel calls, compiled once per model. The small ones are inlined into the
# kernels (Numba IR inlining: the same code as if written there); the reset interval rules stay
# calls, as the fire rule of ``refsnn.relaxations``.
_INLINED = ("carry", "grad_step", "backsub_stable_on", "backsub_unstable", "backsub_membrane",
            "backsub_unstable_family", "reverse_stable_on", "reverse_unstable", "reverse_unstable_family")
_COMPILED: dict = {}


def compiled_rules(reset: str = "zero") -> dict:
    """``{name: compiled function}`` of the model's scalar rules; ``"tag"``: the model name and a
    hash of its source, for the names (and cache entries) of the kernels compiled with them."""
    if reset not in _COMPILED:
        model = neuron_model(reset)
        rules = {"reset_lower": model.reset_lower_compiled, "reset_upper": model.reset_upper_compiled}
        for name in _INLINED:
            if hasattr(model, name):
                rules[name] = numba.njit(cache=True, inline="always")(getattr(model, name))
        # A kernel's cache entry must change with the rules compiled into it (Numba does not track them).
        digest = hashlib.sha1(inspect.getsource(model).encode()).hexdigest()[:8]
        rules["tag"] = f"{model.NAME}_{digest}"
        _COMPILED[reset] = rules
    return _COMPILED[reset]
