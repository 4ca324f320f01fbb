"""S-CROWN (the paper's Alg. 2): backward linear relaxation from the output to the input, through
layers AND time, using S-IBP's intermediate bounds (the CROWN-IBP combination).

Lower bound of ``C f`` with ``f = (1/T') sum_t s_t[K]`` (eq. 15); the upper bound is minus the
lower bound of ``-C f``, so both run as one batch of ``2 S`` specification rows. For each stage
``k`` from the last to the first, time ``t`` from ``T'-1`` down to 0, with ``lam_s`` the
coefficient on ``s_t[k]`` (spatial path from stage ``k+1``) and ``lam_z`` the coefficient on the
reset term ``z_t[k]`` (from ``m_{t+1}[k] = I_{t+1} + alpha z_t``):

1. reset (eq. 10): silent ``z = m`` -> ``lam_m += lam_z``; firing ``z = 0``; unstable
   ``z >= (1 - s) m_l`` if ``lam_z >= 0`` else ``z <= (1 - s) th``: bias ``+= lam_z r``,
   ``lam_s -= lam_z r`` (the reset path adds to the coefficient on ``s_t``, eqs. 17-18);
2. fire (eq. 8): silent ``s = 0``, firing ``s = 1`` (bias ``+= lam_s``), unstable: the lower
   chord if ``lam_s >= 0`` else the upper chord: ``lam_m += lam_s a``, bias ``+= lam_s c``;
3. membrane: ``lam_I_t = lam_m``, ``lam_z_{t-1} = alpha lam_m``;
4. after all ``t``: ``lam_s[k-1]_t = lam_I_t W`` (the ops' adjoint), bias ``+= lam_I_t . b``.

At the input: ``min_x sum_t lam_x_t . x_t = sum_t lam_x_t . mid_t - |lam_x_t| . rad_t`` (box
concretization). Steps 1-3 run in one fused Numba kernel per stage (parallel over samples and
specs, a loop over time and neurons); step 4 is one batched matrix product over all time steps.

Rounding: the kernel also accumulates, per sample and spec, a bound on (a) its own float64
rounding error and (b) the mismatch between the network's float relations and the exact ones
(the current/membrane rounding margins of S-IBP, times ``|lam|``); the sum is subtracted from
the lower bound. It is ~1e-13 in ordinary cases and grows where huge chord slopes would make
cancellation dangerous. ``method="crown-ibp"`` is the paper's S-CROWN up to that and up to its
decisions being made on the outward-rounded intervals (docs/BOUNDS.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from numba import njit

from .ibp import IntervalBounds, PreparedStage, interval_bounds_of_box, prepare_stages
from .input_sets import BinaryBox, binary_box
from .kernels import transpose_contiguous
from .operator import backsub_kernel
from .relaxations import UNIT_ROUNDOFF_FLOAT64, Fire, Reset, gamma, output_rounding_margin
from .spec import normalize_spec

U64 = UNIT_ROUNDOFF_FLOAT64
DEFAULT_CHUNK_BYTES = 512 * 2 ** 20


@dataclass
class CrownResult:
    """S-CROWN bounds of ``C f`` and their linear form in the input.

    ``lower/upper [B, S]``: the certified bounds (outward rounded).
    ``A_lower/A_upper [T', B, S, *input_shape]``, ``bias_lower/bias_upper [B, S]``: for every x in
    the box, ``sum_t A_lower[t] . x_t + bias_lower <= C f(x) <= sum_t A_upper[t] . x_t + bias_upper``
    (the accumulated rounding bound is already folded into the biases).
    ``rounding_lower/upper [B, S]``: everything subtracted from (added to) the float result for
    rounding: S-CROWN's own, the concretization's and the output margin; the exact S-CROWN value
    lies within it. ``intermediate``: the S-IBP bounds used.
    """

    method: str
    lower: np.ndarray
    upper: np.ndarray
    A_lower: Optional[np.ndarray]
    bias_lower: np.ndarray
    A_upper: Optional[np.ndarray]
    bias_upper: np.ndarray
    rounding_lower: np.ndarray
    rounding_upper: np.ndarray
    C: np.ndarray
    intermediate: IntervalBounds


# --- one stage of the back-substitution: steps 1-3 -------------------------------------------------

def _backsub_stage(kernel, lam_s, state, slope_lo, icpt_lo, slope_up, icpt_up, reset_lo, reset_hi, alpha, mem_mag,
                   carry_mag, fwd_scale, bias_vec, g, lam_cur, bias_out, err_out) -> None:
    """Steps 1-3 of one stage under the sound policy (eqs. 8, 10, 17-18): ``refsnn.operator``'s
    back-substitution step with its rounding bound tracked, nothing recorded."""
    unused_coef = np.empty((1, 1, 1, 1), dtype=lam_s.dtype)
    unused_side = np.empty((1, 1, 1, 1), dtype=np.bool_)
    kernel(lam_s, state, slope_lo, icpt_lo, slope_up, icpt_up, reset_lo, reset_hi, alpha, mem_mag, carry_mag,
           fwd_scale, bias_vec, g, lam_cur, unused_coef, unused_side, unused_side, bias_out, err_out)


def _backsub_stage_parallel(*args) -> None:
    _backsub_stage(backsub_kernel(track_rounding=True, record=False, frozen=False, parallel=True), *args)


def _backsub_stage_serial(*args) -> None:
    _backsub_stage(backsub_kernel(track_rounding=True, record=False, frozen=False), *args)


# Parallel over samples for big stages; serial for small ones (a parallel launch costs
# milliseconds when the cores are busy).
PARALLEL_MIN_WORK = 1 << 20


def _backsub_stage_kernel(lam_s, *args):
    if lam_s.size >= PARALLEL_MIN_WORK:
        _backsub_stage_parallel(lam_s, *args)
    else:
        _backsub_stage_serial(lam_s, *args)


def _backsub_stage_numpy(lam_s, state, slope_lo, icpt_lo, slope_up, icpt_up, reset_lo, reset_hi, alpha,
                         mem_mag, carry_mag, fwd_scale, bias_vec, g, lam_cur, bias_out, err_out, record=None):
    """Reference of ``_backsub_stage_kernel`` (same rules, vectorized over samples, specs, neurons).

    ``record`` (a list) receives, per time step, ``(t, lam_s_in, lam_z_in, lam_m, bias_step, err_step)``:
    the step replaces ``lam_s . s_t + lam_z . z_t`` by ``lam_m . m_t + bias_step``, which must not
    exceed it on any reachable trajectory by more than ``err_step`` (its share of the rounding
    bound; the tests check exactly that).
    """
    steps = lam_s.shape[0]
    carry = np.zeros(lam_s.shape[1:])
    bias = np.zeros(lam_s.shape[1:3])
    err = np.zeros(lam_s.shape[1:3])
    for t in range(steps - 1, -1, -1):
        ls = lam_s[t].copy()
        lz = carry
        st = state[t][:, None, :]
        off, on, unstable = st == 0, st == 1, st == 2
        p = np.abs(ls)
        lm = np.where(off, lz, 0.0)
        r = np.where(lz >= 0.0, reset_lo[t][:, None, :], reset_hi[t][:, None, :])
        rz = np.where(unstable, lz * r, 0.0)
        ls = np.where(unstable, ls - rz, ls)
        positive = ls >= 0.0
        a = np.where(positive, slope_lo[t][:, None, :], slope_up[t][:, None, :])
        c = np.where(positive, icpt_lo[t][:, None, :], icpt_up[t][:, None, :])
        lm = np.where(unstable, ls * a, lm)
        step_bias = np.where(on, lam_s[t], 0.0).sum(-1) + rz.sum(-1) + np.where(unstable, ls * c, 0.0).sum(-1)
        p += np.where(unstable, 2.0 * np.abs(rz) + np.abs(ls) * (np.abs(a) * mem_mag[t][:, None, :]
                                                                 + np.abs(c) + 1.0), 0.0)
        p += np.abs(lm) * carry_mag[t][:, None, :]
        step_err = g * p.sum(-1)
        if record is not None:
            record.append((t, lam_s[t].copy(), lz.copy(), lm.copy(), step_bias, step_err))
        bias += step_bias + lm @ bias_vec
        err += step_err + (np.abs(lm) * fwd_scale[t][:, None, :]).sum(-1)
        lam_cur[t] = lm
        carry = alpha * lm
    bias_out[...] = bias
    err_out[...] = err


def stage_magnitudes(bounds: IntervalBounds, k: int, stage: PreparedStage, steps: Optional[int] = None
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the back-substitution's rounding bound multiplies (sound policy), flat ``[steps, B, n]``
    for the first ``steps`` time steps: ``mem_mag >= |m|``, ``carry_mag`` (``|m| + |b|`` plus
    ``alpha |z_{t-1}|``) and ``fwd_scale`` (S-IBP's network-vs-exact margins plus the rounding of
    the adjoint product ``lam_I W``, per unit of ``|lam|``)."""
    flat = (bounds.steps, bounds.batch, stage.n_neurons)
    steps = bounds.steps if steps is None else steps

    def first_steps(value):
        return np.broadcast_to(value, flat)[:steps]

    mem_mag = np.maximum(np.abs(first_steps(bounds.mem_lower[k].reshape(flat))),
                         np.abs(first_steps(bounds.mem_upper[k].reshape(flat))))
    reset_mag = np.maximum(np.abs(first_steps(bounds.reset_lower[k].reshape(flat))),
                           np.abs(first_steps(bounds.reset_upper[k].reshape(flat))))
    carry_mag = mem_mag + np.abs(stage.bias)
    carry_mag[1:] += bounds.decay * reset_mag[:-1]
    transpose_gamma = gamma(stage.n_transpose_terms + 8, U64)
    fwd_scale = (first_steps(bounds.mem_margin[k]) + first_steps(bounds.current_margin[k])
                 + transpose_gamma * first_steps(bounds.current_magnitude[k]))
    return mem_mag, carry_mag, fwd_scale


def _stage_tables(bounds: IntervalBounds, k: int, stage: PreparedStage):
    """Per ``(t, b, neuron)`` tables the kernel reads (shared by all specs), flat ``[T', B, n]``."""
    steps, batch, n = bounds.steps, bounds.batch, stage.n_neurons
    rule = bounds.rule
    flat = (steps, batch, n)
    mem_lower = bounds.mem_lower[k].reshape(flat)
    mem_upper = bounds.mem_upper[k].reshape(flat)
    state = np.ascontiguousarray(bounds.state[k].reshape(flat))
    slope_lo, icpt_lo, slope_up, icpt_up = Fire.relaxation(mem_lower, mem_upper, state, bounds.threshold, rule)
    reset_lo, reset_hi = Reset.relaxation(mem_lower, state, rule)
    mem_mag, carry_mag, fwd_scale = stage_magnitudes(bounds, k, stage)
    return (state, np.ascontiguousarray(slope_lo), np.ascontiguousarray(icpt_lo), np.ascontiguousarray(slope_up),
            np.ascontiguousarray(icpt_up), np.ascontiguousarray(reset_lo), np.ascontiguousarray(reset_hi),
            float(bounds.decay),
            np.ascontiguousarray(mem_mag), np.ascontiguousarray(carry_mag), np.ascontiguousarray(fwd_scale),
            np.ascontiguousarray(stage.bias))


SPARSE_FREE_FRACTION = 0.2


def _sparse_first_op(stage: PreparedStage) -> Optional[np.ndarray]:
    """``W`` of a first stage that is ``[Flatten ->] Linear`` (the sparse concretization applies)."""
    if stage.ops[-1].kind == "linear" and all(op.kind == "flatten" for op in stage.ops[:-1]):
        return stage.ops[-1]
    return None


@njit(cache=True)
def _free_abs_products(lam_flat, weight_t, rad_flat, at_rad):  # pragma: no cover - compiled
    """``at_rad[k, r] = sum_{i free} rad[k, i] |(lam_k W)[r, i]|`` for each (t, b) row ``k``.

    ``lam_flat [K, R, n]``, ``weight_t = W.T [n_in, n]``, ``rad_flat [K, n_in]`` (0 where the
    input bit is fixed). Per row: the free columns are gathered into a cache-sized buffer and
    multiplied in one BLAS product ``[|F|, n] @ [n, R]``.
    """
    count, rows, n = lam_flat.shape
    n_in = weight_t.shape[0]
    columns = np.empty((n_in, n))
    lam_t = np.empty((n, rows))
    coef = np.empty((n_in, rows))
    radii = np.empty(n_in)
    for k in range(count):
        free = 0
        for i in range(n_in):
            if rad_flat[k, i] != 0.0:
                columns[free] = weight_t[i]
                radii[free] = rad_flat[k, i]
                free += 1
        if free == 0:
            for r in range(rows):
                at_rad[k, r] = 0.0
            continue
        for r in range(rows):
            for j in range(n):
                lam_t[j, r] = lam_flat[k, r, j]
        product = coef[:free]
        np.dot(columns[:free], lam_t, product)
        for r in range(rows):
            total = 0.0
            for f in range(free):
                total += radii[f] * abs(product[f, r])
            at_rad[k, r] = total


def _concretize_sparse(op, lam_cur: np.ndarray, center: np.ndarray, magnitude: np.ndarray, rad: np.ndarray,
                       chunk_bytes: int = 32 * 2 ** 20) -> Tuple[np.ndarray, ...]:
    """Box concretization of ``lam_cur W`` without forming it: ``lam . (W mid)`` for the fixed part and,
    per (t, b), ``|lam W[:, F]| . rad_F`` over the free inputs ``F`` only (few for small eps).

    ``W mid`` is S-IBP's current centre minus the bias; ``magnitude >= |W| x_u + |b|`` (S-IBP's)
    bounds the rounding terms. Per (t, b) one small product ``W.T[F] @ lam.T`` (``[|F|, rows]``)
    over the free rows of ``W.T`` (``_free_abs_products``): no padding to the widest row and
    nothing gathered beyond the cache (``chunk_bytes`` is kept for callers; the work is per row).
    """
    del chunk_bytes
    steps, batch, rows, n = lam_cur.shape
    n_in = rad.shape[-1]
    at_mid = np.einsum("tbrn,tbn->br", lam_cur, center - op.bias)
    abs_bound = np.einsum("tbrn,tbn->br", np.abs(lam_cur), np.broadcast_to(magnitude, center.shape))
    rad_flat = np.ascontiguousarray(rad.reshape(steps * batch, n_in), dtype=np.float64)
    lam_flat = np.ascontiguousarray(lam_cur.reshape(steps * batch, rows, n))
    at_rad = np.empty((steps * batch, rows))
    _free_abs_products(lam_flat, transpose_contiguous(op.weight), rad_flat, at_rad)
    at_rad = at_rad.reshape(steps, batch, rows).sum(axis=0)
    return at_mid, at_rad, abs_bound


def _lower_bound_rows(stages, bounds: IntervalBounds, spec: np.ndarray, x_lower: np.ndarray,
                      x_upper: np.ndarray, use_numba: bool = True, record: Optional[list] = None,
                      need_coefficients: bool = True):
    """Lower bounds of ``spec f`` (``spec [B, R, n_out]``): ``(lower, A [T', B, R, *in], bias, err)``.

    ``bias`` already has the back-substitution rounding subtracted; ``lower`` also the
    concretization's; ``err`` is their sum.
    ``record`` (tests): receives ``(k, time_steps, lam_cur, lam_prev)`` per stage, with the
    per-time-step records of ``_backsub_stage_numpy`` (forces the NumPy path).
    Without ``need_coefficients`` a sparse box (few free bits) feeding ``[Flatten ->] Linear``
    skips the largest product, ``lam W_1`` (``A`` is then None).
    """
    n_in = int(np.prod(x_lower.shape[2:]))
    mid = ((x_lower + x_upper) * 0.5).reshape(bounds.steps, bounds.batch, n_in)
    rad = ((x_upper - x_lower) * 0.5).reshape(bounds.steps, bounds.batch, n_in)
    first_op = _sparse_first_op(stages[0])
    sparse = (not need_coefficients and record is None and first_op is not None
              and np.count_nonzero(rad) <= SPARSE_FREE_FRACTION * rad.size)
    steps, batch = bounds.steps, bounds.batch
    rows = spec.shape[1]
    backsub = _backsub_stage_kernel if use_numba else _backsub_stage_numpy
    lam_s = np.ascontiguousarray(np.broadcast_to(spec[None] / steps, (steps,) + spec.shape))
    bias = np.zeros((batch, rows))
    err = np.zeros((batch, rows))
    for k in range(len(stages) - 1, -1, -1):
        stage = stages[k]
        n = stage.n_neurons
        tables = _stage_tables(bounds, k, stage)
        g = gamma(4 * n * steps + 16, U64)
        lam_cur = np.empty((steps, batch, rows, n))
        bias_k = np.empty((batch, rows))
        err_k = np.empty((batch, rows))
        if record is None:
            backsub(lam_s, *tables, g, lam_cur, bias_k, err_k)
        else:
            time_steps = []
            _backsub_stage_numpy(lam_s, *tables, g, lam_cur, bias_k, err_k, record=time_steps)
        bias += bias_k
        err += err_k + 4.0 * U64 * np.abs(bias)
        if k == 0 and sparse:
            at_mid, at_rad, abs_bound = _concretize_sparse(first_op, lam_cur, bounds.current_center[0],
                                                           bounds.current_magnitude[0], rad)
            concretization_err = gamma(steps * n_in + n + 8, U64) * (abs_bound + np.abs(bias))
            bias_sound = bias - err * (1.0 + 8.0 * U64)
            return (at_mid - at_rad + bias_sound - concretization_err, None, bias_sound,
                    err * (1.0 + 8.0 * U64) + concretization_err)
        lam_s = stage.transpose(lam_cur.reshape(steps * batch * rows, n))
        lam_s = lam_s.reshape((steps, batch, rows, -1))
        if record is not None:
            record.append((k, time_steps, lam_cur, lam_s))
    # Concretization at the input box: min over x_t in [x_l, x_u] of lam_x_t . x_t.
    lam_abs = np.abs(lam_s)
    at_mid = np.einsum("tbrj,tbj->br", lam_s, mid)
    at_rad = np.einsum("tbrj,tbj->br", lam_abs, rad)
    abs_mid = np.einsum("tbrj,tbj->br", lam_abs, mid)
    concretization_err = gamma(steps * n_in + 8, U64) * (abs_mid + at_rad + np.abs(bias))
    bias_sound = bias - err * (1.0 + 8.0 * U64)
    lower = at_mid - at_rad + bias_sound - concretization_err
    return lower, lam_s, bias_sound, err * (1.0 + 8.0 * U64) + concretization_err


def crown_bounds(net, x_lower, x_upper, C=None, intermediate: Optional[IntervalBounds] = None,
                 return_coefficients: bool = True, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 use_numba: bool = True) -> CrownResult:
    """S-CROWN (CROWN-IBP) bounds of ``C f`` over the box ``[x_lower, x_upper]`` (``[T', B, *in]`` 0/1).

    ``C``: ``[B, S, n_out]``, ``[S, n_out]`` or None (identity). ``intermediate``: S-IBP bounds of
    the same box (computed if None). The batch is processed in chunks so that coefficient arrays
    stay below ``max_chunk_bytes``. ``return_coefficients=False`` drops ``A_lower/A_upper``.
    """
    box = binary_box(x_lower, x_upper, net)
    C = normalize_spec(C, box.x_lower.shape[1], net.n_outputs)
    return crown_bounds_of_box(net, box, C, prepare_stages(net), intermediate, return_coefficients,
                               max_chunk_bytes, use_numba)


def crown_bounds_of_box(net, box: BinaryBox, C: np.ndarray, stages: Sequence[PreparedStage],
                        intermediate: Optional[IntervalBounds] = None, return_coefficients: bool = True,
                        max_chunk_bytes: int = DEFAULT_CHUNK_BYTES, use_numba: bool = True) -> CrownResult:
    """``crown_bounds`` of an already validated box, normalized ``C [B, S, n_out]`` and prepared stages."""
    steps, batch = box.x_lower.shape[:2]
    if intermediate is None:
        intermediate = interval_bounds_of_box(net, box, stages)
    elif intermediate.steps != steps or intermediate.batch != batch:
        raise ValueError(f"intermediate bounds are for T'={intermediate.steps}, B={intermediate.batch} "
                         f"but the box has T'={steps}, B={batch}")
    n_spec = C.shape[1]
    spec = np.concatenate([C, -C], axis=1)  # upper bound of C f = -(lower bound of -C f)
    x_lo = box.x_lower.astype(np.float64)
    x_hi = box.x_upper.astype(np.float64)

    widest = max([s.n_neurons for s in stages] + [int(np.prod(net.input_shape))]
                 + [getattr(op, "scratch_per_row", 0) for s in stages for op in s.ops])
    per_sample = 3 * steps * 2 * n_spec * widest * 8
    chunk = max(1, min(batch, int(max_chunk_bytes // max(per_sample, 1))))
    lowers, coefs, biases, errs = [], [], [], []
    for start in range(0, batch, chunk):
        part = slice(start, min(batch, start + chunk))
        sub = intermediate if (start == 0 and chunk >= batch) else intermediate.select(part)
        low, lam, bias, err = _lower_bound_rows(stages, sub, spec[part], x_lo[:, part], x_hi[:, part], use_numba,
                                                need_coefficients=return_coefficients)
        lowers.append(low)
        biases.append(bias)
        errs.append(err)
        if return_coefficients:
            coefs.append(lam)
    lower_rows = np.concatenate(lowers)
    bias_rows = np.concatenate(biases)
    err_rows = np.concatenate(errs)
    margin = output_rounding_margin(C, intermediate.rule, steps)
    lower = lower_rows[:, :n_spec] - margin
    upper = -lower_rows[:, n_spec:] + margin
    A_lower = A_upper = None
    if return_coefficients:
        lam = np.concatenate(coefs, axis=1).reshape((steps, batch, 2 * n_spec) + tuple(net.input_shape))
        A_lower = lam[:, :, :n_spec]
        A_upper = -lam[:, :, n_spec:]
    return CrownResult("crown-ibp", lower, upper, A_lower, bias_rows[:, :n_spec] - margin, A_upper,
                       -bias_rows[:, n_spec:] + margin, err_rows[:, :n_spec] + margin,
                       err_rows[:, n_spec:] + margin, C,
                       intermediate)
