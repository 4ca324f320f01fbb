"""refsnn.testing: refsnn's own bounds pass the helpers; deliberately broken bounds are caught.

The broken implementations are a minimal interval propagation written here with one bug each:
``swap_fire`` swaps the fire relaxation cases (stable firing decided by the upper bound, stable
silent by the lower), ``drop_reset`` drops the reset term (``z = m`` even after a spike), and
``wrong_tie`` decides stability with ``>=`` on a ``>`` network (wrong exactly at ties).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsnn.bounds import certify, compute_bounds, interval_bounds
from refsnn.testing import (BoundViolation, assert_bounds_contain, assert_bounds_sound, assert_certificates_sound,
                            assert_membrane_bounds_sound, box_strategy, snn_strategy, spec_strategy)
from verify.encoding import stage_affine_maps


def toy_interval_bounds(net, x_lower, x_upper, bug=None):
    """Per-stage membrane bounds and output rate bounds of a plain interval propagation."""
    steps, batch = x_lower.shape[:2]
    spike_lower = x_lower.reshape(steps, batch, -1).astype(float)
    spike_upper = x_upper.reshape(steps, batch, -1).astype(float)
    th, alpha = net.threshold, net.decay
    firing = ">=" if bug == "wrong_tie" else net.firing
    mem_lowers, mem_uppers = [], []
    for A, c in stage_affine_maps(net):
        A_pos, A_neg = np.maximum(A, 0), np.minimum(A, 0)
        cur_lower = spike_lower @ A_pos.T + spike_upper @ A_neg.T + c
        cur_upper = spike_upper @ A_pos.T + spike_lower @ A_neg.T + c
        mem_lower, mem_upper = np.empty_like(cur_lower), np.empty_like(cur_upper)
        out_lower, out_upper = np.empty_like(cur_lower), np.empty_like(cur_upper)
        z_lower = np.zeros(cur_lower.shape[1:])
        z_upper = np.zeros(cur_lower.shape[1:])
        for t in range(steps):
            lo = mem_lower[t] = cur_lower[t] + alpha * z_lower
            up = mem_upper[t] = cur_upper[t] + alpha * z_upper
            if bug == "swap_fire":
                always, never = up >= th, lo < th
            elif firing == ">=":
                always, never = lo >= th, up < th
            else:
                always, never = lo > th, up <= th
            out_lower[t] = always.astype(float)
            out_upper[t] = (~never).astype(float)
            if bug == "drop_reset":
                z_lower, z_upper = lo, up
            else:
                z_lower = np.where(always, 0.0, np.where(never, lo, np.minimum(lo, 0.0)))
                z_upper = np.where(always, 0.0, np.where(never, up, np.maximum(np.minimum(up, th), 0.0)))
        mem_lowers.append(mem_lower)
        mem_uppers.append(mem_upper)
        spike_lower, spike_upper = out_lower, out_upper
    return mem_lowers, mem_uppers, spike_lower.mean(axis=0), spike_upper.mean(axis=0)


def toy_bound_fn(bug=None):
    def bound_fn(net, x_lower, x_upper, C):
        _, _, rate_lower, rate_upper = toy_interval_bounds(net, x_lower, x_upper, bug)
        C = np.broadcast_to(np.eye(net.n_outputs), (rate_lower.shape[0], net.n_outputs, net.n_outputs)) \
            if C is None else C
        C_pos, C_neg = np.maximum(C, 0), np.minimum(C, 0)
        lower = np.einsum("bsn,bn->bs", C_pos, rate_lower) + np.einsum("bsn,bn->bs", C_neg, rate_upper)
        upper = np.einsum("bsn,bn->bs", C_pos, rate_upper) + np.einsum("bsn,bn->bs", C_neg, rate_lower)
        return lower, upper
    return bound_fn


def _refsnn_bounds(method):
    return lambda net, x_lower, x_upper, C: compute_bounds(net, x_lower, x_upper, method=method, C=C)


@given(data=st.data())
def test_refsnn_bounds_pass_the_helpers(data):
    net = data.draw(snn_strategy(data.draw(st.sampled_from(["fc", "conv"])), dyadic=data.draw(st.booleans())))
    x_lower, x_upper = data.draw(box_strategy(net, batch=2, max_free_bits=6))
    C = data.draw(spec_strategy(net, batch=2))
    for method in ("ibp", "crown-ibp", "best"):
        assert_bounds_sound(_refsnn_bounds(method), net, x_lower, x_upper, C)
    assert_membrane_bounds_sound(interval_bounds, net, x_lower, x_upper)
    labels = np.array(data.draw(st.lists(st.integers(0, net.n_outputs - 1), min_size=2, max_size=2)))
    assert_certificates_sound(certify, net, x_lower, x_upper, labels)


@given(data=st.data())
def test_correct_toy_bounds_pass(data):
    net = data.draw(snn_strategy("fc"))
    x_lower, x_upper = data.draw(box_strategy(net, max_free_bits=6))
    assert_bounds_sound(toy_bound_fn(None), net, x_lower, x_upper)
    assert_membrane_bounds_sound(lambda n, lo, up: toy_interval_bounds(n, lo, up)[:2], net, x_lower, x_upper)


def _random_case(rng, firing):
    from refsnn import SNN, Linear
    n_in, hidden, steps = 3, 3, 3
    net = SNN([Linear(rng.integers(-4, 5, (hidden, n_in)) / 8, rng.integers(-2, 3, hidden) / 8),
               Linear(rng.integers(-4, 5, (2, hidden)) / 8, rng.integers(-2, 3, 2) / 8)], firing=firing)
    center = rng.integers(0, 2, (steps, 1, n_in)).astype(np.uint8)
    free = rng.random(center.shape) < 0.5
    return net, np.where(free, 0, center).astype(np.uint8), np.where(free, 1, center).astype(np.uint8)


@pytest.mark.parametrize("bug, firing", [("swap_fire", ">="), ("drop_reset", ">="), ("wrong_tie", ">")])
@pytest.mark.parametrize("method", ["enumerate", "milp"])
def test_broken_bounds_are_caught(bug, firing, method):
    rng = np.random.default_rng(0)
    caught = 0
    for _ in range(40):
        net, x_lower, x_upper = _random_case(rng, firing)
        assert_bounds_sound(toy_bound_fn(None), net, x_lower, x_upper, method="enumerate")  # the fixed version
        try:
            assert_bounds_sound(toy_bound_fn(bug), net, x_lower, x_upper, method=method, time_limit=20)
        except BoundViolation as error:
            assert "witness" in str(error) or "reaches" in str(error)
            caught += 1
            if caught == 3:
                break
    assert caught >= 1, f"the {bug} bug went unnoticed on 40 random networks"


def test_broken_membrane_bounds_are_caught():
    rng = np.random.default_rng(1)
    for _ in range(40):
        net, x_lower, x_upper = _random_case(rng, ">=")
        try:
            assert_membrane_bounds_sound(lambda n, lo, up: toy_interval_bounds(n, lo, up, "drop_reset")[:2],
                                         net, x_lower, x_upper)
        except BoundViolation as error:
            assert "membrane" in str(error)
            return
    pytest.fail("dropping the reset term went unnoticed in the membrane bounds")


def test_sampling_finds_an_obvious_violation():
    rng = np.random.default_rng(2)
    for _ in range(40):
        net, x_lower, x_upper = _random_case(rng, ">=")

        def too_tight(n, lo, up, C):
            lower, upper = compute_bounds(n, lo, up, method="ibp", C=C)
            return lower, np.minimum(upper, lower)  # claims the output never moves

        try:
            assert_bounds_sound(too_tight, net, x_lower, x_upper, method="sample", samples=32)
        except BoundViolation:
            return
    pytest.fail("sampling never refuted a bound that claims a constant output")


def test_tie_certificate_is_refuted():
    from refsnn import SNN, Linear
    net = SNN([Linear(np.array([[0.5], [0.5]]), np.zeros(2))])
    x = np.ones((2, 1, 1), np.uint8)

    def certify_at_zero(n, lo, up, labels):  # the pitfall: "certified unless a margin bound is < 0"
        lower, _ = compute_bounds(n, lo, up, method="ibp", C=np.array([[[1.0, -1.0]]]))
        return lower[:, 0] >= -1e-9  # (with a float tolerance that absorbs refsnn's outward rounding)

    with pytest.raises(BoundViolation, match="certified"):
        assert_certificates_sound(certify_at_zero, net, x, x, np.array([0]))
    with pytest.raises(BoundViolation, match="certified"):
        assert_certificates_sound(certify_at_zero, net, x, x, np.array([0]), method="milp")


def test_malformed_claims_are_reported():
    from refsnn import SNN, Linear
    net = SNN([Linear(np.array([[0.5], [0.25]]))])
    x = np.zeros((2, 1, 1), np.uint8)
    with pytest.raises(BoundViolation, match="NaN"):
        assert_bounds_sound(lambda *a: (np.full((1, 2), np.nan), np.ones((1, 2))), net, x, x)
    with pytest.raises(BoundViolation, match="shape"):
        assert_bounds_sound(lambda *a: (np.zeros((2,)), np.ones((2,))), net, x, x)
    with pytest.raises(BoundViolation, match="return"):
        assert_bounds_sound(lambda *a: None, net, x, x)


def test_assert_bounds_contain():
    assert_bounds_contain((np.zeros(2), np.ones(2)), (np.zeros(2), np.full(2, 0.5)))
    with pytest.raises(BoundViolation, match="does not contain"):
        assert_bounds_contain((np.zeros(2), np.ones(2)), (np.full(2, -0.1), np.ones(2)), names=("ibp", "exact"))


def test_milp_and_sample_methods_agree_with_enumeration_on_refsnn_bounds():
    rng = np.random.default_rng(5)
    net, x_lower, x_upper = _random_case(rng, ">")
    for method in ("enumerate", "milp", "sample"):
        truth = assert_bounds_sound(_refsnn_bounds("best"), net, x_lower, x_upper, method=method, samples=64)
        if method != "sample":
            assert truth.exact.all()
