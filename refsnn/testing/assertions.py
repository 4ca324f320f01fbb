"""Assertion helpers: check a bound implementation against refsnn's forward pass and exact verifier.

The truth over an input box comes from one of three methods:

- ``"enumerate"``: every member of the box through the float64 forward pass (exact; small boxes);
- ``"milp"``: ``verify.exact_bounds`` (exact where it reports so; any real witness is definitive);
- ``"sample"``: random members plus a greedy local search (finds violations, never proves soundness).

A bound is unsound when a REAL input of the set lies outside it. The default tolerance is 0: a
margin bound of 1e-9 where the true minimum is exactly 0 certifies a sample that is not robust.
Failures raise ``BoundViolation`` (an ``AssertionError``) naming the sample, the specification,
the claimed bound, the true value and the witness input, so a failing pytest case explains itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import numpy as np

from ..network import SNN

METHODS = ("enumerate", "milp", "sample")


class BoundViolation(AssertionError):
    """A claimed bound excludes a real input's value (the message shows the witness)."""


@dataclass
class TrueExtremes:
    """Per sample and specification: ``min``/``max`` ``[B, n_spec]`` reached by real inputs
    ``argmin``/``argmax`` ``[B, n_spec, T', *in]``; ``exact`` says the values are the true extremes
    (enumeration, or a MILP that proved them), not just values some input reaches."""

    min: np.ndarray
    max: np.ndarray
    argmin: np.ndarray
    argmax: np.ndarray
    exact: np.ndarray  # bool [B, n_spec, 2] (min, max)
    method: str


def _sets(x_lower, x_upper):
    from verify.sets import sets_from_boxes
    return sets_from_boxes(x_lower, x_upper)


def true_extremes(net: SNN, x_lower, x_upper, C=None, method: str = "enumerate", *, samples: int = 256,
                  time_limit: float = 30.0, max_members: int = 1 << 16, seed: int = 0) -> TrueExtremes:
    """Extremes of ``C f`` over each box reached by real inputs (see the module docstring)."""
    from verify.enumerate import enumerate_extremes
    from verify.milp import exact_bounds
    from verify.search import search_extremes
    from verify.specs import normalize_specs
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    sets = _sets(x_lower, x_upper)
    specs = normalize_specs(C, len(sets), net.n_outputs)
    batch, n_spec = specs.shape[:2]
    x_shape = (batch, n_spec, sets[0].steps) + tuple(net.input_shape)
    out_min, out_max = np.empty((batch, n_spec)), np.empty((batch, n_spec))
    arg_min, arg_max = np.zeros(x_shape, np.uint8), np.zeros(x_shape, np.uint8)
    exact = np.zeros((batch, n_spec, 2), dtype=bool)
    if method == "milp":
        result = exact_bounds(net, C=specs, input_sets=sets, time_limit=time_limit)
        out_min, out_max = result.lower_attained, result.upper_attained
        arg_min, arg_max = result.lower_witness, result.upper_witness
        exact[..., 0] = result.lower_status == "exact"
        exact[..., 1] = result.upper_status == "exact"
        return TrueExtremes(out_min, out_max, arg_min, arg_max, exact, method)
    for b, input_set in enumerate(sets):
        if method == "enumerate":
            ext = enumerate_extremes(net, input_set, specs[b], max_members)
            exact[b] = True
        else:
            ext = search_extremes(net, input_set, specs[b], samples=samples, rng=np.random.default_rng(seed + b))
        out_min[b], out_max[b], arg_min[b], arg_max[b] = ext.min, ext.max, ext.argmin, ext.argmax
    return TrueExtremes(out_min, out_max, arg_min, arg_max, exact, method)


def _format_input(x: np.ndarray) -> str:
    return np.array2string(np.asarray(x).reshape(x.shape[0], -1), separator="", max_line_width=200)


def _check_claim_shape(name: str, value, shape) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    if value.shape != tuple(shape):
        raise BoundViolation(f"{name} has shape {value.shape}, expected {tuple(shape)} ([B, n_spec])")
    if np.any(np.isnan(value)):
        raise BoundViolation(f"{name} contains NaN at {np.argwhere(np.isnan(value))[0].tolist()}")
    return value


def assert_bounds_sound(bound_fn: Callable, net: SNN, x_lower, x_upper, C=None, method: str = "enumerate", *,
                        atol: float = 0.0, samples: int = 256, time_limit: float = 30.0,
                        max_members: int = 1 << 16) -> TrueExtremes:
    """Asserts ``lower <= C f(x) <= upper`` for every real ``x`` in each box.

    ``bound_fn(net, x_lower, x_upper, C) -> (lower, upper)`` with ``[B, n_spec]`` arrays (the
    ``refsnn.bounds.compute_bounds`` convention; ``C`` is passed as ``[B, n_spec, n_out]``, or
    None for the identity). Boxes ``[T', B, *in]`` of 0/1. Returns the extremes it compared with.
    """
    from verify.specs import normalize_specs
    sets = _sets(x_lower, x_upper)
    specs = normalize_specs(C, len(sets), net.n_outputs)
    claimed = bound_fn(net, x_lower, x_upper, None if C is None else specs)
    try:
        lower, upper = claimed
    except (TypeError, ValueError):
        raise BoundViolation(f"bound_fn must return (lower, upper), got {type(claimed).__name__}") from None
    lower = _check_claim_shape("lower", lower, specs.shape[:2])
    upper = _check_claim_shape("upper", upper, specs.shape[:2])
    truth = true_extremes(net, x_lower, x_upper, specs, method, samples=samples, time_limit=time_limit,
                          max_members=max_members)
    problems = []
    for b in range(specs.shape[0]):
        for i in range(specs.shape[1]):
            for side, claim, value, witness, bad in (
                    ("lower", lower[b, i], truth.min[b, i], truth.argmin[b, i], lower[b, i] > truth.min[b, i] + atol),
                    ("upper", upper[b, i], truth.max[b, i], truth.argmax[b, i], upper[b, i] < truth.max[b, i] - atol)):
                if bad and np.isfinite(value):
                    rates = net.forward(witness[:, None])[0]
                    problems.append(
                        f"sample {b}, spec {i} (C row {specs[b, i].tolist()}): claimed {side} bound {claim!r} but "
                        f"the input below reaches {value!r} (rates {rates.tolist()}; spikes [T', n_in]):\n"
                        f"{_format_input(witness)}")
    if problems:
        raise BoundViolation(f"{len(problems)} unsound bound(s) ({truth.method}, {net!r}):\n" + "\n".join(problems[:5]))
    return truth


def assert_membrane_bounds_sound(interval_fn: Callable, net: SNN, x_lower, x_upper, *, atol: float = 0.0,
                                 method: str = "enumerate", samples: int = 256,
                                 max_members: int = 1 << 16) -> None:
    """Asserts claimed intermediate membrane bounds contain every real membrane.

    ``interval_fn(net, x_lower, x_upper) -> (mem_lower, mem_upper)``: lists over stages of
    ``[T', B, *neuron_shape_k]`` arrays, or an object with ``mem_lower``/``mem_upper`` attributes
    (as ``refsnn.bounds.interval_bounds``). ``method``: "enumerate" or "sample".
    """
    from verify.enumerate import enumerate_membrane_extremes
    if method not in ("enumerate", "sample"):
        raise ValueError("method must be 'enumerate' or 'sample' for membrane bounds")
    claimed = interval_fn(net, x_lower, x_upper)
    if hasattr(claimed, "mem_lower"):
        mem_lower, mem_upper = claimed.mem_lower, claimed.mem_upper
    else:
        mem_lower, mem_upper = claimed
    if len(mem_lower) != len(net.stages) or len(mem_upper) != len(net.stages):
        raise BoundViolation(f"expected membrane bounds for {len(net.stages)} stages, got {len(mem_lower)}")
    problems = []
    rng = np.random.default_rng(0)
    for b, input_set in enumerate(_sets(x_lower, x_upper)):
        if method == "enumerate":
            mins, maxs = enumerate_membrane_extremes(net, input_set, max_members)
        else:
            from verify.encoding import float64_network
            trace = float64_network(net).run(input_set.sample(rng, samples))
            mins = [m.min(axis=1) for m in trace.membranes]
            maxs = [m.max(axis=1) for m in trace.membranes]
        for k in range(len(net.stages)):
            lo = np.asarray(mem_lower[k], dtype=np.float64)[:, b]
            up = np.asarray(mem_upper[k], dtype=np.float64)[:, b]
            if lo.shape != mins[k].shape or up.shape != maxs[k].shape:
                raise BoundViolation(f"stage {k} membrane bounds have per-sample shape {lo.shape}, "
                                     f"expected {mins[k].shape} ([T', *neuron_shape])")
            for name, bad, claim, value in (("lower", lo > mins[k] + atol, lo, mins[k]),
                                            ("upper", up < maxs[k] - atol, up, maxs[k])):
                for index in np.argwhere(bad | np.isnan(claim))[:3]:
                    index = tuple(int(v) for v in index)
                    problems.append(f"sample {b}, stage {k}, [t, neuron] {list(index)}: claimed membrane {name} "
                                    f"{claim[index]!r} but a real input reaches {value[index]!r}")
    if problems:
        raise BoundViolation(f"{len(problems)} unsound membrane bound(s):\n" + "\n".join(problems[:8]))


def assert_certificates_sound(certify_fn: Callable, net: SNN, x_lower, x_upper, labels, method: str = "enumerate",
                              *, time_limit: float = 30.0, max_members: int = 1 << 16) -> np.ndarray:
    """Asserts that every sample ``certify_fn`` certifies is robust: all members have
    ``f_label - f_j > 0`` (a tie is a counterexample). ``certify_fn(net, x_lower, x_upper, labels)``
    returns bool ``[B]``. ``method``: "enumerate" or "milp". Returns the certified flags."""
    from verify.enumerate import enumerate_robust
    from verify.milp import robust_query
    sets = _sets(x_lower, x_upper)
    labels = np.asarray(labels).reshape(-1)
    certified = np.asarray(certify_fn(net, x_lower, x_upper, labels), dtype=bool).reshape(-1)
    if certified.shape != (len(sets),):
        raise BoundViolation(f"certify_fn returned shape {certified.shape}, expected ({len(sets)},)")
    problems = []
    for b in np.flatnonzero(certified):
        if method == "enumerate":
            robust, margin, witness = enumerate_robust(net, sets[b], int(labels[b]), max_members)
        else:
            result = robust_query(net, sets[b], int(labels[b]), time_limit=time_limit)
            robust, witness = result.status != "not_robust", result.witness
            margin = None if witness is None else float(np.min(
                result.witness_rates[int(labels[b])] - np.delete(result.witness_rates, int(labels[b]))))
        if not robust:
            rates = net.forward(witness[:, None])[0]
            problems.append(f"sample {b} (label {int(labels[b])}) is certified but the input below has margin "
                            f"{margin!r} (rates {rates.tolist()}, prediction {int(np.argmax(rates))}):\n"
                            f"{_format_input(witness)}")
    if problems:
        raise BoundViolation(f"{len(problems)} wrong certificate(s):\n" + "\n".join(problems[:5]))
    return certified


def assert_bounds_contain(outer: Tuple[np.ndarray, np.ndarray], inner: Tuple[np.ndarray, np.ndarray],
                          atol: float = 0.0, names: Sequence[str] = ("outer", "inner")) -> None:
    """Asserts ``outer_lower <= inner_lower`` and ``inner_upper <= outer_upper`` elementwise."""
    outer_lower, outer_upper = (np.asarray(v, dtype=np.float64) for v in outer)
    inner_lower, inner_upper = (np.asarray(v, dtype=np.float64) for v in inner)
    bad_lower = np.argwhere(outer_lower > inner_lower + atol)
    bad_upper = np.argwhere(outer_upper < inner_upper - atol)
    problems: List[str] = []
    for index in bad_lower[:5]:
        index = tuple(int(v) for v in index)
        problems.append(f"{names[0]} lower {outer_lower[index]!r} > {names[1]} lower {inner_lower[index]!r} at {index}")
    for index in bad_upper[:5]:
        index = tuple(int(v) for v in index)
        problems.append(f"{names[0]} upper {outer_upper[index]!r} < {names[1]} upper {inner_upper[index]!r} at {index}")
    if problems:
        raise BoundViolation(f"{names[0]} does not contain {names[1]}:\n" + "\n".join(problems))
