"""Robust training with S-IBP / S-CROWN margin lower bounds, gradients written by hand.

The loss of one batch (Zhang et al. 2020, CROWN-IBP, adapted to SNNs as the paper describes)::

    lb      = beta * LB_crown(C f) + (1 - beta) * LB_ibp(C f)       C rows: e_y - e_j, all j
    logits  = -temperature * lb           (0 for the true class, whose row of C is zero)
    loss    = kappa * CE(natural) + (1 - kappa) * CE(logits, y)

The bounds here are the *training* bounds: the same rules as ``refsnn.ibp`` / ``refsnn.crown``
(eqs. 7-11, 15-18, shared through ``refsnn.relaxations``) in the network's dtype, without the
outward rounding margins (a loss needs no certificate; every certified number refsnn reports
is recomputed with ``refsnn.bounds.compute_bounds``). A test checks that they equal the sound
bounds up to those margins.

The reverse pass (``BoundGraph.backward``) runs the forward computation backwards, one rule at
a time, in this order: concretization at the input box -> the S-CROWN back-substitution from
the first stage to the last (eqs. 17-18 reversed: coefficients, relaxation slopes and
intercepts, stage biases and the weights inside ``lam W``) -> slopes and intercepts to the
membrane bounds (eq. 8 differentiated, case held fixed) -> S-IBP backwards from the last stage
to the first (eqs. 7, 9, 11). Every discrete choice is held fixed (stability cases, chord case,
the sign choices of eqs. 17-18); the step functions of eq. 7 get the network's surrogate
derivative, as in BPTT. With ``smooth=True`` eq. 7 fires through ``surrogate.smooth``, which
makes the manual gradient the exact gradient of a smooth function (finite-difference test).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from numba import njit, prange

from .firing import fires_at_threshold, fires_compiled
from .input_sets import DEFAULT_ROBUST_T
from .layers import Conv2d, Linear
from .losses import softmax_cross_entropy
from .relaxations import STABLE_OFF, STABLE_ON, UNSTABLE, Fire, RoundingRule
from .spec import margin_spec, other_classes, spec_interval


SPARSE_INPUT_FRACTION = 16

# --- the back-substitution time loop of one stage (eqs. 8, 10, 17-18) and its reverse, fused -------

def _backsub_forward_py(lam_s, state, mem_lower, slope_lo, icpt_lo, slope_up, icpt_up, bias_vec, th, alpha,
                     frozen, reset_side, fire_side, lam_cur, fire_coef, bias_out):  # pragma: no cover
    """Per (sample, spec) row and neuron, ``t = T'-1 .. 0``: reset (eq. 10), then fire (eq. 8).

    ``lam_s [T', B, S, n]`` in, ``lam_cur`` (coefficient on the current) and ``fire_coef`` out;
    ``bias_out [B, S]`` collects every constant. ``frozen``: read the sign choices instead of
    recording them. Loop order sample, time, neuron, spec over ``[neuron, spec]`` buffers, so a
    neuron's state branch and tables are read once for all specs.
    """
    steps, batch, rows, n = lam_s.shape
    for b in prange(batch):
        carry = np.zeros((n, rows))  # float64, as the scalar carry of a row-by-row loop
        lam_in = np.empty((n, rows), dtype=lam_s.dtype)
        lam_out = np.empty((n, rows), dtype=lam_s.dtype)
        coef_out = np.empty((n, rows), dtype=lam_s.dtype)
        reset_buf = np.zeros((n, rows), dtype=np.bool_)
        fire_buf = np.zeros((n, rows), dtype=np.bool_)
        acc = np.zeros(rows)
        for t in range(steps - 1, -1, -1):
            for s in range(rows):
                for j in range(n):
                    lam_in[j, s] = lam_s[t, b, s, j]
            if frozen:
                for s in range(rows):
                    for j in range(n):
                        reset_buf[j, s] = reset_side[t, b, s, j]
                        fire_buf[j, s] = fire_side[t, b, s, j]
            for j in range(n):
                st = state[t, b, j]
                bv = bias_vec[j]
                if st != 2 and not frozen:  # choices are only recorded for unstable neurons
                    for s in range(rows):
                        reset_buf[j, s] = False
                        fire_buf[j, s] = False
                if st == 0:      # stable silent: s = 0, z = m
                    for s in range(rows):
                        lm = carry[j, s]
                        coef_out[j, s] = lam_in[j, s]
                        lam_out[j, s] = lm
                        acc[s] += lm * bv
                        carry[j, s] = alpha * lm
                elif st == 1:    # stable firing: s = 1, z = 0
                    for s in range(rows):
                        ls = lam_in[j, s]
                        acc[s] += ls
                        coef_out[j, s] = ls
                        lam_out[j, s] = 0.0
                        acc[s] += 0.0 * bv
                        carry[j, s] = 0.0
                else:            # unstable: (1-s) m_l <= z <= (1-s) th, then the chord lines
                    ml = mem_lower[t, b, j]
                    a_lo = slope_lo[t, b, j]
                    c_lo = icpt_lo[t, b, j]
                    a_up = slope_up[t, b, j]
                    c_up = icpt_up[t, b, j]
                    for s in range(rows):
                        lz = carry[j, s]
                        if not frozen:
                            reset_buf[j, s] = lz >= 0.0
                        r = ml if reset_buf[j, s] else th
                        rz = lz * r
                        acc[s] += rz
                        ls = lam_in[j, s] - rz
                        if not frozen:
                            fire_buf[j, s] = ls >= 0.0
                        if fire_buf[j, s]:
                            a = a_lo
                            c = c_lo
                        else:
                            a = a_up
                            c = c_up
                        lm = ls * a
                        acc[s] += ls * c
                        coef_out[j, s] = ls
                        lam_out[j, s] = lm
                        acc[s] += lm * bv
                        carry[j, s] = alpha * lm
            for s in range(rows):
                for j in range(n):
                    lam_cur[t, b, s, j] = lam_out[j, s]
                    fire_coef[t, b, s, j] = coef_out[j, s]
                    if not frozen:
                        reset_side[t, b, s, j] = reset_buf[j, s]
                        fire_side[t, b, s, j] = fire_buf[j, s]
        for s in range(rows):
            bias_out[b, s] = acc[s]


def _backsub_backward_py(grad_lam_cur, lam_cur, fire_coef, reset_side, fire_side, state, mem_lower, slope_lo,
                      icpt_lo, slope_up, icpt_up, bias_vec, g_row, th, alpha, grad_lam_s, g_slope_lo,
                      g_slope_up, g_icpt_lo, g_icpt_up, g_mem_lower):  # pragma: no cover
    """Reverse of ``_backsub_forward`` (``t = 0 .. T'-1``), every choice held fixed.

    ``g_row [B, S]`` is dL/d(bound): every constant of the forward enters with that weight.
    Parallel over samples; the per-(t, b, neuron) gradients sum over specs (in spec order) without
    races. Loop order sample, time, neuron, spec over ``[neuron, spec]`` buffers.
    """
    steps, batch, rows, n = lam_cur.shape
    for b in prange(batch):
        g_carry = np.zeros((n, rows))  # float64, as the scalar carry of a row-by-row loop
        grad_in = np.empty((n, rows), dtype=lam_cur.dtype)
        coef = np.empty((n, rows), dtype=lam_cur.dtype)
        lam_next = np.zeros((n, rows), dtype=lam_cur.dtype)
        reset_buf = np.empty((n, rows), dtype=np.bool_)
        fire_buf = np.empty((n, rows), dtype=np.bool_)
        grad_out = np.empty((n, rows), dtype=lam_cur.dtype)
        for t in range(steps):
            for s in range(rows):
                for j in range(n):
                    grad_in[j, s] = grad_lam_cur[t, b, s, j]
                    coef[j, s] = fire_coef[t, b, s, j]
                    reset_buf[j, s] = reset_side[t, b, s, j]
                    fire_buf[j, s] = fire_side[t, b, s, j]
                    lam_next[j, s] = lam_cur[t + 1, b, s, j] if t + 1 < steps else 0.0
            for j in range(n):
                st = state[t, b, j]
                bv = bias_vec[j]
                if st == 0:
                    for s in range(rows):
                        g_lm = grad_in[j, s] + g_carry[j, s] + g_row[b, s] * bv
                        grad_out[j, s] = 0.0
                        g_carry[j, s] = alpha * g_lm
                elif st == 1:
                    for s in range(rows):
                        grad_out[j, s] = g_row[b, s]
                        g_carry[j, s] = alpha * 0.0
                else:
                    ml = mem_lower[t, b, j]
                    a_lo = slope_lo[t, b, j]
                    c_lo = icpt_lo[t, b, j]
                    a_up = slope_up[t, b, j]
                    c_up = icpt_up[t, b, j]
                    for s in range(rows):
                        g = g_row[b, s]
                        g_lm = grad_in[j, s] + g_carry[j, s] + g * bv
                        ls = coef[j, s]
                        if fire_buf[j, s]:
                            g_ls = g_lm * a_lo + g * c_lo
                            g_slope_lo[t, b, j] += g_lm * ls
                            g_icpt_lo[t, b, j] += g * ls
                        else:
                            g_ls = g_lm * a_up + g * c_up
                            g_slope_up[t, b, j] += g_lm * ls
                            g_icpt_up[t, b, j] += g * ls
                        g_rz = g - g_ls
                        if reset_buf[j, s]:
                            lz = alpha * lam_next[j, s]
                            g_mem_lower[t, b, j] += g_rz * lz
                            g_lz = g_rz * ml
                        else:
                            g_lz = g_rz * th
                        grad_out[j, s] = g_ls
                        g_carry[j, s] = alpha * g_lz
            for s in range(rows):
                for j in range(n):
                    grad_lam_s[t, b, s, j] = grad_out[j, s]


@njit(cache=True)
def _ibp_time_kernel(cur_lower, cur_upper, alpha, alpha_dtype, th, th_dtype, zero, fire_ge, frozen, mem_lower,
                     mem_upper, state, negative):  # pragma: no cover - compiled
    """The S-IBP recurrence of one stage (eqs. 7, 9) for the training bounds, ``[T', B, n]`` arrays.

    The same values as the NumPy loop it replaces, bit for bit: the lower carry in the network
    dtype (``alpha_dtype``: alpha cast to it), the upper carry in float64 (``alpha`` and its reset
    value ``th`` are Python floats), the threshold compared in the network dtype (``th_dtype``),
    ``zero`` the network dtype's 0. ``frozen``: read ``state`` and ``negative`` instead of
    recording them.
    """
    steps, batch, n = cur_lower.shape
    carry_lower = np.zeros(n, dtype=cur_lower.dtype)
    carry_upper = np.zeros(n)
    for b in range(batch):
        carry_lower[:] = 0
        carry_upper[:] = 0.0
        for t in range(steps):
            for j in range(n):
                ml = cur_lower[t, b, j] + carry_lower[j]
                mu = cur_upper[t, b, j] + carry_upper[j]
                mem_lower[t, b, j] = ml
                mem_upper[t, b, j] = mu
                ml = mem_lower[t, b, j]
                mu = mem_upper[t, b, j]
                if not frozen:
                    on = fires_compiled(ml, th_dtype, fire_ge)
                    off = not fires_compiled(mu, th_dtype, fire_ge)
                    st = 2
                    if on:
                        st = 1
                    if off:
                        st = 0
                    state[t, b, j] = st
                    negative[t, b, j] = ml < 0.0
                st = state[t, b, j]
                if st == 0:
                    rl = ml
                    ru = np.float64(mu)
                elif st == 2:
                    rl = ml if negative[t, b, j] else zero
                    ru = th
                else:
                    rl = zero
                    ru = 0.0
                carry_lower[j] = alpha_dtype * rl
                carry_upper[j] = alpha * ru


# Parallel kernels for big stages; serial ones for small work (a parallel launch costs
# milliseconds when the cores are busy, which dominates small batches and the gradient tests).
_PARALLEL_MIN_WORK = 1 << 18
_backsub_forward_parallel = njit(cache=True, parallel=True)(_backsub_forward_py)
_backsub_forward_serial = njit(cache=True)(_backsub_forward_py)
_backsub_backward_parallel = njit(cache=True, parallel=True)(_backsub_backward_py)
_backsub_backward_serial = njit(cache=True)(_backsub_backward_py)


def _backsub_forward(lam_s, *args):
    kernel = _backsub_forward_parallel if lam_s.size >= _PARALLEL_MIN_WORK else _backsub_forward_serial
    kernel(lam_s, *args)


def _backsub_backward(grad_lam_cur, *args):
    kernel = _backsub_backward_parallel if grad_lam_cur.size >= _PARALLEL_MIN_WORK else _backsub_backward_serial
    kernel(grad_lam_cur, *args)


# --- the stage's spatial ops in the three variants the bounds need ---------------------------------

class _StageMaps:
    """The linear chain of one spiking stage as bias-free copies with ``W`` and with ``|W|``."""

    def __init__(self, stage, dtype):
        self.ops = stage.ops
        self.signed, self.absolute = [], []
        for op in stage.ops:
            if isinstance(op, (Linear, Conv2d)):
                zeros = np.zeros_like(op.bias, dtype=dtype)
                extra = {"stride": op.stride, "padding": op.padding} if isinstance(op, Conv2d) else {}
                signed = type(op)(op.weight.astype(dtype), zeros, **extra)
                absolute = type(op)(np.abs(op.weight).astype(dtype), zeros, **extra)
                signed.input_shape = absolute.input_shape = op.input_shape
                self.signed.append(signed)
                self.absolute.append(absolute)
            else:
                self.signed.append(op)
                self.absolute.append(op)
        self.affine = stage.ops[-1]
        self.weight_sign = np.sign(self.affine.weight).astype(dtype)
        self.neuron_shape = tuple(stage.neuron_shape)
        self.input_shape = tuple(stage.input_shape)
        self.n_neurons = int(np.prod(self.neuron_shape))
        bias = self.affine.bias.astype(dtype)
        self.bias = np.broadcast_to(bias.reshape((-1,) + (1,) * (len(self.neuron_shape) - 1)),
                                    self.neuron_shape).reshape(-1)

    @staticmethod
    def chain(ops, x):
        """Applies ``ops`` in order; returns the output and the input of every op."""
        inputs = []
        for op in ops:
            inputs.append(x)
            x = op.forward(x)
        return x, inputs

    def reduce_bias_grad(self, grad_flat: np.ndarray) -> np.ndarray:
        """Gradient w.r.t. the per-channel bias from a per-neuron gradient ``[n]``."""
        return grad_flat.reshape(self.affine.bias.shape[0], -1).sum(axis=1)

    @staticmethod
    def weight_grad(op, x, grad_out) -> np.ndarray:
        """``dL/dW`` of an affine op with input ``x`` and ``dL/d(output)`` (no input gradient needed)."""
        if isinstance(op, Linear):
            return grad_out.T @ x
        return op.backward(x, grad_out)[1]["weight"]

    def transpose(self, coef: np.ndarray) -> np.ndarray:
        """Adjoint of the chain: ``[N, n] -> [N, *input_shape]`` (back-substitution, eq. 17)."""
        coef = coef.reshape((coef.shape[0],) + self.neuron_shape)
        for op in reversed(self.signed):
            coef = op.transpose(coef)
        return coef


@dataclass
class Choices:
    """Every discrete choice of one bound computation (held fixed by the finite-difference test)."""

    state: List[np.ndarray] = field(default_factory=list)          # eq. 7 stability, [T', B, n]
    negative_lower: List[np.ndarray] = field(default_factory=list)  # eq. 9: min(0, m_l) picks m_l
    # per stage index k:
    upper_chord: Dict[int, np.ndarray] = field(default_factory=dict)    # eq. 8 case
    lower_chord: Dict[int, np.ndarray] = field(default_factory=dict)
    reset_lower_side: Dict[int, np.ndarray] = field(default_factory=dict)  # eq. 17: lam_z >= 0, [T', B, S, n]
    fire_lower_side: Dict[int, np.ndarray] = field(default_factory=dict)   # eq. 17: lam_s' >= 0
    input_sign: Optional[np.ndarray] = None                          # sign of lam_x at the input


class BoundGraph:
    """S-IBP and S-CROWN lower bounds of ``C f`` with a hand-written reverse pass.

    ``x_lower/x_upper [T', B, *in]`` 0/1 box, ``C [B, S, n_out]``. Call ``forward`` once, then
    ``backward(grad_ibp [B, S], grad_crown [B, S])`` for the parameter gradients (``net.params()``
    order). ``choices`` (from a previous graph) freezes every discrete choice.
    """

    def __init__(self, net, x_lower, x_upper, C, smooth: bool = False, choices: Optional[Choices] = None,
                 with_crown: bool = True):
        self.net = net
        self.dtype = net.dtype
        self.threshold = float(net.threshold)
        self.decay = float(net.decay)
        self.rule = RoundingRule(u=0.0, th_lo=self.threshold, th_hi=self.threshold, net_dtype=self.dtype.name)
        self.smooth = smooth
        self.frozen = choices is not None
        self.choices = choices if choices is not None else Choices()
        self.maps = [_StageMaps(stage, self.dtype) for stage in net.stages]
        self.x_lower = np.asarray(x_lower, dtype=self.dtype)
        self.x_upper = np.asarray(x_upper, dtype=self.dtype)
        self.steps, self.batch = self.x_lower.shape[:2]
        self.C = np.asarray(C, dtype=self.dtype)
        self.with_crown = with_crown
        first = net.stages[0].ops
        # A first stage [Flatten*, Linear] lets the concretization skip the dense lam W product;
        # it pays off when few bits are free (measured crossover on the FC preset, one core:
        # gathered columns beat one dense GEMM below about 1/16 of the input free per step).
        free = (self.x_upper != self.x_lower).reshape(self.steps * self.batch, -1)
        few_free = free.sum(axis=1).max(initial=0) * SPARSE_INPUT_FRACTION <= free.shape[1]
        self.sparse_input = (isinstance(first[-1], Linear) and all(op.kind == "flatten" for op in first[:-1])
                             and few_free)
        self._ibp_forward()
        self.ibp_lower = self._ibp_spec_lower()
        self.crown_lower = self._crown_forward() if with_crown else None

    # --- S-IBP (Alg. 1) ----------------------------------------------------------------------
    def _ibp_forward(self):
        steps, batch, dtype = self.steps, self.batch, self.dtype
        alpha, th = self.decay, self.threshold
        spike_lower = self.x_lower.reshape((steps * batch,) + self.x_lower.shape[2:])
        spike_upper = self.x_upper.reshape(spike_lower.shape)
        self.records = []
        for k, maps in enumerate(self.maps):
            center = (spike_lower + spike_upper) * 0.5
            radius = (spike_upper - spike_lower) * 0.5
            center_out, center_inputs = maps.chain(maps.signed, center)
            if k == 0:
                self.first_linear_mid = center_out.reshape(steps, batch, -1)  # W mid (no bias)
            radius_out, radius_inputs = maps.chain(maps.absolute, radius)
            center_out = center_out.reshape(steps, batch, -1) + maps.bias
            radius_out = radius_out.reshape(steps, batch, -1)
            cur_lower, cur_upper = center_out - radius_out, center_out + radius_out
            n = maps.n_neurons
            mem_lower = np.empty((steps, batch, n), dtype)
            mem_upper = np.empty_like(mem_lower)
            state = np.empty(mem_lower.shape, np.int8) if not self.frozen else self.choices.state[k]
            negative = np.empty(mem_lower.shape, bool) if not self.frozen else self.choices.negative_lower[k]
            # eqs. 7, 9 over time with the case held fixed when frozen (one compiled loop)
            _ibp_time_kernel(np.ascontiguousarray(cur_lower, dtype), np.ascontiguousarray(cur_upper, dtype),
                             float(alpha), dtype.type(alpha), float(th), dtype.type(th), dtype.type(0),
                             fires_at_threshold(self.net.firing), self.frozen, mem_lower, mem_upper, state, negative)
            if self.smooth:
                spike_lo = self.net.surrogate.smooth(mem_lower - th).astype(dtype)
                spike_hi = self.net.surrogate.smooth(mem_upper - th).astype(dtype)
            else:
                spike_lo = (state == STABLE_ON).astype(dtype)
                spike_hi = (state != STABLE_OFF).astype(dtype)
            if not self.frozen:
                self.choices.state.append(state)
                self.choices.negative_lower.append(negative)
            self.records.append(dict(center_inputs=center_inputs, radius_inputs=radius_inputs,
                                     mem_lower=mem_lower, mem_upper=mem_upper, state=state, negative=negative,
                                     spike_lower=spike_lo, spike_upper=spike_hi))
            spike_lower = spike_lo.reshape((steps * batch,) + maps.neuron_shape)
            spike_upper = spike_hi.reshape(spike_lower.shape)
        self.rate_lower = self.records[-1]["spike_lower"].mean(axis=0)
        self.rate_upper = self.records[-1]["spike_upper"].mean(axis=0)

    def _ibp_spec_lower(self) -> np.ndarray:
        """Interval bound of ``C f`` from the rate bounds: ``C+ f_l + C- f_u`` ``[B, S]``."""
        return spec_interval(self.C, self.rate_lower, self.rate_upper)[0]

    # --- S-CROWN (Alg. 2) --------------------------------------------------------------------
    def _relaxation(self, k):
        record = self.records[k]
        mem_lower, mem_upper, state = record["mem_lower"], record["mem_upper"], record["state"]
        th = self.threshold
        unstable = state == UNSTABLE
        if self.frozen:
            upper_chord, lower_chord = self.choices.upper_chord[k], self.choices.lower_chord[k]
        else:
            upper_case = unstable & ((mem_upper - th) < (th - mem_lower))
            upper_chord = upper_case & (th - mem_lower > 0.0)
            lower_chord = unstable & ~upper_case & (mem_upper - th > 0.0)
            self.choices.upper_chord[k] = upper_chord
            self.choices.lower_chord[k] = lower_chord
        on = (state == STABLE_ON).astype(self.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_up = np.where(upper_chord, 1.0 / np.where(upper_chord, th - mem_lower, 1.0), 0.0)
            inv_lo = np.where(lower_chord, 1.0 / np.where(lower_chord, mem_upper - th, 1.0), 0.0)
        slope_upper = inv_up
        icpt_upper = np.where(upper_chord, -mem_lower * inv_up, on + unstable)
        slope_lower = inv_lo
        icpt_lower = np.where(lower_chord, -th * inv_lo, on)
        record.update(upper_chord=upper_chord, lower_chord=lower_chord, inv_up=inv_up, inv_lo=inv_lo,
                      slope_lower=slope_lower, icpt_lower=icpt_lower, slope_upper=slope_upper,
                      icpt_upper=icpt_upper)

    def _crown_forward(self) -> np.ndarray:
        steps, batch, alpha, th = self.steps, self.batch, self.decay, self.threshold
        rows = self.C.shape[1]
        lam_s = np.broadcast_to(self.C[None] / steps, (steps,) + self.C.shape).astype(self.dtype)
        bias = np.zeros((batch, rows), self.dtype)
        self.crown_records = [None] * len(self.maps)
        for k in range(len(self.maps) - 1, -1, -1):
            maps, record = self.maps[k], self.records[k]
            self._relaxation(k)
            n = maps.n_neurons
            lam_s = np.ascontiguousarray(lam_s.reshape(steps, batch, rows, n))
            lam_cur = np.empty((steps, batch, rows, n), self.dtype)
            fixed = self.frozen
            reset_side = self.choices.reset_lower_side[k] if fixed else np.zeros(lam_cur.shape, bool)
            fire_side = self.choices.fire_lower_side[k] if fixed else np.zeros(lam_cur.shape, bool)
            fire_coef = np.empty_like(lam_cur)  # ls' (coefficient on s after the reset step)
            stage_bias = np.zeros((batch, rows), self.dtype)
            _backsub_forward(lam_s, record["state"], record["mem_lower"], record["slope_lower"],
                             record["icpt_lower"], record["slope_upper"], record["icpt_upper"],
                             maps.bias.astype(self.dtype), self.dtype.type(th), self.dtype.type(alpha), fixed,
                             reset_side, fire_side, lam_cur, fire_coef, stage_bias)
            bias += stage_bias
            if not fixed:
                self.choices.reset_lower_side[k] = reset_side
                self.choices.fire_lower_side[k] = fire_side
            self.crown_records[k] = dict(lam_s=lam_s, lam_cur=lam_cur, fire_coef=fire_coef,
                                         reset_side=reset_side, fire_side=fire_side)
            if k == 0 and self.sparse_input:
                return self._first_stage_concretize(lam_cur, bias)
            lam_s = maps.transpose(lam_cur.reshape(steps * batch * rows, n)).reshape((steps, batch, rows, -1))
        mid = ((self.x_lower + self.x_upper) * 0.5).reshape(steps, batch, -1)
        rad = ((self.x_upper - self.x_lower) * 0.5).reshape(steps, batch, -1)
        if self.frozen and self.choices.input_sign is not None:
            sign = self.choices.input_sign
        else:
            sign = np.sign(lam_s)
            self.choices.input_sign = sign
        self.input_mid, self.input_rad, self.input_sign = mid, rad, sign
        return (np.einsum("tbrj,tbj->br", lam_s, mid) - np.einsum("tbrj,tbj->br", sign * lam_s, rad) + bias)

    def _first_stage_concretize(self, lam_cur, bias):
        """Eq. 17 at the input for a fully connected first stage, without forming ``lam W`` densely.

        ``min_x sum_t (lam_t W) . x_t = sum_t lam_t . (W mid_t) - sum_t |lam_t W| . rad_t``; the
        first term reuses S-IBP's ``W mid``, the second only needs the columns of ``W`` at the
        free input bits (``rad > 0``), a few percent of the input for the paper's eps.
        """
        steps, batch, rows, n = lam_cur.shape
        weight = self.maps[0].affine.weight.astype(self.dtype)
        rad = ((self.x_upper - self.x_lower) * 0.5).reshape(steps * batch, -1)
        free_count = (rad > 0).sum(axis=1)
        width = max(1, int(free_count.max()))
        # indices of the free bits per (t, b), padded with bit 0 and a zero radius
        order = np.argsort(rad <= 0, axis=1, kind="stable")[:, :width]
        free_rad = np.take_along_axis(rad, order, axis=1)                     # [T'B, F]
        free_cols = weight.T[order]                                           # [T'B, F, n]
        lam_flat = lam_cur.reshape(steps * batch, rows, n)
        lam_free = lam_flat @ free_cols.transpose(0, 2, 1)                    # [T'B, S, F]
        if self.frozen and self.choices.input_sign is not None:
            sign = self.choices.input_sign
        else:
            sign = np.sign(lam_free)
            self.choices.input_sign = sign
        at_mid = np.einsum("tbsn,tbn->bs", lam_cur, self.first_linear_mid)
        at_rad = np.einsum("ksf,kf->ks", sign * lam_free, free_rad).reshape(steps, batch, rows).sum(axis=0)
        self.sparse = dict(order=order, free_rad=free_rad, free_cols=free_cols, sign=sign)
        return at_mid - at_rad + bias

    def _first_stage_backward(self, g_row, lam_cur, grad_w):
        """Reverse of ``_first_stage_concretize``: ``dL/d lam_cur`` of stage 0 and its ``dL/dW``."""
        steps, batch, rows, n = lam_cur.shape
        sp = self.sparse
        mid = ((self.x_lower + self.x_upper) * 0.5).reshape(steps * batch, -1)
        # d/d lam of lam . (W mid) and of -|lam W_free| . rad
        grad_free = -(g_row[None, :, :, None] * (sp["sign"] * sp["free_rad"][:, None, :]).reshape(
            steps, batch, rows, -1)).reshape(steps * batch, rows, -1)          # [T'B, S, F]
        grad_lam = g_row[None, :, :, None] * self.first_linear_mid[:, :, None, :]
        grad_lam = grad_lam + (grad_free @ sp["free_cols"]).reshape(steps, batch, rows, n)
        lam_flat = lam_cur.reshape(steps * batch * rows, n)
        weighted = np.einsum("bs,tbsn->tbn", g_row, lam_cur).reshape(steps * batch, n)
        grad_weight = weighted.T @ mid                                         # from W mid
        # from the free bits: scatter into a dense [T'B, S, n_in] and one GEMM (each row of
        # ``order`` is a permutation prefix, so no index repeats within a row)
        dense = np.zeros((steps * batch, rows, mid.shape[1]), self.dtype)
        np.put_along_axis(dense, np.broadcast_to(sp["order"][:, None, :], grad_free.shape), grad_free, axis=2)
        grad_weight += lam_flat.T @ dense.reshape(steps * batch * rows, -1)
        grad_w[0] += grad_weight.astype(self.dtype)
        return grad_lam

    # --- reverse pass -------------------------------------------------------------------------
    def backward(self, grad_ibp: Optional[np.ndarray] = None, grad_crown: Optional[np.ndarray] = None
                 ) -> List[np.ndarray]:
        """Gradients of ``sum(grad_ibp * ibp_lower) + sum(grad_crown * crown_lower)`` w.r.t. ``net.params()``."""
        steps = self.steps
        n_stages = len(self.maps)
        grad_w = [np.zeros_like(m.affine.weight, dtype=self.dtype) for m in self.maps]
        grad_b = [np.zeros(m.n_neurons, self.dtype) for m in self.maps]
        grad_mem_lower = [np.zeros_like(r["mem_lower"]) for r in self.records]
        grad_mem_upper = [np.zeros_like(r["mem_upper"]) for r in self.records]
        if grad_crown is not None and self.with_crown:
            self._crown_backward(np.asarray(grad_crown, self.dtype), grad_w, grad_b, grad_mem_lower, grad_mem_upper)
        # S-IBP spec bound -> last stage's spike bounds
        grad_spike_lower = np.zeros_like(self.records[-1]["spike_lower"])
        grad_spike_upper = np.zeros_like(grad_spike_lower)
        if grad_ibp is not None:
            grad_ibp = np.asarray(grad_ibp, self.dtype)
            c_pos, c_neg = np.maximum(self.C, 0.0), np.minimum(self.C, 0.0)
            grad_spike_lower += np.einsum("bs,bsn->bn", grad_ibp, c_pos)[None] / steps
            grad_spike_upper += np.einsum("bs,bsn->bn", grad_ibp, c_neg)[None] / steps
        for k in range(n_stages - 1, -1, -1):
            grad_spike_lower, grad_spike_upper = self._ibp_stage_backward(
                k, grad_spike_lower, grad_spike_upper, grad_mem_lower[k], grad_mem_upper[k], grad_w, grad_b)
        grads = []
        for layer in self.net.layers:
            if layer.has_neuron:
                k = next(i for i, m in enumerate(self.maps) if m.affine is layer)
                grads.append(grad_w[k].astype(self.dtype))
                grads.append(self.maps[k].reduce_bias_grad(grad_b[k]).astype(self.dtype))
        return grads

    def _crown_backward(self, grad_lower, grad_w, grad_b, grad_mem_lower, grad_mem_upper):
        steps, batch, alpha = self.steps, self.batch, self.decay
        rows = self.C.shape[1]
        g_row = grad_lower  # [B, S]: every bias term enters the bound with coefficient 1
        # concretization: sum_t lam . mid - |lam| . rad
        grad_lam = None if self.sparse_input else g_row[None, :, :, None] * (
            self.input_mid[:, :, None, :] - self.input_sign * self.input_rad[:, :, None, :])
        for k in range(len(self.maps)):
            maps, record, crec = self.maps[k], self.records[k], self.crown_records[k]
            n = maps.n_neurons
            lam_cur = crec["lam_cur"]
            if k == 0 and self.sparse_input:
                grad_lam_cur = self._first_stage_backward(g_row, lam_cur, grad_w)
            else:
                # lam_s_prev = transpose(lam_cur): reverse = the chain's forward on grad_lam (no bias)
                flat_grad = grad_lam.reshape((steps * batch * rows,) + maps.input_shape)
                out, inputs = maps.chain(maps.signed, flat_grad)
                grad_w[k] += maps.weight_grad(maps.signed[-1], inputs[-1],
                                              lam_cur.reshape((steps * batch * rows,) + maps.neuron_shape))
                grad_lam_cur = out.reshape(steps, batch, rows, n)
            # time loop reversed (forward ran t = T'-1 .. 0)
            grad_lam_s = np.empty_like(grad_lam_cur)
            g_slope_lo = np.zeros((steps, batch, n), self.dtype)
            g_slope_up = np.zeros_like(g_slope_lo)
            g_icpt_lo = np.zeros_like(g_slope_lo)
            g_icpt_up = np.zeros_like(g_slope_lo)
            g_mem_lower_r = np.zeros_like(g_slope_lo)
            _backsub_backward(np.ascontiguousarray(grad_lam_cur, dtype=self.dtype), lam_cur, crec["fire_coef"],
                              crec["reset_side"], crec["fire_side"], record["state"], record["mem_lower"],
                              record["slope_lower"], record["icpt_lower"], record["slope_upper"],
                              record["icpt_upper"], maps.bias.astype(self.dtype), g_row.astype(self.dtype),
                              self.dtype.type(self.threshold), self.dtype.type(alpha), grad_lam_s, g_slope_lo,
                              g_slope_up, g_icpt_lo, g_icpt_up, g_mem_lower_r)
            grad_b[k] += np.einsum("bs,tbsn->n", g_row, lam_cur)  # bias += lm . b
            # eq. 8 slopes/intercepts -> membrane bounds (case held fixed)
            th = self.threshold
            inv_up, inv_lo = record["inv_up"], record["inv_lo"]
            grad_mem_lower[k] += g_mem_lower_r + np.where(
                record["upper_chord"], (g_slope_up - th * g_icpt_up) * inv_up * inv_up, 0.0)
            grad_mem_upper[k] += np.where(
                record["lower_chord"], (-g_slope_lo + th * g_icpt_lo) * inv_lo * inv_lo, 0.0)
            grad_lam = grad_lam_s  # d lam_s of stage k = d of stage k+1's transpose output

    def _ibp_stage_backward(self, k, grad_spike_lower, grad_spike_upper, grad_mem_lower, grad_mem_upper,
                            grad_w, grad_b):
        steps, batch, alpha, th = self.steps, self.batch, self.decay, self.threshold
        maps, record = self.maps[k], self.records[k]
        mem_lower, mem_upper = record["mem_lower"], record["mem_upper"]
        surrogate = self.net.surrogate
        grad_spike_lower = grad_spike_lower.reshape(mem_lower.shape)
        grad_spike_upper = grad_spike_upper.reshape(mem_upper.shape)
        # eq. 7 with the surrogate derivative (exact derivative of the smooth variant)
        g_ml = grad_mem_lower + grad_spike_lower * surrogate.derivative(mem_lower - th)
        g_mu = grad_mem_upper + grad_spike_upper * surrogate.derivative(mem_upper - th)
        state, negative = record["state"], record["negative"]
        g_cur_lower = np.empty_like(g_ml)
        g_cur_upper = np.empty_like(g_mu)
        g_next_lower = np.zeros_like(g_ml[0])
        g_next_upper = np.zeros_like(g_mu[0])
        for t in range(steps - 1, -1, -1):
            off, unstable = state[t] == STABLE_OFF, state[t] == UNSTABLE
            # reset bound of step t (eq. 9) feeds the membrane bound of step t + 1 times alpha
            g_reset_lower = alpha * g_next_lower
            g_reset_upper = alpha * g_next_upper
            total_lower = g_ml[t] + np.where(off | (unstable & negative[t]), g_reset_lower, 0.0)
            total_upper = g_mu[t] + np.where(off, g_reset_upper, 0.0)
            g_cur_lower[t] = total_lower
            g_cur_upper[t] = total_upper
            g_next_lower, g_next_upper = total_lower, total_upper
        g_center = (g_cur_lower + g_cur_upper).reshape((steps * batch,) + maps.neuron_shape)
        g_radius = (g_cur_upper - g_cur_lower).reshape(g_center.shape)
        grad_b[k] += (g_cur_lower + g_cur_upper).sum(axis=(0, 1))
        center_inputs, radius_inputs = record["center_inputs"], record["radius_inputs"]
        last = len(maps.ops) - 1
        grad_w[k] += maps.weight_grad(maps.signed[last], center_inputs[last], g_center) \
            + maps.weight_sign * maps.weight_grad(maps.absolute[last], radius_inputs[last], g_radius)
        if k == 0:
            return None, None  # the input box does not depend on the parameters
        for j in range(last, -1, -1):
            g_center = maps.signed[j].transpose(g_center)
            g_radius = maps.absolute[j].transpose(g_radius)
        # center = (l + u) / 2, radius = (u - l) / 2
        return 0.5 * (g_center - g_radius), 0.5 * (g_center + g_radius)


# --- the loss --------------------------------------------------------------------------------------

@dataclass
class RobustLoss:
    """Value and gradients of the robust loss of one batch (see the module docstring)."""

    loss: float
    natural_loss: float
    robust_loss: float
    grads: List[np.ndarray]
    rates: np.ndarray
    margin_lower: np.ndarray  # mixed lower bounds of f_y - f_j, [B, n_out - 1] (rows of margin_spec)
    robust_error: float       # fraction of the batch with some mixed margin bound <= 0 (j != y)
    graph: Optional["BoundGraph"] = None  # the bound computation (its choices freeze a re-run)


def robust_loss(net, spikes: np.ndarray, labels: np.ndarray, x_lower: np.ndarray, x_upper: np.ndarray,
                kappa: float, beta: float, temperature: float, natural_loss_fn=None,
                smooth: bool = False, choices: Optional[Choices] = None) -> RobustLoss:
    """``kappa * natural(spikes) + (1 - kappa) * CE(-temperature * (beta LB_crown + (1-beta) LB_ibp))``.

    ``spikes [T, B, *in]``: the clean sample (inference horizon T); ``x_lower/x_upper
    [T', B, *in]``: the bound set (training horizon T'). ``natural_loss_fn(rates, labels) ->
    (loss, grad)``; defaults to softmax cross-entropy on the rates.
    """
    if not 0.0 <= kappa <= 1.0 or not 0.0 <= beta <= 1.0:
        raise ValueError(f"kappa and beta must lie in [0, 1], got kappa={kappa}, beta={beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    labels = np.asarray(labels)
    natural_loss_fn = natural_loss_fn or softmax_cross_entropy
    trace = net.run(spikes, smooth=smooth, validate=False)
    rates = trace.rates
    natural_value, grad_rates = natural_loss_fn(rates, labels)
    grads = [np.zeros_like(p) for p in net.params()]
    if kappa > 0.0:
        natural_grads, _ = net.backward(trace, grad_rates, input_grad=False)
        grads = [g + kappa * ng for g, ng in zip(grads, natural_grads)]
    n_out = net.n_outputs
    C = margin_spec(labels, n_out).astype(net.dtype)  # rows e_y - e_j, j != y
    graph = BoundGraph(net, x_lower, x_upper, C, smooth=smooth, choices=choices, with_crown=beta > 0.0)
    lower = (1.0 - beta) * graph.ibp_lower
    if beta > 0.0:
        lower = lower + beta * graph.crown_lower
    rows = np.arange(len(labels))[:, None]
    others = other_classes(labels, n_out)
    logits = np.zeros((len(labels), n_out), dtype=lower.dtype)  # the true class's margin is 0
    logits[rows, others] = -temperature * lower
    robust_value, grad_logits = softmax_cross_entropy(logits, labels)
    robust_weight = 1.0 - kappa
    if robust_weight > 0.0:
        grad_lower = -temperature * robust_weight * grad_logits[rows, others]
        bound_grads = graph.backward(grad_ibp=(1.0 - beta) * grad_lower,
                                     grad_crown=beta * grad_lower if beta > 0.0 else None)
        grads = [g + bg for g, bg in zip(grads, bound_grads)]
    robust_error = float(np.mean(np.any(lower <= 0.0, axis=1)))
    total = kappa * natural_value + robust_weight * robust_value
    return RobustLoss(float(total), float(natural_value), float(robust_value), grads, rates, lower, robust_error,
                      graph)


# --- the training method: schedules, options, per-epoch certified error ------------------------------

# Final eps per (dataset, arch): the header of the paper's Table 2.
DEFAULT_EPS = {("mnist", "fc"): 0.12, ("mnist", "conv"): 0.12, ("fmnist", "fc"): 0.01,
               ("fmnist", "conv"): 0.005, ("nmnist", "fc"): 0.005, ("nmnist", "conv"): 0.005,
               ("mnist-subset", "fc"): 0.12, ("mnist-subset", "conv"): 0.12}
RECIPES = ("crown-ibp", "authors")


@dataclass
class RobustOptions:
    """Settings of ``--method robust`` (``TrainConfig.method_options``).

    ``recipe``: ``crown-ibp`` (kappa and beta ramped with eps, Zhang et al. 2020) or ``authors``
    (the released certify_snn script: fixed ``0.4 CE_natural + 0.6 CE(-lb)``, S-CROWN only, eps
    raised in 3 steps per epoch; pair it with ``--preset robust-authors`` for its optimizer).
    ``eps``: final radius (default: the paper's Table 2 value for the dataset and arch).
    ``ramp_epochs``: epochs over which eps grows linearly from 0 (default: 250/300 of the run,
    the paper's schedule); afterwards eps stays final. ``robust_T``: horizon T' of the bound set
    (the first T' rand maps / frames of the batch). ``temperature``: robust logits are
    ``-temperature * lb`` (rates live in [0, 1], so margins are small). ``input_set``:
    ``digital`` (l-inf through the rand maps, ``convention`` paper: +-eps/2, authors: +-eps) or
    ``spike`` (l0, ``l0_mode`` paper: round(size*eps) positions per step, authors: each bit with
    probability eps); default digital for images, spike for N-MNIST. ``eval_n``: test samples
    whose certified error is computed after every epoch (sound float64 bounds), ``eval_T``:
    their horizon (default ``robust_T``).
    """

    recipe: str = "crown-ibp"
    eps: Optional[float] = None
    ramp_epochs: Optional[float] = None
    robust_T: int = DEFAULT_ROBUST_T
    kappa_start: float = 1.0
    kappa_end: float = 0.0
    beta_start: float = 1.0
    beta_end: float = 0.0
    temperature: float = 1.0
    input_set: Optional[str] = None
    convention: str = "paper"
    l0_mode: str = "paper"
    eval_n: int = 500
    eval_T: Optional[int] = None
    eval_seed: int = 1234


def robust_options(values: Dict[str, Any], dataset: str = "mnist", arch: str = "fc", epochs: int = 300
                   ) -> RobustOptions:
    """Validates ``method_options`` and fills the dataset/arch/recipe defaults."""
    known = set(RobustOptions.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown robust training options {unknown}; valid: {sorted(known)}")
    recipe = values.get("recipe", "crown-ibp")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    defaults: Dict[str, Any] = {}
    if recipe == "authors":
        defaults = dict(kappa_start=0.4, kappa_end=0.4, beta_start=1.0, beta_end=1.0, temperature=1.0,
                        convention="authors", l0_mode="authors", eval_T=10)
    options = RobustOptions(**{**defaults, **values})
    if options.eps is None:
        options.eps = DEFAULT_EPS.get((dataset, arch), 0.12)
    if options.ramp_epochs is None:
        options.ramp_epochs = max(1.0, epochs * 250.0 / 300.0)
    if options.input_set is None:
        options.input_set = "spike" if dataset == "nmnist" else "digital"
    if options.eval_T is None:
        options.eval_T = options.robust_T
    checks = [(options.eps >= 0, "eps must be >= 0"), (options.ramp_epochs > 0, "ramp_epochs must be > 0"),
              (isinstance(options.robust_T, int) and options.robust_T >= 1, "robust_T must be an integer >= 1"),
              (options.temperature > 0, "temperature must be > 0"),
              (options.input_set in ("digital", "spike"), "input_set must be 'digital' or 'spike'"),
              (options.input_set == "spike" or dataset != "nmnist", "N-MNIST inputs are spikes: input_set='spike'"),
              (options.eval_n >= 0, "eval_n must be >= 0")]
    for name in ("kappa_start", "kappa_end", "beta_start", "beta_end"):
        checks.append((0.0 <= getattr(options, name) <= 1.0, f"{name} must lie in [0, 1]"))
    for ok, message in checks:
        if not ok:
            raise ValueError(f"robust training: {message} (got {options})")
    return options


def ramp_progress(options: RobustOptions, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Fraction of the eps ramp done at this step, in [0, 1].

    crown-ibp: linear per step. authors: eps rises in 3 equal steps per epoch (the first one at
    the start of epoch 0), as the released script.
    """
    if options.recipe == "authors":
        stage = epoch * 3 + (3 * step) // steps_per_epoch + 1
        return min(1.0, stage / (3.0 * options.ramp_epochs))
    return min(1.0, (epoch + step / steps_per_epoch) / options.ramp_epochs)


def schedule_values(options: RobustOptions, progress: float) -> Tuple[float, float, float]:
    """``(eps, kappa, beta)`` at a ramp progress in [0, 1]."""
    eps = options.eps * progress
    kappa = options.kappa_start + (options.kappa_end - options.kappa_start) * progress
    beta = options.beta_start + (options.beta_end - options.beta_start) * progress
    return eps, kappa, beta


def bound_set(net, options: RobustOptions, eps: float, spikes: np.ndarray, images: Optional[np.ndarray],
              rand_maps: Optional[np.ndarray], rng: np.random.Generator, steps: int):
    """The training/evaluation box ``(x_lower, x_upper)`` ``[T', B, *in]`` for one batch."""
    from .input_sets import digital_linf_set, spike_l0_set
    if options.input_set == "digital":
        if images is None or rand_maps is None:
            raise ValueError("digital bound sets need the images and their rand maps")
        if rand_maps.shape[0] < steps:
            raise ValueError(f"the batch has {rand_maps.shape[0]} rand maps, the bound set needs T' = {steps}")
        box = digital_linf_set(images, eps, rand_maps[:steps], convention=options.convention)
    else:
        if spikes.shape[0] < steps:
            raise ValueError(f"the batch has {spikes.shape[0]} frames, the bound set needs T' = {steps}")
        box = spike_l0_set(spikes[:steps], eps, rng, mode=options.l0_mode)
    return box.x_lower, box.x_upper


def robust_step(net, batch, ctx):
    """One robust-training batch (registered as ``--method robust`` in ``refsnn.train``)."""
    from .losses import make_loss
    from .train import StepResult
    options: RobustOptions = ctx.options
    progress = ramp_progress(options, ctx.epoch, ctx.step, ctx.steps_per_epoch)
    eps, kappa, beta = schedule_values(options, progress)
    x_lower, x_upper = bound_set(net, options, eps, batch.spikes, batch.images, batch.rand_maps, ctx.rng,
                                 options.robust_T)
    result = robust_loss(net, batch.spikes, batch.labels, x_lower, x_upper, kappa, beta, options.temperature,
                         natural_loss_fn=make_loss(ctx.config.loss, ctx.config.loss_scale))
    metrics = {"natural_loss": result.natural_loss, "robust_loss": result.robust_loss,
               "bound_robust_error": result.robust_error, "eps": eps, "kappa": kappa, "beta": beta}
    return StepResult(result.loss, result.grads, result.rates, metrics)


def certified_errors(net, x, labels, options: RobustOptions, eps: float, T: int) -> Dict[str, float]:
    """Sound certified robust errors (S-IBP, S-CROWN, best) of ``net`` on test data at ``eps``.

    ``x``: images ``[N, *in]`` (digital) or frames ``[N, T, *in]`` (spikes). A sample counts as an
    error when some margin lower bound is ``<= 0`` (a bound of 0 is a tie, not robust). The rand
    maps / l0 positions come from ``options.eval_seed``, the same for every epoch.
    """
    from .bounds import compute_bounds
    from .encoders import rate_encode
    rng = np.random.default_rng(options.eval_seed)
    labels = np.asarray(labels)
    if options.input_set == "digital":
        spikes, rand_maps = rate_encode(x, max(T, options.eval_T), rng)
        images = x
    else:
        spikes, rand_maps, images = np.ascontiguousarray(np.swapaxes(x, 0, 1)), None, None
    x_lower, x_upper = bound_set(net, options, eps, spikes, images, rand_maps, rng, options.eval_T)
    C = margin_spec(labels, net.n_outputs)
    errors = {}
    for method in ("ibp", "crown-ibp", "best"):
        lower, _ = compute_bounds(net, x_lower, x_upper, method=method, C=C)
        errors[method] = float(np.mean(np.any(lower <= 0.0, axis=1)))
    return errors


def robust_epoch_metrics(trainer) -> Dict[str, float]:
    """Certified errors on the first ``eval_n`` test samples at the current and the final eps."""
    options: RobustOptions = trainer.options
    if options.eval_n == 0:
        return {}
    steps_per_epoch = trainer.steps_per_epoch
    progress = ramp_progress(options, trainer.epoch, steps_per_epoch, steps_per_epoch)
    eps_now, kappa, beta = schedule_values(options, progress)
    n = min(options.eval_n, len(trainer.y_test))
    x, y = trainer.x_test[:n], trainer.y_test[:n]
    metrics: Dict[str, float] = {"eps": eps_now, "kappa": kappa, "beta": beta, "cert_n": n}
    for label, eps in (("now", eps_now), ("final", options.eps)):
        for method, error in certified_errors(trainer.net, x, y, options, eps, trainer.config.T).items():
            metrics[f"cert_error_{method}_{label}"] = error
    return metrics


def _register() -> None:
    from .train import register_method

    def options(values: Dict[str, Any], config=None) -> RobustOptions:
        if config is None:
            return robust_options(values)
        return robust_options(values, config.dataset, config.arch, config.epochs)

    register_method("robust", robust_step, options=options, epoch_metrics=robust_epoch_metrics)


_register()
