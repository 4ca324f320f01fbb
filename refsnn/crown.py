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
cancellation dangerous. ``method="crown-ibp"`` decides eq. 8's chord case on the outward-rounded
S-IBP intervals it relaxes; ``method="crown-ibp-paper"`` takes the paper's choice, decided on S-IBP's
intervals without margins (``Precision.plain``); both relax the outward-rounded intervals and are
sound (docs/BOUNDS.md says how often and by how much they differ).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from numba import njit

from .ibp import IntervalBounds, PreparedStage, interval_bounds_of_box, prepare_stages
from .input_sets import BinaryBox, binary_box
from .kernels import transpose_contiguous
from .operator import PARALLEL_MIN_WORK, SplitTerms, StepOutput, StepTables, backsub_stage
from .neurons import neuron_model
from .relaxations import UNIT_ROUNDOFF_FLOAT64, Fire, gamma, output_rounding_margin
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


# --- the stage driver: steps 1-4 for every stage --------------------------------------------------

@dataclass
class StageRecord:
    """What ``backsub_stages(..., record=True)`` keeps of stage ``k``: the step's output (``StepOutput``:
    ``lam_cur``, the sides, each time step's constant and rounding share), the tables it read and
    ``lam_prev [T', B, R, *stage.input_shape]``, the coefficients passed to the previous stage."""

    k: int
    step: StepOutput
    tables: StepTables
    lam_prev: Optional[np.ndarray]


def backsub_stages(stages: Sequence[PreparedStage],
                   tables: Union[Sequence[StepTables], Callable[[int], StepTables]], lam_s: np.ndarray,
                   record: bool = False, params: Optional[Sequence[Sequence[np.ndarray]]] = None,
                   query: Optional[np.ndarray] = None, transpose_first: bool = True,
                   sides: Optional[Sequence[Tuple[np.ndarray, np.ndarray]]] = None,
                   parallel_min_work: int = PARALLEL_MIN_WORK,
                   splits: Optional[Sequence[Optional[SplitTerms]]] = None):
    """Steps 1-4 of Alg. 2 from the last stage to the first: the one loop over stages (and, inside
    ``refsnn.operator.backsub_stage``, over time) of S-CROWN, optimized S-CROWN, full S-CROWN and
    the training bound graph (``refsnn.bound_graph``).

    ``stages``: anything with ``n_neurons`` and the spatial adjoint ``transpose([N, n]) -> [N, *in]``;
    ``lam_s [T', B, R, n_K]``: coefficients on the last stage's spikes, in the dtype the precision
    policy computes in (float64 under ``sound``, the network's under ``exact``); ``tables[k]`` or
    ``tables(k)``: stage ``k``'s ``StepTables`` (a callable builds them when the stage is reached);
    ``params[k]`` its optimized slopes (``refsnn.alpha``); ``sides[k]``: its ``(reset_side,
    fire_side)`` held fixed; ``query [B, R, n_K]``: a membrane query of the last stage (``lam_s``
    zero); ``splits[k]``: stage ``k``'s Lagrangian terms of spike splits (``SplitTerms`` or None;
    beta-CROWN's split constraints, injected by the step while the bound passes the stage).
    Returns ``(lam, bias, err, records)``: ``lam [T', B, R, *in]`` on the input (``lam_cur`` of
    stage 0 if not ``transpose_first``), ``bias [B, R]`` the constant (in ``lam_s``'s dtype),
    ``err [B, R]`` the rounding bound so far (each stage's own plus the rounding of the running
    sum; zero where the tables carry no rounding magnitudes), ``records`` the ``StageRecord`` list
    (first stage first) or None.
    """
    steps, batch, rows = lam_s.shape[:3]
    bias = np.zeros((batch, rows), lam_s.dtype)
    err = np.zeros((batch, rows))
    records = [] if record else None
    last = len(stages) - 1
    for k in range(last, -1, -1):
        stage = stages[k]
        table = tables(k) if callable(tables) else tables[k]
        if table.rounding is not None and lam_s.dtype != np.float64:
            # the rounding bound (gamma of the float64 unit roundoff) holds for float64 arithmetic only
            raise ValueError(f"lam_s: the sound policy's tables need float64 coefficients, got {lam_s.dtype}")
        step = backsub_stage(lam_s, table, record=record, sides=None if sides is None else sides[k],
                             params=None if params is None else params[k], query=query if k == last else None,
                             parallel_min_work=parallel_min_work, split=None if splits is None else splits[k])
        bias += step.bias
        if table.rounding is not None:
            err += step.err + 4.0 * U64 * np.abs(bias)
        if k == 0 and not transpose_first:
            lam_s = step.lam_cur
            lam_prev = None
        else:
            lam_s = stage.transpose(step.lam_cur.reshape(steps * batch * rows, stage.n_neurons))
            lam_s = lam_prev = np.ascontiguousarray(lam_s.reshape((steps, batch, rows, -1)))
        if record:
            records.append(StageRecord(k, step, table, lam_prev))
    if record:
        records.reverse()
    return lam_s, bias, err, records


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


def stage_step_tables(bounds: IntervalBounds, k: int, stage: PreparedStage,
                      chord_interval: Optional[IntervalBounds] = None) -> StepTables:
    """The paper's relaxations (eqs. 8, 10) of stage ``k`` as ``backsub_step`` tables, flat ``[T', B, n]``,
    with the rounding magnitudes of the sound policy (``n`` neurons, ``T'`` steps: ``g = gamma(4 n T' + 16)``).
    ``chord_interval``: S-IBP's intervals the chord case of eq. 8 is decided on (``Fire.chords``'s
    ``decide``; None: the outward-rounded ones of ``bounds``)."""
    steps, batch, n = bounds.steps, bounds.batch, stage.n_neurons
    rule = bounds.rule
    flat = (steps, batch, n)
    mem_lower = bounds.mem_lower[k].reshape(flat)
    mem_upper = bounds.mem_upper[k].reshape(flat)
    state = np.ascontiguousarray(bounds.state[k].reshape(flat))
    chords = None
    if chord_interval is not None:
        decide = (chord_interval.mem_lower[k].reshape(flat), chord_interval.mem_upper[k].reshape(flat))
        chords = Fire.chords(mem_lower, mem_upper, state, bounds.threshold, rule, decide=decide)
    slope_lo, icpt_lo, slope_up, icpt_up = Fire.relaxation(mem_lower, mem_upper, state, bounds.threshold, rule,
                                                           chords=chords)
    reset_lo, reset_hi = neuron_model(bounds.reset).reset_relaxation(mem_lower, state, rule)
    mem_mag, carry_mag, fwd_scale = stage_magnitudes(bounds, k, stage)
    c = np.ascontiguousarray
    rounding = (c(mem_mag), c(carry_mag), c(fwd_scale), gamma(4 * n * steps + 16, U64))
    return StepTables(state, c(slope_lo), c(icpt_lo), c(slope_up), c(icpt_up), c(reset_lo), c(reset_hi),
                      float(bounds.decay), c(stage.bias), rounding, neuron=bounds.reset)


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
                      x_upper: np.ndarray, record: Optional[list] = None, need_coefficients: bool = True,
                      chord_interval: Optional[IntervalBounds] = None):
    """Lower bounds of ``spec f`` (``spec [B, R, n_out]``): ``(lower, A [T', B, R, *in], bias, err)``.

    ``bias`` already has the back-substitution rounding subtracted; ``lower`` also the
    concretization's; ``err`` is their sum.
    ``record`` (tests): receives the ``StageRecord`` of every stage (first stage first): the
    kernel's own record of each time step (``backsub_stage(..., record=True)``).
    Without ``need_coefficients`` a sparse box (few free bits) feeding ``[Flatten ->] Linear``
    skips the largest product, ``lam W_1`` (``A`` is then None).
    """
    n_in = int(np.prod(x_lower.shape[2:]))
    mid = ((x_lower + x_upper) * 0.5).reshape(bounds.steps, bounds.batch, n_in)
    rad = ((x_upper - x_lower) * 0.5).reshape(bounds.steps, bounds.batch, n_in)
    first_op = _sparse_first_op(stages[0])
    sparse = (not need_coefficients and record is None and first_op is not None
              and np.count_nonzero(rad) <= SPARSE_FREE_FRACTION * rad.size)
    steps = bounds.steps
    lam_s = np.ascontiguousarray(np.broadcast_to(spec[None] / steps, (steps,) + spec.shape))
    tables = [stage_step_tables(bounds, k, stage, chord_interval) for k, stage in enumerate(stages)]
    lam_s, bias, err, records = backsub_stages(stages, tables, lam_s, record=record is not None,
                                               transpose_first=not sparse)
    if record is not None:
        record.extend(records)
    if sparse:
        at_mid, at_rad, abs_bound = _concretize_sparse(first_op, lam_s, bounds.current_center[0],
                                                       bounds.current_magnitude[0], rad)
        concretization_err = gamma(steps * n_in + stages[0].n_neurons + 8, U64) * (abs_bound + np.abs(bias))
        bias_sound = bias - err * (1.0 + 8.0 * U64)
        return (at_mid - at_rad + bias_sound - concretization_err, None, bias_sound,
                err * (1.0 + 8.0 * U64) + concretization_err)
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
                 return_coefficients: bool = True, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> CrownResult:
    """S-CROWN (CROWN-IBP) bounds of ``C f`` over the box ``[x_lower, x_upper]`` (``[T', B, *in]`` 0/1).

    ``C``: ``[B, S, n_out]``, ``[S, n_out]`` or None (identity). ``intermediate``: S-IBP bounds of
    the same box (computed if None). The batch is processed in chunks so that coefficient arrays
    stay below ``max_chunk_bytes``. ``return_coefficients=False`` drops ``A_lower/A_upper``.
    """
    box = binary_box(x_lower, x_upper, net)
    C = normalize_spec(C, box.x_lower.shape[1], net.n_outputs)
    return crown_bounds_of_box(net, box, C, prepare_stages(net), intermediate, return_coefficients,
                               max_chunk_bytes)


def crown_bounds_of_box(net, box: BinaryBox, C: np.ndarray, stages: Sequence[PreparedStage],
                        intermediate: Optional[IntervalBounds] = None, return_coefficients: bool = True,
                        max_chunk_bytes: int = DEFAULT_CHUNK_BYTES, chord_interval: Optional[IntervalBounds] = None
                        ) -> CrownResult:
    """``crown_bounds`` of an already validated box, normalized ``C [B, S, n_out]`` and prepared stages.

    ``chord_interval``: S-IBP without margins (``Precision.plain``) for the paper's chord choices
    (``method="crown-ibp-paper"``); None decides them on the outward-rounded ``intermediate``."""
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
        whole = start == 0 and chunk >= batch
        sub = intermediate if whole else intermediate.select(part)
        chord_sub = chord_interval if (whole or chord_interval is None) else chord_interval.select(part)
        low, lam, bias, err = _lower_bound_rows(stages, sub, spec[part], x_lo[:, part], x_hi[:, part],
                                                need_coefficients=return_coefficients, chord_interval=chord_sub)
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
    method = "crown-ibp" if chord_interval is None else "crown-ibp-paper"
    return CrownResult(method, lower, upper, A_lower, bias_rows[:, :n_spec] - margin, A_upper,
                       -bias_rows[:, n_spec:] + margin, err_rows[:, :n_spec] + margin,
                       err_rows[:, n_spec:] + margin, C,
                       intermediate)
