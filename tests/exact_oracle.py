"""Test oracle: every member's output spike counts in exact semantics (shared by the complete
verifier's property tests)."""
from __future__ import annotations

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
