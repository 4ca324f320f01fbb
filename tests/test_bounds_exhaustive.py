"""Soundness by exhaustion: every input of small boxes through small random networks stays inside
S-IBP, S-CROWN and "best" bounds, for every specification, and every intermediate (currents,
membranes, spikes, reset terms) stays inside the S-IBP intermediate bounds.

Networks: FC up to 6-5-4-3 and tiny CONV (one convolution on 1x4x4 or 2x5x5 inputs, optional
average pooling, then FC), float64 and float32, Gaussian weights scaled so that many neurons are
unstable, or dyadic weights (multiples of th/4: membranes land EXACTLY on the threshold),
random threshold and decay, both firing modes, T' in 1..5, at most 14 free bits per box.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refsnn.bounds import interval_bounds
from refsnn.relaxations import UNSTABLE

from test_bounds_helpers import exhaustive_check, small_boxes, small_networks, spec_list


@settings(deadline=None)
@given(data=st.data())
def test_every_member_of_small_boxes_is_inside_all_bounds(data):
    net = data.draw(small_networks(), label="net")
    x_lower, x_upper = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    exhaustive_check(net, x_lower, x_upper, spec_list(net, x_lower.shape[1], rng))


@settings(deadline=None)
@given(data=st.data())
def test_all_free_boxes_of_tiny_nets_are_inside_all_bounds(data):
    """The whole input space (every bit free) of a net with at most 14 input bits over time."""
    net = data.draw(small_networks().filter(lambda n: int(np.prod(n.input_shape)) <= 7), label="net")
    steps = data.draw(st.integers(1, 14 // int(np.prod(net.input_shape))), label="steps")
    x_lower = np.zeros((steps, 1) + net.input_shape, dtype=np.uint8)
    x_upper = np.ones_like(x_lower)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    exhaustive_check(net, x_lower, x_upper, spec_list(net, 1, rng))


@settings(deadline=None)
@given(data=st.data())
def test_degenerate_boxes_give_the_forward_pass(data):
    """``x_lower == x_upper``: the S-IBP bounds equal the forward pass up to the outward rounding,
    unless a membrane lies within the rounding margin of the threshold (then it is unstable)."""
    net = data.draw(small_networks(), label="net")
    x_lower, _ = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    computed = exhaustive_check(net, x_lower, x_lower, spec_list(net, x_lower.shape[1], rng))
    bounds = interval_bounds(net, x_lower, x_lower)
    if not any((s == UNSTABLE).any() for s in bounds.state):
        rates = net.forward(x_lower).astype(np.float64)
        # The outward margin is a few unit roundoffs of the network's dtype.
        tolerance = 1e-12 if net.dtype == np.float64 else 1e-6
        for method in ("ibp", "crown-ibp", "best"):
            lower, upper = computed[(0, method)]
            np.testing.assert_allclose(lower, rates, rtol=0, atol=tolerance)
            np.testing.assert_allclose(upper, rates, rtol=0, atol=tolerance)
