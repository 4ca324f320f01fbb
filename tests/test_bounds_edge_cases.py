"""Hand-written edge cases of the bounds: ties at the threshold, eps = 0, T' = 1, all-free boxes,
free bits that cannot matter, summation order and float32, input sets, validation errors."""
from __future__ import annotations

import numpy as np
import pytest

from refsnn import SNN, Linear
from refsnn.architectures import build_network
from refsnn.bounds import (certify, compute_bounds, crown_bounds, interval_bounds, margin_spec,
                           trivial_bounds)
from refsnn.encoders import draw_rand_maps
from refsnn.input_sets import binary_box, digital_linf_set, l0_count, spike_l0_set
from refsnn.relaxations import STABLE_OFF, STABLE_ON, UNSTABLE, Fire, Precision

from test_bounds_helpers import exhaustive_check

METHODS = ("ibp", "crown-ibp", "crown-ibp-paper", "best")


def _digits(count, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((count, 784)) * (rng.random((count, 784)) < 0.3)
    return images


# --- ties at the threshold ---------------------------------------------------------------------

@pytest.mark.parametrize("firing, expected_rate", [(">=", 1.0), (">", 0.0)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_membrane_exactly_at_threshold_is_unstable_and_contained(firing, expected_rate, dtype):
    # m = 0.25 * 1 = th exactly: fires under ">=" only. No rounding-free decision is safe for a
    # different summation order, so the bound keeps both outcomes.
    net = SNN([Linear(np.array([[0.25]]))], threshold=0.25, decay=0.25, firing=firing, dtype=dtype)
    x = np.ones((1, 1, 1), dtype=np.uint8)
    assert net.forward(x)[0, 0] == expected_rate
    bounds = interval_bounds(net, x, x)
    assert bounds.state[0][0, 0, 0] == UNSTABLE
    for method in METHODS:
        lower, upper = compute_bounds(net, x, x, method=method)
        assert lower[0, 0] <= expected_rate <= upper[0, 0]
    exhaustive_check(net, x, x, [np.eye(1)])


def test_stable_decision_at_exact_threshold_follows_the_firing_mode():
    rule = Precision(u=2.3e-16, th_lo=0.25, th_hi=0.25, net_dtype="float64")
    at = np.array([0.25])
    assert Fire.classify(at, np.array([0.5]), rule, ">=")[0] == STABLE_ON
    assert Fire.classify(at, np.array([0.5]), rule, ">")[0] == UNSTABLE
    assert Fire.classify(np.array([0.0]), at, rule, ">")[0] == STABLE_OFF
    assert Fire.classify(np.array([0.0]), at, rule, ">=")[0] == UNSTABLE


def test_dyadic_tie_through_time_and_reset():
    # Inputs 0.125 then 0.1875 with decay 0.5: m_2 = 0.1875 + 0.5 * 0.125 = 0.25 = th exactly.
    net = SNN([Linear(np.array([[0.125, 0.1875]]))], threshold=0.25, decay=0.5)
    x = np.array([[[1, 0]], [[0, 1]]], dtype=np.uint8)
    assert net.run(x).membranes[0][1, 0, 0] == 0.25
    x_upper = x.copy()
    x_upper[1, 0, 0] = 1  # one free bit
    exhaustive_check(net, x, x_upper, [np.eye(1)])
    bounds = interval_bounds(net, x, x)
    assert bounds.state[0][1, 0, 0] == UNSTABLE


# --- summation order and float32 ----------------------------------------------------------------

def test_summation_order_cannot_flip_a_stable_decision():
    """Threshold set to one float64 summation of the weights: other orders (permuted inputs) and
    float32 land an ulp or so away on either side. A neuron the bounds call stable must agree with
    every order; the bounds must contain every order's output."""
    rng = np.random.default_rng(0)
    flips = 0
    for trial in range(40):
        n = 64
        weights = rng.normal(0.0, 0.1, size=(1, n))
        x = np.ones((1, 1, n), dtype=np.uint8)
        threshold = float(np.sum(weights[0][::-1]))  # one particular order
        if threshold <= 0.01:
            continue
        outputs = set()
        for dtype in (np.float64, np.float32):
            net = SNN([Linear(weights)], threshold=threshold, dtype=dtype)
            bounds = interval_bounds(net, x, x)
            lower, upper = compute_bounds(net, x, x, method="best")
            state = bounds.state[0][0, 0, 0]
            for _ in range(8):
                perm = rng.permutation(n)
                permuted = SNN([Linear(weights[:, perm])], threshold=threshold, dtype=dtype)
                rate = permuted.forward(x[..., perm])[0, 0]
                outputs.add(rate)
                assert lower[0, 0] <= rate <= upper[0, 0]
                if state == STABLE_ON:
                    assert rate == 1.0
                elif state == STABLE_OFF:
                    assert rate == 0.0
            # Exact threshold hits (up to rounding) are never decided stable.
            assert state == UNSTABLE
        flips += len(outputs) > 1
    assert flips > 0, "the test should include orders that actually flip the spike"


def test_float32_network_bounds_contain_its_forward_near_threshold():
    rng = np.random.default_rng(1)
    weights = rng.normal(0.0, 0.1, size=(8, 30)).astype(np.float32)
    x = (rng.random((3, 5, 30)) < 0.5).astype(np.uint8)
    net64 = SNN([Linear(weights.astype(np.float64))], threshold=0.3)
    # Thresholds placed on float32 membranes of the forward: ties in float32 arithmetic.
    membranes = net64.run(x).membranes[0]
    # (thresholds must be > 0: the first positive membrane of the run)
    net32 = SNN([Linear(weights)], threshold=float(membranes[membranes > 0][0]), dtype=np.float32)
    lower, upper = compute_bounds(net32, x, x, method="best")
    rates = net32.forward(x)
    assert np.all(lower <= rates) and np.all(rates <= upper)


# --- eps = 0, T' = 1, all-free boxes, useless free bits ---------------------------------------------

def test_eps_zero_digital_set_gives_the_forward_pass():
    net = build_network("fc", (784,), seed=3)
    images = _digits(6)
    rand_maps = draw_rand_maps(np.random.default_rng(4), 4, images.shape)
    x_lower, x_upper, x_clean = digital_linf_set(images, 0.0, rand_maps)
    np.testing.assert_array_equal(x_lower, x_upper)
    np.testing.assert_array_equal(x_lower, x_clean)
    bounds = interval_bounds(net, x_lower, x_upper)
    assert all(not (s == UNSTABLE).any() for s in bounds.state), "generic float weights: no ties expected"
    rates = net.forward(x_clean)
    for method in METHODS:
        lower, upper = compute_bounds(net, x_lower, x_upper, method=method)
        assert np.all(lower <= rates) and np.all(rates <= upper)
        np.testing.assert_allclose(lower, rates, rtol=0, atol=1e-12)
        np.testing.assert_allclose(upper, rates, rtol=0, atol=1e-12)
    # Every intermediate bound collapses onto the trace (up to the outward rounding).
    trace = net.run(x_clean)
    for k in range(len(net.stages)):
        np.testing.assert_allclose(bounds.mem_lower[k], trace.membranes[k], rtol=0, atol=1e-11)
        np.testing.assert_allclose(bounds.mem_upper[k], trace.membranes[k], rtol=0, atol=1e-11)
        np.testing.assert_array_equal(bounds.spike_lower[k], trace.spikes[k])
        np.testing.assert_array_equal(bounds.spike_upper[k], trace.spikes[k])


def test_single_time_step():
    net = build_network("conv", (1, 8, 8), seed=2)
    rng = np.random.default_rng(2)
    images = rng.random((3, 1, 8, 8))
    x_lower, x_upper, x_clean = digital_linf_set(images, 0.1, draw_rand_maps(rng, 1, images.shape))
    rates = net.forward(x_clean)
    for method in METHODS:
        lower, upper = compute_bounds(net, x_lower, x_upper, method=method)
        assert lower.shape == (3, 10)
        assert np.all(lower <= rates) and np.all(rates <= upper)
    # With one step every rate is 0 or 1 and every stable output neuron is exact.
    bounds = interval_bounds(net, x_lower, x_upper)
    stable = bounds.state[-1][0] != UNSTABLE
    lower, upper = compute_bounds(net, x_lower, x_upper, method="ibp")
    np.testing.assert_allclose(lower[stable], upper[stable], atol=1e-12)


def test_all_free_box_on_the_paper_fc_net():
    net = build_network("fc", (784,), seed=0)
    x_lower = np.zeros((2, 3, 784), dtype=np.uint8)
    x_upper = np.ones_like(x_lower)
    lower, upper = compute_bounds(net, x_lower, x_upper, method="best")
    assert np.all(lower >= -1e-12) and np.all(upper <= 1 + 1e-12)
    C = margin_spec(np.array([0, 1, 2]), 10)
    lower, upper = compute_bounds(net, x_lower, x_upper, method="best", C=C)
    assert np.all(lower >= -1 - 1e-12) and np.all(upper <= 1 + 1e-12)
    assert not certify(net, x_lower, x_upper, np.array([0, 1, 2])).any()


@pytest.mark.parametrize("method", METHODS)
def test_free_bits_that_cannot_matter_change_nothing(method):
    rng = np.random.default_rng(5)
    weights = rng.normal(0, 0.3, size=(6, 10))
    weights[:, 7:] = 0.0  # inputs 7, 8, 9 are ignored by the network
    net = SNN([Linear(weights, rng.normal(0, 0.1, 6)), Linear(rng.normal(0, 0.5, size=(3, 6)))])
    x = (rng.random((4, 2, 10)) < 0.5).astype(np.uint8)
    x_upper = x.copy()
    x_lower = x.copy()
    x_upper[:, :, 7:] = 1
    x_lower[:, :, 7:] = 0
    C = rng.normal(size=(4, 3))
    with_free = compute_bounds(net, x_lower, x_upper, method=method, C=C)
    fixed = compute_bounds(net, x, x, method=method, C=C)
    if method == "ibp":
        np.testing.assert_array_equal(with_free, fixed)
    else:  # S-CROWN's rounding terms depend on the concretization path taken (1e-15 scale)
        np.testing.assert_allclose(with_free, fixed, rtol=0, atol=1e-12)


# --- the results and their options --------------------------------------------------------------

def test_spec_shapes_and_best_is_the_intersection():
    net = build_network("fc", (784,), seed=1)
    rng = np.random.default_rng(6)
    images = _digits(3, seed=6)
    x_lower, x_upper, _ = digital_linf_set(images, 0.05, draw_rand_maps(rng, 3, images.shape))
    C = rng.normal(size=(4, 10))
    broadcast = compute_bounds(net, x_lower, x_upper, method="crown-ibp", C=C)
    full = compute_bounds(net, x_lower, x_upper, method="crown-ibp", C=np.broadcast_to(C, (3, 4, 10)))
    np.testing.assert_array_equal(broadcast[0], full[0])
    identity = compute_bounds(net, x_lower, x_upper, method="ibp")
    np.testing.assert_array_equal(identity[0], compute_bounds(net, x_lower, x_upper, method="ibp", C=np.eye(10))[0])
    ibp = compute_bounds(net, x_lower, x_upper, method="ibp", C=C)
    crown = compute_bounds(net, x_lower, x_upper, method="crown-ibp", C=C)
    best = compute_bounds(net, x_lower, x_upper, method="best", C=C)
    trivial_lower, trivial_upper = trivial_bounds(np.broadcast_to(C, (3, 4, 10)))
    assert np.all(best[0] >= np.maximum(ibp[0], crown[0])) and np.all(best[1] <= np.minimum(ibp[1], crown[1]))
    assert np.all(best[0] >= trivial_lower - 1e-12) and np.all(best[1] <= trivial_upper + 1e-12)


def test_crown_chunks_give_the_same_bounds():
    net = build_network("fc", (784,), seed=2)
    rng = np.random.default_rng(7)
    images = _digits(5, seed=7)
    x_lower, x_upper, _ = digital_linf_set(images, 0.05, draw_rand_maps(rng, 2, images.shape))
    whole = crown_bounds(net, x_lower, x_upper)
    chunked = crown_bounds(net, x_lower, x_upper, max_chunk_bytes=1)
    for other in (chunked,):
        np.testing.assert_allclose(other.lower, whole.lower, rtol=0, atol=1e-12)
        np.testing.assert_allclose(other.upper, whole.upper, rtol=0, atol=1e-12)
        np.testing.assert_allclose(other.A_lower, whole.A_lower, rtol=0, atol=1e-12)
    # Without coefficients a sparse box skips forming lam W_1; only the rounding terms differ.
    sparse = crown_bounds(net, x_lower, x_upper, return_coefficients=False)
    assert sparse.A_lower is None
    np.testing.assert_allclose(sparse.lower, whole.lower, rtol=0, atol=1e-9)
    np.testing.assert_allclose(sparse.upper, whole.upper, rtol=0, atol=1e-9)
    assert whole.A_lower.shape == (2, 5, 10, 784)
    assert whole.method == "crown-ibp" and whole.intermediate.method == "ibp"


# --- input sets -----------------------------------------------------------------------------------

def test_digital_set_conventions_and_values_at_0_and_1():
    images = np.array([[0.0, 1.0, 0.5, 0.03]])
    rand_maps = np.array([[[0.0, 0.999, 0.52, 0.04]], [[0.02, 0.0, 0.48, 0.001]]])
    paper = digital_linf_set(images, 0.05, rand_maps, convention="paper")
    authors = digital_linf_set(images, 0.05, rand_maps, convention="authors")
    assert paper.radius == 0.025 and authors.radius == 0.05
    np.testing.assert_array_equal(paper.x_clean, [[[0, 1, 0, 0]], [[0, 1, 1, 1]]])
    # The value-1 pixel need not spike in the lower train (1 - r <= rand), and the value-0 pixel
    # spikes in the upper train wherever r > rand: both are members of the set.
    np.testing.assert_array_equal(paper.x_lower, [[[0, 0, 0, 0]], [[0, 1, 0, 1]]])
    np.testing.assert_array_equal(paper.x_upper, [[[1, 1, 1, 1]], [[1, 1, 1, 1]]])
    np.testing.assert_array_equal(authors.x_upper, [[[1, 1, 1, 1]], [[1, 1, 1, 1]]])
    for dset in (paper, authors):
        assert np.all(dset.x_lower <= dset.x_clean) and np.all(dset.x_clean <= dset.x_upper)
        assert dset.x_lower[:, :, 0].max() == 0  # a 0 pixel never spikes in the lower train
        assert dset.x_clean[:, :, 1].min() == 1  # a 1 pixel always spikes in the clean train
    x_lower, x_upper, x_clean = paper  # unpacks as a triple
    assert "paper" in paper.box.description


def test_spike_l0_set_modes():
    rng = np.random.default_rng(9)
    spikes = (rng.random((3, 4, 1, 10, 10)) < 0.3).astype(np.uint8)
    paper = spike_l0_set(spikes, 0.05, np.random.default_rng(1), mode="paper")
    again = spike_l0_set(spikes, 0.05, np.random.default_rng(1), mode="paper")
    np.testing.assert_array_equal(paper.free, again.free)
    assert paper.n_free_per_step == 5
    np.testing.assert_array_equal(paper.free.reshape(3, 4, -1).sum(-1), 5)
    assert np.all(paper.x_lower[paper.free] == 0) and np.all(paper.x_upper[paper.free] == 1)
    assert np.all(paper.x_lower[~paper.free] == spikes[~paper.free])
    authors = spike_l0_set(spikes, 0.3, np.random.default_rng(2), mode="authors")
    assert 0.2 < authors.free.mean() < 0.4 and authors.n_free_per_step is None
    assert l0_count(10, 0.25) == 3 and l0_count(784, 0.01) == 8 and l0_count(100, 0.0) == 0
    x_lower, x_upper = spike_l0_set(spikes, 0.0, rng)
    np.testing.assert_array_equal(x_lower, spikes)
    np.testing.assert_array_equal(x_upper, spikes)


# --- validation -----------------------------------------------------------------------------------

def test_bad_inputs_are_rejected_with_clear_messages():
    net = SNN([Linear(np.ones((2, 3)))])
    ok = np.zeros((2, 1, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="binary"):
        compute_bounds(net, ok, np.full((2, 1, 3), 0.5))
    with pytest.raises(ValueError, match="x_lower > x_upper"):
        compute_bounds(net, np.ones_like(ok), ok)
    with pytest.raises(ValueError, match="network expects"):
        compute_bounds(net, np.zeros((2, 1, 4)), np.zeros((2, 1, 4)))
    with pytest.raises(ValueError, match="same shape"):
        compute_bounds(net, ok, np.zeros((3, 1, 3)))
    with pytest.raises(ValueError, match="time-major"):
        binary_box(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="C must be"):
        compute_bounds(net, ok, ok, C=np.ones((2, 3)))
    with pytest.raises(ValueError, match="C must be"):
        compute_bounds(net, ok, ok, C=np.ones((4, 1, 2)))
    with pytest.raises(ValueError, match="NaN"):
        compute_bounds(net, ok, ok, C=np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="unknown method"):
        compute_bounds(net, ok, ok, method="no-such-method")
    with pytest.raises(ValueError, match="labels"):
        margin_spec(np.array([0, 5]), 3)
    images = np.zeros((1, 3))
    with pytest.raises(ValueError, match="convention"):
        digital_linf_set(images, 0.1, np.zeros((2, 1, 3)), convention="paper-ish")
    with pytest.raises(ValueError, match="eps"):
        digital_linf_set(images, -0.1, np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        digital_linf_set(images, 0.1, np.ones((2, 1, 3)))
    with pytest.raises(ValueError, match="rand_maps"):
        digital_linf_set(images, 0.1, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mode"):
        spike_l0_set(ok, 0.1, np.random.default_rng(0), mode="both")
    with pytest.raises(ValueError, match="eps"):
        spike_l0_set(ok, 1.5, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        spike_l0_set(ok, 0.1, 0)
    with pytest.raises(ValueError, match="intermediate"):
        crown_bounds(net, ok, ok, intermediate=interval_bounds(net, np.zeros((3, 1, 3)), np.zeros((3, 1, 3))))


def test_unsupported_layer_is_rejected():
    from refsnn.layers import Layer

    class Doubling(Layer):
        kind = "doubling"

        def output_shape(self, input_shape):
            self.input_shape = tuple(input_shape)
            return self.input_shape

        def forward(self, x):
            return 2.0 * x

    net = SNN([Doubling(), Linear(np.ones((2, 4)))], input_shape=(4,))
    x = np.zeros((1, 1, 4), dtype=np.uint8)
    with pytest.raises(TypeError, match="bounds support"):
        compute_bounds(net, x, x)


def test_margin_spec_rows():
    C = margin_spec(np.array([2, 0]), 3)
    np.testing.assert_array_equal(C[0], [[-1, 0, 1], [0, -1, 1]])
    np.testing.assert_array_equal(C[1], [[1, -1, 0], [1, 0, -1]])



def test_a_margin_bound_of_exactly_zero_is_not_a_certificate(monkeypatch):
    """Outputs are multiples of 1/T', so a margin bound of exactly 0 (a tie) is common: not robust.

    Outward rounding rarely leaves a bound at exactly 0, so the bounds are set here: rows whose
    margin lower bounds are (0.5, 0.0), (0.5, 1e-300) and (-0.0, 0.25).
    """
    import refsnn.bounds as bounds_module

    lower = np.array([[0.5, 0.0], [0.5, 1e-300], [-0.0, 0.25]])
    monkeypatch.setattr(bounds_module, "compute_bounds", lambda *args, **kwargs: (lower, lower + 1.0))
    net = SNN([Linear(np.eye(3))])
    x = np.zeros((1, 3, 3), dtype=np.uint8)
    assert bounds_module.certify(net, x, x, np.array([0, 1, 2])).tolist() == [False, True, False]
