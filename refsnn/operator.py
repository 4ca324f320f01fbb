"""The stage operator: the kernels every bound method runs through one spiking stage.

``interval_step``  (``interval_kernel``) S-IBP over time (Alg. 1; eqs. 7, 9 after the current interval of eq. 11):
    ``m = I + alpha z_{t-1}`` (widened by the membrane margin when the precision policy tracks
    rounding), the stability of ``s = fire(m - th)`` (eq. 7) and the interval of the reset term
    ``z = m (1 - s)`` (eq. 9), carried to the next step times alpha.
``backsub_step``  (``backsub_kernel``) one stage of the S-CROWN back-substitution (Alg. 2; eqs. 8, 10, 17-18), time
    ``T'-1 .. 0``: the reset relaxation (eq. 10) on the coefficient of ``z_t``, the fire
    relaxation (eq. 8) on the coefficient of ``s_t``, then the membrane ``m_t = I_t + alpha z_{t-1}``;
    returns the coefficients on the currents and the accumulated constant.
``backsub_reverse``  (``backsub_reverse_kernel``) the reverse of ``backsub_step`` (``t = 0 .. T'-1``,
    every choice held fixed): the gradients of robust training's S-CROWN bound and of alpha's
    optimized bound w.r.t. the relaxation (tables or per-row parameters).

Each kernel is written once and compiled by Numba (``cache=True``); flags select what a caller
needs, so certification (``refsnn.ibp``, ``refsnn.crown``: the ``sound`` precision policy, float64
with outward rounding) and robust training (``refsnn.bound_graph``: the ``exact`` policy, plain
arithmetic in the training dtype) run the same operator:

``track_rounding``  widen the membranes by their rounding margin (interval) / accumulate the bound
                    on the kernel's own rounding into ``err`` (back-substitution);
``record``          keep what later passes need: the reset bounds (interval, for S-CROWN's
                    tables), the sign of ``m_l`` (interval) and the side of every relaxation chosen
                    plus the coefficient on ``s_t`` (back-substitution, for the reverse pass);
``frozen``          read the recorded discrete choices instead of deciding them (the training
                    graph's finite-difference check holds them fixed);
``params``          the relaxation of each unstable neuron from per-row parameters inside its sound
                    family instead of the paper's fixed lines (optimized S-CROWN, ``refsnn.alpha``).

``backsub_stage`` and ``backsub_stage_reverse`` are the one place that picks a variant (serial or
parallel over samples by size) and fills the arguments a variant does not read.

The per-neuron decisions are the rules of ``refsnn.relaxations`` (``fire_state``, eq. 7, shared)
and of the neuron model (``refsnn/neurons/lif.py`` for the paper's LIF: ``reset_lower_bound``/
``reset_upper_bound``, eq. 9; the reset's part of the back-substitution step, eq. 10, and of its
reverse), compiled into the kernels: each variant is compiled for one neuron model (``neuron``,
the value of ``SNN.reset``) with that model's scalar rules injected as globals, as the flags are.
The text below describes the LIF; reset by subtraction (``refsnn/neurons/subtract.py``) replaces
eqs. 9-10 by its exact reset relation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np
from numba import prange

from .kernels import specialize
from .neurons.models import compiled_rules, neuron_model
from .relaxations import STABLE_OFF, STABLE_ON, UNSTABLE, fire_state_compiled

__all__ = ["interval_kernel", "backsub_kernel", "backsub_reverse_kernel", "backsub_stage",
           "backsub_stage_reverse", "reverse_reads", "StepTables", "StepOutput", "SplitTerms", "PARALLEL_MIN_WORK"]

# The flags of a compiled variant: ``_variant`` gives each compilation its own values, which Numba
# treats as constants. The sources below are only run through ``interval_kernel``/``backsub_kernel``.
TRACK_ROUNDING = RECORD = FROZEN = PARAMS = None
# The rules of the neuron model a variant is compiled for (``refsnn.neurons``, e.g. ``lif.py``:
# ``reset_lower_bound``, ``backsub_unstable``, ...), injected by ``_variant`` as the flags are.
RESET_LOWER = RESET_UPPER = BACKSUB_ON = BACKSUB_UNSTABLE = BACKSUB_MEMBRANE = BACKSUB_FAMILY = None
REVERSE_ON = REVERSE_UNSTABLE = REVERSE_FAMILY = None


def _interval_step(cur_lower, cur_upper, alpha_lower, alpha_upper, margin_coef, th_on, th_off, th_reset, zero,
                   fire_at_threshold, mem_lower, mem_upper, mem_margin, reset_lower, reset_upper, state,
                   negative):  # pragma: no cover - compiled
    """S-IBP recurrence of one stage over ``[T', B, n]`` current bounds (see the module docstring).

    ``alpha_lower``/``alpha_upper``: the decay applied to the lower (carried in ``cur_lower``'s
    dtype) and the upper reset bound (carried in float64). ``margin_coef``: ``2 gamma(6, u)`` of
    the membrane margin (``TRACK_ROUNDING``). ``th_on``/``th_off``: the thresholds of the stable
    firing / stable silent tests (``th_hi``/``th_lo`` under the sound policy), ``th_reset`` the
    upper reset bound of an unstable neuron, ``zero`` its lower bound when ``m_l >= 0`` (the
    LIF's eq. 9; the neuron model's ``reset_lower_bound``/``reset_upper_bound`` receive all four).
    Outputs ``mem_*``, ``state`` (int8) always; ``mem_margin`` with ``TRACK_ROUNDING``;
    ``reset_*`` (with ``TRACK_ROUNDING``) and ``negative`` with ``RECORD`` (the spike bounds are
    ``state``'s, eq. 7: ``refsnn.ibp.IntervalBounds``); ``FROZEN`` reads ``state`` and
    ``negative``. Unused outputs may be ``[1, 1, 1]`` dummies. The flags ``TRACK_ROUNDING``,
    ``RECORD``, ``FROZEN`` are compile-time constants of each compiled variant (``interval_kernel``).
    """
    steps, batch, n = cur_lower.shape
    for b in prange(batch):  # every sample is one independent loop: the same bits serial or parallel
        carry_lower = np.zeros(n, dtype=cur_lower.dtype)
        carry_upper = np.zeros(n)
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
                rl = RESET_LOWER(st, ml, neg, zero, th_on)
                ru = RESET_UPPER(st, mu, th_reset, th_off)
                if RECORD and TRACK_ROUNDING:
                    reset_lower[t, b, j] = rl
                    reset_upper[t, b, j] = ru
                carry_lower[j] = alpha_lower * rl
                carry_upper[j] = alpha_upper * ru


def _backsub_step(lam_s, state, slope_lo, icpt_lo, slope_up, icpt_up, reset_lo, reset_hi, alpha, mem_mag,
                  carry_mag, fwd_scale, bias_vec, g, frac_lo, frac_up, beta_lo, beta_up, reset_far_lo, th_lo, th_hi,
                  carry_in, query, split_coef, split_th, split, lam_cur, fire_coef, reset_side, fire_side, step_bias,
                  step_err, bias_out, err_out):  # pragma: no cover - compiled
    """Steps 1-3 of Alg. 2 for one stage, every (sample, spec) row, ``t = T'-1 .. 0`` (eqs. 8, 10, 17-18).

    ``lam_s [T', B, R, n]``: coefficients on the spikes; tables ``[T', B, n]``: ``state``, the fire
    relaxation (``slope/icpt_lo`` for a non-negative coefficient, ``_up`` otherwise, eq. 8), the
    reset relaxation (``reset_lo`` if the coefficient on ``z`` is ``>= 0``, else ``reset_hi``,
    eq. 10); ``alpha`` the decay; ``bias_vec [n]`` the stage bias. Outputs: ``lam_cur [T', B, R, n]``
    (coefficients on the currents), ``bias_out [B, R]`` (accumulated constant, float64) and, with
    ``TRACK_ROUNDING``, ``err_out [B, R]``: ``g * sum |terms|`` of every product and sum plus
    ``|lam_m| fwd_scale`` (the network-vs-exact margins), ``mem_mag``/``carry_mag`` bounding the
    magnitudes. ``RECORD``: ``fire_coef`` (the coefficient on ``s_t`` after the reset step) and
    the sides chosen (``reset_side``, ``fire_side``, bool ``[T', B, R, n]``), written at unstable
    neurons only (the caller passes them zeroed: 0 and False where stable; the reverse reads them
    at unstable neurons only, and most neurons of a trained net are stable);
    with ``TRACK_ROUNDING`` also each time step's constant and rounding share (``step_bias``,
    ``step_err [T', B, R]``, without the stage-bias and ``fwd_scale`` terms); ``FROZEN`` reads the
    sides instead. Loop order sample, time, neuron, spec over ``[neuron, spec]`` buffers: a
    neuron's tables and branch are read once for all specs; per row the additions into
    ``bias``/``err`` run in a fixed order (t descending, neurons ascending).

    ``PARAMS`` (optimized slopes, ``refsnn.alpha``): per-row relaxations in their sound families
    (``relaxations.Fire.line_family``, ``Reset.line_family``): the fire line of slope
    ``a = frac * slope`` (``frac_lo/up [T', B, R, n]`` in ``[0, 1]``, ``slope_lo/up`` the largest
    sound slopes) with intercept ``-a th_hi`` (lower) or ``1 - a th_lo`` (upper), and the reset
    line ``z >= / <= beta (m - q s) + (1 - beta) (1 - s) r`` (``beta_lo/up [T', B, R, n]``; ``r``
    the eq. 10 constant of ``reset_lo/hi``, ``q`` = ``reset_far_lo`` = ``m_u`` or ``th_lo``);
    ``beta = 0`` is eq. 10. The rounding bound then also covers the rounded line coefficients.
    ``query`` (a membrane query of full S-CROWN): the bound is of ``carry_in [B, R, n] . m_{T'-1}``
    (``lam_s[T'-1]`` must be 0): the last step takes the silent branch with ``carry_in`` as the
    coefficient on ``z_{T'-1} = m_{T'-1}`` (the query stops before fire and reset).
    ``split`` (spike splits as Lagrangian terms, beta-CROWN): the bound is of the spec plus
    ``sum split_coef[t, b, s, j] (m_t[j] - split_th)``: after step ``t``'s relaxations each nonzero
    ``split_coef`` is added to the coefficient on ``m_t`` (so to ``lam_cur[t]`` and the carry) and
    ``-split_coef split_th`` to the constant; its products and sums enter the rounding bound like
    every other term. A zero entry changes nothing (the same bits as without ``split``).
    The flags ``TRACK_ROUNDING``, ``RECORD``, ``FROZEN``, ``PARAMS`` are compile-time constants
    (``backsub_kernel``).
    """
    steps, batch, rows, n = lam_s.shape
    for b in prange(batch):
        carry = np.zeros((n, rows))  # float64 whatever the coefficients' dtype
        lam_in = np.empty((n, rows), dtype=lam_s.dtype)
        lam_out = np.empty((n, rows), dtype=lam_s.dtype)
        bias = np.zeros(rows)
        err = np.zeros(rows)
        bias_t = np.zeros(rows)
        err_t = np.zeros(rows)
        if query:
            for s in range(rows):
                for j in range(n):
                    carry[j, s] = carry_in[b, s, j]
        for t in range(steps - 1, -1, -1):
            for s in range(rows):
                for j in range(n):
                    lam_in[j, s] = lam_s[t, b, s, j]
            if RECORD and TRACK_ROUNDING:
                for s in range(rows):
                    bias_t[s] = 0.0
                    err_t[s] = 0.0
            for j in range(n):
                st = STABLE_OFF if (query and t == steps - 1) else state[t, b, j]
                bv = bias_vec[j]
                if st == STABLE_OFF:       # s = 0, z = m
                    cm = carry_mag[t, b, j] if TRACK_ROUNDING else 0.0
                    fs = fwd_scale[t, b, j] if TRACK_ROUNDING else 0.0
                    for s in range(rows):
                        ls = lam_in[j, s]
                        lm = carry[j, s]
                        if TRACK_ROUNDING:
                            p = g * (abs(ls) + abs(lm) * cm)
                            err[s] += p + abs(lm) * fs
                            if RECORD:
                                err_t[s] += p
                        bias[s] += lm * bv
                        lam_out[j, s] = lm
                        carry[j, s] = alpha * lm
                elif st == STABLE_ON:      # s = 1; the model's reset: the LIF's z = 0 gives pm = 0
                    r_lo = reset_lo[t, b, j]   # (the zero terms keep NaN/inf as a row-by-row loop)
                    r_hi = reset_hi[t, b, j]
                    cm = carry_mag[t, b, j] if TRACK_ROUNDING else 0.0
                    fs = fwd_scale[t, b, j] if TRACK_ROUNDING else 0.0
                    for s in range(rows):
                        ls, pm, pr = BACKSUB_ON(lam_in[j, s], carry[j, s], r_lo, r_hi)
                        bias[s] += ls
                        if RECORD and TRACK_ROUNDING:
                            bias_t[s] += ls
                        if TRACK_ROUNDING:
                            p = g * (abs(ls) + pr + abs(pm) * cm)
                            err[s] += p + abs(pm) * fs
                            if RECORD:
                                err_t[s] += p
                        bias[s] += pm * bv
                        lam_out[j, s] = pm
                        carry[j, s] = alpha * pm
                else:                      # unstable: the model's reset (LIF: eq. 10), then eq. 8
                    r_lo = reset_lo[t, b, j]
                    r_hi = reset_hi[t, b, j]
                    a_lo = slope_lo[t, b, j]
                    c_lo = icpt_lo[t, b, j]
                    a_up = slope_up[t, b, j]
                    c_up = icpt_up[t, b, j]
                    q_lo = reset_far_lo[t, b, j] if PARAMS else 0.0
                    mm = mem_mag[t, b, j] if TRACK_ROUNDING else 0.0
                    cm = carry_mag[t, b, j] if TRACK_ROUNDING else 0.0
                    fs = fwd_scale[t, b, j] if TRACK_ROUNDING else 0.0
                    for s in range(rows):
                        ls = lam_in[j, s]
                        lz = carry[j, s]
                        # the sides: read (FROZEN) or decided and recorded, at unstable neurons only
                        if FROZEN:
                            lower_reset = reset_side[t, b, s, j]
                        else:
                            lower_reset = lz >= 0.0
                            if RECORD:
                                reset_side[t, b, s, j] = lower_reset
                        # lz z >= pz + pm m - rz s (the model's rule; the LIF's: eq. 10 or its family)
                        if PARAMS:
                            beta = beta_lo[t, b, s, j] if lower_reset else beta_up[t, b, s, j]
                            rz, pz, pm, pr = BACKSUB_FAMILY(lz, lower_reset, r_lo, r_hi, q_lo, th_lo, beta, mm)
                        else:
                            rz, pz, pm, pr = BACKSUB_UNSTABLE(lz, lower_reset, r_lo, r_hi, mm)
                        bias[s] += pz
                        p = abs(ls)
                        ls = ls - rz
                        if FROZEN:
                            lower_fire = fire_side[t, b, s, j]
                        else:
                            lower_fire = ls >= 0.0
                            if RECORD:
                                fire_side[t, b, s, j] = lower_fire
                        if PARAMS:
                            if lower_fire:
                                a = frac_lo[t, b, s, j] * a_lo
                                c = -a * th_hi
                            else:
                                a = frac_up[t, b, s, j] * a_up
                                c = 1.0 - a * th_lo
                            lm = pm + ls * a
                        else:
                            if lower_fire:
                                a = a_lo
                                c = c_lo
                            else:
                                a = a_up
                                c = c_up
                            lm = BACKSUB_MEMBRANE(pm, ls * a)
                        bias[s] += ls * c
                        if RECORD and TRACK_ROUNDING:
                            bias_t[s] += pz + ls * c
                        if TRACK_ROUNDING:
                            p += 2.0 * abs(rz) + abs(ls) * (abs(a) * mm + abs(c) + 1.0)
                            p += pr     # the model's own terms (the LIF's family: lz beta m, its coefficients)
                            p += abs(lm) * cm
                            err[s] += g * p + abs(lm) * fs
                            if RECORD:
                                err_t[s] += g * p
                        if RECORD:
                            fire_coef[t, b, s, j] = ls
                        bias[s] += lm * bv
                        lam_out[j, s] = lm
                        carry[j, s] = alpha * lm
            if split:
                # the split's term c (m_t - th) on top of the relaxed coefficient lm: m_t = I_t + alpha z_{t-1}
                # gives c on the current, alpha c on z_{t-1}, c (bv - th) to the constant. Rounding: the sums
                # lm + c and alpha lm + alpha c (coefficients on terms of magnitude <= cm) and the two
                # constant products; |c| fs: the network-vs-exact margin of m_t for the added coefficient
                for j in range(n):
                    bv = bias_vec[j]
                    cm = carry_mag[t, b, j] if TRACK_ROUNDING else 0.0
                    fs = fwd_scale[t, b, j] if TRACK_ROUNDING else 0.0
                    for s in range(rows):
                        c = split_coef[t, b, s, j]
                        if c != 0.0:
                            lm = lam_out[j, s] + c
                            lam_out[j, s] = lm
                            carry[j, s] += alpha * c
                            bias[s] += c * bv
                            bias[s] -= c * split_th
                            if RECORD and TRACK_ROUNDING:
                                bias_t[s] -= c * split_th
                            if TRACK_ROUNDING:
                                p = abs(c) * (abs(bv) + abs(split_th) + 2.0 * cm) + 2.0 * abs(lm) * cm
                                err[s] += g * p + abs(c) * fs
                                if RECORD:
                                    err_t[s] += g * p
            for s in range(rows):
                for j in range(n):
                    lam_cur[t, b, s, j] = lam_out[j, s]
            if RECORD and TRACK_ROUNDING:
                for s in range(rows):
                    step_bias[t, b, s] = bias_t[s]
                    step_err[t, b, s] = err_t[s]
        for s in range(rows):
            bias_out[b, s] = bias[s]
            if TRACK_ROUNDING:
                err_out[b, s] = err[s]


def _backsub_reverse(grad_lam_cur, lam_cur, fire_coef, reset_side, fire_side, state, mem_lower, slope_lo, icpt_lo,
                     slope_up, icpt_up, bias_vec, g_row, th, alpha, frac_lo, frac_up, beta_lo, beta_up, reset_far_lo,
                     th_lo, split_th, split, grad_lam_s, g_slope_lo, g_slope_up, g_icpt_lo, g_icpt_up, g_mem_lower,
                     g_frac_lo, g_frac_up, g_beta_lo, g_beta_up, g_split):  # pragma: no cover - compiled
    """Reverse of ``backsub_step`` recorded without rounding terms (``t = 0 .. T'-1``), every choice held fixed.

    Inputs: what the forward recorded (``lam_cur``, ``fire_coef``, ``reset_side``, ``fire_side``)
    and its tables; ``grad_lam_cur [T', B, R, n]`` is dL/d``lam_cur``, ``g_row [B, R]`` dL/d(bound):
    every constant of the forward enters with that weight; ``th`` the unstable reset constant of
    eq. 10 (``reset_hi``). Outputs: ``grad_lam_s [T', B, R, n]`` and, without ``PARAMS``, the
    gradients of the tables ``[T', B, n]`` (summed over specs in spec order): fire slopes and
    intercepts and ``m_l`` through the reset line; with ``PARAMS`` the per-row gradients
    ``[T', B, R, n]`` of the fractions and of ``beta`` (``th`` is then ``th_hi``). ``split``: also
    ``g_split [T', B, R, n]``, the gradient w.r.t. the split coefficients (``split_coef`` of the
    forward: ``dL/d lm - g_row split_th``, ``lm`` the coefficient on ``m_t``), at every entry.
    Parallel over samples without races. Loop order sample, time, spec, neuron (the
    additions into a table's gradient ``[t, b, j]`` run over the specs in order).
    """
    steps, batch, rows, n = lam_cur.shape
    for b in prange(batch):
        g_carry = np.zeros((rows, n))  # float64, as the scalar carry of a row-by-row loop
        zero = np.zeros(1, dtype=lam_cur.dtype)[0]  # lam_cur's 0 after the last step (keeps the dtype)
        for t in range(steps):
            for s in range(rows):
                for j in range(n):
                    st = state[t, b, j]
                    bv = bias_vec[j]
                    g_lm = grad_lam_cur[t, b, s, j] + g_carry[s, j] + g_row[b, s] * bv  # dL / d lm (coef. on m_t)
                    if split:
                        g_split[t, b, s, j] = g_lm - g_row[b, s] * split_th
                    if st == 0:
                        grad_lam_s[t, b, s, j] = 0.0
                        g_carry[s, j] = alpha * g_lm
                    elif st == 1:
                        ml = mem_lower[t, b, j]
                        g = g_row[b, s]
                        g_ls, g_lz = REVERSE_ON(g_lm, g, ml, th)
                        grad_lam_s[t, b, s, j] = g_ls
                        g_carry[s, j] = alpha * g_lz
                    else:
                        ml = mem_lower[t, b, j]
                        a_lo = slope_lo[t, b, j]
                        c_lo = icpt_lo[t, b, j]
                        a_up = slope_up[t, b, j]
                        c_up = icpt_up[t, b, j]
                        q_lo = reset_far_lo[t, b, j] if PARAMS else 0.0
                        g = g_row[b, s]
                        # the forward's record, read (and written) at unstable neurons only
                        ls = fire_coef[t, b, s, j]
                        lower_reset = reset_side[t, b, s, j]
                        lower_fire = fire_side[t, b, s, j]
                        lz = alpha * (lam_cur[t + 1, b, s, j] if t + 1 < steps else zero)
                        if PARAMS:
                            if lower_fire:
                                a = frac_lo[t, b, s, j] * a_lo
                                g_ls = g_lm * a + g * (-a * th)
                                g_frac_lo[t, b, s, j] = a_lo * ls * (g_lm - th * g)
                            else:
                                a = frac_up[t, b, s, j] * a_up
                                g_ls = g_lm * a + g * (1.0 - a * th_lo)
                                g_frac_up[t, b, s, j] = a_up * ls * (g_lm - th_lo * g)
                            beta = beta_lo[t, b, s, j] if lower_reset else beta_up[t, b, s, j]
                            g_lz, g_beta = REVERSE_FAMILY(g, g_lm, g_ls, lz, lower_reset, ml, th, q_lo, th_lo,
                                                          beta)
                            if lower_reset:
                                g_beta_lo[t, b, s, j] = g_beta
                            else:
                                g_beta_up[t, b, s, j] = g_beta
                        else:
                            if lower_fire:
                                g_ls = g_lm * a_lo + g * c_lo
                                g_slope_lo[t, b, j] += g_lm * ls
                                g_icpt_lo[t, b, j] += g * ls
                            else:
                                g_ls = g_lm * a_up + g * c_up
                                g_slope_up[t, b, j] += g_lm * ls
                                g_icpt_up[t, b, j] += g * ls
                            g_lz, g_r = REVERSE_UNSTABLE(g, g_ls, lz, lower_reset, ml, th)
                            if lower_reset:
                                g_mem_lower[t, b, j] += g_r
                        grad_lam_s[t, b, s, j] = g_ls
                        g_carry[s, j] = alpha * g_lz


# --- compiled variants ---------------------------------------------------------------------------------
# Each kernel is one Python function; a variant is that function compiled with its flags as
# constants (Numba folds the branches a caller does not need) and its own cache entry.

_VARIANTS: dict = {}


# The rules of a neuron model under the names the kernels call (``refsnn.neurons.compiled_rules``).
_RULE_NAMES = {"RESET_LOWER": "reset_lower", "RESET_UPPER": "reset_upper", "BACKSUB_ON": "backsub_stable_on",
               "BACKSUB_UNSTABLE": "backsub_unstable", "BACKSUB_MEMBRANE": "backsub_membrane",
               "BACKSUB_FAMILY": "backsub_unstable_family", "REVERSE_ON": "reverse_stable_on",
               "REVERSE_UNSTABLE": "reverse_unstable", "REVERSE_FAMILY": "reverse_unstable_family"}


class NeuronModelError(ValueError):
    """A bound computation this neuron model does not provide (e.g. optimized slopes for ``reset="subtract"``)."""


def _variant(func, track_rounding: bool, record: bool, frozen: bool, parallel: bool = False, params: bool = False,
             neuron: str = "zero"):
    key = (func.__name__, track_rounding, record, frozen, params, parallel, neuron)
    if key not in _VARIANTS:
        rules = compiled_rules(neuron)
        model = neuron_model(neuron)
        if (params or func is _backsub_reverse) and not model.HAS_REVERSE:
            raise NeuronModelError(f"reset={neuron!r}: the neuron model has no optimized-slope family and no reverse "
                                   "pass (method='alpha' and robust training need the paper's reset='zero')")
        flags = {"TRACK_ROUNDING": track_rounding, "RECORD": record, "FROZEN": frozen, "PARAMS": params}
        flags.update({name: rules[rule] for name, rule in _RULE_NAMES.items() if rule in rules})
        tag = "{}{}{}{}{}_{}".format(*(int(v) for v in key[1:6]), rules["tag"])
        _VARIANTS[key] = specialize(func, flags, tag, parallel=parallel)
    return _VARIANTS[key]


def interval_kernel(track_rounding: bool, record: bool, frozen: bool, neuron: str = "zero", parallel: bool = False):
    """``interval_step`` compiled for these flags and the neuron model ``neuron`` (see the module
    docstring), parallel over samples or serial (the same bits: pick parallel for big stages,
    ``PARALLEL_MIN_WORK``)."""
    return _variant(_interval_step, track_rounding, record, frozen, parallel, neuron=neuron)


def backsub_kernel(track_rounding: bool, record: bool, frozen: bool, parallel: bool = False, params: bool = False,
                   neuron: str = "zero"):
    """``backsub_step`` compiled for these flags and neuron model, parallel over samples or serial (a
    parallel launch costs milliseconds when the cores are busy: ``backsub_stage`` picks it for big stages)."""
    return _variant(_backsub_step, track_rounding, record, frozen, parallel, params, neuron)


def backsub_reverse_kernel(parallel: bool = False, params: bool = False, neuron: str = "zero"):
    """``backsub_reverse`` compiled, parallel over samples or serial, for the paper's relaxation or ``PARAMS``."""
    return _variant(_backsub_reverse, False, True, True, parallel, params, neuron)


# --- calling the back-substitution step: one place picks the variant and fills unused arguments -----

# Parallel over samples for big stages, serial for small ones (a parallel launch costs milliseconds
# when the cores are busy). Both give the same bits: every sample is one independent loop.
PARALLEL_MIN_WORK = 1 << 20
_NO_ROWS = np.zeros((1, 1, 1, 1))
_NO_TABLE = np.zeros((1, 1, 1))


@dataclass
class StepTables:
    """What ``backsub_step`` reads for one stage, flat ``[T', B, n]`` (see ``_backsub_step``).

    ``rounding``: ``(mem_mag, carry_mag, fwd_scale, g)`` under the sound policy (None: no
    rounding bound). ``params`` (optimized slopes): ``slope_lo``/``slope_up`` are then the largest
    sound slopes, and ``reset_far_lo`` (``m_u``), ``th_lo``, ``th_hi`` define the line families.
    ``neuron``: the neuron model (``refsnn.neurons``) whose reset rules the kernel runs; ``reset_lo``,
    ``reset_hi`` are its ``reset_relaxation`` tables.
    """

    state: np.ndarray
    slope_lo: np.ndarray
    icpt_lo: np.ndarray
    slope_up: np.ndarray
    icpt_up: np.ndarray
    reset_lo: np.ndarray
    reset_hi: np.ndarray
    alpha: float
    bias: np.ndarray
    rounding: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, float]] = None
    reset_far_lo: Optional[np.ndarray] = None
    th_lo: float = 0.0
    th_hi: float = 0.0
    neuron: str = field(default="zero", kw_only=True)


@dataclass
class SplitTerms:
    """Lagrangian terms of spike splits on one stage (beta-CROWN's split constraints): the bound
    becomes one of the spec plus ``sum coef[t, b, r, j] (m_t[j] - threshold)`` (``coef [T', B, R, n]``,
    in the coefficients' dtype; zero where there is no term). A split whose members all have
    ``m >= th`` takes ``coef = -beta``, one whose members have ``m <= th`` ``coef = +beta`` (``beta >= 0``):
    the added term is ``<= 0`` on those members, so the bound stays a lower bound of the spec there."""

    coef: np.ndarray
    threshold: float


@dataclass
class StepOutput:
    """``lam_cur [T', B, R, n]``, ``bias [B, R]`` (in ``lam_s``'s dtype), ``err [B, R]``; recorded:
    ``fire_coef``, ``reset_side``, ``fire_side [T', B, R, n]``, ``step_bias``, ``step_err [T', B, R]``."""

    lam_cur: np.ndarray
    bias: np.ndarray
    err: np.ndarray
    fire_coef: Optional[np.ndarray] = None
    reset_side: Optional[np.ndarray] = None
    fire_side: Optional[np.ndarray] = None
    step_bias: Optional[np.ndarray] = None
    step_err: Optional[np.ndarray] = None


def backsub_stage(lam_s: np.ndarray, tables: StepTables, record: bool = False,
                  sides: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                  params: Optional[Sequence[np.ndarray]] = None, query: Optional[np.ndarray] = None,
                  parallel_min_work: int = PARALLEL_MIN_WORK, split: Optional[SplitTerms] = None) -> StepOutput:
    """Runs ``backsub_step`` on one stage: ``lam_s [T', B, R, n]`` -> ``StepOutput``.

    ``record``: keep what the reverse pass needs (and, with rounding, each step's share);
    ``sides``: ``(reset_side, fire_side)`` to hold fixed (the ``frozen`` variant);
    ``params``: ``(frac_lo, frac_up, beta_lo, beta_up)`` ``[T', B, R, n]`` (optimized slopes);
    ``query``: ``carry_in [B, R, n]``, the coefficient on ``m_{T'-1}`` of a membrane query;
    ``split``: the Lagrangian terms of spike splits on this stage (``SplitTerms``).
    """
    steps, batch, rows, n = lam_s.shape
    track = tables.rounding is not None
    g = tables.rounding[3] if track else 0.0
    if split is not None:
        if split.coef.shape != lam_s.shape:
            raise ValueError(f"split coefficients have shape {split.coef.shape}, the stage's rows {lam_s.shape}")
        if not (np.isfinite(split.coef).all() and math.isfinite(split.threshold)):
            raise ValueError("split coefficients and threshold must be finite")
        if track and np.any((split.coef != 0.0) & (tables.state == UNSTABLE)[:, :, None, :]):
            # g counts <= 4 constant terms per neuron and step; a term on an unstable neuron makes 5:
            # gamma(2 N) = 2 gamma(N) / (1 - gamma(N)), rounded up
            g = 2.0 * g / (1.0 - g) * (1.0 + 1e-12)
    frozen = sides is not None
    record = record or frozen
    kernel = backsub_kernel(track_rounding=track, record=record, frozen=frozen,
                            parallel=lam_s.size >= parallel_min_work, params=params is not None, neuron=tables.neuron)
    mem_mag, carry_mag, fwd_scale = tables.rounding[:3] if track else (_NO_TABLE, _NO_TABLE, _NO_TABLE)
    frac_lo, frac_up, beta_lo, beta_up = params if params is not None else (_NO_ROWS,) * 4
    far = tables.reset_far_lo if params is not None else _NO_TABLE
    carry_in = query if query is not None else _NO_TABLE
    split_coef = np.ascontiguousarray(split.coef, dtype=lam_s.dtype) if split is not None else _NO_ROWS.astype(
        lam_s.dtype)
    split_th = float(split.threshold) if split is not None else 0.0
    shape = (steps, batch, rows, n)
    out = StepOutput(np.empty(shape, lam_s.dtype), np.empty((batch, rows), lam_s.dtype), np.zeros((batch, rows)))
    if record:
        out.fire_coef = np.zeros(shape, lam_s.dtype)  # written at unstable neurons only
        out.reset_side, out.fire_side = sides if frozen else (np.zeros(shape, np.bool_), np.zeros(shape, np.bool_))
        if track:
            out.step_bias, out.step_err = np.empty((steps, batch, rows)), np.empty((steps, batch, rows))
    unused_rows = np.empty((1, 1, 1, 1), dtype=lam_s.dtype)
    unused_side = np.empty((1, 1, 1, 1), dtype=np.bool_)
    unused_steps = np.empty((1, 1, 1))
    kernel(lam_s, tables.state, tables.slope_lo, tables.icpt_lo, tables.slope_up, tables.icpt_up, tables.reset_lo,
           tables.reset_hi, tables.alpha, mem_mag, carry_mag, fwd_scale, tables.bias, g, frac_lo, frac_up, beta_lo,
           beta_up, far, float(tables.th_lo), float(tables.th_hi), carry_in, query is not None, split_coef, split_th,
           split is not None, out.lam_cur,
           out.fire_coef if record else unused_rows, out.reset_side if record else unused_side,
           out.fire_side if record else unused_side, out.step_bias if out.step_bias is not None else unused_steps,
           out.step_err if out.step_err is not None else unused_steps, out.bias, out.err)
    return out


def reverse_reads(state: np.ndarray, neuron: str = "zero") -> np.ndarray:
    """The entries ``[T', B, n]`` of ``grad_lam_cur`` that ``backsub_reverse`` reads (for every spec row).

    ``dL/d lam_cur[t]`` enters through the membrane coefficient of step ``t`` (``g_lm``): an unstable
    neuron relaxes it (eqs. 8, 10), a silent one carries it to step ``t + 1`` (``z = m``), a firing
    one drops it (the LIF's ``z = 0``: ``reverse_stable_on`` ignores ``g_lm`` and carries 0). So
    an entry is read iff the neuron is unstable at ``t``, or silent at ``t`` and read at ``t + 1``;
    ``grad_lam_cur`` may hold anything elsewhere. ``state [T', B, n]`` as ``StepTables.state``.
    """
    if neuron != "zero":
        raise NeuronModelError(f"reset={neuron!r}: reverse_reads follows the LIF's reverse (reset='zero') only")
    reads = np.empty(state.shape, dtype=np.bool_)
    later = np.zeros(state.shape[1:], dtype=np.bool_)
    for t in range(state.shape[0] - 1, -1, -1):
        later = (state[t] == UNSTABLE) | ((state[t] == STABLE_OFF) & later)
        reads[t] = later
    return reads


def backsub_stage_reverse(grad_lam_cur: np.ndarray, forward: StepOutput, tables: StepTables, mem_lower: np.ndarray,
                          g_row: np.ndarray, th: float, params: Optional[Sequence[np.ndarray]] = None,
                          parallel_min_work: int = PARALLEL_MIN_WORK, split: Optional[SplitTerms] = None
                          ) -> Tuple[np.ndarray, Tuple[np.ndarray, ...]]:
    """Runs ``backsub_reverse`` on one stage recorded by ``backsub_stage(..., record=True)`` without rounding.

    Returns ``grad_lam_s [T', B, R, n]`` and the parameter gradients: without ``params`` those of
    the tables ``(slope_lo, slope_up, icpt_lo, icpt_up, mem_lower)`` ``[T', B, n]``; with
    ``params`` those of ``(frac_lo, frac_up, beta_lo, beta_up)`` ``[T', B, R, n]``; with ``split``
    (the forward's ``SplitTerms``) one more, last: the gradient w.r.t. ``split.coef`` ``[T', B, R, n]``.
    """
    steps, batch, rows, n = forward.lam_cur.shape
    dtype = forward.lam_cur.dtype
    kernel = backsub_reverse_kernel(parallel=grad_lam_cur.size >= parallel_min_work, params=params is not None,
                                    neuron=tables.neuron)
    grad_lam_s = np.empty_like(grad_lam_cur)
    if params is None:
        grads = tuple(np.zeros((steps, batch, n), dtype) for _ in range(5))
        table_grads, row_grads = grads, (_NO_ROWS,) * 4
        frac_lo, frac_up, beta_lo, beta_up = (_NO_ROWS,) * 4
        far = _NO_TABLE
    else:
        grads = tuple(np.zeros((steps, batch, rows, n)) for _ in range(4))
        unused = np.zeros((1, 1, 1), dtype)
        table_grads, row_grads = (unused,) * 5, grads
        frac_lo, frac_up, beta_lo, beta_up = params
        far = tables.reset_far_lo
    g_split = np.zeros((steps, batch, rows, n)) if split is not None else _NO_ROWS
    kernel(grad_lam_cur, forward.lam_cur, forward.fire_coef, forward.reset_side, forward.fire_side, tables.state,
           mem_lower, tables.slope_lo, tables.icpt_lo, tables.slope_up, tables.icpt_up, tables.bias, g_row, th,
           tables.alpha, frac_lo, frac_up, beta_lo, beta_up, far, float(tables.th_lo),
           float(split.threshold) if split is not None else 0.0, split is not None, grad_lam_s, *table_grads,
           *row_grads, g_split)
    return grad_lam_s, grads + ((g_split,) if split is not None else ())
