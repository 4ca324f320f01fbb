"""The binary eq. 11 kernels of S-IBP (``refsnn.ibp._binary_interval_kernel`` and
``_binary_conv_interval_kernel``: the weight rows of the set bits of 0/1 bounds, float32 weights
widened to float64, the current margin applied in the same pass) against dense float64 products
written here, and the bounds they give against the network's own runs (Linear and Conv2d with
strides and paddings, ties at the threshold, eps = 0, mostly unstable layers)."""
from __future__ import annotations

import numpy as np
import pytest

from refsnn import SNN, Conv2d, Flatten, Linear
from refsnn import ibp
from refsnn.ibp import interval_bounds, prepare_stages
from refsnn.kernels import _MIN_ROWS
from refsnn.relaxations import UNIT_ROUNDOFF_FLOAT64, UNSTABLE, Precision, gamma

from test_bounds_helpers import check_intermediates

# (name, layer arguments, input shape): kernel sizes, strides and paddings that leave window
# positions partly outside the input, and a 1x1 convolution.
CONV_CASES = [
    ("k3s2p1", dict(in_channels=3, out_channels=5, kernel=(3, 3), stride=2, padding=1), (3, 9, 7)),
    ("k2s1p0", dict(in_channels=2, out_channels=4, kernel=(2, 2), stride=1, padding=0), (2, 6, 6)),
    ("k3x2s(1,2)p2", dict(in_channels=1, out_channels=3, kernel=(3, 2), stride=(1, 2), padding=2), (1, 7, 8)),
    ("k1s1p0", dict(in_channels=4, out_channels=3, kernel=(1, 1), stride=1, padding=0), (4, 5, 5)),
]


def _conv(rng, in_channels, out_channels, kernel, stride, padding, dyadic=False) -> Conv2d:
    shape = (out_channels, in_channels) + tuple(kernel)
    weight = rng.integers(-6, 7, size=shape) / 8.0 if dyadic else rng.normal(0.0, 0.7, size=shape)
    bias = rng.integers(-2, 3, size=out_channels) / 8.0 if dyadic else rng.normal(0.0, 0.2, size=out_channels)
    return Conv2d(weight, bias, stride=stride, padding=padding)


def _binary_bounds(rng, shape, density, fixed_share):
    """``(lower, upper)`` 0/1 float64 of ``shape``: each bit set with ``density``, a set bit fixed
    (both bounds 1) with probability ``fixed_share``, else free."""
    upper = (rng.random(shape) < density).astype(np.float64)
    lower = upper * (rng.random(shape) < fixed_share)
    return lower, upper


def _reference_conv(x, weight, stride, padding):
    """Cross-correlation in float64 by shifted slices (``x [N, C, H, W]``, ``weight [O, C, kh, kw]``)."""
    (sh, sw), (ph, pw) = stride, padding
    out_channels, _, kh, kw = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out_h = (padded.shape[2] - kh) // sh + 1
    out_w = (padded.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], out_channels, out_h, out_w))
    for ky in range(kh):
        for kx in range(kw):
            window = padded[:, :, ky:ky + sh * (out_h - 1) + 1:sh, kx:kx + sw * (out_w - 1) + 1:sw]
            out += np.einsum("nchw,oc->nohw", window, weight[:, :, ky, kx])
    return out.reshape(x.shape[0], -1)


def _dense_reference(layer, lower, upper):
    """``(center, radius, magnitude)`` of eq. 11 by float64 products (flat ``[N, n]``)."""
    weight = layer.weight.astype(np.float64)
    bias = layer.bias.astype(np.float64)
    if isinstance(layer, Linear):
        product = lambda w, x: x.reshape(x.shape[0], -1) @ w.T  # noqa: E731
        per_output = lambda v: v  # noqa: E731
    else:
        product = lambda w, x: _reference_conv(x, w, layer.stride, layer.padding)  # noqa: E731
        positions = _reference_conv(lower[:1], weight, layer.stride, layer.padding).shape[1] // weight.shape[0]
        per_output = lambda v: np.repeat(v, positions)  # noqa: E731
    center = product(weight, (lower + upper) * 0.5) + per_output(bias)
    radius = product(np.abs(weight), (upper - lower) * 0.5)
    magnitude = product(np.abs(weight), upper) + per_output(np.abs(bias))
    return center, radius, magnitude


@pytest.fixture(params=["serial", "parallel"])
def variant(request, monkeypatch):
    """Both compiled variants of the kernels (the work threshold at 0 or out of reach)."""
    monkeypatch.setattr(ibp, "PARALLEL_MIN_IBP_WORK", 0 if request.param == "parallel" else 1 << 62)
    return request.param


def _spy(monkeypatch, name):
    """Counts the calls of the kernel ``refsnn.ibp.<name>``."""
    calls = []
    kernel = getattr(ibp, name)

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return kernel(*args, **kwargs)
    monkeypatch.setattr(ibp, name, counted)
    return calls


def _check_against_reference(net, layer, lower, upper):
    stage = prepare_stages(net)[0]
    rule = Precision.sound(net)
    tight = rule.net_dtype != "float64"
    cur_lower, cur_upper, center, magnitude = stage.current_bounds(lower, upper, rule, tight)
    ref_center, ref_radius, ref_magnitude = _dense_reference(layer, lower, upper)
    # Both sides are float64 evaluations of the same exact sums: they may differ by their own
    # rounding only, far below one weight (what a dropped or doubled index would change).
    slack = 4.0 * gamma(stage.n_terms + 4, UNIT_ROUNDOFF_FLOAT64) * ref_magnitude
    assert np.all(np.abs(center - ref_center) <= slack), "center differs from the dense products"
    if tight:
        assert np.all(np.abs(magnitude - ref_magnitude) <= slack), "magnitude differs from |W| upper + |b|"
    else:
        magnitude = np.broadcast_to(magnitude, ref_magnitude.shape)
        assert np.all(magnitude >= ref_magnitude - slack), "the input-free magnitude is below |W| upper + |b|"
    margin = rule.current_margin(magnitude, stage.n_terms)
    assert np.all(margin > 0.0)
    # The whole outward margin is applied on both sides, on top of the exact interval.
    assert np.all(cur_lower <= ref_center - ref_radius - margin + 2.0 * slack)
    assert np.all(cur_upper >= ref_center + ref_radius + margin - 2.0 * slack)
    assert np.all(cur_lower <= cur_upper)
    return cur_lower, cur_upper


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, conv_args, input_shape", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv_kernel_matches_dense_products(monkeypatch, variant, name, conv_args, input_shape, dtype):
    rng = np.random.default_rng(len(name))
    layer = _conv(rng, **conv_args)
    net = SNN([layer], input_shape=input_shape, threshold=0.5, dtype=dtype)
    calls = _spy(monkeypatch, "_binary_conv_interval_kernel")
    rows = _MIN_ROWS + 5
    for density, fixed_share in ((0.3, 0.5), (0.45, 0.0), (0.2, 1.0), (0.0, 0.0)):
        lower, upper = _binary_bounds(rng, (rows,) + input_shape, density, fixed_share)
        _check_against_reference(net, net.layers[0], lower, upper)
    assert len(calls) == 4, "the binary conv kernel was not the path taken"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_kernel_matches_dense_products(monkeypatch, variant, dtype):
    rng = np.random.default_rng(3)
    net = SNN([Flatten(), Linear(rng.normal(0.0, 0.4, size=(13, 90)), rng.normal(0.0, 0.2, size=13))],
              input_shape=(2, 5, 9), threshold=0.5, dtype=dtype)
    calls = _spy(monkeypatch, "_binary_interval_kernel")
    for rows in (3, _MIN_ROWS + 9):
        for density, fixed_share in ((0.15, 0.5), (0.12, 0.0), (0.1, 1.0), (0.0, 0.0)):
            lower, upper = _binary_bounds(rng, (rows, 2, 5, 9), density, fixed_share)
            _check_against_reference(net, net.layers[1], lower, upper)
    assert len(calls) == 8, "the binary linear kernel was not the path taken"


def test_dense_linear_stage_fixed_bits_magnitude(monkeypatch, variant):
    # Dense upper bounds: the GEMM path, with |W| lower summed over the set lower bits (from _MIN_ROWS rows).
    rng = np.random.default_rng(4)
    net = SNN([Linear(rng.normal(0.0, 0.4, size=(11, 40)), rng.normal(0.0, 0.2, size=11))], threshold=0.5,
              dtype=np.float32)
    calls = _spy(monkeypatch, "_fixed_abs_sums")
    for fixed_share in (0.05, 0.5, 1.0, 0.0):
        lower, upper = _binary_bounds(rng, (_MIN_ROWS + 1, 40), 0.8, fixed_share)
        _check_against_reference(net, net.layers[0], lower, upper)
    assert len(calls) == 4


def _members(rng, x_lower, x_upper, count):
    """The two extremes and ``count - 2`` fair coins on every free bit, ``[T', count * B, *in]``."""
    coins = rng.random((count,) + x_lower.shape) < 0.5
    members = np.where(coins, x_upper, x_lower)
    members[0], members[1] = x_lower, x_upper
    return members


def _conv_net(rng, dyadic, dtype, threshold, firing):
    first = _conv(rng, 2, 4, (3, 3), 2, 1, dyadic)
    second = _conv(rng, 4, 3, (2, 2), 1, 0, dyadic)
    scale = 8.0 if dyadic else 1.0
    head = Linear(np.round(rng.normal(0.0, 0.5, size=(3, 3 * 4 * 4)) * scale) / scale, np.zeros(3))
    return SNN([first, second, Flatten(), head], input_shape=(2, 9, 9), threshold=threshold, decay=0.5,
               firing=firing, dtype=dtype)


@pytest.mark.parametrize("dyadic, dtype, firing", [(True, np.float32, ">="), (True, np.float32, ">"),
                                                   (True, np.float64, ">="), (False, np.float32, ">=")])
def test_conv_kernel_bounds_contain_the_network(monkeypatch, variant, dyadic, dtype, firing):
    """The network's own runs (its dtype, its summation order) lie in every intermediate bound when
    the binary conv kernel computes the currents: random boxes, eps = 0 (lower == upper) and boxes
    of free bits only; dyadic weights put membranes exactly on the threshold."""
    rng = np.random.default_rng(7 + int(dyadic))
    net = _conv_net(rng, dyadic, dtype, threshold=0.25 if dyadic else 0.3, firing=firing)
    calls = _spy(monkeypatch, "_binary_conv_interval_kernel")
    steps, batch = 3, 12   # 36 rows >= _MIN_ROWS: the kernel path
    shape = (steps, batch) + net.input_shape
    clean = (rng.random(shape) < 0.3).astype(np.float64)
    lower, upper = _binary_bounds(rng, shape, 0.3, 0.5)
    free_only = (np.zeros(shape), (rng.random(shape) < 0.45).astype(np.float64))
    unstable, ties = [], 0
    for x_lower, x_upper in ((lower, upper), (clean, clean), free_only):
        bounds = interval_bounds(net, x_lower, x_upper)
        unstable.append(bounds.unstable_fraction()[0])
        members = _members(rng, x_lower, x_upper, 6)
        for m in range(6):
            trace = net.run(members[m])
            _check_all_samples(bounds, trace, batch)
            ties += sum(int(np.sum(mem == net.threshold)) for mem in trace.membranes)
    assert len(calls) >= 3, "the binary conv kernel was not the path taken"
    assert unstable[2] > 0.5, "the box of free bits should leave most first-stage neurons unstable"
    if dyadic:
        assert ties > 0, "no membrane exactly on the threshold: the tie case is not exercised"
    else:
        assert unstable[1] == 0.0, "eps = 0 without ties: every first-stage neuron is decided"


def _check_all_samples(bounds, trace, batch):
    for b in range(batch):
        single = _TraceView(trace, b)
        check_intermediates(bounds, single, b)


class _TraceView:
    """Sample ``b`` of a trace as a one-member trace (``check_intermediates`` reads ``[T', 1, ...]``)."""

    def __init__(self, trace, b):
        pick = lambda arrays: [a[:, b:b + 1] for a in arrays]  # noqa: E731
        self.currents, self.membranes = pick(trace.currents), pick(trace.membranes)
        self.spikes, self.resets = pick(trace.spikes), pick(trace.resets)
