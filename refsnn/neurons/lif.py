"""The paper's LIF neuron with reset to zero (``reset="zero"``): every rule specific to it, in one file.

    m_t = I_t + alpha z_{t-1},   s_t = fire(m_t - th),   z_t = m_t (1 - s_t)      (eqs. 1-2)

``z_t`` is the *reset term*: what survives the spike and reaches ``m_{t+1}`` times alpha. The
fire rules (eq. 2's comparison, the interval of eq. 7, the chords of eq. 8) are shared by every
neuron model and live in ``refsnn.firing`` and ``refsnn.relaxations``; a neuron model's file holds
the rest (see docs/ARCHITECTURE.md, "Adding a new neuron model"):

forward and BPTT      ``carry`` (``alpha z_t``, eq. 1) and ``grad_step`` (one step of BPTT), each one
                      source run in NumPy by ``refsnn.neurons`` and compiled into ``refsnn.kernels``;
reset interval        ``reset_lower_bound``/``reset_upper_bound`` (eq. 9, scalar: compiled into
                      ``refsnn.operator``'s S-IBP kernel, vectorized by ``reset_interval``);
reset relaxation      ``reset_relaxation`` (eq. 10: the tables ``r_lo``, ``r_hi``) and its part of
                      the back-substitution step (``backsub_stable_on``, ``backsub_unstable``,
                      ``backsub_membrane``; the optimized-slope family ``backsub_unstable_family``)
                      and of its reverse (``reverse_stable_on``, ``reverse_unstable``,
                      ``reverse_unstable_family``), compiled into ``refsnn.operator``'s kernels.

Back-substitution convention (``refsnn.operator._backsub_step``, a lower bound of a linear form):
at step ``t`` a neuron carries the coefficient ``ls`` on ``s_t`` and ``lz`` on ``z_t``; the reset
rule replaces ``lz z_t`` by ``pz + pm m_t - rz s_t`` (a lower bound on the neuron's range), after
which the fire relaxation acts on the coefficient ``ls - rz``. A silent stable neuron has
``z = m`` for every model (the kernel passes ``lz`` on); the other two states call this file.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ._reset_rules import compile_reset_rules
from ..firing import STABLE_OFF, STABLE_ON, UNSTABLE

NAME = "zero"
#: the operator's optimized slopes (``method="alpha"``) and robust training's reverse pass exist for this model
HAS_REVERSE = True


# --- forward (eq. 1) and BPTT --------------------------------------------------------------------

def carry(membrane, spike, threshold, decay, one):
    """``alpha z_t = alpha m_t (1 - s_t)``: what step ``t`` adds to ``m_{t+1}`` (scalars or arrays;
    ``one``: 1 in the membrane dtype)."""
    return decay * membrane * (one - spike)


def grad_step(grad_spike, membrane, spike, derivative, grad_next, threshold, decay, reset_grad, one):
    """BPTT of eqs. 1-2 for one step: dL/dm_t from dL/ds_t (``grad_spike``), the surrogate
    derivative at ``m_t`` and dL/dm_{t+1} (``grad_next``); through the reset term ``-alpha m_t``
    of ``s_t`` too when ``reset_grad`` (otherwise that path is detached)."""
    if reset_grad:
        grad_spike = grad_spike - decay * membrane * grad_next
    return grad_spike * derivative + decay * (one - spike) * grad_next


# --- reset interval (eq. 9) ----------------------------------------------------------------------

def reset_lower_bound(state, mem_lower, negative, zero, th_on):
    """Eq. 9, lower end of ``z = m (1 - s)``: ``m_l`` (silent), 0 (firing), ``min(0, m_l)`` (unstable;
    ``negative`` is ``m_l < 0``, ``zero`` the dtype's 0). ``th_on`` (the stable-firing threshold) is
    not needed by this model."""
    if state == STABLE_OFF:
        return mem_lower
    if state == UNSTABLE and negative:
        return mem_lower
    return zero


def reset_upper_bound(state, mem_upper, th_reset, th_off):
    """Eq. 9, upper end: ``m_u`` (silent), 0 (firing), ``th_reset`` (unstable: ``th_hi``, the largest
    threshold the network may compare against). ``th_off`` is not needed by this model."""
    if state == STABLE_OFF:
        return float(mem_upper)
    if state == UNSTABLE:
        return th_reset
    return 0.0


# the compiled scalar rules (inlined by the S-IBP kernel) and ``reset_interval`` on arrays
reset_lower_compiled, reset_upper_compiled, reset_interval = compile_reset_rules(reset_lower_bound,
                                                                                 reset_upper_bound)


# --- reset relaxation (eq. 10) and its part of the back-substitution step ------------------------

def reset_relaxation(mem_lower: np.ndarray, state: np.ndarray, rule) -> Tuple[np.ndarray, np.ndarray]:
    """Eq. 10 for unstable neurons: ``(1 - s) r_lo <= z <= (1 - s) r_hi``, the tables ``[..]`` of
    ``backsub_step``: ``(r_lo, r_hi) = (m_l, th_hi)`` in ``mem_lower``'s dtype, zero where stable
    (stable neurons are exact: ``z = m`` when silent, ``z = 0`` when firing). Sound: with ``s = 1``
    both sides are 0 = z; with ``s = 0`` the neuron is silent, so ``z = m`` lies in ``[m_l, th_hi]``."""
    unstable = state == UNSTABLE
    th_hi = mem_lower.dtype.type(rule.th_hi)
    return np.where(unstable, mem_lower, 0.0), np.where(unstable, th_hi, mem_lower.dtype.type(0.0))


class Reset:
    """``z = m (1 - s)``: interval rule (eq. 9) and relaxation (eq. 10) on arrays."""

    interval = staticmethod(reset_interval)
    relaxation = staticmethod(reset_relaxation)


def backsub_stable_on(ls, lz, r_lo, r_hi):
    """A surely firing neuron: ``z = 0``, so ``lz z`` contributes nothing. Returns ``(ls, pm,
    rounding)``: the coefficient on ``s`` (= 1), the one on ``m`` and the extra rounding weight."""
    return ls, 0.0, 0.0


def backsub_unstable(lz, lower_side, r_lo, r_hi, mem_mag):
    """Eq. 10 on ``lz z``: ``z >= (1 - s) r_lo`` if ``lz >= 0`` (``lower_side``) else ``z <= (1 - s) r_hi``.
    Returns ``(rz, pz, pm, rounding)`` with ``lz z >= pz + pm m - rz s`` (``pm``: none, see
    ``backsub_membrane``) and the extra rounding weight beyond the kernel's ``2 |rz|``."""
    r = r_lo if lower_side else r_hi
    rz = lz * r
    return rz, rz, 0.0, 0.0


def backsub_membrane(pm, fire_part):
    """The coefficient on ``m_t``: the fire relaxation's ``ls a`` alone (eq. 10 has no ``m`` term)."""
    return fire_part


def backsub_unstable_family(lz, lower_side, r_lo, r_hi, q_lo, th_lo, beta, mem_mag):
    """The optimized-slope family of eq. 10 (``refsnn.alpha``): ``z >= / <= beta (m - q s) + (1 - beta)
    (1 - s) r`` with ``q = m_u`` (``q_lo``) on the lower side, ``th_lo`` on the upper; ``beta = 0`` is
    eq. 10. Returns ``(rz, pz, pm, rounding)`` as ``backsub_unstable`` (``pm = lz beta``), the
    rounding weight covering ``lz beta m`` and the rounded line coefficients."""
    if lower_side:
        r = r_lo
        q = q_lo
    else:
        r = r_hi
        q = th_lo
    pc = (1.0 - beta) * r
    ps = -(beta * q + pc)
    return -(lz * ps), lz * pc, lz * beta, abs(lz) * ((abs(beta) + 2.0) * mem_mag + abs(ps) + abs(pc) + 1.0)


# --- and of its reverse (robust training's and alpha's gradients) -------------------------------

def reverse_stable_on(g_lm, g, r_lo, r_hi):
    """Reverse of ``backsub_stable_on``: ``(dL/d ls, dL/d lz)`` from dL/d(coefficient on m) and the
    bound's weight ``g``."""
    return g, 0.0


def reverse_unstable(g, g_ls, lz, lower_side, mem_lower, th):
    """Reverse of ``backsub_unstable`` (``th``: the ``r_hi`` constant): ``(dL/d lz, dL/d r_lo)``, given
    ``dL/d(ls - rz)`` (``g_ls``) and the weight ``g`` of the bound; ``lz`` is the forward's coefficient."""
    g_rz = g - g_ls
    if lower_side:
        return g_rz * mem_lower, g_rz * lz
    return g_rz * th, 0.0


def reverse_unstable_family(g, g_lm, g_ls, lz, lower_side, mem_lower, th, q_lo, th_lo, beta):
    """Reverse of ``backsub_unstable_family``: ``(dL/d lz, dL/d beta)``."""
    if lower_side:
        q = q_lo
        r = mem_lower
    else:
        q = th_lo
        r = th
    pc = (1.0 - beta) * r
    ps = -(beta * q + pc)
    return g_lm * beta + pc * g + g_ls * ps, lz * (g_lm - g_ls * (q - r) - r * g)
