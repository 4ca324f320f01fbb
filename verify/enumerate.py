"""Exhaustive enumeration: the ground truth of the ground truth, for sets small enough to list.

Runs the float64 forward pass on every member of an input set (vectorized in batches) and keeps
the exact extremes of each specification, of each membrane, and the robustness margin.
"""
from __future__ import annotations

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
    from refsnn.relaxations import STABLE_ON, UNSTABLE

    steps, batch = members.shape[:2]
    membranes = []
    spikes = None
    kept_prev = None
    for k, (A, c) in enumerate(maps):
        state = states[k]
        last = k == len(maps) - 1
        kept = np.flatnonzero(np.any(state == UNSTABLE, axis=0) | last)
        if k == 0:
            const = base @ A[kept].T + c[kept]                    # [T', kept]
            delta = members[:, :, varying].astype(np.float64) - base[:, None, varying]
            current = const[:, None, :] + delta @ A[kept][:, varying].T
        else:
            fixed_prev = np.setdiff1d(np.arange(A.shape[1]), kept_prev)
            on = (states[k - 1][:, fixed_prev] == STABLE_ON).astype(np.float64)   # [T', fixed]
            const = on @ A[kept][:, fixed_prev].T + c[kept]
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
# and a current differs from the exact one by at most (inputs + 1) 2^-(S+1), far inside the tie band
# within which a membrane is replayed exactly.

GRAY_CURRENT_BITS = 61          # |fixed-point current| < 2^61 (int64 headroom for every update)
GRAY_ERROR_SHARE = 1e-3         # rounding error of a membrane allowed: this share of the tie band


@dataclass
class GrayResult:
    """Outcome of ``gray_margins`` on one ``LevelSet``.

    ``lowest``: the smallest grid margin ``min_i (C_i . counts - c_i)`` over the members not flagged
    (None when every member was flagged or none was evaluated); ``flagged [F, V]``: levels of the members
    whose float margins cannot be trusted (a kept membrane within the tie band of the threshold) or
    whose margin is <= 0, for exact replay; ``stopped``: the enumeration stopped at a member with
    margin <= 0 and no membrane near the threshold (its counts are exact: a witness, the last row of
    ``flagged``); ``overflow``: more than ``cap`` members were flagged and the enumeration stopped
    (nothing is decided); ``members``: members evaluated."""

    lowest: Optional[int]
    flagged: np.ndarray
    stopped: bool
    overflow: bool
    members: int


def _gray_kernel_source(radix, bit_ptr, bit_time, bit_row, first_weights, currents, weights, scales, threshold,
                        decay, fire_at_threshold, band, rows, offsets, cap, flagged):  # pragma: no cover
    """The enumeration loop (compiled by ``_gray_kernel`` with the neuron model's ``CARRY``).

    ``radix [O]``: levels per open variable; ``bit_ptr [O, R + 1]``: per variable and digit ``d``,
    the range of the bits turning on between digits ``d`` and ``d + 1``; ``bit_time``, ``bit_row``:
    each such bit's step and row of ``first_weights [bits, n_0]``; ``currents[k] [T', n_k]`` int64:
    stage ``k``'s currents (stage 0: at the first member; later: the constant part, the kernel adds
    the kept spikes of the stage before through ``weights[k - 1] [n_{k-1}, n_k]``); ``scales [K]``:
    ``2^-S_k``; ``rows [R, n_out]``, ``offsets [R]`` int64: margin ``rows . counts - offsets``.
    Returns ``(lowest, n_flagged, stopped, overflow, members)``; ``flagged [cap, O]`` digits."""
    n_stages = len(currents)
    steps = currents[0].shape[0]
    one = 1.0
    membranes = []
    spikes = []
    changed_t = []
    changed_j = []
    scratch = []
    for k in range(n_stages):
        n = currents[k].shape[1]
        scratch.append(np.zeros(n, dtype=np.int8))
        membranes.append(np.zeros((steps, n)))
        spikes.append(np.zeros((steps, n), dtype=np.int8))
        changed_t.append(np.zeros(steps * n, dtype=np.int64))
        changed_j.append(np.zeros(steps * n, dtype=np.int64))
    near_count = np.zeros((n_stages, currents[0].shape[0]), dtype=np.int64)   # per stage and step
    n_changed = np.zeros(n_stages, dtype=np.int64)
    n_vars = radix.shape[0]
    digits = np.zeros(n_vars, dtype=np.int64)
    direction = np.ones(n_vars, dtype=np.int64)
    total = 1
    for o in range(n_vars):
        total *= radix[o]
    lowest = np.iinfo(np.int64).max
    n_flagged = 0
    n_out = currents[n_stages - 1].shape[1]
    counts = np.zeros(n_out, dtype=np.int64)
    for member in range(total):
        if member > 0:
            # the next member of the reflected Gray code: the lowest variable that can move on
            o = 0
            while True:
                nd = digits[o] + direction[o]
                if 0 <= nd < radix[o]:
                    break
                direction[o] = -direction[o]
                o += 1
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
        else:
            first = 0
        k = 0
        while k < n_stages:
            cur = currents[k]
            if k > 0:
                if member > 0 and n_changed[k - 1] == 0:
                    break  # nothing reaches this stage or the ones after it
                # changes are recorded in step order: the stage's steps before the first stay as they were
                first = changed_t[k - 1][0] if member > 0 else 0
                w = weights[k - 1]
                if member == 0:
                    for t in range(steps):
                        for p in range(spikes[k - 1].shape[1]):
                            if spikes[k - 1][t, p] == 1:
                                for j in range(cur.shape[1]):
                                    cur[t, j] += w[p, j]
                else:
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
            changes = 0
            fresh = scratch[k]
            for t in range(first, steps):
                # one pass the compiler vectorizes (no stores but the rows), then the few changed spikes
                mem_t, spk_t = mem[t], spk[t]
                near = 0
                moved = 0
                if t == 0:
                    for j in range(n):
                        m = cur[t, j] * scale
                        mem_t[j] = m
                        s = 1 if fires_compiled(m, threshold, fire_at_threshold) else 0
                        fresh[j] = s
                        near += 1 if abs(m - threshold) <= band * (1.0 + abs(threshold) + abs(m)) else 0
                        moved += 1 if s != spk_t[j] else 0
                else:
                    mem_p, spk_p = mem[t - 1], spk[t - 1]
                    for j in range(n):
                        m = cur[t, j] * scale + CARRY(mem_p[j], spk_p[j], threshold, decay, one)
                        mem_t[j] = m
                        s = 1 if fires_compiled(m, threshold, fire_at_threshold) else 0
                        fresh[j] = s
                        near += 1 if abs(m - threshold) <= band * (1.0 + abs(threshold) + abs(m)) else 0
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
                return lowest, n_flagged, False, True, member
            flagged[n_flagged, :] = digits
            n_flagged += 1
            if not is_near:
                return lowest, n_flagged, True, False, member + 1
        else:
            lowest = min(lowest, margin)
    return lowest, n_flagged, False, False, total


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


def _fixed_point(A: np.ndarray, c: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray, float, float]]:
    """``(A_q, c_q, 2^-S, error)``: ``A`` and ``c`` rounded to integer multiples of ``2^-S``, with ``S``
    the largest exponent (at most 60) whose currents stay below ``2^GRAY_CURRENT_BITS``, and the
    largest error ``(n_in + 1) 2^-(S+1)`` of a current; None when no exponent leaves 10 bits below 1."""
    magnitude = float(np.max(np.abs(c) + np.abs(A).sum(axis=1), initial=0.0)) + 1.0
    shift = min(60, GRAY_CURRENT_BITS - 1 - int(np.ceil(np.log2(magnitude))))
    if shift < 10:
        return None
    Aq = np.rint(np.ldexp(A, shift)).astype(np.int64)
    cq = np.rint(np.ldexp(c, shift)).astype(np.int64)
    return Aq, cq, float(np.ldexp(1.0, -shift)), (A.shape[1] + 1) * float(np.ldexp(1.0, -shift - 1))


def gray_margins(net64: SNN, maps: List[Tuple[np.ndarray, np.ndarray]], subset, states: List[np.ndarray],
                 rows: np.ndarray, offsets: np.ndarray, band: float, cap: int = 4096) -> Optional[GrayResult]:
    """Every member of ``subset`` (a ``verify.sets.LevelSet``) in Gray-code order: the grid margins
    ``min_i (rows_i . counts - offsets_i)`` (``rows [R, n_out]``, ``offsets [R]`` integers; ``counts``
    the output spike counts), on the neurons the sound interval states ``states[k] [T', n_k]`` of a
    set holding the subset leave unstable (the others enter as constants, as in
    ``reduced_spike_counts``). ``band``: the relative tie band (``verify.encoding.FIXED_TIE_BAND``): a
    member with a kept membrane ``m`` within ``band (1 + |th| + |m|)`` of the threshold is flagged, not
    decided. None when the net's weights do not fit the fixed point within ``GRAY_ERROR_SHARE`` of the
    band (the caller enumerates otherwise)."""
    from refsnn.firing import fires_at_threshold
    from refsnn.relaxations import STABLE_ON, UNSTABLE

    steps = subset.steps
    th, decay = float(net64.threshold), float(net64.decay)
    first_member = subset.from_levels(subset.lo[None])[:, 0].reshape(steps, -1).astype(np.int64)
    n_in = first_member.shape[1]
    bits = subset._free_bits
    var, rank = subset._flat_var[bits], subset._flat_rank[bits]
    # the Gray code moves its first variables most often: those whose bits come latest recompute the
    # fewest steps
    open_vars = subset.open_variables
    earliest = np.full(subset.n_levels.size, steps, np.int64)
    np.minimum.at(earliest, var, bits // n_in)
    open_vars = open_vars[np.argsort(-earliest[open_vars], kind="stable")]
    radix = (subset.hi - subset.lo + 1)[open_vars].astype(np.int64)
    # the bits that turn on between consecutive levels of each open variable, in (variable, rank) order
    slot = np.full(subset.n_levels.size, -1, np.int64)
    slot[open_vars] = np.arange(open_vars.size)
    keep = (slot[var] >= 0) & (rank >= subset.lo[var]) & (rank < subset.hi[var])
    bits, var, rank = bits[keep], var[keep], rank[keep]
    digit = rank - subset.lo[var]
    order = np.lexsort((bits, digit, slot[var]))
    bits, var, digit = bits[order], var[order], digit[order]
    width = int(radix.max(initial=1))
    key = slot[var] * width + digit                      # sorted: variable, then digit
    bit_ptr = np.searchsorted(key, np.arange(open_vars.size)[:, None] * width + np.arange(width + 1)[None, :])
    bit_time, bit_column = bits // n_in, bits % n_in

    currents, weights, scales = [], [], []
    error = 0.0
    kept_prev = None
    for k, (A, c) in enumerate(maps):
        kept = np.flatnonzero(np.any(states[k] == UNSTABLE, axis=0) | (k == len(maps) - 1))
        fixed = _fixed_point(A[kept], c[kept])
        if fixed is None:
            return None
        Aq, cq, scale, err = fixed
        error = max(error, err * steps)
        if k == 0:
            columns, bit_row = np.unique(bit_column, return_inverse=True)
            first_weights = np.ascontiguousarray(Aq[:, columns].T)
            currents.append(first_member @ Aq.T + cq)
        else:
            fixed_prev = np.setdiff1d(np.arange(A.shape[1]), kept_prev)
            on = (states[k - 1][:, fixed_prev] == STABLE_ON).astype(np.int64)
            currents.append(on @ Aq[:, fixed_prev].T + cq)
            weights.append(np.ascontiguousarray(Aq[:, kept_prev].T))
        scales.append(scale)
        kept_prev = kept
    # the membrane sums at most T' currents (decay <= 1); float64 rounding is far below this share
    if error > GRAY_ERROR_SHARE * band * (1.0 + abs(th)):
        return None
    if not weights:
        weights.append(np.zeros((1, 1), np.int64))   # one typed list entry; unused with one stage
    from numba.typed import List as TypedList

    flagged = np.zeros((cap, open_vars.size), np.int64)
    lowest, n_flagged, stopped, overflow, members = _gray_kernel()(
        radix, np.ascontiguousarray(bit_ptr), np.ascontiguousarray(bit_time, np.int64),
        np.ascontiguousarray(bit_row, np.int64), first_weights, TypedList([np.ascontiguousarray(x) for x in currents]),
        TypedList(weights), np.array(scales), th, decay, fires_at_threshold(net64.firing), float(band),
        np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(offsets, np.int64), int(cap), flagged)
    levels = np.broadcast_to(subset.lo, (int(n_flagged), subset.lo.size)).copy()
    levels[:, open_vars] += flagged[:n_flagged]
    return GrayResult(None if lowest == np.iinfo(np.int64).max else int(lowest), levels, bool(stopped),
                      bool(overflow), int(members))
