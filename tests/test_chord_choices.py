"""``method="crown-ibp-paper"`` takes eq. 8's chord case as the paper writes it: decided on S-IBP's
intervals in exact arithmetic (here: dyadic networks, where float64 S-IBP without margins is exact,
checked against an independent S-IBP in rationals), while which neurons are unstable is decided on
the outward-rounded intervals (so the relaxation stays sound); ``crown-ibp`` decides the case on the
outward-rounded intervals and differs on some of these networks. Soundness of both is checked by the
exhaustive and sampled suites (tests/test_bounds_helpers.py METHODS).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from refsnn import SNN, Linear
from refsnn.bounds import compute_bounds
from refsnn.crown import stage_step_tables
from refsnn.firing import fires
from refsnn.ibp import interval_bounds, interval_bounds_of_box, prepare_stages
from refsnn.input_sets import binary_box
from refsnn.relaxations import UNSTABLE, Precision


def _dyadic_net(rng):
    n_in, hidden, n_out = int(rng.integers(3, 7)), int(rng.integers(3, 8)), 3
    threshold = float(rng.choice([0.25, 0.5, 1.0]))

    def weights(shape):
        return rng.integers(-4, 5, size=shape) * threshold / 4.0

    return SNN([Linear(weights((hidden, n_in)), weights((hidden,)) * 0.5),
                Linear(weights((n_out, hidden)), weights((n_out,)) * 0.5)],
               threshold=threshold, decay=float(rng.choice([0.0, 0.5, 0.25])),
               firing=">=" if rng.random() < 0.5 else ">")


def _exact_membranes(net, x_lower, x_upper):
    """The paper's S-IBP (eqs. 7, 9, 11) in rationals: per stage ``(m_l, m_u)`` lists ``[t][b][i]``."""
    th, alpha = Fraction(net.threshold), Fraction(net.decay)
    steps, batch = x_lower.shape[:2]
    s_lo = [[[Fraction(int(v)) for v in x_lower[t, b]] for b in range(batch)] for t in range(steps)]
    s_hi = [[[Fraction(int(v)) for v in x_upper[t, b]] for b in range(batch)] for t in range(steps)]
    out = []
    for layer in net.layers:
        W = [[Fraction(float(w)) for w in row] for row in layer.weight]
        bias = [Fraction(float(v)) for v in layer.bias]
        n = len(W)
        m_lo = [[[None] * n for _ in range(batch)] for _ in range(steps)]
        m_hi = [[[None] * n for _ in range(batch)] for _ in range(steps)]
        next_lo = [[[None] * n for _ in range(batch)] for _ in range(steps)]
        next_hi = [[[None] * n for _ in range(batch)] for _ in range(steps)]
        for b in range(batch):
            z_lo, z_hi = [Fraction(0)] * n, [Fraction(0)] * n
            for t in range(steps):
                for i in range(n):
                    cur_lo = bias[i] + sum(w * (s_lo[t][b][j] if w > 0 else s_hi[t][b][j]) for j, w in enumerate(W[i]))
                    cur_hi = bias[i] + sum(w * (s_hi[t][b][j] if w > 0 else s_lo[t][b][j]) for j, w in enumerate(W[i]))
                    low, high = cur_lo + alpha * z_lo[i], cur_hi + alpha * z_hi[i]
                    m_lo[t][b][i], m_hi[t][b][i] = low, high
                    on, off = bool(fires(low, th, net.firing == ">=")), not bool(fires(high, th, net.firing == ">="))
                    next_lo[t][b][i] = Fraction(1) if on else Fraction(0)
                    next_hi[t][b][i] = Fraction(0) if off else Fraction(1)
                    if off:
                        z_lo[i], z_hi[i] = low, high
                    elif on:
                        z_lo[i], z_hi[i] = Fraction(0), Fraction(0)
                    else:
                        z_lo[i], z_hi[i] = min(Fraction(0), low), th
        out.append((m_lo, m_hi))
        s_lo, s_hi = next_lo, next_hi
    return out


def test_paper_chord_choices_are_the_exact_papers_and_crown_ibp_differs_somewhere():
    rng = np.random.default_rng(11)
    differs = checked = 0
    for _ in range(60):
        net = _dyadic_net(rng)
        steps, batch, n_in = int(rng.integers(1, 4)), 2, net.layers[0].weight.shape[1]
        x_lower = (rng.random((steps, batch, n_in)) < 0.3).astype(np.uint8)
        x_upper = np.maximum(x_lower, (rng.random(x_lower.shape) < 0.5).astype(np.uint8))
        box = binary_box(x_lower, x_upper, net)
        stages = prepare_stages(net)
        sound = interval_bounds(net, x_lower, x_upper, stages=stages)
        plain = interval_bounds_of_box(net, box, stages, rule=Precision.plain(net))
        exact = _exact_membranes(net, x_lower, x_upper)
        th = Fraction(net.threshold)
        for k, stage in enumerate(stages):
            tables = stage_step_tables(sound, k, stage, chord_interval=plain)
            m_lo, m_hi = exact[k]
            for t in range(steps):
                for b in range(batch):
                    for i in range(stage.n_neurons):
                        assert plain.mem_lower[k][t, b, i] == m_lo[t][b][i]   # float64 S-IBP is exact here
                        assert plain.mem_upper[k][t, b, i] == m_hi[t][b][i]
                        if tables.state[t, b, i] != UNSTABLE:
                            continue
                        upper_case = m_hi[t][b][i] - th < th - m_lo[t][b][i]
                        if upper_case and sound.mem_lower[k][t, b, i] < net.threshold:
                            assert tables.slope_up[t, b, i] > 0 and tables.slope_lo[t, b, i] == 0
                        if not upper_case and sound.mem_upper[k][t, b, i] > net.threshold:
                            assert tables.slope_lo[t, b, i] > 0 and tables.slope_up[t, b, i] == 0
                        checked += 1
        ours = compute_bounds(net, x_lower, x_upper, method="crown-ibp")
        paper = compute_bounds(net, x_lower, x_upper, method="crown-ibp-paper")
        differs += not (np.array_equal(ours[0], paper[0]) and np.array_equal(ours[1], paper[1]))
    assert checked > 100
    assert differs > 0
