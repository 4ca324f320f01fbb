"""The training bound graph: S-IBP and S-CROWN lower bounds of ``C f`` under the ``exact`` precision
policy (plain arithmetic in the network's dtype, no rounding margins) with a hand-written reverse pass.

The forward computation is ``refsnn.operator``'s stage operator (``interval_step``,
``backsub_step``) with the rules of ``refsnn.relaxations`` (eqs. 7-11, 15-18), the back-substitution
run by the one stage driver ``refsnn.crown.backsub_stages``: the same operator and driver the
certified bounds run under the ``sound`` policy; a loss needs no certificate, and every
certified number refsnn reports is recomputed with ``refsnn.bounds.compute_bounds``. A test checks
that both agree up to the margins.

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
from typing import Dict, List, Optional

import numpy as np

from .firing import fires_at_threshold
from .layers import Conv2d, Linear
from .crown import backsub_stages
from .operator import NeuronModelError, StepTables, backsub_stage_reverse, interval_kernel, reverse_reads
from .relaxations import STABLE_OFF, STABLE_ON, UNSTABLE, Fire, Precision, Reset
from .spec import spec_interval

SPARSE_INPUT_FRACTION = 6

# --- the operator under the exact policy ---------------------------------------------------------

def _ibp_time_kernel(cur_lower, cur_upper, alpha, alpha_dtype, th, th_dtype, zero, fire_ge, frozen, mem_lower,
                     mem_upper, state, negative) -> None:
    """The S-IBP recurrence of one stage for the training bounds (eqs. 7, 9), ``[T', B, n]`` arrays:
    ``refsnn.operator.interval_step`` without rounding. The lower carry is in the network dtype
    (``alpha_dtype``: alpha cast to it), the upper carry in float64 (``alpha`` and its reset value
    ``th`` are Python floats), the threshold compared in the network dtype (``th_dtype``), ``zero``
    the network dtype's 0. Records ``state`` and ``negative`` (``m_l < 0``), or reads them if ``frozen``."""
    unused = np.empty((1, 1, 1))
    interval_kernel(track_rounding=False, record=True, frozen=bool(frozen))(
        cur_lower, cur_upper, alpha_dtype, alpha, 0.0, th_dtype, th_dtype, th, zero, fire_ge, mem_lower, mem_upper,
        unused, unused, unused, state, negative)


# Fraction of a convolution stage's membrane coefficients read by the reverse pass
# (``operator.reverse_reads``) below which the reverse computes ``dL/d lam_cur`` at those entries only
# (``Conv2d.forward_at``) instead of the whole event/GEMM convolution: MNIST CONV at eps 0.12,
# T' = 3, one thread: trained weights read 1.6 % of conv2's entries, seed-0 weights 90 %.
READ_FRACTION_CROSSOVER = 0.1

# Parallel back-substitution for big stages only (a parallel launch costs milliseconds when the cores
# are busy, which dominates small batches and the gradient tests).
_PARALLEL_MIN_WORK = 1 << 18


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
        """``dL/dW`` of an affine op with input ``x`` and ``dL/d(output)`` (no input gradient needed);
        only the non-zero entries of a sparse ``grad_out`` are visited (``weight_grad(events=True)``)."""
        return op.weight_grad(x, grad_out, events=True)  # no input or bias gradient

    @staticmethod
    def adjoint(op, coef: np.ndarray) -> np.ndarray:
        """``op.transpose(coef)``, visiting only the non-zero entries of sparse coefficients (those of
        neurons stable at every remaining step vanish: ``transpose(events=True)`` of a Linear or Conv2d)."""
        return op.transpose(coef, events=True) if isinstance(op, (Linear, Conv2d)) else op.transpose(coef)

    def transpose(self, coef: np.ndarray) -> np.ndarray:
        """Adjoint of the chain: ``[N, n] -> [N, *input_shape]`` (back-substitution, eq. 17)."""
        coef = coef.reshape((coef.shape[0],) + self.neuron_shape)
        for op in reversed(self.signed):
            coef = self.adjoint(op, coef)
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
        if net.reset != "zero":  # its tables are eq. 9/10's: another reset would get the LIF's bounds
            raise NeuronModelError(f"reset={net.reset!r}: robust training's bound graph is defined for the paper's "
                                   "LIF (reset='zero') only; train this neuron model with the natural loss")
        self.net = net
        self.dtype = net.dtype
        self.threshold = float(net.threshold)
        self.decay = float(net.decay)
        self.rule = Precision.exact(net)
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
        # A first stage [Flatten*, Linear] or [Conv2d] lets the concretization skip the dense lam W
        # product; it pays off when few bits are free (FC preset, one thread, CPU time of the graph
        # and its reverse with the free-bit weight gradient: gathered columns beat the dense GEMMs up
        # to about 1/6 of the input free per step, eps 0.2 with at most 118 of 784 bits; equal near
        # 0.3). A convolution's column has at most O ceil(kh/sh) ceil(kw/sw) entries (256 of the
        # CONV preset's 12,544 outputs), so the same fraction is used there (its crossover is not
        # measured; at the paper's eps the gather replaces 0.4 s of dense conv1 work per step).
        free = (self.x_upper != self.x_lower).reshape(self.steps * self.batch, -1)
        few_free = free.sum(axis=1).max(initial=0) * SPARSE_INPUT_FRACTION <= free.shape[1]
        self.sparse_input = (isinstance(first[-1], (Linear, Conv2d))
                             and all(op.kind == "flatten" for op in first[:-1]) and few_free)
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
        if self.frozen:
            upper_chord, lower_chord = self.choices.upper_chord[k], self.choices.lower_chord[k]
        else:
            upper_chord, lower_chord = Fire.chords(mem_lower, mem_upper, state, self.threshold, self.rule)
            self.choices.upper_chord[k] = upper_chord
            self.choices.lower_chord[k] = lower_chord
        slope_lower, icpt_lower, slope_upper, icpt_upper = Fire.relaxation(
            mem_lower, mem_upper, state, self.threshold, self.rule, chords=(upper_chord, lower_chord))
        reset_lower, reset_upper = Reset.relaxation(mem_lower, state, self.rule)
        record.update(upper_chord=upper_chord, lower_chord=lower_chord, slope_lower=slope_lower,
                      icpt_lower=icpt_lower, slope_upper=slope_upper, icpt_upper=icpt_upper,
                      reset_lower=reset_lower, reset_upper=reset_upper)

    def _step_tables(self, k) -> StepTables:
        """Stage ``k``'s relaxation (``_relaxation``) as ``backsub_step`` tables in the network dtype
        (no rounding magnitudes: the ``exact`` policy); the stage driver calls it when it reaches ``k``."""
        self._relaxation(k)
        record = self.records[k]
        return StepTables(record["state"], record["slope_lower"], record["icpt_lower"], record["slope_upper"],
                          record["icpt_upper"], record["reset_lower"], record["reset_upper"], self.dtype.type(self.decay),
                          self.maps[k].bias.astype(self.dtype))

    def _crown_forward(self) -> np.ndarray:
        """Eqs. 15-18 through the one stage driver (``refsnn.crown.backsub_stages``), then the
        concretization at the input box (the sparse first stage's, or the dense one): ``[B, S]``."""
        steps = self.steps
        lam_s = np.broadcast_to(self.C[None] / steps, (steps,) + self.C.shape).astype(self.dtype)
        sides = None
        if self.frozen:
            sides = [(self.choices.reset_lower_side[k], self.choices.fire_lower_side[k])
                     for k, _ in enumerate(self.maps)]
        lam_s, bias, _, records = backsub_stages(self.maps, self._step_tables, lam_s, record=True, sides=sides,
                                                 transpose_first=not self.sparse_input,
                                                 parallel_min_work=_PARALLEL_MIN_WORK)
        self.crown_records = [dict(lam_cur=rec.step.lam_cur, step=rec.step, tables=rec.tables) for rec in records]
        if not self.frozen:
            for rec in records:
                self.choices.reset_lower_side[rec.k] = rec.step.reset_side
                self.choices.fire_lower_side[rec.k] = rec.step.fire_side
        if self.sparse_input:
            return self._first_stage_concretize(lam_s, bias)
        mid = ((self.x_lower + self.x_upper) * 0.5).reshape(steps, self.batch, -1)
        rad = ((self.x_upper - self.x_lower) * 0.5).reshape(steps, self.batch, -1)
        if self.frozen and self.choices.input_sign is not None:
            sign = self.choices.input_sign
        else:
            sign = np.sign(lam_s)
            self.choices.input_sign = sign
        self.input_mid, self.input_rad, self.input_sign = mid, rad, sign
        return (np.einsum("tbrj,tbj->br", lam_s, mid) - np.einsum("tbrj,tbj->br", sign * lam_s, rad) + bias)

    def _first_stage_concretize(self, lam_cur, bias):
        """Eq. 17 at the input for a first stage ``[Flatten*, Linear]`` or ``[Conv2d]``, without
        forming ``lam W`` densely.

        ``min_x sum_t (lam_t W) . x_t = sum_t lam_t . (W mid_t) - sum_t |lam_t W| . rad_t``; the
        first term reuses S-IBP's ``W mid``, the second only needs ``lam W`` at the free input bits
        (``rad > 0``, a few percent of the input for the paper's eps): the layer's
        ``transpose_at`` (a weight column per bit; for a convolution at most
        ``O ceil(kh/sh) ceil(kw/sw)`` entries per bit instead of the dense col2im of every row).
        """
        steps, batch, rows, n = lam_cur.shape
        layer = self.maps[0].signed[-1]
        rad = ((self.x_upper - self.x_lower) * 0.5).reshape(steps * batch, -1)
        free_count = (rad > 0).sum(axis=1)
        width = max(1, int(free_count.max()))
        # indices of the free bits per (t, b), padded with bit 0 and a zero radius
        order = np.argsort(rad <= 0, axis=1, kind="stable")[:, :width]
        free_rad = np.take_along_axis(rad, order, axis=1)                     # [T'B, F]
        columns = layer.adjoint_columns(order)
        lam_flat = lam_cur.reshape(steps * batch, rows, n)
        lam_free = layer.transpose_at(lam_flat, columns)                      # [T'B, S, F]
        if self.frozen and self.choices.input_sign is not None:
            sign = self.choices.input_sign
        else:
            sign = np.sign(lam_free)
            self.choices.input_sign = sign
        at_mid = np.einsum("tbsn,tbn->bs", lam_cur, self.first_linear_mid)
        at_rad = np.einsum("ksf,kf->ks", sign * lam_free, free_rad).reshape(steps, batch, rows).sum(axis=0)
        self.sparse = dict(free_rad=free_rad, columns=columns, sign=sign)
        return at_mid - at_rad + bias

    def _first_stage_backward(self, g_row, lam_cur, grad_w):
        """Reverse of ``_first_stage_concretize``: ``dL/d lam_cur`` of stage 0, its ``dL/dW`` through the
        free bits (added into ``grad_w[0]``) and ``dL/d(W mid)`` ``[T'B, *neurons]``, whose weight gradient
        ``dL/d(W mid)^T mid`` shares S-IBP's stage-0 center product (``_ibp_stage_backward``: one GEMM)."""
        steps, batch, rows, n = lam_cur.shape
        sp = self.sparse
        maps = self.maps[0]
        layer = maps.signed[-1]
        # d/d lam of lam . (W mid) and of -|lam W_free| . rad
        grad_free = -(g_row[None, :, :, None] * (sp["sign"] * sp["free_rad"][:, None, :]).reshape(
            steps, batch, rows, -1)).reshape(steps * batch, rows, -1)          # [T'B, S, F]
        grad_lam = g_row[None, :, :, None] * self.first_linear_mid[:, :, None, :]
        lam_flat = lam_cur.reshape(steps * batch, rows, n)
        grad_mid = np.einsum("bs,tbsn->tbn", g_row, lam_cur).reshape((steps * batch,) + maps.neuron_shape)
        # from the free bits (a few percent of the input; the dense path multiplies zeros elsewhere)
        grad_w[0] += layer.transpose_at_backward(lam_flat, sp["columns"], grad_free,
                                                 grad_lam.reshape(steps * batch, rows, n)).astype(self.dtype)
        return grad_lam, grad_mid

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
        grad_mid = None  # dL/d(W mid) of the sparse first stage's concretization
        if grad_crown is not None and self.with_crown:
            grad_mid = self._crown_backward(np.asarray(grad_crown, self.dtype), grad_w, grad_b, grad_mem_lower,
                                            grad_mem_upper)
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
                k, grad_spike_lower, grad_spike_upper, grad_mem_lower[k], grad_mem_upper[k], grad_w, grad_b,
                grad_mid if k == 0 else None)
        grads = []
        for layer in self.net.layers:
            if layer.has_neuron:
                k = next(i for i, m in enumerate(self.maps) if m.affine is layer)
                grads.append(grad_w[k].astype(self.dtype))
                grads.append(self.maps[k].reduce_bias_grad(grad_b[k]).astype(self.dtype))
        return grads

    def _crown_backward(self, grad_lower, grad_w, grad_b, grad_mem_lower, grad_mem_upper) -> Optional[np.ndarray]:
        """The S-CROWN bound's reverse; returns ``dL/d(W mid)`` of a sparse first stage (else None),
        whose weight gradient the S-IBP reverse of stage 0 adds in its center product."""
        steps, batch, alpha = self.steps, self.batch, self.decay
        grad_mid = None
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
                grad_lam_cur, grad_mid = self._first_stage_backward(g_row, lam_cur, grad_w)
            else:
                # lam_s_prev = transpose(lam_cur): reverse = the chain's forward on grad_lam (no bias),
                # needed only where the step's reverse reads it (a trained conv stage: a few percent)
                flat_grad = grad_lam.reshape((steps * batch * rows,) + maps.input_shape)
                affine = maps.signed[-1]
                x_affine, _ = maps.chain(maps.signed[:-1], flat_grad)
                reads = reverse_reads(record["state"]) if isinstance(affine, Conv2d) else None
                if reads is not None and reads.mean() < READ_FRACTION_CROSSOVER:
                    out = affine.forward_at(x_affine, reads.reshape(steps * batch, n), rows)
                else:
                    out = affine.forward(x_affine)
                grad_w[k] += maps.weight_grad(affine, x_affine,
                                              lam_cur.reshape((steps * batch * rows,) + maps.neuron_shape))
                grad_lam_cur = out.reshape(steps, batch, rows, n)
            # time loop reversed (forward ran t = T'-1 .. 0)
            grad_lam_s, (g_slope_lo, g_slope_up, g_icpt_lo, g_icpt_up, g_mem_lower_r) = backsub_stage_reverse(
                np.ascontiguousarray(grad_lam_cur, dtype=self.dtype), crec["step"], crec["tables"],
                record["mem_lower"], g_row.astype(self.dtype), self.dtype.type(self.threshold),
                parallel_min_work=_PARALLEL_MIN_WORK)
            grad_b[k] += np.einsum("bs,tbsn->n", g_row, lam_cur)  # bias += lm . b
            # eq. 8 slopes/intercepts -> membrane bounds (case held fixed)
            th = self.threshold
            # on a chord, the slope is 1 / (th - m) (eq. 8): its derivative in m is the slope squared
            inv_up, inv_lo = record["slope_upper"], record["slope_lower"]
            grad_mem_lower[k] += g_mem_lower_r + np.where(
                record["upper_chord"], (g_slope_up - th * g_icpt_up) * inv_up * inv_up, 0.0)
            grad_mem_upper[k] += np.where(
                record["lower_chord"], (-g_slope_lo + th * g_icpt_lo) * inv_lo * inv_lo, 0.0)
            grad_lam = grad_lam_s  # d lam_s of stage k = d of stage k+1's transpose output
        return grad_mid

    def _ibp_stage_backward(self, k, grad_spike_lower, grad_spike_upper, grad_mem_lower, grad_mem_upper,
                            grad_w, grad_b, grad_mid: Optional[np.ndarray] = None):
        """S-IBP reverse of stage ``k``; ``grad_mid`` (stage 0 only): ``dL/d(W mid)`` of the sparse
        first stage's concretization, whose input is this stage's center input, joined to its product."""
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
        if grad_mid is not None:  # the same input: one weight-gradient product for both terms
            g_center = g_center + grad_mid
        grad_w[k] += maps.weight_grad(maps.signed[last], center_inputs[last], g_center) \
            + maps.weight_sign * maps.weight_grad(maps.absolute[last], radius_inputs[last], g_radius)
        if k == 0:
            return None, None  # the input box does not depend on the parameters
        for j in range(last, -1, -1):
            g_center = maps.adjoint(maps.signed[j], g_center)
            g_radius = maps.adjoint(maps.absolute[j], g_radius)
        # center = (l + u) / 2, radius = (u - l) / 2
        return 0.5 * (g_center - g_radius), 0.5 * (g_center + g_radius)
