"""Soundness of each rule on its own, so a wrong rule cannot hide behind a loose total bound:

- the chord lines of eq. 8 and the reset lines of eq. 10 hold at every point of their interval
  (both firing modes, the threshold itself, tiny intervals with huge slopes);
- on every enumerated trajectory of small nets, each single back-substitution step of S-CROWN
  never increases the lower-bound functional (eqs. 17-18 step by step), and the adjoint step
  through the spatial ops is an identity;
- the fused Numba kernel equals an independent vectorized oracle (tests/backsub_oracle.py), and
  the per-step shares it records are the oracle's.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsnn import SNN, Linear
from refsnn.crown import _lower_bound_rows, normalize_spec
from refsnn.ibp import interval_bounds, prepare_stages
from refsnn.neurons import fire
from refsnn.relaxations import STABLE_OFF, STABLE_ON, UNSTABLE, Fire, Reset, Precision, gamma

from refsnn.operator import StepTables, backsub_stage

from backsub_oracle import oracle_stage
from test_bounds_helpers import assert_each_step_sound, small_boxes, small_networks

RULE64 = Precision(u=2 ** -53 * 2, th_lo=0.25, th_hi=0.25, net_dtype="float64")


def _points(low, high, threshold):
    inner = np.linspace(low, high, 33)
    near = [threshold, np.nextafter(threshold, -np.inf), np.nextafter(threshold, np.inf), low, high]
    points = np.concatenate([inner, [p for p in near if low <= p <= high]])
    return points


@given(low=st.floats(-2.0, 2.0), width=st.one_of(st.floats(1e-12, 4.0), st.sampled_from([1e-15, 1e-9, 0.5])),
       threshold=st.sampled_from([0.25, 0.1, 1.0]), firing=st.sampled_from([">=", ">"]))
def test_fire_and_reset_lines_hold_on_their_whole_interval(low, width, threshold, firing):
    high = low + width
    rule = Precision(u=RULE64.u, th_lo=threshold, th_hi=threshold, net_dtype="float64")
    mem_lower, mem_upper = np.array([low]), np.array([high])
    state = Fire.classify(mem_lower, mem_upper, rule, firing)
    slope_lo, icpt_lo, slope_up, icpt_up = Fire.relaxation(mem_lower, mem_upper, state, threshold, rule)
    reset_lo, reset_hi = Reset.relaxation(mem_lower, state, rule)
    z_lo, z_hi = Reset.interval(mem_lower, mem_upper, state, rule)
    s_lo, s_hi = Fire.interval(state)
    m = _points(low, high, threshold)
    s = fire(m, threshold, firing)
    z = m * (1.0 - s)
    if state[0] == STABLE_ON:
        assert np.all(s == 1)
    if state[0] == STABLE_OFF:
        assert np.all(s == 0)
    scale = 1e-12 * (1.0 + np.abs(slope_lo[0] * m) + np.abs(slope_up[0] * m))
    assert np.all(slope_lo[0] * m + icpt_lo[0] <= s + scale), "eq. 8 lower line above the step"
    assert np.all(s <= slope_up[0] * m + icpt_up[0] + scale), "eq. 8 upper line below the step"
    assert np.all((s_lo[0] <= s) & (s <= s_hi[0])), "eq. 7 interval"
    assert np.all((z_lo[0] <= z) & (z <= z_hi[0])), "eq. 9 interval"
    if state[0] == UNSTABLE:
        assert np.all((1 - s) * reset_lo[0] <= z) and np.all(z <= (1 - s) * reset_hi[0]), "eq. 10"


def test_fire_relaxation_is_the_papers_chord_pair():
    rule = RULE64
    # m_u - th = 0.05 < th - m_l = 0.25: 0 <= s <= (m - m_l) / (th - m_l).
    out = Fire.relaxation(np.array([0.0]), np.array([0.3]), np.array([UNSTABLE], np.int8), 0.25, rule)
    np.testing.assert_allclose([v[0] for v in out], [0.0, 0.0, 1 / 0.25, 0.0])
    # m_u - th = 0.75 >= th - m_l = 0.05: (m - th) / (m_u - th) <= s <= 1.
    out = Fire.relaxation(np.array([0.2]), np.array([1.0]), np.array([UNSTABLE], np.int8), 0.25, rule)
    np.testing.assert_allclose([v[0] for v in out], [1 / 0.75, -0.25 / 0.75, 0.0, 1.0])


def test_float32_thresholds_are_both_respected():
    net = SNN([Linear(np.ones((1, 1)))], threshold=0.3, dtype=np.float32)
    rule = Precision.sound(net)
    assert rule.th_lo == 0.3 and rule.th_hi == float(np.float32(0.3)) > 0.3
    # A membrane in [th_lo, th_hi] cannot be decided either way.
    state = Fire.classify(np.array([0.3]), np.array([0.3]), rule, ">=")
    assert state[0] == UNSTABLE


@settings(deadline=None)
@given(data=st.data())
def test_each_backsubstitution_step_is_sound_on_every_trajectory(data):
    net = data.draw(small_networks(), label="net")
    x_lower, x_upper = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    batch = x_lower.shape[1]
    C = normalize_spec(rng.normal(size=(3, net.n_outputs)), batch, net.n_outputs)
    spec = np.concatenate([C, -C], axis=1)
    stages = prepare_stages(net)
    bounds = interval_bounds(net, x_lower, x_upper)
    record = []
    _lower_bound_rows(stages, bounds, spec, x_lower.astype(float), x_upper.astype(float), record=record)
    assert_each_step_sound(net, x_lower, x_upper, spec, stages, record)


@pytest.mark.parametrize("parallel", [False, True])
def test_numba_kernel_matches_the_vectorized_oracle(parallel):
    rng = np.random.default_rng(3)
    steps, batch, rows, n = 4, 3, 5, 7
    lam_s = rng.normal(size=(steps, batch, rows, n))
    state = rng.integers(0, 3, size=(steps, batch, n)).astype(np.int8)
    tables = [rng.normal(size=(steps, batch, n)) for _ in range(6)]
    mags = tuple(np.abs(rng.normal(size=(steps, batch, n))) for _ in range(3))
    tab = StepTables(state, *tables, 0.3, rng.normal(size=n), mags + (gamma(100, 2 ** -53),))
    step = backsub_stage(lam_s, tab, record=True, parallel_min_work=1 if parallel else 1 << 60)
    lam_cur, bias, err, records = oracle_stage(lam_s, tab)
    for a, b in ((step.lam_cur, lam_cur), (step.bias, bias), (step.err, err)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for t in range(steps):
        np.testing.assert_allclose(step.step_bias[t], records[t][3], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(step.step_err[t], records[t][4], rtol=1e-12, atol=1e-12)
