"""The LIF neuron with reset by subtraction (``reset="subtract"``).

    m_t = I_t + alpha z_{t-1},   s_t = fire(m_t - th),   z_t = m_t - th s_t

A spike takes ``th`` off the membrane instead of clearing it, and the leak acts on what is left:
``m_t = I_t + alpha (m_{t-1} - th s_{t-1})``. (snnTorch's ``reset_mechanism="subtract"`` subtracts
after the leak, ``m_t = beta m_{t-1} + I_t - th s_{t-1}``: the same model only at ``alpha = 1``;
its importer keeps refusing it.) The module defines what
``refsnn/neurons/lif.py`` defines (docs/ARCHITECTURE.md, "Adding a new neuron model"); the fire
rules (eqs. 2, 7, 8) are the shared ones. ``th`` below is the threshold the network computes with,
``th_net`` (its dtype's value of ``th``); the bounds know it only within ``[th_lo, th_hi]``
(``refsnn.relaxations.Precision``; one value for a float64 network).

Reset interval (the analogue of eq. 9), for ``m in [m_l, m_u]``, both firing conventions:
  stable silent ``[m_l, m_u]``; stable firing ``z = m - th_net`` in ``[m_l - th_hi, m_u - th_lo]``;
  unstable ``[min(m_l, 0), max(th_hi, m_u - th_lo)]``: a silent neuron has ``m < th_net``
  (``">="``) or ``m <= th_net`` (``">"``), so ``z = m`` lies in ``[m_l, th_hi]``; a firing one has
  ``m >= th_net``, so ``z = m - th_net`` lies in ``[0, m_u - th_lo]`` (the network's rounded
  ``fl(m - th_net)`` is ``>= 0`` too: rounding is monotone). A membrane exactly at the threshold
  fires under ``">="`` (``z = 0``) and stays silent under ``">"`` (``z = th_net <= th_hi``).
Rounding (sound policy): the bound arithmetic ``m_l - th_hi`` and the network's own ``fl(m - th)``
  each add at most ``u |z|``; both are covered by the next step's membrane margin, which is
  ``2 gamma(6, u) (|I| + alpha |z|)`` (``Precision.membrane_margin``) and so also bounds these two
  extra roundings besides the product and the sum of ``m = I + alpha z``.
Relaxation: none is needed, the reset is linear in ``(m, s)``: ``lz z = lz m - lz th_net s
  >= lz m - lz r s`` with ``r = th_hi`` if ``lz >= 0`` else ``th_lo`` (as ``s >= 0``). In the
  back-substitution the coefficient on ``z`` passes to ``m`` and ``-r`` times it to ``s``, before
  the fire relaxation acts on ``s`` (stable firing: ``s = 1``).
BPTT: ``dz/dm = 1``, ``dz/ds = -th``; with ``reset_grad=False`` the path through ``s`` is detached
  (the same meaning as for the LIF).
Not provided: the optimized-slope family and the reverse of the back-substitution (``HAS_REVERSE``
  is False), so ``method="alpha"`` and robust training refuse this model.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ._reset_rules import compile_reset_rules
from ..firing import STABLE_OFF, STABLE_ON, UNSTABLE

NAME = "subtract"
HAS_REVERSE = False


# --- forward and BPTT ----------------------------------------------------------------------------

def carry(membrane, spike, threshold, decay, one):
    """``alpha z_t = alpha (m_t - th s_t)`` (scalars or arrays; ``one`` unused)."""
    return decay * (membrane - threshold * spike)


def grad_step(grad_spike, membrane, spike, derivative, grad_next, threshold, decay, reset_grad, one):
    """BPTT of one step: ``dm_{t+1}/dm_t = alpha`` and, with ``reset_grad``, ``dm_{t+1}/ds_t = -alpha th``."""
    if reset_grad:
        grad_spike = grad_spike - decay * threshold * grad_next
    return grad_spike * derivative + decay * grad_next


# --- reset interval --------------------------------------------------------------------------------

def reset_lower_bound(state, mem_lower, negative, zero, th_on):
    """Lower end of ``z``: ``m_l`` (silent), ``m_l - th_on`` (firing; ``th_on = th_hi``),
    ``min(m_l, 0)`` (unstable; ``negative`` is ``m_l < 0``, ``zero`` the dtype's 0)."""
    if state == STABLE_OFF:
        return mem_lower
    if state == STABLE_ON:
        return mem_lower - th_on
    if negative:
        return mem_lower
    return zero


def reset_upper_bound(state, mem_upper, th_reset, th_off):
    """Upper end of ``z``: ``m_u`` (silent), ``m_u - th_off`` (firing; ``th_off = th_lo``),
    ``max(th_reset, m_u - th_off)`` (unstable; ``th_reset = th_hi``)."""
    if state == STABLE_OFF:
        return float(mem_upper)
    if state == STABLE_ON:
        return float(mem_upper) - th_off
    return max(th_reset, float(mem_upper) - th_off)


# the compiled scalar rules (inlined by the S-IBP kernel) and ``reset_interval`` on arrays
reset_lower_compiled, reset_upper_compiled, reset_interval = compile_reset_rules(reset_lower_bound,
                                                                                 reset_upper_bound)


# --- the exact reset relation in the back-substitution step ----------------------------------------

def reset_relaxation(mem_lower: np.ndarray, state: np.ndarray, rule) -> Tuple[np.ndarray, np.ndarray]:
    """The tables ``(r_lo, r_hi)`` of ``backsub_step``: the threshold subtracted where the coefficient
    on ``z`` is ``>= 0`` (``th_hi``) or negative (``th_lo``), wherever the neuron may fire; 0 where
    it is surely silent (``z = m``). In ``mem_lower``'s dtype."""
    may_fire = state != STABLE_OFF
    zero = mem_lower.dtype.type(0.0)
    return (np.where(may_fire, mem_lower.dtype.type(rule.th_hi), zero),
            np.where(may_fire, mem_lower.dtype.type(rule.th_lo), zero))


def backsub_stable_on(ls, lz, r_lo, r_hi):
    """``s = 1``, ``z = m - th``: ``lz z >= lz m - lz r`` (``r`` by the sign of ``lz``). Returns
    ``(coefficient on s, pm = lz, rounding weight of ls - lz r)``."""
    rz = lz * (r_lo if lz >= 0.0 else r_hi)
    return ls - rz, lz, abs(ls) + 2.0 * abs(rz)


def backsub_unstable(lz, lower_side, r_lo, r_hi, mem_mag):
    """``lz z >= lz m - rz s`` with ``rz = lz r`` (``r_lo`` on the side ``lz >= 0``): ``(rz, pz = 0, pm = lz,
    rounding weight of the sum lz + ls a on |m| <= mem_mag)``."""
    rz = lz * (r_lo if lower_side else r_hi)
    return rz, 0.0, lz, 2.0 * abs(lz) * mem_mag


def backsub_membrane(pm, fire_part):
    """The coefficient on ``m_t``: the one passed on from ``z`` plus the fire relaxation's ``ls a``."""
    return pm + fire_part
