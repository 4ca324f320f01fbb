"""Any-k-flips spike certificates (refsnn.l0): sound for EVERY train in the l0 ball.

Checked against exhaustive enumeration of the ball (verify.sets.SpikeL0Set, both budgets) on
hypothesis-generated small nets, and against the MILP verifier's l0 encoding on a small net
(never unsound; the gap is reported in results/certify/). The first-stage current interval is
exact (equal to the enumerated extremes); the ball concretization equals brute force; its
gradient (used by the alpha optimization) equals finite differences.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsnn import SNN, Linear
from refsnn.bounds import margin_spec
from refsnn.ibp import prepare_stages
from refsnn.l0 import ANYK_METHODS, L0Concretizer, anyk_bounds, certify_anyk, topk_current_interval
from verify.enumerate import enumerate_extremes
from verify.sets import SpikeL0Set

from test_bounds_helpers import small_networks


def _ball_members(center: np.ndarray, k: int, per_step: bool) -> np.ndarray:
    """Every member ``[N, T', *in]`` of the ball around ``center [T', *in]``."""
    members = np.concatenate(list(SpikeL0Set(center, k, per_step).enumerate()), axis=1)
    return np.swapaxes(members, 0, 1)


@settings(deadline=None, max_examples=30)
@given(data=st.data())
def test_every_method_is_sound_over_the_whole_ball(data):
    """Every method's bounds bracket every member's margins, over the whole ball or a masked one."""
    net = data.draw(small_networks().filter(lambda n: int(np.prod(n.input_shape)) <= 6), label="net")
    steps = data.draw(st.integers(1, 3), label="steps")
    k = data.draw(st.integers(0, 2), label="k")
    per_step = data.draw(st.booleans(), label="per_step")
    masked = data.draw(st.booleans(), label="masked")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="seed"))
    clean = (rng.random((steps, 2) + net.input_shape) < 0.4).astype(np.uint8)
    mask = (rng.random(clean.shape) < 0.6).astype(np.uint8) if masked else None
    n_out = net.n_outputs
    C = margin_spec(rng.integers(0, n_out, 2), n_out) if n_out >= 2 else rng.normal(size=(2, 1, 1))
    for method in ANYK_METHODS:
        lower, upper = anyk_bounds(net, clean, k, C, method, per_step, iterations=4, mask=mask)
        for b in range(2):
            ball = SpikeL0Set(clean[:, b], k, per_step, mask=None if mask is None else mask[:, b])
            ext = enumerate_extremes(net, ball, C[b])
            assert np.all(lower[b] <= ext.min), f"{method}: lower {lower[b]} above the ball's minimum {ext.min}"
            assert np.all(upper[b] >= ext.max), f"{method}: upper {upper[b]} below the ball's maximum {ext.max}"


def _net(rng, n_in=6):
    return SNN([Linear(rng.normal(0, 0.5, (5, n_in)), rng.normal(0, 0.1, 5)),
                Linear(rng.normal(0, 0.6, (3, 5)), rng.normal(0, 0.1, 3))],
               threshold=0.25, decay=0.5, input_shape=(n_in,))


def test_first_stage_current_interval_is_exact():
    rng = np.random.default_rng(0)
    net = _net(rng)
    clean = (rng.random((2, 1, 6)) < 0.5).astype(np.uint8)
    stage = prepare_stages(net)[0]
    for k in range(0, 4):
        lower, upper = topk_current_interval(stage, clean, k)
        for t in range(2):
            members = _ball_members(clean[t:t + 1, 0], k, True)[:, 0]        # [N, n_in]
            currents = members @ stage.ops[-1].weight.T + stage.bias
            np.testing.assert_allclose(lower[t, 0], currents.min(axis=0), atol=1e-12)
            np.testing.assert_allclose(upper[t, 0], currents.max(axis=0), atol=1e-12)
            assert np.all(lower[t, 0] <= currents.min(axis=0)) and np.all(upper[t, 0] >= currents.max(axis=0))


@pytest.mark.parametrize("per_step", [True, False])
def test_concretization_is_the_exact_minimum_and_its_gradient_matches(per_step):
    rng = np.random.default_rng(1)
    steps, n_in, k = 2, 5, 2
    clean = (rng.random((steps, 1, n_in)) < 0.5).astype(np.uint8)
    lam = rng.normal(size=(steps, 1, 3, n_in))
    conc = L0Concretizer(clean, k, per_step)
    value, err = conc.value(lam)
    members = _ball_members(clean[:, 0], k, per_step).reshape(-1, steps, n_in).astype(np.float64)
    brute = np.einsum("trj,ntj->nr", lam[:, 0], members).min(axis=0)
    np.testing.assert_allclose(value[0], brute, atol=1e-12)
    assert np.all(err < 1e-12)
    grad = conc.gradient(lam)
    h = 1e-7
    for index in itertools.islice(np.ndindex(lam.shape), 0, None, 3):
        plus, minus = lam.copy(), lam.copy()
        plus[index] += h
        minus[index] -= h
        fd = (conc.value(plus)[0].sum() - conc.value(minus)[0].sum()) / (2 * h)
        assert abs(fd - grad[index]) < 1e-6


def test_milp_l0_encoding_agrees_and_k_zero_is_the_clean_output():
    from verify.milp import exact_bounds
    rng = np.random.default_rng(4)
    net = _net(rng, n_in=8)
    clean = (rng.random((2, 1, 8)) < 0.4).astype(np.uint8)
    C = margin_spec(np.array([1]), 3)
    for per_step in (True, False):
        exact = exact_bounds(net, C=C, input_sets=[SpikeL0Set(clean[:, 0], 2, per_step)], time_limit=30)
        enumerated = enumerate_extremes(net, SpikeL0Set(clean[:, 0], 2, per_step), C[0])
        np.testing.assert_allclose(exact.lower_attained[0], enumerated.min, atol=1e-9)
        for method in ("ibp", "best", "alpha", "crown"):
            lower, upper = anyk_bounds(net, clean, 2, C, method, per_step, iterations=5)
            assert np.all(lower[0] <= exact.lower_attained[0]) and np.all(upper[0] >= exact.upper_attained[0])
    rates = net.forward(clean)
    lower, upper = anyk_bounds(net, clean, 0, None, "best")
    np.testing.assert_allclose(lower, rates, atol=1e-12)
    np.testing.assert_allclose(upper, rates, atol=1e-12)
    assert certify_anyk(net, clean, np.array([int(np.argmax(rates[0]))]), 0)[0] == bool(
        np.sum(rates[0] == rates[0].max()) == 1)


def test_errors():
    net = _net(np.random.default_rng(0))
    clean = np.zeros((2, 1, 6), dtype=np.uint8)
    with pytest.raises(ValueError, match="k"):
        anyk_bounds(net, clean, -1)
    with pytest.raises(ValueError, match="unknown method"):
        anyk_bounds(net, clean, 1, method="milp")
    with pytest.raises(ValueError, match="shape"):
        anyk_bounds(net, np.zeros((2, 1, 5), dtype=np.uint8), 1)
    with pytest.raises(ValueError, match="binary"):
        anyk_bounds(net, np.full((2, 1, 6), 2), 1)


# --- masked balls: only the mask's bits may flip ------------------------------------------------------

def _masked_members(center: np.ndarray, k: int, per_step: bool, mask: np.ndarray) -> np.ndarray:
    members = np.concatenate(list(SpikeL0Set(center, k, per_step, mask=mask).enumerate()), axis=1)
    return np.swapaxes(members, 0, 1)


@pytest.mark.parametrize("per_step", [True, False])
def test_masked_first_stage_interval_and_concretization_are_exact(per_step):
    rng = np.random.default_rng(5)
    steps, n_in, k = 2, 6, 2
    net = _net(rng, n_in)
    stage = prepare_stages(net)[0]
    clean = (rng.random((steps, 1, n_in)) < 0.5).astype(np.uint8)
    mask = (rng.random((steps, 1, n_in)) < 0.5).astype(np.uint8)
    mask[0, 0, :2] = 1
    members = _masked_members(clean[:, 0], k, per_step, mask[:, 0]).reshape(-1, steps, n_in).astype(np.float64)
    lower, upper = topk_current_interval(stage, clean, k, mask)
    for t in range(steps):
        currents = members[:, t] @ stage.ops[-1].weight.T + stage.bias
        np.testing.assert_allclose(lower[t, 0], currents.min(axis=0), atol=1e-12)
        np.testing.assert_allclose(upper[t, 0], currents.max(axis=0), atol=1e-12)
        assert np.all(lower[t, 0] <= currents.min(axis=0)) and np.all(upper[t, 0] >= currents.max(axis=0))
    lam = rng.normal(size=(steps, 1, 3, n_in))
    conc = L0Concretizer(clean, k, per_step, mask)
    value, _ = conc.value(lam)
    np.testing.assert_allclose(value[0], np.einsum("trj,ntj->nr", lam[:, 0], members).min(axis=0), atol=1e-12)
    x = conc.gradient(lam)       # the minimizers: members of the masked ball
    for r in range(3):
        assert SpikeL0Set(clean[:, 0], k, per_step, mask=mask[:, 0]).contains(np.rint(x[:, 0, r]).astype(np.uint8))
