"""The complete method on l0 balls (``SpikeL0Set``: every train within ``k`` flips per step or in
total), and the per-sample time limit of ``verify.bab``.

A ball is bounded over the ball itself (exact first-stage currents, ``refsnn.l0``), not over its
enclosing box; its MILP's big-M intervals come from the same ball intervals. Verdicts and margin
brackets must equal enumeration in exact semantics. Time: every local-search step, every MILP
solve and the searches of ``robust_bab`` stop at the sample's deadline (counted, never timed).
"""
from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsnn.testing import snn_strategy
from verify import SpikeL0Set
from verify.bab import BabConfig, robust_bab
from verify.encoding import float64_network, membrane_bounds, pad_bounds
from verify.exact import ExactNetwork

from exact_oracle import assert_verdict_matches_enumeration


@st.composite
def _ball(draw, max_members: int = 4096):
    net = draw(snn_strategy("fc", max_inputs=6, dyadic=draw(st.booleans())))
    steps = draw(st.integers(1, 3))
    shape = (steps,) + tuple(net.input_shape)
    size = int(np.prod(shape))
    center = np.array(draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)), np.uint8).reshape(shape)
    mask = None
    if draw(st.booleans()):
        mask = np.array(draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)), np.uint8).reshape(shape)
    per_step = draw(st.booleans())
    k = draw(st.integers(1, 3))
    ball = SpikeL0Set(center, k, per_step=per_step, mask=mask)
    while ball.count() > max_members and ball.k > 0:
        ball = SpikeL0Set(center, ball.k - 1, per_step=per_step, mask=mask)
    return net, ball


@settings(max_examples=60, deadline=None)
@given(problem=_ball(), label_seed=st.integers(0, 3), method=st.sampled_from(["ibp", "best", "alpha", "crown"]))
def test_ball_verdict_and_margins_equal_enumeration(problem, label_seed, method):
    net, ball = problem
    label = label_seed % net.n_outputs
    # enumerate_max 0: the ball path (root bound, minimizers, searches, MILP) decides every non-trivial ball
    config = BabConfig(method=method, enumerate_max=0, attack_samples=4, search_starts=1, restarts=2,
                       search_steps=3, time_limit=None)
    result = robust_bab(net, ball, label, config)
    assert_verdict_matches_enumeration(net, ball, label, result)


@settings(max_examples=60, deadline=None)
@given(problem=_ball(max_members=256))
def test_ball_membrane_bounds_hold_every_member_and_are_inside_the_box_bounds(problem):
    net, ball = problem
    # as the MILP uses them: padded (the naive bounds they are intersected with are not rounded outward)
    bounds = pad_bounds(membrane_bounds(net, ball, "ibp"))
    box = membrane_bounds(net, SpikeL0Set(ball.center, 0), "naive")  # shapes only
    lower_box, upper_box = ball.box()
    from verify.sets import BoxSet

    wide = pad_bounds(membrane_bounds(net, BoxSet(lower_box, upper_box), "ibp"))
    exact = ExactNetwork(net)
    for xs in ball.enumerate(256):
        for i in range(xs.shape[1]):   # the exact trajectory (the MILP's big-M bounds hold it, padded)
            trace = exact.run(np.ascontiguousarray(xs[:, i]))
            for k, mem in enumerate(trace.membranes):
                assert mem.shape == box.lower[k].shape
                lower = np.array([[Fraction(v) for v in row] for row in bounds.lower[k]], dtype=object)
                upper = np.array([[Fraction(v) for v in row] for row in bounds.upper[k]], dtype=object)
                assert np.all(mem >= lower) and np.all(mem <= upper), (k, mem, bounds.lower[k], bounds.upper[k])
    for k in range(len(bounds.lower)):
        assert np.all(bounds.lower[k] >= wide.lower[k]) and np.all(bounds.upper[k] <= wide.upper[k])


def _moves_by_definition(ball: SpikeL0Set, x: np.ndarray) -> list:
    """Single flips that stay members (step by step, position by position), then per step the swaps
    (undo flip ``a``, flip ``b``), ``a`` over the flipped positions, ``b`` over the others."""
    flat, center = x.reshape(ball.steps, -1), ball.center.reshape(ball.steps, -1)
    out = []
    for t, pos in enumerate(ball._positions):
        for p in pos:
            y = flat.copy()
            y[t, p] ^= 1
            if ball.contains(y.reshape(x.shape)):
                out.append(y)
    for t, pos in enumerate(ball._positions):
        flipped = [p for p in pos if flat[t, p] != center[t, p]]
        for a in flipped:
            for b in [p for p in pos if flat[t, p] == center[t, p]]:
                y = flat.copy()
                y[t, a] ^= 1
                y[t, b] ^= 1
                out.append(y)
    return [bytes(y.reshape(-1)) for y in out]


@settings(max_examples=60, deadline=None)
@given(problem=_ball(max_members=1024), seed=st.integers(0, 100))
def test_moves_are_every_member_one_flip_or_swap_away_in_order(problem, seed):
    _, ball = problem
    x = ball.sample(np.random.default_rng(seed), 1)[:, 0]
    moves = ball.moves(x)
    got = moves.take(np.arange(len(moves)))
    assert [bytes(got[:, i].reshape(-1)) for i in range(got.shape[1])] == _moves_by_definition(ball, x)
    assert all(ball.contains(got[:, i]) for i in range(got.shape[1]))
    if len(moves) > 2:  # any index order, as one batch
        pick = np.array([len(moves) - 1, 0, 1])
        assert np.array_equal(moves.take(pick), got[:, pick])


def test_ball_minimizers_are_members_and_the_clean_train_at_k_0():
    from refsnn import SNN, Linear
    from refsnn.l0 import anyk_minimizers
    from refsnn.spec import margin_spec

    rng = np.random.default_rng(3)
    net = SNN([Linear(rng.normal(size=(5, 8)), rng.normal(size=5) * 0.1),
               Linear(rng.normal(size=(3, 5)), np.zeros(3))], threshold=0.25, decay=0.25)
    clean = rng.integers(0, 2, size=(3, 2, 8)).astype(np.uint8)
    C = margin_spec(np.array([0, 2]), 3)
    for k, per_step in ((0, True), (2, True), (3, False)):
        xs = anyk_minimizers(net, clean, k, C, per_step)
        assert xs.shape == (3, 2, 2, 8)
        for b in range(2):
            ball = SpikeL0Set(clean[:, b], k, per_step=per_step)
            for r in range(2):
                assert ball.contains(xs[:, b, r])
                if k == 0:
                    assert np.array_equal(xs[:, b, r], clean[:, b])


# --- the time limit ---------------------------------------------------------------------------------

def _wide_ball(n_in: int = 64, k: int = 4):
    from refsnn import SNN, Linear

    rng = np.random.default_rng(0)
    net = SNN([Linear(rng.normal(size=(16, n_in)) * 0.3, np.zeros(16)),
               Linear(rng.normal(size=(4, 16)), np.zeros(4))], threshold=0.25, decay=0.25)
    center = rng.integers(0, 2, size=(3, n_in)).astype(np.uint8)
    return net, SpikeL0Set(center, k)


def test_local_search_stops_at_its_deadline(monkeypatch):
    import verify.search as search

    net, ball = _wide_ball()
    calls = []
    scores = search._scores
    monkeypatch.setattr(search, "_scores", lambda *a: calls.append(1) or scores(*a))
    start = ball.sample(np.random.default_rng(1), 1)[:, 0]
    x, _ = search.local_search(float64_network(net), ball, start, np.array([1.0, -1, 0, 0]), -1.0, max_steps=50,
                               deadline=time.perf_counter() - 1.0)
    assert np.array_equal(x, start) and len(calls) == 1   # the start's score only: no step began
    calls.clear()
    search.local_search(float64_network(net), ball, start, np.array([1.0, -1, 0, 0]), -1.0, max_steps=3,
                        max_moves=10, rng=np.random.default_rng(0))
    assert 1 < len(calls) <= 4   # at most one chunk of 10 drawn moves per step


def test_milp_solves_get_only_the_time_left(monkeypatch):
    from verify.encoding import SNNMilp
    from verify.milp import SampleVerifier

    net, ball = _wide_ball(12, 2)
    limits = []
    solve = SNNMilp.solve
    monkeypatch.setattr(SNNMilp, "solve", lambda self, expr, sense, time_limit=None, *a, **kw:
                        limits.append(time_limit) or solve(self, expr, sense, time_limit, *a, **kw))
    verifier = SampleVerifier(net, ball, "auto", time_limit=100.0)
    verifier.deadline = time.perf_counter() - 1.0
    ext = verifier.rate_extreme(np.array([1.0, -1, 0, 0]), "min")
    assert ext.status == "timeout" and limits == []   # nothing left: no solve at all
    assert verifier._relaxed is None and verifier._strict is None   # nor a model built
    # the deadline passes during the build (the build's clock jumps 100 s after its first check): it stops
    # there, no solve, and the partly built model is not kept
    import verify.encoding as encoding
    from types import SimpleNamespace
    checks = []
    jumping = SimpleNamespace(perf_counter=lambda: time.perf_counter() + (100.0 if checks.append(1) or
                                                                          len(checks) > 1 else 0.0))
    verifier.deadline = time.perf_counter() + 30.0
    with monkeypatch.context() as patch:
        patch.setattr(encoding, "time", jumping)
        assert verifier.rate_extreme(np.array([1.0, -1, 0, 0]), "min").status == "timeout" and limits == []
    assert len(checks) >= 2 and verifier._relaxed is None and verifier._strict is None
    verifier.deadline = time.perf_counter() + 30.0
    verifier.rate_extreme(np.array([1.0, -1, 0, 0]), "min")
    assert limits and all(limit <= 30.0 for limit in limits)   # each solve: what is left, not 100 s


def test_robust_bab_searches_stop_at_the_time_limit(monkeypatch):
    """On a clock that advances one second per scored batch of moves, a 5 s limit stops every search
    after a few batches (the searches used to run their 30 steps whatever the limit)."""
    from types import SimpleNamespace

    import verify.bab as bab
    import verify.search as search

    net, ball = _wide_ball(256, 8)
    clock = [0.0]
    scores = search._scores

    def scored(*a):
        clock[0] += 1.0
        return scores(*a)

    fake = SimpleNamespace(perf_counter=lambda: clock[0])
    monkeypatch.setattr(search, "_scores", scored)
    monkeypatch.setattr(search, "time", fake)
    monkeypatch.setattr(bab, "time", fake)
    config = BabConfig(time_limit=5.0, attack_samples=8, search_starts=2, restarts=4, root_milp=0.0,
                       search_moves=64)
    result = robust_bab(net, ball, 0, config, rng=np.random.default_rng(0))
    assert result.status in ("unknown", "not_robust")
    # a search checks the clock before each step and each chunk: at most one batch past the limit
    # per search that started before it
    assert clock[0] <= config.time_limit + config.search_starts + 1, clock


@pytest.mark.parametrize("limit", [0.3])
def test_robust_bab_on_a_ball_returns_near_its_limit(limit):
    """Smoke test with a generous bound (not a timing test; the deadlines themselves are checked on fake
    clocks above): a 0.3 s limit on a ball whose searches and MILP would take minutes returns in far less
    than 60 s, with a verdict."""
    net, ball = _wide_ball(512, 12)
    started = time.perf_counter()
    result = robust_bab(net, ball, 0, BabConfig(time_limit=limit), rng=np.random.default_rng(0))
    assert time.perf_counter() - started < 60.0
    assert result.status in ("unknown", "not_robust", "robust")


def test_ball_big_m_bounds_leave_fewer_first_stage_neurons_unstable_than_the_box():
    from verify.sets import BoxSet

    net, ball = _wide_ball(256, 4)
    lower, upper = ball.box()
    th = float(net.threshold)
    unstable = [int(((b.lower[0] < th) & (b.upper[0] >= th)).sum())
                for b in (membrane_bounds(net, ball, "ibp"), membrane_bounds(net, BoxSet(lower, upper), "ibp"))]
    assert unstable[0] < unstable[1], unstable


def test_a_ball_question_computes_its_intermediate_bounds_once(monkeypatch):
    """The root bound, the ball's minimizers and the MILP's big-M intervals of one ``robust_bab``
    question share one ``refsnn.l0.anyk_intermediate`` (they computed it three times); the verdict
    and the margins are those of three separate computations."""
    import contextlib

    import refsnn.l0 as l0
    import verify.bab as bab
    from refsnn import SNN, Linear

    n = 8  # input j drives hidden j alone: one flip per step fires one hidden neuron, too few for
    # classes 1-2, but S-IBP leaves all 8 unstable: the root stays open and the MILP decides it
    net = SNN([Linear(np.eye(n) * 0.3, np.zeros(n)),
               Linear(np.vstack([np.zeros(n), np.full(n, 0.3), np.full(n, 0.3)]), np.array([0.5, -0.2, -0.2]))],
              threshold=0.25, decay=0.25)
    ball = SpikeL0Set(np.zeros((3, n), np.uint8), 1)
    calls = []
    first_stage = l0.topk_current_interval
    monkeypatch.setattr(l0, "topk_current_interval", lambda *a, **kw: calls.append(1) or first_stage(*a, **kw))
    results = []
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(bab, "shared_intermediate", contextlib.nullcontext, raising=False)
        del calls[:]
        # ball_split=False: the root bound, the minimizers and one MILP (spike-split nodes bound their own)
        config = BabConfig(time_limit=60, enumerate_max=4, ball_split=False)
        result = robust_bab(net, ball, 0, config, rng=np.random.default_rng(0))
        results.append((len(calls), result.status, result.margin_lower, result.attack_margin, result.stats["milp"]))
    assert results[0][1:] == results[1][1:] and results[0][1] == "robust" and results[0][4] == 1
    assert (results[0][0], results[1][0]) == (1, 3)


def _flat_bounds(bounds) -> bytes:
    return b"|".join(np.ascontiguousarray(a, dtype=np.float64).tobytes()
                     for name in ("mem_lower", "mem_upper") for a in getattr(bounds, name))


def test_shared_intermediate_bounds_are_keyed_by_every_input_of_the_question():
    """Inside one ``shared_intermediate`` block a different network, clean train, ``k``, ``per_step``
    or ``refine`` gets its own bounds (equal to a fresh computation), never another question's."""
    import refsnn.l0 as l0
    from refsnn import SNN, Linear

    rng = np.random.default_rng(3)

    def make_net():
        return SNN([Linear(rng.normal(0, 0.4, (5, 6)), rng.normal(0, 0.1, 5)),
                    Linear(rng.normal(0, 0.4, (3, 5)), np.zeros(3))], threshold=0.25, decay=0.25)

    nets = [make_net(), make_net()]
    clean = (rng.random((3, 1, 6)) < 0.4).astype(np.uint8)  # [T', B, n]
    flipped = clean.copy()
    flipped[1, 0, 2] ^= 1
    questions = [(nets[0], clean, 1, True, False), (nets[1], clean, 1, True, False), (nets[0], flipped, 1, True, False),
                 (nets[0], clean, 2, True, False), (nets[0], clean, 1, False, False), (nets[0], clean, 1, True, True)]
    with l0.shared_intermediate():
        for q in questions:
            l0.anyk_intermediate(*q)  # fill the cache with every question first
        for q in questions:
            cached, _ = l0.anyk_intermediate(*q)
            fresh, _ = l0._anyk_intermediate(*q)
            assert _flat_bounds(cached) == _flat_bounds(fresh)
        # a masked ball (fewer members: tighter bounds) never gets the whole ball's, nor the reverse
        partial = np.ones_like(clean)
        partial[:, :, :3] = 0
        masked, _ = l0.anyk_intermediate(*questions[0], mask=partial)
        assert _flat_bounds(masked) == _flat_bounds(l0._anyk_intermediate(*questions[0], mask=partial)[0])
        assert _flat_bounds(masked) != _flat_bounds(l0.anyk_intermediate(*questions[0])[0])
        everything, _ = l0.anyk_intermediate(*questions[0], mask=np.ones_like(clean))
        assert _flat_bounds(everything) == _flat_bounds(l0._anyk_intermediate(*questions[0])[0])
    # the questions' bounds really differ, so one entry served to two of them would have been caught
    # (per_step alone does not change the interval bounds: each step's own flips bound its currents)
    flats = [_flat_bounds(l0._anyk_intermediate(*q)[0]) for i, q in enumerate(questions) if i != 4]
    assert len(set(flats)) == len(flats)
