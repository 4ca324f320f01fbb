"""Test oracle: every member's output spike counts in exact semantics (shared by the complete
verifier's property tests)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from verify.encoding import float64_network
from verify.exact import ExactNetwork


def exact_counts(net, input_set) -> set:
    """Every member's output spike counts in exact semantics: float64 enumeration, with every member
    whose membranes come within 1e-6 of the threshold replayed in rational arithmetic (non-dyadic
    weights can round a membrane onto the threshold that lies above it exactly)."""
    net64, exact = float64_network(net), ExactNetwork(net)
    found = set()
    for xs in input_set.enumerate(1024):
        trace = net64.run(xs)
        batch = xs.shape[1]
        counts = trace.spikes[-1].reshape(input_set.steps, batch, -1).sum(axis=0).astype(np.int64)
        near = np.zeros(batch, dtype=bool)
        for mem in trace.membranes:
            near |= (np.abs(mem.reshape(input_set.steps, batch, -1) - net.threshold) <= 1e-6).any(axis=(0, 2))
        for i in np.flatnonzero(near):
            counts[i] = exact.run(xs[:, i]).counts
        found.update(tuple(int(c) for c in row) for row in counts)
    return found


def exact_min_margin(net, input_set, label: int) -> Fraction:
    """The set's exact minimum margin (label's count minus the largest other count, over T')."""
    others = [j for j in range(net.n_outputs) if j != label]
    lowest = min(counts[label] - max(counts[j] for j in others) for counts in exact_counts(net, input_set))
    return Fraction(lowest, input_set.steps)


def assert_verdict_matches_enumeration(net, input_set, label: int, result) -> Fraction:
    """``result`` (``verify.bab.robust_bab``) agrees with enumeration: its verdict, its margin lower
    bound below the exact minimum, its attack margin above it, and a not-robust witness a member
    whose exact margin is <= 0. Returns the exact minimum margin."""
    exact = exact_min_margin(net, input_set, label)
    assert result.status == ("robust" if exact > 0 else "not_robust"), (result, exact)
    assert Fraction(result.margin_lower) <= exact, (result, exact)
    if result.attack_margin != math.inf:
        assert exact <= Fraction(round(result.attack_margin * input_set.steps), input_set.steps)
    if result.status == "not_robust":
        assert input_set.contains(result.witness)
        counts = ExactNetwork(net).run(result.witness).counts
        assert min(counts[label] - counts[j] for j in range(net.n_outputs) if j != label) <= 0
    return exact
