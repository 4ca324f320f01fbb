"""What every neuron model compiles from its two scalar reset-interval rules (one place, so a model
file only writes the rules): the Numba scalar forms the S-IBP kernel inlines and the array form."""
from __future__ import annotations

from typing import Callable, Tuple

import numba
import numpy as np


def compile_reset_rules(reset_lower_bound: Callable, reset_upper_bound: Callable):
    """``(reset_lower_compiled, reset_upper_compiled, reset_interval)`` of a model's scalar rules
    ``reset_lower_bound(state, m_l, negative, zero, th_on)`` and ``reset_upper_bound(state, m_u,
    th_reset, th_off)``; ``reset_interval(m_l, m_u, state, rule)`` applies them elementwise to arrays
    (float64; ``rule``: the precision policy, whose ``th_hi``/``th_lo`` are the threshold's ends)."""
    lower_array = numba.vectorize(cache=True)(reset_lower_bound)
    upper_array = numba.vectorize(cache=True)(reset_upper_bound)

    def reset_interval(mem_lower: np.ndarray, mem_upper: np.ndarray, state: np.ndarray,
                       rule) -> Tuple[np.ndarray, np.ndarray]:
        mem_lower = np.asarray(mem_lower, dtype=np.float64)
        if mem_lower.size == 0:
            return mem_lower.copy(), np.asarray(mem_upper, dtype=np.float64).copy()
        lower = lower_array(state, mem_lower, mem_lower < 0.0, 0.0, rule.th_hi)
        upper = upper_array(state, mem_upper, rule.th_hi, rule.th_lo)
        return np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)

    reset_interval.__doc__ = (f"The reset interval of ``{reset_lower_bound.__module__}`` on arrays "
                              "``(m_l, m_u, state, rule) -> (z_l, z_u)``, float64.")
    return numba.njit(cache=True)(reset_lower_bound), numba.njit(cache=True)(reset_upper_bound), reset_interval
