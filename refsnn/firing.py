"""The firing comparison of eq. 2, written once: ``s = 1[m >= th]`` (``firing=">="``, the paper) or
``s = 1[m > th]`` (``">"``, the authors' code and snnTorch).

Every place that decides a spike or the stability of a membrane interval calls ``fires``: the
network's forward pass (``refsnn.neurons``), the compiled LIF and bound kernels (``fires_compiled``,
the same function compiled by Numba), the interval rule of eq. 7 (``refsnn.relaxations``), and the
exact and MILP verifiers (``verify``). An interval ``[m_l, m_u]`` surely fires iff
``fires(m_l, th)`` and surely stays silent iff ``not fires(m_u, th)``.
"""
from __future__ import annotations

import numba

from .validation import check_firing

__all__ = ["fires", "fires_compiled", "fires_at_threshold", "STABLE_OFF", "STABLE_ON", "UNSTABLE"]

# The stability of a neuron over a membrane interval (eq. 7), shared by every neuron model's rules.
STABLE_OFF = 0   # stable non-firing: s = 0
STABLE_ON = 1    # stable firing:     s = 1
UNSTABLE = 2     # may or may not fire


def fires(membrane, threshold, at_threshold: bool):
    """``membrane >= threshold`` if ``at_threshold`` else ``membrane > threshold``.

    Scalars or arrays (NumPy, ``Fraction``, torch tensors): a bool or a bool array of ``membrane``'s shape.
    """
    if at_threshold:
        return membrane >= threshold
    return membrane > threshold


# The same source compiled for the Numba kernels (scalar arguments).
fires_compiled = numba.njit(cache=True)(fires)


def fires_at_threshold(firing: str) -> bool:
    """``True`` for ``firing=">="`` (the paper's eq. 2), ``False`` for ``">"``; other values are refused."""
    return check_firing(firing) == ">="
