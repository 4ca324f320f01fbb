"""Gray-code enumeration of a node's input subset (``verify.enumerate.gray_margins``) against exact
semantics member by member: every member it does not flag has the exact margin it counts, the
smallest of those is ``lowest``, the flagged ones are members, and a stop is at a member whose exact
margin is <= 0. FC and CONV nets, both firing rules, dyadic weights that put membranes exactly on
the threshold, float weights whose fixed-point rounding moves a membrane across it.
"""
from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsnn import SNN, Linear
from refsnn.ibp import interval_bounds_of_box, prepare_stages
from refsnn.input_sets import binary_box
from refsnn.testing import input_set_strategy, snn_strategy
from verify.encoding import float64_network
from verify.enumerate import GrayResult, gray_margins, reduced_maps
from verify.exact import ExactNetwork
from verify.sets import BoxSet, DigitalLinfSet, LevelSet


def _states(net, level: LevelSet) -> list:
    lower, upper = level.box()
    inter = interval_bounds_of_box(net, binary_box(lower[:, None], upper[:, None], net), prepare_stages(net))
    return [state.reshape(level.steps, -1) for state in inter.state]


def _exact_margins(net, level: LevelSet, rows: np.ndarray, offsets: np.ndarray) -> dict:
    """``{level tuple: exact min_i (rows_i . counts - offsets_i)}`` over every member."""
    exact = ExactNetwork(net)
    open_vars = level.open_variables
    out = {}
    for values in itertools.product(*[range(int(level.lo[v]), int(level.hi[v]) + 1) for v in open_vars]):
        levels = level.lo.copy()
        levels[open_vars] = values
        counts = exact.run(level.from_levels(levels[None])[:, 0]).counts.astype(np.int64)
        out[tuple(int(v) for v in levels)] = int((rows @ counts - offsets).min())
    return out


def _check(result: GrayResult, level: LevelSet, margins: dict) -> None:
    """``result`` is sound for the exact ``margins`` of every member (and exact where it evaluated all)."""
    flagged = [tuple(int(v) for v in levels) for levels in result.flagged]
    for levels in flagged:
        assert levels in margins                     # a member's levels, each inside its range
    if result.overflow or result.exhausted:
        return
    if result.stopped:
        assert margins[flagged[-1]] <= 0          # a witness: its counts were exact
        return
    assert result.members == level.count() == len(margins)
    assert result.evaluated <= result.members
    unflagged = [m for key, m in margins.items() if key not in set(flagged)]
    if unflagged:
        # a lower bound of the members it did not flag; they all have margins > 0 (else it stops)
        assert result.lowest is not None and 0 < result.lowest <= min(unflagged)
        if result.evaluated == result.members:
            assert result.lowest == min(unflagged)   # every float margin it trusted is the exact one
    else:
        assert result.lowest is None


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_gray_margins_equal_exact_enumeration(data):
    arch = data.draw(st.sampled_from(["fc", "conv"]))
    net = data.draw(snn_strategy(arch, max_inputs=6, dyadic=data.draw(st.booleans()), max_layers=3))
    level = LevelSet.of(data.draw(input_set_strategy(net, steps=(1, 3), kinds=("box", "digital"), max_members=256)))
    if level.open_variables.size and data.draw(st.booleans()):   # a node below the root
        v = int(data.draw(st.sampled_from(level.open_variables.tolist())))
        cut = data.draw(st.integers(int(level.lo[v]), int(level.hi[v])))
        level = level.restrict(v, cut, int(level.hi[v]))
    rows = np.array(data.draw(st.lists(st.lists(st.integers(-2, 2), min_size=net.n_outputs,
                                                max_size=net.n_outputs), min_size=1, max_size=3)), np.int64)
    zero = np.zeros(rows.shape[0], np.int64)
    raw = _exact_margins(net, level, rows, zero)
    # thresholds at, below and above the exact minimum: stops, flags and "every member > 0"
    shift = data.draw(st.sampled_from([-1, 0, 1]))
    offsets = np.full(rows.shape[0], min(raw.values()) + shift, np.int64)
    margins = {key: m - int(offsets[0]) for key, m in raw.items()}
    net64 = float64_network(net)
    result = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, offsets,
                          cap=data.draw(st.sampled_from([1, 4, 4096])))
    assert result is not None
    _check(result, level, margins)


def _last_step_problem(seed: int):
    """A random FC net of 2-3 stages and a box or digital set with many free bits at the last step,
    where the Gray enumeration closes sweeps of last-step variables by intervals."""
    rng = np.random.default_rng(seed)
    steps, n_in = int(rng.integers(1, 4)), int(rng.integers(4, 9))
    widths = [n_in] + [int(rng.integers(2, 7)) for _ in range(int(rng.integers(1, 3)))] + [3]
    dyadic = seed % 3 == 0
    draw = (lambda shape: rng.integers(-4, 5, shape) / 8.0) if dyadic else (lambda shape: rng.normal(0, 0.5, shape))
    net = SNN([Linear(draw((b, a)), draw(b)) for a, b in zip(widths[:-1], widths[1:])], threshold=0.25,
              decay=0.5, input_shape=(n_in,), firing=(">=", ">")[seed % 2])
    if seed % 4 == 0:
        rand = rng.random((steps, n_in))
        rand[-1] = rng.uniform(0.3, 0.7, n_in)            # many free rand values at the last step
        level = LevelSet.of(DigitalLinfSet(rng.uniform(0.3, 0.7, n_in), 0.5, rand))
    else:
        lower = (rng.random((steps, n_in)) < 0.3).astype(np.uint8)
        upper = np.maximum(lower, (rng.random((steps, n_in)) < 0.4).astype(np.uint8))
        lower[-1], upper[-1] = 0, (rng.random(n_in) < 0.8)
        level = LevelSet.of(BoxSet(lower, upper))
    return net, level, rng


def test_closed_sweeps_are_sound_and_happen():
    """Over 152 seeded problems with free bits at the last step and thresholds at, below and above the
    exact minimum: every result is sound (``_check``), and sweeps of last-step variables are closed
    without evaluating their members in many of them (the path is exercised)."""
    closed = 0
    # 242 and 668: a sweep closed after an unclosed one left the last-step bits at the far corner
    for seed in list(range(150)) + [242, 668]:
        net, level, rng = _last_step_problem(seed)
        if level.count() > 1024:
            continue
        rows = rng.integers(-2, 3, (int(rng.integers(1, 3)), 3))
        raw = _exact_margins(net, level, rows, np.zeros(rows.shape[0], np.int64))
        net64 = float64_network(net)
        for shift in (-2, -1, 0, 1):
            offsets = np.full(rows.shape[0], min(raw.values()) + shift, np.int64)
            margins = {key: m - int(offsets[0]) for key, m in raw.items()}
            result = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, offsets)
            _check(result, level, margins)
            closed += (not result.stopped and not result.overflow and result.evaluated < result.members)
    assert closed >= 50


def test_a_sweep_after_a_near_tie_at_an_earlier_step_is_not_closed_by_intervals():
    """Input ``a`` (free, step 0) weighs 0.25 = threshold and ``b`` (always on, step 0) 2^-58: with
    ``a`` on, the exact membrane of ``h`` is above the threshold (``h`` fires under ``>``) while its
    float64 value rounds onto it (silent). Output 0 copies ``h``; bit ``c`` at the last step makes a
    sweep of two members. The member's step-0 spikes are not trusted, so the sweep of ``a = 1`` must
    not be closed by the last step's intervals (with the float spike its margin bound would be 1,
    the exact margin is 0): it is evaluated and flagged for the exact replay."""
    net = SNN([Linear(np.array([[0.25, 2.0 ** -58, 0.0]]), np.zeros(1)),
               Linear(np.array([[1.0], [0.0]]), np.zeros(2))], threshold=0.25, decay=0.5, input_shape=(3,),
              firing=">")
    lower = np.array([[0, 1, 0], [0, 0, 0]], np.uint8)
    upper = np.array([[1, 1, 0], [0, 0, 1]], np.uint8)
    level = LevelSet.of(BoxSet(lower, upper))
    rows = np.array([[-1, 0]], np.int64)
    offsets = np.array([-1], np.int64)           # margin 1 - count(out 0)
    margins = _exact_margins(net, level, rows, offsets)
    assert sorted(margins.values()) == [0, 0, 1, 1]
    net64 = float64_network(net)
    result = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, offsets)
    flagged = {tuple(int(v) for v in levels) for levels in result.flagged}
    assert {key for key, m in margins.items() if m == 0} <= flagged
    _check(result, level, margins)


def test_a_membrane_within_the_tie_band_is_flagged():
    """Input weights 0.1 and 0.2 (floats) under threshold 0.3: with both inputs on, the exact current
    exceeds the float threshold by 3e-17, inside the tie band, so that member must be flagged for the
    exact replay whatever its float value says; the others are counted. With the bits at the last
    step instead, the interval of that step cannot close the sweep either (the neuron is unstable)
    unless every margin is > 0 whatever it does."""
    net = SNN([Linear(np.array([[0.1, 0.2]]), np.zeros(1)), Linear(np.array([[1.0], [0.0]]), np.zeros(2))],
              threshold=0.3, decay=0.5, input_shape=(2,), firing=">")
    # free bits at the first of two steps: no last-step sweep to close by intervals, each member is run
    level = LevelSet.of(BoxSet(np.zeros((2, 2), np.uint8), np.array([[1, 1], [0, 0]], np.uint8)))
    rows = np.array([[1, -1]], np.int64)
    offsets = np.array([-5], np.int64)          # every margin > 0: nothing stops the enumeration
    margins = {key: m + 5 for key, m in _exact_margins(net, level, rows, np.zeros(1, np.int64)).items()}
    assert margins[(1, 1)] == 6                 # exactly, the neuron fires
    net64 = float64_network(net)
    result = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, offsets)
    assert {tuple(int(v) for v in levels) for levels in result.flagged} == {(1, 1)}
    assert result.lowest == 5
    _check(result, level, margins)


def test_gray_code_visits_every_level_combination_once():
    """Multi-level variables (a digital set with several free rand values per pixel) and a restricted
    range: the enumeration counts exactly the members, and with every threshold above every margin
    it flags each member once (cap large enough)."""
    rng = np.random.default_rng(3)
    image = np.array([0.5, 0.45, 0.52])
    rand = np.array([[0.46, 0.47, 0.9], [0.49, 0.1, 0.51], [0.51, 0.48, 0.53]])
    level = LevelSet.of(DigitalLinfSet(image, 0.2, rand))
    level = level.restrict(0, int(level.lo[0]) + 1, int(level.hi[0]))
    net = SNN([Linear(rng.normal(0, 0.5, (3, 3)), rng.normal(0, 0.1, 3)),
               Linear(rng.normal(0, 0.5, (2, 3)), np.zeros(2))], threshold=0.25, decay=0.5, input_shape=(3,))
    rows = np.zeros((1, 2), np.int64)
    net64 = float64_network(net)
    result = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, np.zeros(1, np.int64),
                          cap=level.count())
    # margin 0 for every member: the first member stops the enumeration (a witness of margin 0)
    assert result.stopped and result.members == 1
    result = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, np.array([-1], np.int64))
    assert result.members == level.count() > 8 and result.lowest == 1 and not result.stopped


def test_weights_too_large_for_the_fixed_point_fall_back():
    """A current that would not fit 2^61 with 10 fractional bits: None (the caller enumerates in chunks)."""
    net = SNN([Linear(np.array([[2.0 ** 55]]), np.zeros(1)), Linear(np.array([[1.0], [0.0]]), np.zeros(2))],
              threshold=0.25, decay=0.5, input_shape=(1,))
    level = LevelSet.of(BoxSet(np.zeros((1, 1), np.uint8), np.ones((1, 1), np.uint8)))
    net64 = float64_network(net)
    assert gray_margins(net64, reduced_maps(net64), level, _states(net, level), np.array([[1, -1]]),
                        np.zeros(1, np.int64)) is None


@pytest.mark.parametrize("seed", range(3))
def test_branch_and_bound_leaves_use_the_gray_enumeration_and_agree_with_chunks(seed, monkeypatch):
    """A whole set enumerated as one leaf gives the same verdict and margin bound through the Gray
    enumeration as through the chunked reduced pass (the Gray path switched off)."""
    import verify.bab as bab
    from verify import BabConfig, robust_bab

    rng = np.random.default_rng(seed)
    net = SNN([Linear(rng.normal(0, 0.4, (12, 10)), rng.normal(0, 0.1, 12)),
               Linear(rng.normal(0, 0.4, (3, 12)), rng.normal(0, 0.1, 3))], threshold=0.25, decay=0.5,
              input_shape=(10,))
    lower = (rng.random((2, 10)) < 0.3).astype(np.uint8)
    upper = np.maximum(lower, (rng.random((2, 10)) < 0.6).astype(np.uint8))
    box = BoxSet(lower, upper)
    label = int(np.argmax(net.forward(box.sample(rng, 1))[0]))
    config = BabConfig(time_limit=None, enumerate_always=1 << 20, attack_samples=0, search_starts=0, restarts=0,
                       root_milp=0)
    fast = robust_bab(net, box, label, config, rng=np.random.default_rng(0))
    assert fast.stats["gray_members"] > 0 or fast.status == "not_robust"
    monkeypatch.setattr(bab, "gray_margins", lambda *args, **kwargs: None)
    slow = robust_bab(net, box, label, config, rng=np.random.default_rng(0))
    assert slow.stats["gray_members"] == 0
    assert fast.status == slow.status
    if fast.status == "robust":
        assert fast.margin_lower == slow.margin_lower


def test_a_budget_of_members_stops_the_enumeration_undecided():
    """Free bits at the first of two steps (no sweep to close): after ``budget`` members evaluated one
    by one the enumeration stops with ``exhausted`` and decides nothing; without a budget it covers all."""
    rng = np.random.default_rng(5)
    net = SNN([Linear(rng.normal(0, 0.5, (4, 6)), rng.normal(0, 0.1, 4)),
               Linear(rng.normal(0, 0.5, (2, 4)), np.zeros(2))], threshold=0.25, decay=0.5, input_shape=(6,))
    level = LevelSet.of(BoxSet(np.zeros((2, 6), np.uint8), np.vstack([np.ones(6), np.zeros(6)]).astype(np.uint8)))
    rows, offsets = np.zeros((1, 2), np.int64), np.array([-1], np.int64)    # margin 1 for every member
    net64 = float64_network(net)
    stopped = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, offsets, budget=5)
    assert stopped.exhausted and not stopped.overflow and stopped.members == stopped.evaluated == 5
    whole = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, offsets)
    assert not whole.exhausted and whole.members == whole.evaluated == 64 and whole.lowest == 1



def test_closed_sweeps_count_against_the_budget():
    """Free bits at both of two steps, every margin 1 (zero rows): each of the 64 settings of the
    first step's bits closes its sweep of the last step's 64 by intervals without evaluating a
    member. A closed sweep costs a pass like an evaluated member, so a budget of 5 passes stops after
    5 sweeps (a part whose sweeps all close still ends near the time limit)."""
    rng = np.random.default_rng(5)
    net = SNN([Linear(rng.normal(0, 0.5, (4, 6)), rng.normal(0, 0.1, 4)),
               Linear(rng.normal(0, 0.5, (2, 4)), np.zeros(2))], threshold=0.25, decay=0.5, input_shape=(6,))
    level = LevelSet.of(BoxSet(np.zeros((2, 6), np.uint8), np.ones((2, 6), np.uint8)))
    rows, offsets = np.zeros((1, 2), np.int64), np.array([-1], np.int64)
    net64 = float64_network(net)
    whole = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, offsets)
    assert not whole.exhausted and whole.members == 4096 and whole.evaluated == 0 and whole.lowest == 1
    assert whole.passes == 64 and whole.seconds is not None and whole.seconds >= 0   # compiled by now
    stopped = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, offsets, budget=5)
    assert stopped.exhausted and stopped.evaluated == 0 and stopped.members == 5 * 64 and stopped.passes == 5

# adversarial weights: sums that round onto thresholds, tiny weights beside large ones
_ADVERSARIAL = [0.1, 0.2, 0.3, -0.1, -0.2, 0.7, 2.0 ** -58, -2.0 ** -58, 0.25, -0.25, 0.125, 1e-17, 0.5, 1 / 3,
                -1 / 3, 0.0]


def _adversarial_problem(case: int):
    """1-3 stages, T' 1-3, both firing rules, decay in {0, 1/3, 0.25, 0.5, 0.9, 0.999, 1}, thresholds
    such as 0.1 + 0.2; boxes, digital sets and general multi-rank level sets, some restricted; rows
    and offsets at, below and above the exact minimum margin."""
    rng = np.random.default_rng(case)
    steps, n_in = int(rng.integers(1, 4)), int(rng.integers(2, 7))
    widths = [n_in] + [int(rng.integers(1, 6)) for _ in range(int(rng.integers(1, 4)) - 1)] + [int(rng.integers(2, 4))]
    style = rng.choice(["dyadic", "normal", "adversarial", "mixed"])

    def draw(shape):
        if style == "dyadic":
            return rng.integers(-5, 6, shape) / 8.0
        if style == "normal":
            return rng.normal(0, 0.5, shape)
        if style == "adversarial":
            return rng.choice(_ADVERSARIAL, shape) * rng.choice([1, 1, 1, 2, 3], shape)
        return np.where(rng.random(shape) < 0.5, rng.integers(-5, 6, shape) / 8.0, rng.choice(_ADVERSARIAL, shape))

    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        bias = draw(b) if rng.random() < 0.7 else np.zeros(b)
        layers.append(Linear(draw((b, a)), bias))
    net = SNN(layers, threshold=float(rng.choice([0.25, 0.3, 0.1 + 0.2, 0.5, 1.0, 0.125])),
              decay=float(rng.choice([0.5, 1.0, 0.999, 0.25, 0.0, 0.9, 1 / 3])), input_shape=(n_in,),
              firing=str(rng.choice([">=", ">"])))
    kind = rng.choice(["box", "digital", "general", "general_last"])
    if kind == "box":
        lower = (rng.random((steps, n_in)) < 0.3).astype(np.uint8)
        upper = np.maximum(lower, (rng.random((steps, n_in)) < 0.5).astype(np.uint8))
        if rng.random() < 0.5:
            lower[-1], upper[-1] = 0, (rng.random(n_in) < 0.8)
        level = LevelSet.of(BoxSet(lower, upper))
    elif kind == "digital":
        rand = rng.random((steps, n_in))
        if rng.random() < 0.5:
            rand[-1] = rng.uniform(0.3, 0.7, n_in)
        if rng.random() < 0.3:
            rand[:, 0] = rand[0, 0]   # equal ranks across steps
        level = LevelSet.of(DigitalLinfSet(rng.uniform(0.3, 0.7, n_in), float(rng.choice([0.2, 0.5])), rand))
    else:
        n_vars = int(rng.integers(1, 5))
        n_levels = rng.integers(1, 4, n_vars)
        base = (rng.random((steps, n_in)) < 0.3).astype(np.uint8)
        variable = np.full((steps, n_in), -1)
        rank = np.zeros((steps, n_in), np.int64)
        for t in range(steps):
            for i in range(n_in):
                if rng.random() < 0.5:
                    v = int(rng.integers(0, n_vars))
                    if kind == "general_last" and v % 2 == 0 and t != steps - 1:
                        continue
                    variable[t, i], rank[t, i], base[t, i] = v, int(rng.integers(0, n_levels[v])), 0
        level = LevelSet(base, variable, rank, n_levels)
    for _ in range(int(rng.integers(0, 3))):
        if not level.open_variables.size:
            break
        v = int(rng.choice(level.open_variables))
        lo = int(rng.integers(level.lo[v], level.hi[v] + 1))
        level = level.restrict(v, lo, int(rng.integers(lo, level.hi[v] + 1)))
    while level.count() > 128:
        v = int(rng.choice(level.open_variables))
        lo = int(rng.integers(level.lo[v], level.hi[v] + 1))
        level = level.restrict(v, lo, lo)
    rows = rng.integers(-2, 3, (int(rng.integers(1, 3)), net.n_outputs)).astype(np.int64)
    return net, level, rows, rng


def test_adversarial_problems_are_sound():
    """Seeded adversarial problems (``_adversarial_problem``): every result sound (``_check``). Cases
    667 and 1918 failed when the near-tie test of the earlier steps looked at stage 0 only, and when
    the last step's intervals ignored the tie band."""
    for case in list(range(60)) + [667, 1918]:
        net, level, rows, rng = _adversarial_problem(case)
        raw = _exact_margins(net, level, rows, np.zeros(rows.shape[0], np.int64))
        net64 = float64_network(net)
        for shift in (-2, -1, 0, 1):
            offsets = np.full(rows.shape[0], min(raw.values()) + shift, np.int64) + \
                rng.integers(0, 2, rows.shape[0]) * (shift == 1)
            exact = _exact_margins(net, level, rows, offsets)
            result = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, offsets,
                                  cap=int(rng.choice([1, 4, 4096])))
            _check(result, level, exact)


def test_the_layer_weights_not_the_rounded_map_set_the_currents():
    """``stage_affine_maps`` builds a column as ``fl(W + b) - b``: weights of 0.99 2^-53 beside a bias
    of 1 vanish from it. 400 of them on (and a free bit) lift the exact current above the threshold
    1 + 200 w: every member fires, margin 0, while the rounded map says silent (margin 1)."""
    n = 400
    w = 2.0 ** -53 * 0.99
    weight = np.zeros((2, n + 1))
    weight[0, :n] = w
    net = SNN([Linear(weight, np.array([1.0, 0.0]))], threshold=float(1.0 + n * w / 2), decay=0.5,
              input_shape=(n + 1,))
    lower = np.ones((1, n + 1), np.uint8)
    lower[0, n] = 0
    level = LevelSet.of(BoxSet(lower, np.ones((1, n + 1), np.uint8)))
    rows, offsets = np.array([[-1, 0]], np.int64), np.array([-1], np.int64)
    margins = _exact_margins(net, level, rows, offsets)
    assert set(margins.values()) == {0}
    net64 = float64_network(net)
    assert reduced_maps(net64)[0][0][0, 0] == 0.0      # the map lost the weight
    result = gray_margins(net64, reduced_maps(net64), level, _states(net, level), rows, offsets)
    _check(result, level, margins)
    assert result.stopped


def test_a_set_too_large_to_count_in_int64_is_refused():
    net = SNN([Linear(np.full((2, 64), 0.01), np.zeros(2))], threshold=0.25, decay=0.5, input_shape=(64,))
    level = LevelSet.of(BoxSet(np.zeros((1, 64), np.uint8), np.ones((1, 64), np.uint8)))
    net64 = float64_network(net)
    assert gray_margins(net64, reduced_maps(net64), level, _states(net, level), np.array([[1, -1]]),
                        np.zeros(1, np.int64)) is None


@pytest.mark.parametrize("patch", ["rate", "cap"])
@pytest.mark.parametrize("seed", range(6))
def test_leaves_cut_short_by_the_budget_or_the_flag_cap_decide_nothing_wrong(seed, patch, monkeypatch):
    """With a budget of one member per second left (``GRAY_RATE = 1``, a time limit) a part stops
    undecided and its leaf stays open; with ``GRAY_FLAG_CAP = 1`` a part that flags two members falls
    back to the chunked pass. Either way the verdict agrees with exact enumeration (or is unknown)."""
    import verify.bab as bab
    from verify import BabConfig, robust_bab, spec_bab

    monkeypatch.setattr(bab, "GRAY_RATE" if patch == "rate" else "GRAY_FLAG_CAP", 1)
    net, level, rng = _last_step_problem(seed)
    if level.count() > 256:
        level = level.restrict(int(level.open_variables[0]), int(level.lo[level.open_variables[0]]),
                               int(level.lo[level.open_variables[0]]))
    rows = rng.integers(-2, 3, (2, net.n_outputs)).astype(np.int64)
    config = BabConfig(time_limit=2.0 if patch == "rate" else None, enumerate_always=1 << 20, attack_samples=0,
                       search_starts=0, restarts=0, root_milp=0)
    exact = _exact_margins(net, level, rows, np.zeros(rows.shape[0], np.int64))
    for strict in (True, False):
        threshold = int(np.median(list(exact.values())))
        result = spec_bab(net, level, rows, Fraction(threshold, level.steps), strict=strict, config=config,
                          rng=np.random.default_rng(0))
        holds = all((m > threshold) if strict else (m >= threshold) for m in exact.values())
        if result.status != "unknown":
            assert (result.status == "robust") == holds
    label = int(rng.integers(net.n_outputs))
    result = robust_bab(net, level, label, config, rng=np.random.default_rng(0))
    others = [j for j in range(net.n_outputs) if j != label]
    robust = min(_exact_margins(net, level, np.array([[1 if o == label else 0 for o in range(net.n_outputs)]]) -
                                np.eye(net.n_outputs, dtype=np.int64)[others], np.zeros(len(others), np.int64)
                                ).values()) > 0
    if result.status != "unknown":
        assert (result.status == "robust") == robust
