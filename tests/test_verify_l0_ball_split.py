"""Branch and bound on l0 balls by spike splits (``BabConfig.ball_split``).

A node is the whole ball plus fixed hidden or output spikes; it is bounded over the ball
(``refsnn.l0.anyk_node_bounds`` with ``verify.bab._Search.fixed_hook``). Checked against exhaustive
enumeration in exact semantics: the bounds of a node hold every member whose exact spikes are the
node's, a node flagged empty has no such member, and the verdicts and margin brackets of
``robust_bab`` equal enumeration (both firing rules, dyadic weights for ties at the threshold).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from refsnn.testing import snn_strategy
from verify import SpikeL0Set
from verify.bab import BRANCHING, BabConfig, _Child, _Search, robust_bab
from verify.exact import ExactNetwork

from exact_oracle import assert_verdict_matches_enumeration, exact_counts


@st.composite
def _ball(draw, max_members: int = 512):
    net = draw(snn_strategy("fc", max_inputs=5, max_hidden=4, max_layers=3, dyadic=draw(st.booleans())))
    steps = draw(st.integers(1, 3))
    shape = (steps,) + tuple(net.input_shape)
    size = int(np.prod(shape))
    center = np.array(draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)), np.uint8).reshape(shape)
    per_step = draw(st.booleans())
    mask = None
    if draw(st.booleans()):   # only these bits may flip
        mask = np.array(draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)), np.uint8).reshape(shape)
    ball = SpikeL0Set(center, draw(st.integers(1, 3)), per_step=per_step, mask=mask)
    while ball.count() > max_members and ball.k > 1:
        ball = SpikeL0Set(center, ball.k - 1, per_step=per_step, mask=mask)
    return net, ball


@settings(max_examples=80, deadline=None)
@given(problem=_ball(), label_seed=st.integers(0, 3), method=st.sampled_from(["ibp", "best", "alpha", "crown"]),
       picks=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 1)), min_size=1, max_size=3))
def test_node_bounds_hold_every_member_with_the_nodes_spikes(problem, label_seed, method, picks):
    net, ball = problem
    label = label_seed % net.n_outputs
    search = _Search(net, ball, label, BabConfig(method=method), np.random.default_rng(0))
    sizes = [(k, t, stage.n_neurons) for k, stage in enumerate(search.stages) for t in range(ball.steps)]
    fixed = {}
    for position, value in picks:   # up to three spike splits anywhere (hidden or output), either side
        k, t, n = sizes[position % len(sizes)]
        fixed[(k, t, (position // len(sizes)) % n)] = value
    fixed = tuple((k, t, j, v) for (k, t, j), v in fixed.items())
    children = [_Child(ball, search.all_rows, math.inf, 1, fixed), _Child(ball, search.all_rows, math.inf, 0)]
    lower, _, empty, _, _ = search.ball_bound(children)
    assert not empty[1]
    exact = ExactNetwork(net)
    others = [j for j in range(net.n_outputs) if j != label]
    seen = [False, False]
    for xs in ball.enumerate(1024):
        for i in range(xs.shape[1]):
            trace = exact.run(np.ascontiguousarray(xs[:, i]))
            margins = [Fraction(int(trace.counts[label] - trace.counts[j]), ball.steps) for j in others]
            inside = all(trace.spikes[k][t, j] == v for k, t, j, v in fixed)
            for b, member in ((0, inside), (1, True)):
                if not member:
                    continue
                seen[b] = True
                assert not empty[b], (fixed, trace.spikes)
                for r, margin in enumerate(margins):
                    assert Fraction(float(lower[b, r])) <= margin, (b, r, lower[b], margins, fixed)
    assert seen[1]


@settings(max_examples=100, deadline=None)
@given(problem=_ball(max_members=4096), label_seed=st.integers(0, 4),
       method=st.sampled_from(["ibp", "best", "crown"]), rule=st.sampled_from(["smear", "neuron-widest"]))
def test_spike_split_verdicts_and_margins_equal_enumeration(problem, label_seed, method, rule):
    net, ball = problem
    # mostly the clean prediction (robust balls), else any class
    clean = int(np.argmax(net.forward(ball.center[:, None].astype(np.float64))[0]))
    label = clean if label_seed < 3 else label_seed % net.n_outputs
    # enumerate_max 0: every ball goes to the spike-split search (then, for nodes it cannot split, the
    # ball's MILP); no random members or gradient search, so that the bounds and their minimizers decide
    config = BabConfig(method=method, branching=rule, enumerate_max=0, attack_samples=0, search_starts=0,
                       restarts=0, restart_share=0.0, time_limit=None)
    result = robust_bab(net, ball, label, config)
    event(f"{result.status}, spike splits {result.stats['spike_splits'] > 0}, milp {result.stats['milp'] > 0}")
    assert_verdict_matches_enumeration(net, ball, label, result)


@pytest.mark.parametrize("seed", [68, 89])
def test_spike_splits_prove_a_ball_its_root_bound_leaves_open(seed):
    """Balls whose root bound is <= 0 (a tie: margins >= 0 proven, > 0 not) proved robust by spike
    splits alone (no MILP, no enumeration); the exact minimum margin is > 0."""
    from refsnn import SNN, Linear
    from refsnn.l0 import anyk_bounds
    from refsnn.spec import margin_spec

    rng = np.random.default_rng(seed)
    net = SNN([Linear(np.round(rng.normal(size=(4, 6)) * 8) / 8, np.zeros(4)),
               Linear(np.round(rng.normal(size=(3, 4)) * 8) / 8, np.full(3, 0.125))], threshold=0.25, decay=0.25)
    ball = SpikeL0Set(rng.integers(0, 2, size=(2, 6)).astype(np.uint8), 2)
    label = int(np.argmax(net.forward(ball.center[:, None].astype(np.float64))[0]))
    root = anyk_bounds(net, ball.center[:, None], ball.k, margin_spec(np.array([label]), 3), "best")[0]
    assert root.min() <= 0
    others = [j for j in range(3) if j != label]
    assert min(c[label] - max(c[j] for j in others) for c in exact_counts(net, ball)) > 0
    for rule in BRANCHING:  # every rule; on a ball the input-split ones ("smear", "mixed", ...) split spikes
        config = BabConfig(branching=rule, enumerate_max=0, attack_samples=0, search_starts=0, restarts=0,
                           time_limit=None)
        result = robust_bab(net, ball, label, config)
        assert result.status == "robust" and result.margin_lower > 0, (rule, result)
        assert result.stats["spike_splits"] > 0 and result.stats["milp"] == 0 and result.stats["enumerated"] == 0
