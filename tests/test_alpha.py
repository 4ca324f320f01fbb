"""Optimized S-CROWN (refsnn.alpha) and full S-CROWN (refsnn.crown_full).

- every parameter setting is sound: RANDOM parameters (endpoints drawn often) on hypothesis-generated
  small FC/CONV nets (both firing modes, float32/float64, dyadic weights with membranes exactly on
  the threshold) never exceed the minimum over every enumerated member of the box;
- the hand-written gradient equals central finite differences;
- the paper's parameters reproduce refsnn.crown's S-CROWN; the optimized bounds and full S-CROWN
  are sound against enumeration and never looser than "best".
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsnn.alpha import (PARAM_NAMES, BoxConcretizer, alpha_bounds, backsub, backsub_gradient, default_params,
                          random_params, stage_tables)
from refsnn.bounds import compute_bounds, margin_spec
from refsnn.crown import crown_bounds
from refsnn.crown_full import full_crown_bounds
from refsnn.ibp import interval_bounds, prepare_stages
from refsnn.relaxations import output_rounding_margin

from gradcheck import random_binary_box, small_conv_net, small_fc_net
from test_bounds_helpers import assert_each_step_sound, box_members, small_boxes, small_networks, spec_list


def _setup(net, x_lower, x_upper, C):
    stages = prepare_stages(net)
    bounds = interval_bounds(net, x_lower, x_upper, stages=stages)
    tables = [stage_tables(bounds, k, s) for k, s in enumerate(stages)]
    batch = x_lower.shape[1]
    C = np.broadcast_to(C, (batch,) + C.shape[-2:]) if C.ndim == 2 else C
    spec = np.concatenate([C, -C], axis=1)
    return stages, bounds, tables, spec, BoxConcretizer(x_lower.astype(float), x_upper.astype(float))


def _member_values(net, x_lower, x_upper, b, C_b):
    members = box_members(x_lower, x_upper, b)
    rates = net.run(members).rates.astype(np.float64)
    return rates @ C_b.T


@settings(deadline=None)
@given(data=st.data())
def test_random_parameters_are_sound(data):
    net = data.draw(small_networks(), label="net")
    x_lower, x_upper = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="seed"))
    C = spec_list(net, x_lower.shape[1], rng)[data.draw(st.integers(0, 1), label="spec")]
    stages, bounds, tables, spec, conc = _setup(net, x_lower, x_upper, C)
    n_spec = spec.shape[1] // 2
    margin = output_rounding_margin(spec, bounds.rule, x_lower.shape[0])
    for _ in range(3):
        params = random_params(tables, spec.shape[1], rng)
        sound = backsub(stages, tables, spec, conc, params).sound - margin
        for b in range(x_lower.shape[1]):
            values = _member_values(net, x_lower, x_upper, b, spec[b, :n_spec])
            assert np.all(sound[b, :n_spec] <= values.min(axis=0)), \
                f"lower bound above a member's value: {sound[b, :n_spec]} > {values.min(axis=0)}"
            assert np.all(-sound[b, n_spec:] >= values.max(axis=0)), \
                f"upper bound below a member's value: {-sound[b, n_spec:]} < {values.max(axis=0)}"


@settings(deadline=None, max_examples=15)
@given(data=st.data())
def test_optimized_and_full_crown_bounds_are_sound_and_no_looser_than_best(data):
    net = data.draw(small_networks(), label="net")
    x_lower, x_upper = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="seed"))
    C = spec_list(net, x_lower.shape[1], rng)[-1]
    best = compute_bounds(net, x_lower, x_upper, method="best", C=C)
    optimized = alpha_bounds(net, x_lower, x_upper, C, iterations=5)
    full_lower, full_upper, intermediate = full_crown_bounds(net, x_lower, x_upper, C)
    assert np.all(optimized.lower >= best[0]) and np.all(optimized.upper <= best[1])
    for b in range(x_lower.shape[1]):
        C_b = C if C.ndim == 2 else C[b]
        values = _member_values(net, x_lower, x_upper, b, C_b)
        for lower, upper in ((optimized.lower, optimized.upper), (full_lower, full_upper)):
            assert np.all(lower[b] <= values.min(axis=0)) and np.all(upper[b] >= values.max(axis=0))
        trace = net.run(box_members(x_lower, x_upper, b))
        for k, membranes in enumerate(trace.membranes):
            m = membranes.astype(np.float64)
            assert np.all(m >= intermediate.mem_lower[k][:, b:b + 1])
            assert np.all(m <= intermediate.mem_upper[k][:, b:b + 1])


_fc_net, _conv_net = small_fc_net, small_conv_net


@pytest.mark.parametrize("make", [_fc_net, _conv_net])
def test_gradient_matches_finite_differences(make):
    rng = np.random.default_rng(3)
    net = make(rng)
    steps, batch = 3, 2
    x_lower, x_upper = random_binary_box(rng, net, steps, batch)
    stages, _, tables, spec, conc = _setup(net, x_lower, x_upper, margin_spec(np.array([0, 2]), 3))
    params = random_params(tables, spec.shape[1], rng)
    for prm in params:   # interior points: the bound is smooth there unless a sign flips
        for name in PARAM_NAMES:
            prm[name] = 0.1 + 0.8 * rng.random(prm[name].shape)
    weights = rng.random(spec.shape[:2])
    result = backsub(stages, tables, spec, conc, params, record=True)
    grads = backsub_gradient(stages, tables, result, conc, weights)
    h = 1e-6
    checked = 0
    for k in range(len(params)):
        for name in PARAM_NAMES:
            nonzero = np.argwhere(grads[k][name] != 0)
            picks = nonzero[rng.choice(len(nonzero), size=min(6, len(nonzero)), replace=False)] if len(nonzero) else []
            for index in [tuple(i) for i in picks] + [tuple(rng.integers(0, s) for s in params[k][name].shape)]:
                plus = [{n: v.copy() for n, v in p.items()} for p in params]
                minus = [{n: v.copy() for n, v in p.items()} for p in params]
                plus[k][name][index] += h
                minus[k][name][index] -= h
                fd = ((backsub(stages, tables, spec, conc, plus).value * weights).sum()
                      - (backsub(stages, tables, spec, conc, minus).value * weights).sum()) / (2 * h)
                assert abs(fd - grads[k][name][index]) <= 1e-6 * (1 + abs(fd)), (k, name, index, fd,
                                                                               grads[k][name][index])
                checked += 1
    assert checked > 20


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_paper_parameters_reproduce_s_crown(dtype):
    rng = np.random.default_rng(5)
    net = _fc_net(rng, dtype)
    x_lower = (rng.random((3, 4, 5)) < 0.3).astype(np.uint8)
    x_upper = np.maximum(x_lower, (rng.random(x_lower.shape) < 0.5).astype(np.uint8))
    C = margin_spec(np.array([0, 1, 2, 0]), 3)
    stages, bounds, tables, spec, conc = _setup(net, x_lower, x_upper, C)
    ours = backsub(stages, tables, spec, conc, default_params(tables, spec.shape[1]))
    reference = crown_bounds(net, x_lower, x_upper, C, intermediate=bounds)
    margin = output_rounding_margin(C, bounds.rule, 3)
    np.testing.assert_allclose(ours.sound[:, :2] - margin, reference.lower, atol=1e-9)
    np.testing.assert_allclose(-ours.sound[:, 2:] + margin, reference.upper, atol=1e-9)
    assert np.all(ours.err < (1e-12 if dtype == np.float64 else 1e-5))


def test_optimization_improves_the_mean_bound_and_the_hooked_s_ibp_equals_s_ibp():
    rng = np.random.default_rng(7)
    net = _fc_net(rng)
    x_lower = (rng.random((3, 3, 5)) < 0.3).astype(np.uint8)
    x_upper = np.maximum(x_lower, (rng.random(x_lower.shape) < 0.6).astype(np.uint8))
    result = alpha_bounds(net, x_lower, x_upper, margin_spec(np.array([0, 1, 2]), 3), iterations=15)
    assert result.history[-1] >= result.history[0]
    assert all(b >= a for a, b in zip(result.history, result.history[1:]))   # best-so-far per row
    reference = interval_bounds(net, x_lower, x_upper)
    # the step-by-step path of the hooks with hooks that change nothing: bit for bit the fused kernel
    ours = interval_bounds(net, x_lower, x_upper, first_current=lambda stage, lo, up: stage.interval(lo, up)[:2],
                           refine=lambda bounds, k, t: (bounds.mem_lower[k][t].reshape(bounds.batch, -1),
                                                        bounds.mem_upper[k][t].reshape(bounds.batch, -1)))
    for name in ("mem_lower", "mem_upper", "reset_lower", "reset_upper", "state", "spike_lower", "spike_upper"):
        for a, b in zip(getattr(reference, name), getattr(ours, name)):
            np.testing.assert_array_equal(a, b)


def test_registered_methods_and_errors():
    rng = np.random.default_rng(8)
    net = _fc_net(rng)
    x = (rng.random((2, 2, 5)) < 0.5).astype(np.uint8)
    for method in ("alpha", "crown"):
        lower, upper = compute_bounds(net, x, x, method=method)
        rates = net.forward(x)
        assert np.all(lower <= rates + 1e-12) and np.all(rates <= upper + 1e-12)
    with pytest.raises(ValueError, match="iterations"):
        alpha_bounds(net, x, x, iterations=-1)
    with pytest.raises(ValueError, match="unknown method"):
        compute_bounds(net, x, x, method="alpha-crown")


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_each_parametrized_step_is_sound_on_every_trajectory(data):
    """The optimized-slope step (``PARAMS``) one time step at a time, random parameters with endpoints:
    no step raises the bound functional beyond the rounding share it records."""
    net = data.draw(small_networks(), label="net")
    x_lower, x_upper = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="seed"))
    C = spec_list(net, x_lower.shape[1], rng)[data.draw(st.integers(0, 1), label="spec")]
    stages, bounds, tables, spec, conc = _setup(net, x_lower, x_upper, C)
    result = backsub(stages, tables, spec, conc, random_params(tables, spec.shape[1], rng), record=True)
    # (the adjoint step through the spatial ops is the one S-CROWN's test checks; its float
    # tolerance is relative to |I| |lam| alone, too tight for the huge slopes random fractions reach)
    assert_each_step_sound(net, x_lower, x_upper, spec, stages, result.tape, adjoint=False)


def test_flat_view_copies_and_reports_missing_attributes():
    import copy

    from refsnn.crown_full import _FlatView
    rng = np.random.default_rng(3)
    net = _fc_net(rng)
    x_lower = (rng.uniform(0, 1, (2, 3, 5)) < 0.3).astype(float)
    bounds = interval_bounds(net, x_lower, np.maximum(x_lower, rng.uniform(0, 1, x_lower.shape) < 0.5),
                             stages=prepare_stages(net))
    view = _FlatView(bounds, prepare_stages(net))
    clone = copy.copy(view)
    assert clone.mem_lower[0] is view.mem_lower[0] and clone.rule == bounds.rule
    with pytest.raises(AttributeError):
        getattr(object.__new__(_FlatView), "mem_lower")
    with pytest.raises(AttributeError):
        getattr(view, "no_such_field")
