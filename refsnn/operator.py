"""The LIF stage operator: the two kernels every bound method runs through one spiking stage.

``interval_step``  (``interval_kernel``) S-IBP over time (Alg. 1; eqs. 7, 9 after the current interval of eq. 11):
    ``m = I + alpha z_{t-1}`` (widened by the membrane margin when the precision policy tracks
    rounding), the stability of ``s = fire(m - th)`` (eq. 7) and the interval of the reset term
    ``z = m (1 - s)`` (eq. 9), carried to the next step times alpha.
``backsub_step``  (``backsub_kernel``) one stage of the S-CROWN back-substitution (Alg. 2; eqs. 8, 10, 17-18), time
    ``T'-1 .. 0``: the reset relaxation (eq. 10) on the coefficient of ``z_t``, the fire
    relaxation (eq. 8) on the coefficient of ``s_t``, then the membrane ``m_t = I_t + alpha z_{t-1}``;
    returns the coefficients on the currents and the accumulated constant.

Each kernel is written once and compiled by Numba (``cache=True``); flags select what a caller
needs, so certification (``refsnn.ibp``, ``refsnn.crown``: the ``sound`` precision policy, float64
with outward rounding) and robust training (``refsnn.bound_graph``: the ``exact`` policy, plain
arithmetic in the training dtype) run the same operator:

``track_rounding``  widen the membranes by their rounding margin (interval) / accumulate the bound
                    on the kernel's own rounding into ``err`` (back-substitution);
``record``          keep what later passes need: the reset and spike bounds (interval, for S-CROWN's
                    tables), the sign of ``m_l`` (interval) and the side of every relaxation chosen
                    plus the coefficient on ``s_t`` (back-substitution, for the reverse pass);
``frozen``          read the recorded discrete choices instead of deciding them (the training
                    graph's finite-difference check holds them fixed).

The per-neuron decisions are the rules of ``refsnn.relaxations`` (``fire_state``, eq. 7;
``reset_lower_bound``/``reset_upper_bound``, eq. 9), compiled into the kernels.
"""
from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

from .relaxations import (STABLE_OFF, STABLE_ON, UNSTABLE, fire_state_compiled, reset_lower_compiled,
                          reset_upper_compiled)

__all__ = ["interval_kernel", "backsub_kernel"]

# The flags of a compiled variant: ``_variant`` gives each compilation its own values, which Numba
# treats as constants. The sources below are only run through ``interval_kernel``/``backsub_kernel``.
TRACK_ROUNDING = RECORD = FROZEN = None


def _interval_step(cur_lower, cur_upper, alpha_lower, alpha_upper, margin_coef, th_on, th_off, th_reset, zero,
                   fire_at_threshold, mem_lower, mem_upper, mem_margin, reset_lower, reset_upper, state, negative,
                   spike_lower, spike_upper):  # pragma: no cover - compiled
    """S-IBP recurrence of one stage over ``[T', B, n]`` current bounds (see the module docstring).

    ``alpha_lower``/``alpha_upper``: the decay applied to the lower (carried in ``cur_lower``'s
    dtype) and the upper reset bound (carried in float64). ``margin_coef``: ``2 gamma(6, u)`` of
    the membrane margin (``TRACK_ROUNDING``). ``th_on``/``th_off``: the thresholds of the stable
    firing / stable silent tests (``th_hi``/``th_lo`` under the sound policy), ``th_reset`` the
    upper reset bound of an unstable neuron, ``zero`` its lower bound when ``m_l >= 0``.
    Outputs ``mem_*``, ``state`` (int8) always; ``mem_margin`` with ``TRACK_ROUNDING``;
    ``reset_*``, ``spike_*`` and ``negative`` with ``RECORD``; ``FROZEN`` reads ``state`` and
    ``negative``. Unused outputs may be ``[1, 1, 1]`` dummies. The flags ``TRACK_ROUNDING``,
    ``RECORD``, ``FROZEN`` are compile-time constants of each compiled variant (``interval_kernel``).
    """
    steps, batch, n = cur_lower.shape
    carry_lower = np.zeros(n, dtype=cur_lower.dtype)
    carry_upper = np.zeros(n)
    for b in range(batch):
        carry_lower[:] = 0
        carry_upper[:] = 0.0
        for t in range(steps):
            for j in range(n):
                carried_lower = carry_lower[j]
                carried_upper = carry_upper[j]
                cl = cur_lower[t, b, j]
                cu = cur_upper[t, b, j]
                low = cl + carried_lower
                high = cu + carried_upper
                if TRACK_ROUNDING:
                    size = max(abs(cl), abs(cu)) + max(abs(carried_lower), abs(carried_upper))
                    margin = margin_coef * size
                    mem_margin[t, b, j] = margin
                    low = low - margin
                    high = high + margin
                mem_lower[t, b, j] = low
                mem_upper[t, b, j] = high
                ml = mem_lower[t, b, j]   # as stored: the training dtype rounds here
                mu = mem_upper[t, b, j]
                if FROZEN:
                    st = state[t, b, j]
                    neg = negative[t, b, j]
                else:
                    st = fire_state_compiled(ml, mu, th_on, th_off, fire_at_threshold)
                    neg = ml < 0.0
                    state[t, b, j] = st
                    if RECORD:
                        negative[t, b, j] = neg
                rl = reset_lower_compiled(st, ml, neg, zero)
                ru = reset_upper_compiled(st, mu, th_reset)
                if RECORD and TRACK_ROUNDING:
                    reset_lower[t, b, j] = rl
                    reset_upper[t, b, j] = ru
                    spike_lower[t, b, j] = 1.0 if st == STABLE_ON else 0.0
                    spike_upper[t, b, j] = 0.0 if st == STABLE_OFF else 1.0
                carry_lower[j] = alpha_lower * rl
                carry_upper[j] = alpha_upper * ru


def _backsub_step(lam_s, state, slope_lo, icpt_lo, slope_up, icpt_up, reset_lo, reset_hi, alpha, mem_mag,
                  carry_mag, fwd_scale, bias_vec, g, lam_cur, fire_coef, reset_side, fire_side, bias_out,
                  err_out):  # pragma: no cover - compiled
    """Steps 1-3 of Alg. 2 for one stage, every (sample, spec) row, ``t = T'-1 .. 0`` (eqs. 8, 10, 17-18).

    ``lam_s [T', B, R, n]``: coefficients on the spikes; tables ``[T', B, n]``: ``state``, the fire
    relaxation (``slope/icpt_lo`` for a non-negative coefficient, ``_up`` otherwise, eq. 8), the
    reset relaxation (``reset_lo`` if the coefficient on ``z`` is ``>= 0``, else ``reset_hi``,
    eq. 10); ``alpha`` the decay; ``bias_vec [n]`` the stage bias. Outputs: ``lam_cur [T', B, R, n]``
    (coefficients on the currents), ``bias_out [B, R]`` (accumulated constant, float64) and, with
    ``TRACK_ROUNDING``, ``err_out [B, R]``: ``g * sum |terms|`` of every product and sum plus
    ``|lam_m| fwd_scale`` (the network-vs-exact margins), ``mem_mag``/``carry_mag`` bounding the
    magnitudes. ``RECORD``: ``fire_coef`` (the coefficient on ``s_t`` after the reset step) and
    the sides chosen (``reset_side``, ``fire_side``, bool ``[T', B, R, n]``, False where stable);
    ``FROZEN`` reads the sides instead. Loop order sample, time, neuron, spec over ``[neuron, spec]``
    buffers: a neuron's tables and branch are read once for all specs; per row the additions into
    ``bias``/``err`` run in a fixed order (t descending, neurons ascending). The flags
    ``TRACK_ROUNDING``, ``RECORD``, ``FROZEN`` are compile-time constants (``backsub_kernel``).
    """
    steps, batch, rows, n = lam_s.shape
    for b in prange(batch):
        carry = np.zeros((n, rows))  # float64 whatever the coefficients' dtype
        lam_in = np.empty((n, rows), dtype=lam_s.dtype)
        lam_out = np.empty((n, rows), dtype=lam_s.dtype)
        coef_out = np.empty((n, rows), dtype=lam_s.dtype)
        reset_buf = np.zeros((n, rows), dtype=np.bool_)
        fire_buf = np.zeros((n, rows), dtype=np.bool_)
        bias = np.zeros(rows)
        err = np.zeros(rows)
        for t in range(steps - 1, -1, -1):
            for s in range(rows):
                for j in range(n):
                    lam_in[j, s] = lam_s[t, b, s, j]
            if FROZEN:
                for s in range(rows):
                    for j in range(n):
                        reset_buf[j, s] = reset_side[t, b, s, j]
                        fire_buf[j, s] = fire_side[t, b, s, j]
            for j in range(n):
                st = state[t, b, j]
                bv = bias_vec[j]
                if RECORD and not FROZEN and st != UNSTABLE:  # sides are only recorded for unstable neurons
                    for s in range(rows):
                        reset_buf[j, s] = False
                        fire_buf[j, s] = False
                if st == STABLE_OFF:       # s = 0, z = m
                    cm = carry_mag[t, b, j] if TRACK_ROUNDING else 0.0
                    fs = fwd_scale[t, b, j] if TRACK_ROUNDING else 0.0
                    for s in range(rows):
                        ls = lam_in[j, s]
                        lm = carry[j, s]
                        if TRACK_ROUNDING:
                            err[s] += g * (abs(ls) + abs(lm) * cm) + abs(lm) * fs
                        if RECORD:
                            coef_out[j, s] = ls
                        bias[s] += lm * bv
                        lam_out[j, s] = lm
                        carry[j, s] = alpha * lm
                elif st == STABLE_ON:      # s = 1, z = 0 (the zero terms keep NaN/inf as a row-by-row loop)
                    cm = carry_mag[t, b, j] if TRACK_ROUNDING else 0.0
                    fs = fwd_scale[t, b, j] if TRACK_ROUNDING else 0.0
                    for s in range(rows):
                        ls = lam_in[j, s]
                        bias[s] += ls
                        if TRACK_ROUNDING:
                            err[s] += g * (abs(ls) + 0.0 * cm) + 0.0 * fs
                        if RECORD:
                            coef_out[j, s] = ls
                        bias[s] += 0.0 * bv
                        lam_out[j, s] = 0.0
                        carry[j, s] = 0.0
                else:                      # unstable: eq. 10, then eq. 8
                    r_lo = reset_lo[t, b, j]
                    r_hi = reset_hi[t, b, j]
                    a_lo = slope_lo[t, b, j]
                    c_lo = icpt_lo[t, b, j]
                    a_up = slope_up[t, b, j]
                    c_up = icpt_up[t, b, j]
                    mm = mem_mag[t, b, j] if TRACK_ROUNDING else 0.0
                    cm = carry_mag[t, b, j] if TRACK_ROUNDING else 0.0
                    fs = fwd_scale[t, b, j] if TRACK_ROUNDING else 0.0
                    for s in range(rows):
                        ls = lam_in[j, s]
                        lz = carry[j, s]
                        if not FROZEN:
                            reset_buf[j, s] = lz >= 0.0
                        r = r_lo if reset_buf[j, s] else r_hi
                        rz = lz * r
                        bias[s] += rz
                        p = abs(ls)
                        ls = ls - rz
                        if not FROZEN:
                            fire_buf[j, s] = ls >= 0.0
                        if fire_buf[j, s]:
                            a = a_lo
                            c = c_lo
                        else:
                            a = a_up
                            c = c_up
                        lm = ls * a
                        bias[s] += ls * c
                        if TRACK_ROUNDING:
                            p += 2.0 * abs(rz) + abs(ls) * (abs(a) * mm + abs(c) + 1.0)
                            p += abs(lm) * cm
                            err[s] += g * p + abs(lm) * fs
                        if RECORD:
                            coef_out[j, s] = ls
                        bias[s] += lm * bv
                        lam_out[j, s] = lm
                        carry[j, s] = alpha * lm
            for s in range(rows):
                for j in range(n):
                    lam_cur[t, b, s, j] = lam_out[j, s]
                    if RECORD:
                        fire_coef[t, b, s, j] = coef_out[j, s]
                        if not FROZEN:
                            reset_side[t, b, s, j] = reset_buf[j, s]
                            fire_side[t, b, s, j] = fire_buf[j, s]
        for s in range(rows):
            bias_out[b, s] = bias[s]
            if TRACK_ROUNDING:
                err_out[b, s] = err[s]


# --- compiled variants ---------------------------------------------------------------------------------
# Each kernel is one Python function; a variant is that function compiled with its flags as
# constants (Numba folds the branches a caller does not need) and its own cache entry.

_VARIANTS: dict = {}


def _variant(func, track_rounding: bool, record: bool, frozen: bool, parallel: bool = False):
    key = (func.__name__, track_rounding, record, frozen, parallel)
    if key not in _VARIANTS:
        flags = {"TRACK_ROUNDING": track_rounding, "RECORD": record, "FROZEN": frozen}
        specialized = types.FunctionType(func.__code__, {**func.__globals__, **flags}, func.__name__,
                                         func.__defaults__)
        specialized.__qualname__ = "{}_{}{}{}{}".format(func.__name__, *(int(v) for v in key[1:]))
        _VARIANTS[key] = njit(cache=True, parallel=parallel)(specialized)
    return _VARIANTS[key]


def interval_kernel(track_rounding: bool, record: bool, frozen: bool):
    """``interval_step`` compiled for these flags (see the module docstring)."""
    return _variant(_interval_step, track_rounding, record, frozen)


def backsub_kernel(track_rounding: bool, record: bool, frozen: bool, parallel: bool = False):
    """``backsub_step`` compiled for these flags, parallel over samples or serial (a parallel launch
    costs milliseconds when the cores are busy: callers pick it for big stages)."""
    return _variant(_backsub_step, track_rounding, record, frozen, parallel)

