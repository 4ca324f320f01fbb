"""S-CROWN against an independent, naive reference in EXACT rational arithmetic: the SNN unrolled
into a graph of scalar nodes (I, m, s, z for every neuron and time step), back-substitution one
node at a time in reverse topological order, with the paper's relaxations written out again from
eqs. 8 and 10, every number a ``Fraction``. This pins down eqs. 17-18 (which coefficient goes
where, across layers AND time), and it checks the rounding rule: the float64 result must lie
below the exact S-CROWN value (sound) and above it by at most twice its own rounding bound.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refsnn.bounds import crown_bounds, interval_bounds

from test_bounds_helpers import small_boxes, small_networks


def _dense_stages(net):
    """Each stage as a dense affine map (from the layers' own forward): ``(W [n, n_in], b [n])``."""
    maps = []
    for stage in net.stages:
        n_in = int(np.prod(stage.input_shape))

        def run(x, stage=stage):
            for op in stage.ops:
                x = op.forward(x)
            return x.reshape(x.shape[0], -1)

        basis = np.eye(n_in).reshape((n_in,) + tuple(stage.input_shape))
        bias = run(np.zeros((1,) + tuple(stage.input_shape)))[0].astype(np.float64)
        weight = (run(basis).astype(np.float64) - bias).T
        maps.append((weight, bias))
    return maps


def naive_crown_lower(net, bounds, spec_row, x_lower, x_upper, b) -> Fraction:
    """Exact lower bound of ``spec_row . f`` for sample ``b`` by scalar back-substitution."""
    F = Fraction
    maps = _dense_stages(net)
    steps = bounds.steps
    K = len(maps)
    th, alpha = F(net.threshold), F(net.decay)
    coef = {}  # node -> coefficient; node = (kind, k, t, i)
    bias = F(0)
    for t in range(steps):
        for i, c in enumerate(spec_row):
            coef[("s", K - 1, t, i)] = F(float(c)) / steps
    # Reverse topological order: later stages first; within a stage later times first; at one
    # (k, t): z (consumes s and m), then s (consumes m), then m (consumes I and z_{t-1}), then I.
    for k in range(K - 1, -1, -1):
        weight, stage_bias = maps[k]
        n = weight.shape[0]
        m_lo = bounds.mem_lower[k][:, b].reshape(steps, n)
        m_hi = bounds.mem_upper[k][:, b].reshape(steps, n)
        state = bounds.state[k][:, b].reshape(steps, n)
        for t in range(steps - 1, -1, -1):
            for i in range(n):
                c = coef.pop(("z", k, t, i), 0)
                if c != 0:
                    if state[t, i] == 0:          # silent: z = m
                        coef[("m", k, t, i)] = coef.get(("m", k, t, i), 0) + c
                    elif state[t, i] == 2:        # eq. 10: (1 - s) m_l <= z <= (1 - s) th
                        r = F(float(m_lo[t, i])) if c >= 0 else th
                        bias += c * r
                        coef[("s", k, t, i)] = coef.get(("s", k, t, i), 0) - c * r
                c = coef.pop(("s", k, t, i), 0)
                if c != 0:
                    if state[t, i] == 1:
                        bias += c
                    elif state[t, i] == 2:        # eq. 8, the chord pair
                        low, high = F(float(m_lo[t, i])), F(float(m_hi[t, i]))
                        if high - th < th - low:
                            lower_line, upper_line = (F(0), F(0)), (1 / (th - low), -low / (th - low))
                        else:
                            lower_line, upper_line = (1 / (high - th), -th / (high - th)), (F(0), F(1))
                        slope, icpt = lower_line if c >= 0 else upper_line
                        coef[("m", k, t, i)] = coef.get(("m", k, t, i), 0) + c * slope
                        bias += c * icpt
                c = coef.pop(("m", k, t, i), 0)
                if c != 0:
                    coef[("I", k, t, i)] = coef.get(("I", k, t, i), 0) + c
                    if t > 0:
                        coef[("z", k, t - 1, i)] = coef.get(("z", k, t - 1, i), 0) + alpha * c
                c = coef.pop(("I", k, t, i), 0)
                if c != 0:
                    bias += c * F(float(stage_bias[i]))
                    prev = "x" if k == 0 else "s"
                    for j in np.flatnonzero(weight[i]):
                        key = (prev, k - 1, t, j)
                        coef[key] = coef.get(key, 0) + c * F(float(weight[i, j]))
    assert all(key[0] == "x" for key in coef), "every internal node must have been substituted"
    lo = x_lower[:, b].reshape(steps, -1)
    hi = x_upper[:, b].reshape(steps, -1)
    for (_, _, t, j), c in coef.items():
        bias += c * int(lo[t, j] if c >= 0 else hi[t, j])
    return bias


@settings(deadline=None)
@given(data=st.data())
def test_crown_equals_the_naive_scalar_reference(data):
    net = data.draw(small_networks().filter(lambda n: n.dtype == np.float64), label="net")
    x_lower, x_upper = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    C = rng.normal(size=(2, net.n_outputs))
    bounds = interval_bounds(net, x_lower, x_upper)
    result = crown_bounds(net, x_lower, x_upper, C=C, intermediate=bounds)
    for b in range(x_lower.shape[1]):
        for row in range(C.shape[0]):
            lower = naive_crown_lower(net, bounds, C[row], x_lower, x_upper, b)
            upper = -naive_crown_lower(net, bounds, -C[row], x_lower, x_upper, b)
            # Sound: below (above) the exact S-CROWN value; tight: within twice the rounding bound.
            assert Fraction(float(result.lower[b, row])) <= lower, (result.lower[b, row], float(lower))
            assert Fraction(float(result.upper[b, row])) >= upper, (result.upper[b, row], float(upper))
            assert float(lower) - result.lower[b, row] <= 2 * result.rounding_lower[b, row] + 1e-300
            assert result.upper[b, row] - float(upper) <= 2 * result.rounding_upper[b, row] + 1e-300
