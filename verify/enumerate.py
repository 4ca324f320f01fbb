"""Exhaustive enumeration: the ground truth of the ground truth, for sets small enough to list.

Runs the float64 forward pass on every member of an input set (vectorized in batches) and keeps
the exact extremes of each specification, of each membrane, and the robustness margin. For the
leaves of ``verify.bab``: the reduced pass on the neurons a set's sound intervals leave unstable
(``reduced_spike_counts``) and its Gray-code form with fixed-point current updates
(``gray_margins``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from refsnn.network import SNN

from .encoding import float64_network
from .sets import InputSet, sets_from_boxes
from .specs import normalize_specs

DEFAULT_MAX_MEMBERS = 1 << 16


@dataclass
class Extremes:
    """Exact ``min``/``max`` ``[n_spec]`` of ``C f`` over a set, with inputs attaining them ``[n_spec, T', *in]``."""

    min: np.ndarray
    max: np.ndarray
    argmin: np.ndarray
    argmax: np.ndarray
    members: int


def _check_size(input_set: InputSet, max_members: int) -> int:
    count = input_set.count()
    if count > max_members:
        raise ValueError(f"the input set has {count} members, more than max_members={max_members}; "
                         "use the MILP (verify.exact_bounds) or raise max_members")
    return count


def enumerate_extremes(net: SNN, input_set: InputSet, C_rows: Optional[np.ndarray] = None,
                       max_members: int = DEFAULT_MAX_MEMBERS, batch: int = 4096) -> Extremes:
    """Exact extremes of ``C_rows [n_spec, n_out] @ f`` over every member (identity if None)."""
    count = _check_size(input_set, max_members)
    net64 = float64_network(net)
    C_rows = np.eye(net.n_outputs) if C_rows is None else np.asarray(C_rows, dtype=np.float64)
    best_min = np.full(C_rows.shape[0], np.inf)
    best_max = np.full(C_rows.shape[0], -np.inf)
    arg_min = arg_max = None
    for x in input_set.enumerate(batch):
        values = net64.forward(x) @ C_rows.T  # [b, n_spec]
        i_min, i_max = values.argmin(axis=0), values.argmax(axis=0)
        v_min, v_max = values.min(axis=0), values.max(axis=0)
        if arg_min is None:
            arg_min = np.zeros((C_rows.shape[0],) + x.shape[:1] + x.shape[2:], dtype=np.uint8)
            arg_max = arg_min.copy()
        better = v_min < best_min
        arg_min[better] = x[:, i_min[better]].swapaxes(0, 1)
        best_min = np.where(better, v_min, best_min)
        better = v_max > best_max
        arg_max[better] = x[:, i_max[better]].swapaxes(0, 1)
        best_max = np.where(better, v_max, best_max)
    return Extremes(best_min, best_max, arg_min, arg_max, count)


def enumerate_bounds(net: SNN, x_lower=None, x_upper=None, C=None, input_sets: Optional[Sequence[InputSet]] = None,
                     max_members: int = DEFAULT_MAX_MEMBERS):
    """Exact ``(lower, upper)`` ``[B, n_spec]`` of ``C f`` by enumeration (same conventions as ``exact_bounds``)."""
    sets = list(input_sets) if input_sets is not None else sets_from_boxes(x_lower, x_upper)
    specs = normalize_specs(C, len(sets), net.n_outputs)
    lower = np.empty(specs.shape[:2])
    upper = np.empty(specs.shape[:2])
    for b, input_set in enumerate(sets):
        ext = enumerate_extremes(net, input_set, specs[b], max_members)
        lower[b], upper[b] = ext.min, ext.max
    return lower, upper


def enumerate_membrane_extremes(net: SNN, input_set: InputSet, max_members: int = DEFAULT_MAX_MEMBERS,
                                batch: int = 4096):
    """Exact per-stage membrane ``(min, max)`` lists, each ``[T', *neuron_shape_k]``, over every member."""
    _check_size(input_set, max_members)
    net64 = float64_network(net)
    mins: List[np.ndarray] = []
    maxs: List[np.ndarray] = []
    for x in input_set.enumerate(batch):
        trace = net64.run(x)
        for k, mem in enumerate(trace.membranes):
            lo, hi = mem.min(axis=1), mem.max(axis=1)
            if len(mins) <= k:
                mins.append(lo)
                maxs.append(hi)
            else:
                mins[k] = np.minimum(mins[k], lo)
                maxs[k] = np.maximum(maxs[k], hi)
    return mins, maxs


def enumerate_robust(net: SNN, input_set: InputSet, label: int, max_members: int = DEFAULT_MAX_MEMBERS):
    """``(robust, min_margin, witness)``: robust iff ``f_label - f_j > 0`` for every member and ``j != label``."""
    n_out = net.n_outputs
    rows = np.zeros((n_out - 1, n_out))
    others = [j for j in range(n_out) if j != label]
    rows[:, label] = 1.0
    rows[np.arange(n_out - 1), others] = -1.0
    ext = enumerate_extremes(net, input_set, rows, max_members)
    j = int(np.argmin(ext.min))
    margin = float(ext.min[j])
    return margin > 0, margin, (None if margin > 0 else ext.argmin[j])


# A stage's dense affine map is built (and the reduced pass used) only below this many entries in all
# stages together: the MNIST FC net has 0.5M, a CONV net's second convolution alone tens of millions.
REDUCED_MAX_ENTRIES = 1 << 24


def reduced_maps(net: SNN) -> Optional[List[Tuple[np.ndarray, np.ndarray]]]:
    """``verify.encoding.stage_affine_maps`` of the net when they are small enough for
    ``reduced_spike_counts`` (at most ``REDUCED_MAX_ENTRIES`` entries), else None."""
    from .encoding import stage_affine_maps

    entries = sum(int(np.prod(stage.input_shape)) * int(np.prod(stage.neuron_shape)) for stage in net.stages)
    return stage_affine_maps(net) if entries <= REDUCED_MAX_ENTRIES else None


def reduced_stages(states: List[np.ndarray]) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per stage ``k``, ``(kept, fixed_prev, on)``: the neurons an enumeration simulates (unstable at
    some step of ``states[k] [T', n_k]``, and every output neuron), the neurons of stage ``k - 1`` it
    does not (stable at every step, so every member of the set has their spikes) and those spikes
    ``[T', fixed_prev]`` (bool: stable firing), which enter stage ``k`` as a constant per step (stage
    0: empty). The one reduction ``reduced_spike_counts`` and ``gray_margins`` both make."""
    from refsnn.relaxations import STABLE_ON, UNSTABLE

    out = []
    kept_prev = None
    for k, state in enumerate(states):
        kept = np.flatnonzero(np.any(state == UNSTABLE, axis=0) | (k == len(states) - 1))
        if k == 0:
            fixed_prev = np.zeros(0, np.int64)
            on = np.zeros((state.shape[0], 0), bool)
        else:
            fixed_prev = np.setdiff1d(np.arange(states[k - 1].shape[1]), kept_prev)
            on = states[k - 1][:, fixed_prev] == STABLE_ON
        out.append((kept, fixed_prev, on))
        kept_prev = kept
    return out


def reduced_spike_counts(net64: SNN, maps: List[Tuple[np.ndarray, np.ndarray]], base: np.ndarray,
                         varying: np.ndarray, states: List[np.ndarray], members: np.ndarray
                         ) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Output spike counts ``[b, n_out]`` of members that agree with ``base`` outside the input
    positions ``varying``, computed on the neurons their sound interval bounds leave unstable.

    ``maps``: ``stage_affine_maps(net64)`` (``I = A s + c``); ``base [T', n_in]`` 0/1, one member;
    ``varying [P]``: flat input positions where members may differ from ``base``; ``states[k]
    [T', n_k]``: the interval states (``refsnn.relaxations``: 0 stable silent, 1 stable firing, 2
    unstable) of a set holding every member, e.g. ``refsnn.ibp.interval_bounds_of_box`` of its box;
    ``members [T', b, n_in]``. A neuron stable at every step has the same spikes on every member (the
    bounds are sound), so its spikes enter the next stage as a constant per step; the others (and
    every output neuron) run through ``refsnn.neurons.lif_forward``, the one implementation of
    eqs. 1-2, on currents ``const_t + A[kept, kept_prev] s_t[kept_prev]`` (float64).

    Returns the counts and each stage's simulated membranes ``[T', b, n_kept_k]``, for the caller's
    near-tie check (a membrane within rounding of the threshold may fire differently in exact
    arithmetic). The result equals ``net64.run`` on the members up to float64 rounding.
    """
    from refsnn.neurons import lif_forward

    membranes = []
    spikes = None
    kept_prev = None
    for (A, c), (kept, fixed_prev, on) in zip(maps, reduced_stages(states)):
        if kept_prev is None:
            const = base @ A[kept].T + c[kept]                    # [T', kept]
            delta = members[:, :, varying].astype(np.float64) - base[:, None, varying]
            current = const[:, None, :] + delta @ A[kept][:, varying].T
        else:
            const = on.astype(np.float64) @ A[kept][:, fixed_prev].T + c[kept]
            current = const[:, None, :] + spikes @ A[kept][:, kept_prev].T
        membrane, spikes = lif_forward(np.ascontiguousarray(current), net64.threshold, net64.decay, net64.firing)
        membranes.append(membrane)
        kept_prev = kept
    return spikes.sum(axis=0), membranes


# --- Gray-code enumeration of a LevelSet -----------------------------------------------------------
#
# Consecutive members of a reflected mixed-radix Gray code differ in one variable by one level, i.e.
# in the few input bits of one rank. The enumeration keeps every kept neuron's input current and
# updates it by the weights of the bits (first stage) or spikes (later stages) that changed, then
# reruns the LIF recurrence of the kept neurons; a stage whose spikes did not change leaves the
# later stages as they were. Currents are integers in fixed point (each weight rounded to a
# multiple of 2^-S): the updates are exact integer sums, so nothing drifts over millions of members,
# and a current differs from the exact one by at most (inputs + 1) 2^-(S+1). With the float64
# rounding of the recurrence this bounds how far a simulated membrane can lie from the exact one; a
# member with a membrane within that band of the threshold is flagged and replayed exactly.

GRAY_CURRENT_BITS = 61          # |fixed-point current| < 2^61 (int64 headroom for every update)
GRAY_BAND_SAFETY = 4.0          # the tie band: this many times the error bound of a membrane


@dataclass
class GrayResult:
    """Outcome of ``gray_margins`` on one ``LevelSet``.

    ``lowest``: a lower bound of the grid margins ``min_i (C_i . counts - c_i)`` of the members not
    flagged: the smallest exact margin of those evaluated one by one, and the interval bound of each
    sweep of last-step variables closed without evaluating it (None when nothing unflagged was seen);
    ``flagged [F, V]``: levels of the members whose float margins cannot be trusted (a kept membrane
    within the tie band of the threshold) or whose margin is <= 0, for exact replay; ``stopped``: the
    enumeration stopped at a member with margin <= 0 and no membrane near the threshold (its counts
    are exact: a witness, the last row of ``flagged``); ``overflow``: more than ``cap`` members were
    flagged and the enumeration stopped (nothing is decided); ``exhausted``: it stopped after ``budget``
    passes (members evaluated one by one plus sweeps closed; nothing is decided); ``members``: members covered (evaluated
    or in a closed sweep); ``evaluated``: members evaluated one by one; ``passes``: evaluated plus
    sweeps closed (what ``budget`` counts); ``seconds``: the compiled loop's time (None on the call
    that compiled or loaded it), so that ``passes / seconds`` is the machine's rate on this net."""

    lowest: Optional[int]
    flagged: np.ndarray
    stopped: bool
    overflow: bool
    members: int
    evaluated: int = 0
    exhausted: bool = False
    passes: int = 0
    seconds: Optional[float] = None


def _gray_kernel_source(radix, n_suffix, bit_ptr, bit_time, bit_row, first_weights, suffix_lower, suffix_upper,
                        currents, weights, scales, threshold, decay, fire_at_threshold, bands, rows, offsets, cap,
                        flagged, budget):  # pragma: no cover
    """The enumeration loop (compiled by ``_gray_kernel`` with the neuron model's ``CARRY``).

    ``radix [O]``: levels per open variable, the first ``n_suffix`` of them the *suffix* (every bit
    at the last step); ``bit_ptr [O, R + 1]``: per variable and digit ``d``, the range of the bits
    turning on between digits ``d`` and ``d + 1``; ``bit_time``, ``bit_row``: each such bit's step and
    row of ``first_weights [bits, n_0]``; ``suffix_lower``, ``suffix_upper [n_0]``: the smallest and
    largest sum of the suffix's weights over its levels (relative to digit 0); ``currents[k] [T', n_k]``
    int64: stage ``k``'s currents (stage 0: at the first member; later: the constant part, the kernel
    adds the kept spikes of the stage before through ``weights[k - 1] [n_{k-1}, n_k]``); ``scales
    [K]``: ``2^-S_k``; ``rows [R, n_out]``, ``offsets [R]`` int64: margin ``rows . counts - offsets``.

    The prefix variables run in reflected Gray order; at each prefix member every step but the last
    is the same for all suffix levels, so an interval bound of the last step over the suffix (no
    membrane of the earlier steps near the threshold) may prove every margin of the sweep > 0, and
    the sweep is skipped; otherwise the suffix is swept in reflected Gray order.
    ``budget``: passes at most (a pass evaluates one member or closes one sweep; both cost about one
    rerun of the recurrence, so the budget bounds the time whatever the sweeps do).
    Returns ``(lowest, n_flagged, stopped, incomplete, members, evaluated, passes)`` (``incomplete``: 0 no, 1
    ``cap`` members flagged, 2 ``budget`` reached): ``lowest`` a lower bound of the
    margins of the members not flagged (exact on the ones evaluated); ``flagged [cap, O]`` digits."""
    n_stages = len(currents)
    steps = currents[0].shape[0]
    last_t = steps - 1
    one = 1.0
    membranes = []
    spikes = []
    changed_t = []
    changed_j = []
    scratch = []
    lower_cur = []
    upper_cur = []
    lower_state = []
    for k in range(n_stages):
        n = currents[k].shape[1]
        scratch.append(np.zeros(n, dtype=np.int8))
        membranes.append(np.zeros((steps, n)))
        spikes.append(np.zeros((steps, n), dtype=np.int8))
        changed_t.append(np.zeros(steps * n, dtype=np.int64))
        changed_j.append(np.zeros(steps * n, dtype=np.int64))
        lower_cur.append(np.zeros(n, dtype=np.int64))
        upper_cur.append(np.zeros(n, dtype=np.int64))
        lower_state.append(np.zeros(n, dtype=np.int8))   # 0 off, 1 on, 2 either, at the last step
    near_count = np.zeros((n_stages, steps), dtype=np.int64)   # per stage and step
    n_changed = np.zeros(n_stages, dtype=np.int64)
    n_vars = radix.shape[0]
    digits = np.zeros(n_vars, dtype=np.int64)
    direction = np.ones(n_vars, dtype=np.int64)
    sweep = 1
    for o in range(n_suffix):
        sweep *= radix[o]
    suffix_on = np.zeros(currents[0].shape[1], dtype=np.int64)   # the suffix's share of the last step's currents
    lowest = np.iinfo(np.int64).max
    n_flagged = 0
    members = 0
    evaluated = 0
    passes = 0
    n_out = currents[n_stages - 1].shape[1]
    counts = np.zeros(n_out, dtype=np.int64)
    at_prefix = True
    sweep_left = 0
    first = 0
    member_zero = True
    while True:
        if passes == budget:
            return lowest, n_flagged, False, 2, members, evaluated, passes
        passes += 1
        # --- the LIF recurrence of the kept neurons from step ``first`` (stage 0's currents moved) ---
        k = 0
        while k < n_stages:
            cur = currents[k]
            if k > 0:
                if not member_zero and n_changed[k - 1] == 0:
                    break  # nothing reaches this stage or the ones after it
                w = weights[k - 1]
                if member_zero:
                    first = 0
                    for t in range(steps):
                        for p in range(spikes[k - 1].shape[1]):
                            if spikes[k - 1][t, p] == 1:
                                for j in range(cur.shape[1]):
                                    cur[t, j] += w[p, j]
                else:
                    # changes are recorded in step order: the stage's steps before the first stay
                    first = changed_t[k - 1][0]
                    for c in range(n_changed[k - 1]):
                        t = changed_t[k - 1][c]
                        p = changed_j[k - 1][c]
                        sign = 1 if spikes[k - 1][t, p] == 1 else -1
                        for j in range(cur.shape[1]):
                            cur[t, j] += sign * w[p, j]
            mem = membranes[k]
            spk = spikes[k]
            n = cur.shape[1]
            scale = scales[k]
            band = bands[k]
            changes = 0
            fresh = scratch[k]
            for t in range(first, steps):
                mem_t, spk_t = mem[t], spk[t]
                near = 0
                moved = 0
                for j in range(n):
                    m = cur[t, j] * scale
                    if t > 0:
                        m += CARRY(mem[t - 1, j], spk[t - 1, j], threshold, decay, one)
                    mem_t[j] = m
                    s = 1 if fires_compiled(m, threshold, fire_at_threshold) else 0
                    fresh[j] = s
                    near += 1 if abs(m - threshold) <= band else 0
                    moved += 1 if s != spk_t[j] else 0
                if moved:
                    for j in range(n):
                        if fresh[j] != spk_t[j]:
                            changed_t[k][changes] = t
                            changed_j[k][changes] = j
                            changes += 1
                            spk_t[j] = fresh[j]
                near_count[k, t] = near
            n_changed[k] = changes
            k += 1
        member_zero = False

        # --- at a prefix member: try to close its whole suffix sweep by intervals of the last step ---
        skipped = False
        if at_prefix:
            at_prefix = False
            sweep_left = sweep - 1
            trusted = sweep > 1
            for k in range(n_stages):
                for t in range(last_t):
                    if near_count[k, t] > 0:
                        trusted = False
            if trusted:
                for k in range(n_stages):
                    lo, hi, state = lower_cur[k], upper_cur[k], lower_state[k]
                    cur = currents[k]
                    n = cur.shape[1]
                    for j in range(n):
                        lo[j] = cur[last_t, j]
                        hi[j] = cur[last_t, j]
                    if k == 0:
                        for j in range(n):
                            lo[j] += suffix_lower[j] - suffix_on[j]
                            hi[j] += suffix_upper[j] - suffix_on[j]
                    else:
                        w = weights[k - 1]
                        prev_state, prev_spk = lower_state[k - 1], spikes[k - 1][last_t]
                        for p in range(prev_state.shape[0]):
                            if prev_state[p] != 2 and prev_state[p] == prev_spk[p]:
                                continue   # the member's own spike is every member's
                            # either spike: the contribution ranges over {0, w}; the member's own is in cur
                            for j in range(n):
                                wj = w[p, j]
                                own = wj if prev_spk[p] == 1 else 0
                                lo[j] += min(0, wj) - own
                                hi[j] += max(0, wj) - own
                    scale = scales[k]
                    band = bands[k]
                    for j in range(n):
                        carried = 0.0
                        if last_t > 0:
                            carried = CARRY(membranes[k][last_t - 1, j], spikes[k][last_t - 1, j], threshold,
                                            decay, one)
                        m_lo = lo[j] * scale + carried
                        m_hi = hi[j] * scale + carried
                        if fires_compiled(m_lo, threshold, fire_at_threshold) and \
                                abs(m_lo - threshold) > band:
                            state[j] = 1
                        elif not fires_compiled(m_hi, threshold, fire_at_threshold) and \
                                abs(m_hi - threshold) > band:
                            state[j] = 0
                        else:
                            state[j] = 2
                out_state = lower_state[n_stages - 1]
                out_spk = spikes[n_stages - 1]
                bound = np.iinfo(np.int64).max
                for r in range(rows.shape[0]):
                    value = -offsets[r]
                    for o2 in range(n_out):
                        c = 0
                        for t in range(last_t):
                            c += out_spk[t, o2]
                        coef = rows[r, o2]
                        if out_state[o2] == 2:
                            c += 1 if coef < 0 else 0
                        else:
                            c += out_state[o2]
                        value += coef * c
                    bound = min(bound, value)
                if bound > 0:
                    lowest = min(lowest, bound)
                    members += sweep
                    skipped = True
                    sweep_left = 0

        # --- the member itself ---
        if not skipped:
            members += 1
            evaluated += 1
            last = spikes[n_stages - 1]
            for o2 in range(n_out):
                c = 0
                for t in range(steps):
                    c += last[t, o2]
                counts[o2] = c
            margin = np.iinfo(np.int64).max
            for r in range(rows.shape[0]):
                value = -offsets[r]
                for o2 in range(n_out):
                    value += rows[r, o2] * counts[o2]
                margin = min(margin, value)
            is_near = False
            for k2 in range(n_stages):
                for t in range(steps):
                    if near_count[k2, t] > 0:
                        is_near = True
            if is_near or margin <= 0:
                if n_flagged == cap:
                    return lowest, n_flagged, False, 1, members - 1, evaluated - 1, passes
                flagged[n_flagged, :] = digits
                n_flagged += 1
                if not is_near:
                    return lowest, n_flagged, True, 0, members, evaluated, passes
            else:
                lowest = min(lowest, margin)

        # --- the next member: a suffix move within the sweep, else a prefix move (reflected Gray) ---
        if sweep_left > 0:
            sweep_left -= 1
            o = 0
            while True:
                nd = digits[o] + direction[o]
                if 0 <= nd < radix[o]:
                    break
                direction[o] = -direction[o]
                o += 1
        else:
            if not skipped:
                for o2 in range(n_suffix):   # a finished sweep ends at a corner: the next one runs back
                    direction[o2] = -direction[o2]
            o = n_suffix
            while o < n_vars:
                nd = digits[o] + direction[o]
                if 0 <= nd < radix[o]:
                    break
                direction[o] = -direction[o]
                o += 1
            if o == n_vars:
                break
            at_prefix = True
        d = digits[o] if nd > digits[o] else nd
        sign = 1 if nd > digits[o] else -1
        digits[o] = nd
        row0 = currents[0]
        first = steps
        for b in range(bit_ptr[o, d], bit_ptr[o, d + 1]):
            t = bit_time[b]
            first = min(first, t)
            w = first_weights[bit_row[b]]
            for j in range(w.shape[0]):
                row0[t, j] += sign * w[j]
            if o < n_suffix:
                for j in range(w.shape[0]):
                    suffix_on[j] += sign * w[j]
    return lowest, n_flagged, False, 0, members, evaluated, passes


_GRAY_KERNEL = None


def _gray_kernel():
    """``_gray_kernel_source`` compiled with the paper's LIF carry (``verify`` encodes that model only)."""
    global _GRAY_KERNEL
    if _GRAY_KERNEL is None:
        from refsnn.firing import fires_compiled
        from refsnn.kernels import specialize
        from refsnn.neurons.models import compiled_rules

        rules = compiled_rules("zero")
        _GRAY_KERNEL = specialize(_gray_kernel_source, {"CARRY": rules["carry"], "fires_compiled": fires_compiled},
                                  rules["tag"])
    return _GRAY_KERNEL


def _fixed_point(A: np.ndarray, c: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray, float, float, float]]:
    """``(A_q, c_q, 2^-S, error, magnitude)``: ``A`` and ``c`` rounded to integer multiples of ``2^-S``,
    with ``S`` the largest exponent (at most 60) whose currents stay below ``2^GRAY_CURRENT_BITS``, the
    largest error ``(n_in + 1) 2^-(S+1)`` of a current and a bound of ``|current|``; None when no
    exponent leaves 10 bits below 1."""
    magnitude = float(np.max(np.abs(c) + np.abs(A).sum(axis=1), initial=0.0)) + 1.0
    shift = min(60, GRAY_CURRENT_BITS - 1 - int(np.ceil(np.log2(magnitude))))
    if shift < 10:
        return None
    Aq = np.rint(np.ldexp(A, shift)).astype(np.int64)
    cq = np.rint(np.ldexp(c, shift)).astype(np.int64)
    return Aq, cq, float(np.ldexp(1.0, -shift)), (A.shape[1] + 1) * float(np.ldexp(1.0, -shift - 1)), magnitude


def gray_margins(net64: SNN, maps: List[Tuple[np.ndarray, np.ndarray]], subset, states: List[np.ndarray],
                 rows: np.ndarray, offsets: np.ndarray, cap: int = 4096,
                 budget: Optional[int] = None, close_sweeps: bool = True) -> Optional[GrayResult]:
    """Every member of ``subset`` (a ``verify.sets.LevelSet``) in Gray-code order: the grid margins
    ``min_i (rows_i . counts - offsets_i)`` (``rows [R, n_out]``, ``offsets [R]`` integers; ``counts``
    the output spike counts), on the neurons the sound interval states ``states[k] [T', n_k]`` of a
    set holding the subset leave unstable (the others enter as constants, as in
    ``reduced_spike_counts``). A member with a kept membrane within the stage's tie band of the
    threshold (``GRAY_BAND_SAFETY`` times the bound on the simulated membrane's distance from the
    exact one: fixed-point rounding of the weights plus float64 rounding of the recurrence) is
    flagged, not decided (a stage other than one Linear layer has a map computed in float64: its band
    is at least ``verify.encoding.FIXED_TIE_BAND`` relative, as in the chunked pass). ``close_sweeps``: at each setting of the variables with bits before the
    last step, bound the last step over the others by intervals and skip them when every margin is
    > 0 (False: evaluate every member). At most ``cap`` flagged members and ``budget`` passes
    (members evaluated one by one plus sweeps closed: ``overflow`` / ``exhausted``). None when the weights do not fit the fixed
    point (the caller enumerates otherwise)."""
    from refsnn.firing import fires_at_threshold
    from refsnn.layers import Flatten, Linear

    from .encoding import FIXED_TIE_BAND

    steps = subset.steps
    if subset.count() > 1 << 62:
        return None   # the kernel counts members in int64
    th, decay = float(net64.threshold), float(net64.decay)
    first_member = subset.from_levels(subset.lo[None])[:, 0].reshape(steps, -1).astype(np.int64)
    n_in = first_member.shape[1]
    # the bits that turn on between consecutive levels of each open variable (those of the others
    # are fixed in the first member)
    bits, var, rank = subset.open_bits()
    # the Gray code moves its first variables most often: those whose bits come latest recompute the
    # fewest steps
    open_vars = subset.open_variables
    earliest = np.full(subset.n_levels.size, steps, np.int64)   # over every free bit, fixed ones too
    np.minimum.at(earliest, subset._flat_var[subset._free_bits], subset._free_bits // n_in)
    open_vars = open_vars[np.argsort(-earliest[open_vars], kind="stable")]
    radix = (subset.hi - subset.lo + 1)[open_vars].astype(np.int64)
    # in (variable, rank) order
    slot = np.full(subset.n_levels.size, -1, np.int64)
    slot[open_vars] = np.arange(open_vars.size)
    digit = rank - subset.lo[var]
    order = np.lexsort((bits, digit, slot[var]))
    bits, var, digit = bits[order], var[order], digit[order]
    width = int(radix.max(initial=1))
    key = slot[var] * width + digit                      # sorted: variable, then digit
    bit_ptr = np.searchsorted(key, np.arange(open_vars.size)[:, None] * width + np.arange(width + 1)[None, :])
    bit_time, bit_column = bits // n_in, bits % n_in

    currents, weights, scales, bands = [], [], [], []
    growth = max(1.0, abs(decay)) ** steps
    kept_prev = None
    for k, ((A, c), (kept, fixed_prev, on)) in enumerate(zip(maps, reduced_stages(states))):
        linear = [op for op in net64.stages[k].ops if not isinstance(op, Flatten)]
        exact_map = len(linear) == 1 and isinstance(linear[0], Linear)
        if exact_map:
            # the layer's own weights: the map's columns fl(W + b) - b can differ from W by ~2^-53 |b|
            A, c = np.asarray(linear[0].weight, np.float64), np.asarray(linear[0].bias, np.float64)
        fixed = _fixed_point(A[kept], c[kept])
        if fixed is None:
            return None
        Aq, cq, scale, err, magnitude = fixed
        # per step: the current's fixed-point error, its float conversion, the carry's two roundings
        # and the sum's (|m| <= T' growth magnitude); carried over at most T' steps
        per_step = err + 2.0 ** -52 * (1 + 2 * steps) * (magnitude + err) * growth
        band = GRAY_BAND_SAFETY * steps * growth * per_step
        if not exact_map:
            # a composite stage's map is itself float64 arithmetic (convolution, pooling): at least the
            # chunked pass's relative band, FIXED_TIE_BAND, which covers it there too
            band = max(band, FIXED_TIE_BAND * (1.0 + abs(th) + steps * growth * magnitude))
        bands.append(band)
        if k == 0:
            columns, bit_row = np.unique(bit_column, return_inverse=True)
            first_weights = np.ascontiguousarray(Aq[:, columns].T)
            currents.append(first_member @ Aq.T + cq)
        else:
            currents.append(on.astype(np.int64) @ Aq[:, fixed_prev].T + cq)
            weights.append(np.ascontiguousarray(Aq[:, kept_prev].T))
        scales.append(scale)
        kept_prev = kept
    if not weights:
        weights.append(np.zeros((1, 1), np.int64))   # one typed list entry; unused with one stage
    from numba.typed import List as TypedList

    flagged = np.zeros((cap, open_vars.size), np.int64)
    # the suffix: the first variables, every bit of which is at the last step; per first-stage neuron
    # the smallest and largest sum of its weights over the suffix's levels (digit 0: none on)
    n_suffix = int(np.sum(earliest[open_vars] == steps - 1)) if close_sweeps else 0
    suffix_lower = np.zeros(first_weights.shape[1], np.int64)
    suffix_upper = np.zeros(first_weights.shape[1], np.int64)
    for o in range(n_suffix):
        running = np.zeros(first_weights.shape[1], np.int64)
        low, high = running.copy(), running.copy()
        for d in range(int(radix[o]) - 1):
            running = running + first_weights[bit_row[bit_ptr[o, d]:bit_ptr[o, d + 1]]].sum(axis=0)
            low, high = np.minimum(low, running), np.maximum(high, running)
        suffix_lower += low
        suffix_upper += high
    kernel = _gray_kernel()
    warm = bool(kernel.signatures)
    tic = time.perf_counter()
    lowest, n_flagged, stopped, incomplete, members, evaluated, passes = kernel(
        radix, n_suffix, np.ascontiguousarray(bit_ptr), np.ascontiguousarray(bit_time, np.int64),
        np.ascontiguousarray(bit_row, np.int64), first_weights, suffix_lower, suffix_upper,
        TypedList([np.ascontiguousarray(x) for x in currents]),
        TypedList(weights), np.array(scales), th, decay, fires_at_threshold(net64.firing), np.array(bands),
        np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(offsets, np.int64), int(cap), flagged,
        np.iinfo(np.int64).max if budget is None else int(budget))
    levels = np.broadcast_to(subset.lo, (int(n_flagged), subset.lo.size)).copy()
    levels[:, open_vars] += flagged[:n_flagged]
    return GrayResult(None if lowest == np.iinfo(np.int64).max else int(lowest), levels, bool(stopped),
                      incomplete == 1, int(members), int(evaluated), incomplete == 2, int(passes),
                      time.perf_counter() - tic if warm else None)
