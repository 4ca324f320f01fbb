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
