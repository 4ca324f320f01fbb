"""The exact MILP verifier against exhaustive enumeration, on hand-made ties and random small nets.

Exact answers must equal enumeration EXACTLY (outputs are multiples of 1/T'); every real
trajectory must satisfy both MILP models; S-IBP/S-CROWN must contain the exact bounds.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsnn import SNN, Linear
from refsnn.testing import input_set_strategy, snn_strategy
from verify import (BoxSet, DigitalLinfSet, SpikeL0Set, VerifierError, enumerate_bounds, enumerate_robust,
                    exact_bounds, verify_robust)
from verify.encoding import SNNMilp, Solution, dyadic_margin, membrane_bounds, pad_bounds
from verify.milp import RELAX_MARGIN, SampleVerifier, robust_query

TIME_LIMIT = 20.0


def _tie_net(firing):
    # One input, one neuron with weight exactly th: the membrane sits ON the threshold when x = 1.
    return SNN([Linear(np.array([[0.25]]), np.array([0.0]))], firing=firing)


@pytest.mark.parametrize("firing, expected_upper", [(">=", 1.0), (">", 0.5)])
def test_tie_at_threshold_is_resolved_by_the_firing_rule(firing, expected_upper):
    net = _tie_net(firing)
    # T' = 2, the input bit free at both steps. ">=": fires at both steps when x = 1.
    # ">": m1 = .25 does not fire, carries .0625, m2 = .3125 fires: rate 1/2.
    x_lower = np.zeros((2, 1, 1), np.uint8)
    x_upper = np.ones((2, 1, 1), np.uint8)
    result = exact_bounds(net, x_lower, x_upper, time_limit=TIME_LIMIT)
    assert result.exact
    assert result.upper[0, 0] == expected_upper
    assert result.lower[0, 0] == 0.0
    witness = result.upper_witness[0, 0]
    assert net.forward(witness[:, None])[0, 0] == expected_upper


def test_hand_computed_box():
    W = np.array([[0.25, 0.125], [0.5, -0.25]])
    net = SNN([Linear(W, np.array([0.0, -0.125]))])
    x_lower = np.array([[[1, 0]], [[0, 0]], [[1, 1]]], dtype=np.uint8)
    x_upper = np.array([[[1, 0]], [[0, 1]], [[1, 1]]], dtype=np.uint8)
    lower, upper = exact_bounds(net, x_lower, x_upper, time_limit=TIME_LIMIT)
    np.testing.assert_array_equal(lower, [[2 / 3, 1 / 3]])
    np.testing.assert_array_equal(upper, [[2 / 3, 1 / 3]])
    lower_e, upper_e = enumerate_bounds(net, x_lower, x_upper)
    np.testing.assert_array_equal(lower, lower_e)
    np.testing.assert_array_equal(upper, upper_e)


@given(data=st.data())
def test_milp_equals_enumeration(data):
    arch = data.draw(st.sampled_from(["fc", "conv"]))
    dyadic = data.draw(st.booleans())
    net = data.draw(snn_strategy(arch, dyadic=dyadic))
    input_set = data.draw(input_set_strategy(net, max_members=256))
    bigm = data.draw(st.sampled_from(["naive", "auto"]))
    C = np.vstack([np.eye(net.n_outputs), np.eye(net.n_outputs)[0] - np.eye(net.n_outputs)[-1]])
    result = exact_bounds(net, C=C, input_sets=[input_set], time_limit=TIME_LIMIT, bigm=bigm)
    lower, upper = enumerate_bounds(net, C=C, input_sets=[input_set])
    if dyadic:
        assert result.exact  # the grid margin makes the strict model exact
    for side, claimed, truth in (("lower", result.lower, lower), ("upper", result.upper, upper)):
        status = getattr(result, side + "_status")
        exact = status == "exact"
        np.testing.assert_allclose(claimed[exact], truth[exact], rtol=0, atol=1e-12)
        # Inexact answers must still be sound brackets.
        if side == "lower":
            assert np.all(claimed[~exact] <= truth[~exact])
        else:
            assert np.all(claimed[~exact] >= truth[~exact])
    # Witnesses are members and reach the reported values in the real forward pass.
    for i in range(C.shape[0]):
        for witness, value in ((result.lower_witness[0, i], result.lower_attained[0, i]),
                               (result.upper_witness[0, i], result.upper_attained[0, i])):
            assert input_set.contains(witness)
            assert np.isclose(net.forward(witness[:, None])[0] @ C[i], value, rtol=0, atol=1e-12)


@given(data=st.data())
def test_real_trajectories_satisfy_both_models(data):
    net = data.draw(snn_strategy(data.draw(st.sampled_from(["fc", "conv"]))))
    input_set = data.draw(input_set_strategy(net, max_members=64))
    bounds = pad_bounds(membrane_bounds(net, input_set, "auto"))
    margin = dyadic_margin(net, input_set.steps) or 1e-5
    relaxed = SNNMilp(net, input_set, bounds, -RELAX_MARGIN)
    strict = SNNMilp(net, input_set, bounds, margin)
    for x in next(input_set.enumerate(16)).swapaxes(0, 1):
        assert relaxed.violations(x) == []
        assert strict.violations(x) == []


@given(data=st.data())
def test_verify_robust_matches_enumeration(data):
    net = data.draw(snn_strategy("fc", weight_scale=1.0))
    input_set = data.draw(input_set_strategy(net, kinds=("box", "l0"), max_members=64))
    label = data.draw(st.integers(0, net.n_outputs - 1))
    result = robust_query(net, input_set, label, time_limit=TIME_LIMIT, attack_samples=data.draw(st.sampled_from([0, 8])))
    robust, margin, _ = enumerate_robust(net, input_set, label)
    assert result.status in ("robust", "not_robust")
    assert (result.status == "robust") == robust
    if result.status == "not_robust":
        assert input_set.contains(result.witness)
        rates = net.forward(result.witness[:, None])[0]
        assert rates[label] - np.delete(rates, label).max() <= 0  # misclassified or a tie
    else:
        assert margin > 0


def test_tie_is_not_robust():
    # Two outputs driven identically: every input ties, so label 0 (which SNN.predict would pick)
    # is still NOT robust.
    net = SNN([Linear(np.array([[0.5], [0.5]]), np.zeros(2))])
    x = np.ones((2, 1, 1), np.uint8)
    [result] = verify_robust(net, x, x, labels=[0], attack_samples=0, time_limit=TIME_LIMIT)
    assert result.status == "not_robust"
    assert net.predict(x)[0] == 0
    assert result.witness_rates[0] == result.witness_rates[1]


def test_robust_sample_is_certified():
    net = SNN([Linear(np.array([[1.0, 1.0], [-1.0, -1.0]]), np.array([0.5, 0.0]))])
    x_lower = np.zeros((2, 1, 2), np.uint8)
    x_upper = np.ones((2, 1, 2), np.uint8)
    [result] = verify_robust(net, x_lower, x_upper, labels=[0], time_limit=TIME_LIMIT)
    assert result.status == "robust"
    assert result.margins[1] == 1.0


def test_timeout_reports_unknown_with_sound_bounds(monkeypatch):
    net = SNN([Linear(np.array([[0.5, 0.25], [0.25, -0.5]]), np.array([0.0, 0.125]))])
    x_lower = np.zeros((3, 1, 2), np.uint8)
    x_upper = np.ones((3, 1, 2), np.uint8)
    monkeypatch.setattr(SNNMilp, "solve", lambda self, expr, sense, time_limit=None, solver=None, safe=False:
                        Solution("timeout", None, None, time_limit or 0.0))
    result = exact_bounds(net, x_lower, x_upper, time_limit=0.01)
    assert np.all(result.lower_status == "timeout") and np.all(result.upper_status == "timeout")
    lower, upper = enumerate_bounds(net, x_lower, x_upper)
    assert np.all(result.lower <= lower) and np.all(result.upper >= upper)
    [robust] = verify_robust(net, x_lower, x_upper, labels=[0], attack_samples=0, time_limit=0.01)
    assert robust.status in ("unknown", "robust")  # the interval fallback may still prove it


def test_unsound_big_m_bounds_are_refused():
    net = SNN([Linear(np.array([[0.5, 0.5]]), np.array([0.0]))])
    box = BoxSet(np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8))
    bounds = membrane_bounds(net, box, "naive")
    bounds.upper[0][:] = 0.1  # a real input reaches 1.0
    from verify.encoding import check_bounds_on_samples
    with pytest.raises(VerifierError, match="unsound"):
        check_bounds_on_samples(net, box, bounds)


@pytest.mark.parametrize("x_lower, x_upper, message", [
    (np.ones((2, 1, 2)), np.zeros((2, 1, 2)), "x_lower > x_upper"),
    (np.full((2, 1, 2), 0.5), np.ones((2, 1, 2)), "binary"),
    (np.zeros((2, 1, 3)), np.ones((2, 1, 3)), "expects"),
    (np.zeros((2, 2)), np.ones((2, 2)), "time-major"),
])
def test_bad_boxes_are_rejected(x_lower, x_upper, message):
    net = SNN([Linear(np.ones((2, 2)) * 0.25)])
    with pytest.raises(ValueError, match=message):
        exact_bounds(net, x_lower, x_upper)


def test_bad_spec_is_rejected():
    net = SNN([Linear(np.ones((2, 2)) * 0.25)])
    x = np.zeros((2, 1, 2), np.uint8)
    with pytest.raises(ValueError, match="C must be"):
        exact_bounds(net, x, x, C=np.ones((3, 5)))


# --- the input sets --------------------------------------------------------------------------

@given(image=st.lists(st.floats(0, 1), min_size=2, max_size=2),
       rand=st.lists(st.sampled_from([0.1, 0.3, 0.3, 0.5, 0.7, 0.9]), min_size=6, max_size=6),
       eps=st.sampled_from([0.0, 0.2, 0.4, 1.0]), convention=st.sampled_from(["paper", "authors"]))
def test_digital_set_is_exactly_the_encoded_ball(image, rand, eps, convention):
    image = np.array(image)
    rand_maps = np.array(rand).reshape(3, 2)
    digital = DigitalLinfSet(image, eps, rand_maps, convention)
    members = {m.tobytes() for m in next(digital.enumerate(1 << 12)).swapaxes(0, 1)}
    assert len(members) == digital.count()
    # Definition: spikes of every image in the clipped ball, swept densely (every rand value, and
    # just above and below it, is a breakpoint of the encoding).
    radius = eps / 2 if convention == "paper" else eps
    low, high = np.clip(image - radius, 0, 1), np.clip(image + radius, 0, 1)
    grid = sorted(set(np.concatenate([rand_maps.ravel(), rand_maps.ravel() + 1e-9, [0.0, 1.0]])))
    reached = set()
    for a in [low[0], high[0]] + [g for g in grid if low[0] <= g <= high[0]]:
        for b in [low[1], high[1]] + [g for g in grid if low[1] <= g <= high[1]]:
            reached.add((np.array([a, b])[None] > rand_maps).astype(np.uint8).tobytes())
    assert members == reached
    lower, upper = digital.box()
    assert all(np.all((np.frombuffer(m, np.uint8).reshape(3, 2) >= lower) &
                      (np.frombuffer(m, np.uint8).reshape(3, 2) <= upper)) for m in members)
    assert digital.contains(digital.clean())


@pytest.mark.parametrize("per_step", [True, False])
def test_l0_set_matches_filtered_box(per_step):
    rng = np.random.default_rng(3)
    center = rng.integers(0, 2, (3, 3)).astype(np.uint8)
    l0 = SpikeL0Set(center, 1, per_step=per_step)
    members = {m.tobytes() for m in next(l0.enumerate(1 << 12)).swapaxes(0, 1)}
    assert len(members) == l0.count()
    box = BoxSet(np.zeros_like(center), np.ones_like(center))
    expected = {m.tobytes() for m in next(box.enumerate(1 << 12)).swapaxes(0, 1) if l0.contains(m)}
    assert members == expected
    for neighbor in l0.neighbors(center).swapaxes(0, 1):
        assert l0.contains(neighbor)


def test_sample_verifier_reuses_models_for_membranes():
    net = SNN([Linear(np.array([[0.5, -0.25], [0.25, 0.25]]), np.array([0.0, 0.125])),
               Linear(np.array([[0.5, 0.5]]), np.array([0.0]))])
    box = BoxSet(np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8))
    verifier = SampleVerifier(net, box, time_limit=TIME_LIMIT)
    from verify.enumerate import enumerate_membrane_extremes
    mins, maxs = enumerate_membrane_extremes(net, box)
    for k in range(2):
        for t in range(2):
            for j in range(mins[k].shape[1]):
                low, high = verifier.membrane_extreme(k, t, j, "min"), verifier.membrane_extreme(k, t, j, "max")
                assert low.exact and high.exact
                assert low.attained == mins[k][t, j] and high.attained == maxs[k][t, j]
                assert mins[k][t, j] - 1e-5 < low.bound <= mins[k][t, j]
                assert maxs[k][t, j] <= high.bound < maxs[k][t, j] + 1e-5
