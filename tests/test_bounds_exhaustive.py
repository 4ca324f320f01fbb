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

from refsnn import SNN, AvgPool2d, Conv2d, Flatten, Linear
from refsnn.bounds import interval_bounds, margin_spec
from refsnn.relaxations import UNSTABLE

from test_bounds_helpers import exhaustive_check


def _weights(rng, shape, fan_in, threshold, style, scale):
    if style == "dyadic":
        return rng.integers(-6, 7, size=shape) * (threshold / 4.0)
    return rng.normal(0.0, scale * threshold * np.sqrt(2.0 / max(fan_in, 1)), size=shape)


@st.composite
def small_networks(draw):
    kind = draw(st.sampled_from(["fc", "conv"]))
    style = draw(st.sampled_from(["gaussian", "dyadic"]))
    if style == "dyadic":
        threshold = draw(st.sampled_from([0.125, 0.25, 0.5, 1.0]))
        decay = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    else:
        threshold = draw(st.floats(0.05, 1.0))
        decay = draw(st.one_of(st.sampled_from([0.0, 0.25, 1.0]), st.floats(0.0, 1.0)))
    firing = draw(st.sampled_from([">=", ">"]))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    scale = draw(st.floats(0.3, 3.0))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))

    def bias(size):
        if style == "dyadic":
            return rng.integers(-3, 4, size=size) * (threshold / 4.0)
        return rng.normal(0.0, 0.5 * threshold, size=size)

    layers = []
    if kind == "fc":
        sizes = [draw(st.integers(1, 6))] + draw(st.lists(st.integers(1, 5), min_size=0, max_size=2)) \
            + [draw(st.integers(1, 3))]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers.append(Linear(_weights(rng, (n_out, n_in), n_in, threshold, style, scale), bias(n_out)))
        input_shape = (sizes[0],)
    else:
        input_shape = draw(st.sampled_from([(1, 4, 4), (2, 5, 5)]))
        channels = draw(st.integers(1, 3))
        kernel = draw(st.integers(2, 3))
        stride = draw(st.integers(1, 2))
        padding = draw(st.integers(0, 1))
        fan_in = input_shape[0] * kernel * kernel
        layers.append(Conv2d(_weights(rng, (channels, input_shape[0], kernel, kernel), fan_in, threshold, style,
                                      scale), bias(channels), stride=stride, padding=padding))
        size = (input_shape[1] + 2 * padding - kernel) // stride + 1
        if size >= 2 and draw(st.booleans()):
            layers.append(AvgPool2d(2))
            size //= 2
        layers.append(Flatten())
        n_flat = channels * size * size
        n_out = draw(st.integers(1, 3))
        layers.append(Linear(_weights(rng, (n_out, n_flat), n_flat, threshold, style, scale), bias(n_out)))
    net = SNN(layers, threshold=threshold, decay=decay, firing=firing, input_shape=input_shape, dtype=dtype)
    return net


@st.composite
def small_boxes(draw, net):
    steps = draw(st.integers(1, 5))
    batch = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    size = steps * int(np.prod(net.input_shape))
    density = draw(st.floats(0.0, 1.0))
    x_lower = np.zeros((steps, batch) + net.input_shape, dtype=np.uint8)
    x_upper = np.zeros_like(x_lower)
    for b in range(batch):
        clean = (rng.random(size) < density).astype(np.uint8)
        n_free = draw(st.integers(0, min(14, size)))
        free = rng.choice(size, size=n_free, replace=False)
        lower, upper = clean.copy(), clean.copy()
        lower[free], upper[free] = 0, 1
        x_lower[:, b] = lower.reshape((steps,) + net.input_shape)
        x_upper[:, b] = upper.reshape((steps,) + net.input_shape)
    return x_lower, x_upper


def _specs(net, batch, rng):
    n_out = net.n_outputs
    specs = [np.eye(n_out), rng.normal(size=(2, n_out))]
    if n_out >= 2:
        specs.append(margin_spec(rng.integers(0, n_out, size=batch), n_out))
    return specs


@settings(deadline=None)
@given(data=st.data())
def test_every_member_of_small_boxes_is_inside_all_bounds(data):
    net = data.draw(small_networks(), label="net")
    x_lower, x_upper = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    exhaustive_check(net, x_lower, x_upper, _specs(net, x_lower.shape[1], rng))


@settings(deadline=None)
@given(data=st.data())
def test_all_free_boxes_of_tiny_nets_are_inside_all_bounds(data):
    """The whole input space (every bit free) of a net with at most 14 input bits over time."""
    net = data.draw(small_networks().filter(lambda n: int(np.prod(n.input_shape)) <= 7), label="net")
    steps = data.draw(st.integers(1, 14 // int(np.prod(net.input_shape))), label="steps")
    x_lower = np.zeros((steps, 1) + net.input_shape, dtype=np.uint8)
    x_upper = np.ones_like(x_lower)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    exhaustive_check(net, x_lower, x_upper, _specs(net, 1, rng))


@settings(deadline=None)
@given(data=st.data())
def test_degenerate_boxes_give_the_forward_pass(data):
    """``x_lower == x_upper``: the S-IBP bounds equal the forward pass up to the outward rounding,
    unless a membrane lies within the rounding margin of the threshold (then it is unstable)."""
    net = data.draw(small_networks(), label="net")
    x_lower, _ = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    computed = exhaustive_check(net, x_lower, x_lower, _specs(net, x_lower.shape[1], rng))
    bounds = interval_bounds(net, x_lower, x_lower)
    if not any((s == UNSTABLE).any() for s in bounds.state):
        rates = net.forward(x_lower).astype(np.float64)
        # The outward margin is a few unit roundoffs of the network's dtype.
        tolerance = 1e-12 if net.dtype == np.float64 else 1e-6
        for method in ("ibp", "crown-ibp", "best"):
            lower, upper = computed[(0, method)]
            np.testing.assert_allclose(lower, rates, rtol=0, atol=tolerance)
            np.testing.assert_allclose(upper, rates, rtol=0, atol=tolerance)
