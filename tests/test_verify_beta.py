"""Spike splits as Lagrangian terms of the bound (beta-CROWN's split constraints, ``BabConfig.beta``).

A node whose members all have ``m >= th`` (spike on) or ``m <= th`` (spike off) at a split spike is
bounded as ``spec f - beta (m - th)`` (on) or ``+ beta (m - th)`` (off), ``beta >= 0``: the
back-substitution step adds the multiplier to the coefficient on that membrane
(``refsnn.operator.SplitTerms``). Checked here: zero multipliers give the existing bound bit for bit;
random and optimized multipliers give sound bounds for every member with the node's exact spikes
(exhaustive enumeration in exact arithmetic, FC and CONV, both firing rules, dyadic weights for ties
at the threshold, boxes, digital sets and l0 balls); complete verdicts with ``beta`` equal
enumeration; the multipliers' gradient equals central finite differences.
"""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from refsnn import SNN, Conv2d, Flatten, Linear
from refsnn.alpha import (BoxConcretizer, SpikeSplits, backsub, backsub_gradient, default_params, optimize_rows,
                          random_params, split_lower_bounds, stage_tables)
from refsnn.crown import backsub_stages, stage_step_tables
from refsnn.ibp import interval_bounds, interval_bounds_of_box, prepare_stages
from refsnn.input_sets import binary_box
from refsnn.l0 import L0Concretizer, anyk_intermediate
from refsnn.operator import SplitTerms
from refsnn.relaxations import output_rounding_margin
from refsnn.spec import margin_spec
from refsnn.testing import input_set_strategy, snn_strategy
from verify import SpikeL0Set
from verify.bab import SPIKE_OFF, SPIKE_ON, BabConfig, BabConfigError, _Child, _Search, robust_bab
from verify.exact import ExactNetwork
from verify.sets import LevelSet

from exact_oracle import assert_verdict_matches_enumeration, exact_min_margin
from gradcheck import random_binary_box, small_conv_net, small_fc_net


def _picks(data, search, steps, most=3):
    """Up to ``most`` distinct spikes ``(stage, t, neuron)`` anywhere (hidden or output, stable or not)."""
    picks = set()
    for _ in range(data.draw(st.integers(1, most), label="n_picks")):
        k = data.draw(st.integers(0, len(search.stages) - 1), label="stage")
        picks.add((k, data.draw(st.integers(0, steps - 1), label="t"),
                   data.draw(st.integers(0, search.stages[k].n_neurons - 1), label="neuron")))
    return sorted(picks)


def _node(search, input_set, fixed):
    """``(intermediate bounds with the splits clipped in, concretizer)`` of one node ``fixed`` over
    the whole input set (a box, digital set or l0 ball), as ``verify.bab`` bounds it."""
    net = search.net
    if isinstance(input_set, SpikeL0Set):
        clean = input_set.center[:, None]
        inter, _ = anyk_intermediate(net, clean, input_set.k, input_set.per_step, stages=search.stages,
                                     hook=lambda inner: search.fixed_hook([fixed], inner),
                                     mask=input_set.mask[:, None])
        return inter, L0Concretizer(clean, input_set.k, input_set.per_step, input_set.mask[:, None])
    lower, upper = LevelSet.of(input_set).box()
    box = binary_box(lower[:, None], upper[:, None], net)
    inter = interval_bounds_of_box(net, box, search.stages, refine=search.fixed_hook([fixed]) if fixed else None)
    return inter, BoxConcretizer.of_box(box)


def _members(net, input_set):
    """Every member's exact trace (``verify.exact``)."""
    exact = ExactNetwork(net)
    for xs in input_set.enumerate(256):
        for i in range(xs.shape[1]):
            yield exact.run(np.ascontiguousarray(xs[:, i]))


def _random_beta(rng, shape):
    """Multipliers >= 0 with zeros and large values drawn often."""
    beta = rng.random(shape) * rng.choice([0.1, 1.0, 10.0], size=shape)
    return np.where(rng.random(shape) < 0.2, 0.0, beta)


# --- zero multipliers: the existing bound, bit for bit -------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_zero_terms_give_the_existing_bound_bit_for_bit(data):
    net = data.draw(snn_strategy(data.draw(st.sampled_from(["fc", "conv"])), max_inputs=5, max_layers=3,
                                 dyadic=data.draw(st.booleans()),
                                 dtype=data.draw(st.sampled_from([np.float64, np.float32]))))
    input_set = data.draw(input_set_strategy(net, steps=(1, 3), kinds=("box",), max_members=64))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    lower, upper = input_set.box()
    x_lower, x_upper = np.repeat(lower[:, None], 2, axis=1), np.repeat(upper[:, None], 2, axis=1)
    stages = prepare_stages(net)
    bounds = interval_bounds(net, x_lower, x_upper, stages=stages)
    C = margin_spec(np.array([0, net.n_outputs - 1]), net.n_outputs)
    spec = np.concatenate([C, -C], axis=1)
    steps = x_lower.shape[0]
    # the paper's relaxation (S-CROWN's driver and tables), with the recorded per-step shares
    tables = [stage_step_tables(bounds, k, stage) for k, stage in enumerate(stages)]
    lam_s = np.ascontiguousarray(np.broadcast_to(spec[None] / steps, (steps,) + spec.shape))
    zeros = [SplitTerms(np.zeros((steps, 2, spec.shape[1], s.n_neurons)), float(net.threshold)) for s in stages]
    plain = backsub_stages(stages, tables, lam_s, record=True)
    split = backsub_stages(stages, tables, lam_s, record=True, splits=zeros)
    for a, b in zip(plain[:3], split[:3]):
        assert np.array_equal(a, b)
    for a, b in zip(plain[3], split[3]):
        for name in ("lam_cur", "bias", "err", "fire_coef", "step_bias", "step_err"):
            assert np.array_equal(getattr(a.step, name), getattr(b.step, name)), name
    # optimized slopes (random parameters), zero multipliers on random spikes
    atables = [stage_tables(bounds, k, stage) for k, stage in enumerate(stages)]
    params = random_params(atables, spec.shape[1], rng)
    index = np.array([(rng.integers(2), k, rng.integers(steps), rng.integers(stages[k].n_neurons))
                      for k in rng.integers(0, len(stages), size=3)])
    splits = SpikeSplits(index, rng.integers(0, 2, size=3).astype(np.int8), float(net.threshold))
    conc = BoxConcretizer(x_lower.astype(float), x_upper.astype(float))
    ours = backsub(stages, atables, spec, conc, params, splits=splits, beta=np.zeros((3, spec.shape[1])))
    theirs = backsub(stages, atables, spec, conc, params)
    for name in ("value", "err", "lam_x", "bias"):
        assert np.array_equal(getattr(ours, name), getattr(theirs, name)), name


# --- soundness against enumeration ------------------------------------------------------------------------

@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_split_bounds_hold_every_member_with_the_nodes_spikes(data):
    """Random multipliers (with random slopes) and optimized ones (``optimize_rows``), on the node's
    clipped bounds and on the unclipped root bounds (the split spikes then unstable in the tables),
    never exceed the exact margin of a member whose exact spikes are the node's."""
    arch = data.draw(st.sampled_from(["fc", "conv"]))
    net = data.draw(snn_strategy(arch, max_inputs=5, max_layers=3, dyadic=data.draw(st.booleans())))
    input_set = data.draw(input_set_strategy(net, steps=(1, 3), kinds=("box", "digital", "l0"), max_members=128))
    label = data.draw(st.integers(0, net.n_outputs - 1))
    search = _Search(net, input_set, label, BabConfig(beta=True), np.random.default_rng(0))
    picks = _picks(data, search, input_set.steps)
    side = tuple(data.draw(st.sampled_from([SPIKE_OFF, SPIKE_ON])) for _ in picks)
    fixed = tuple((*p, v) for p, v in zip(picks, side))
    clipped = data.draw(st.booleans())
    inter, conc = _node(search, input_set, fixed if clipped else ())
    empty = any((lo > hi).any() for lo, hi in zip(inter.mem_lower, inter.mem_upper))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    C = search.specs([search.all_rows])
    splits = SpikeSplits.from_fixed([fixed], float(net.threshold))
    tables = [stage_tables(inter, k, stage) for k, stage in enumerate(search.stages)]
    margin = output_rounding_margin(C, inter.rule, input_set.steps)
    bounds = []
    if not empty:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for _ in range(2):
                params = random_params(tables, C.shape[1], rng) if rng.random() < 0.5 else None
                beta = _random_beta(rng, (splits.count, C.shape[1]))
                bounds.append(backsub(search.stages, tables, C, conc, params, splits=splits, beta=beta).sound[0]
                              - margin[0])
            bounds.append(split_lower_bounds(search.stages, inter, C, conc, splits, iterations=5,
                                             optimize_params=data.draw(st.booleans()), beta_lr=0.5)[0])
    members = 0
    for trace in _members(net, input_set):
        if any(trace.spikes[k][t, j] != v for k, t, j, v in fixed):
            continue
        members += 1
        assert not empty
        for lower in bounds:
            for r in search.all_rows:
                assert Fraction(float(lower[r])) <= trace.value(search.C[r]), (fixed, r, lower, clipped)
    event(f"node members {members > 0}, empty {empty}, clipped {clipped}")


@settings(max_examples=60, deadline=None)
@given(data=st.data(), method=st.sampled_from(["crown-ibp", "best", "alpha", "crown"]))
def test_node_bounds_with_beta_hold_and_are_no_looser(data, method):
    """``_Search.bound`` / ``ball_bound`` with ``beta``: every side combination of one or two splits,
    bounds at least those without ``beta``, and sound for every member in the child of its exact spikes."""
    net = data.draw(snn_strategy(data.draw(st.sampled_from(["fc", "conv"])), max_inputs=5,
                                 dyadic=data.draw(st.booleans())))
    input_set = data.draw(input_set_strategy(net, steps=(1, 3), kinds=("box", "digital", "l0"), max_members=128))
    label = data.draw(st.integers(0, net.n_outputs - 1))
    searches = [_Search(net, input_set, label, BabConfig(method=method, branching="neuron-babsr", beta=beta,
                                                         beta_iterations=4, time_limit=None), np.random.default_rng(0))
                for beta in (False, True)]
    picks = _picks(data, searches[0], input_set.steps, most=2)
    sides = list(itertools.product((SPIKE_OFF, SPIKE_ON), repeat=len(picks)))
    root = input_set if isinstance(input_set, SpikeL0Set) else LevelSet.of(input_set)
    children = [_Child(root, searches[0].all_rows, math.inf, 1, tuple((*p, v) for p, v in zip(picks, side)))
                for side in sides] + [_Child(root, searches[0].all_rows, math.inf, 0)]
    (without, _, empty, *_), (with_beta, _, empty_beta, *_) = (s.bound(children) for s in searches)
    assert np.array_equal(empty, empty_beta)
    live = ~empty
    assert np.all(with_beta[live] >= without[live])
    assert np.array_equal(with_beta[-1], without[-1])   # no split: the same bound
    assert searches[1].stats["beta_bounds"] == int(live[:-1].sum())
    for trace in _members(net, input_set):
        b = sides.index(tuple(int(trace.spikes[k][t, j]) for k, t, j in picks))
        assert not empty[b]
        for r in searches[1].all_rows:
            assert Fraction(float(with_beta[b, r])) <= trace.value(searches[1].C[r])


# --- complete verdicts ----------------------------------------------------------------------------------------

def _deep_problem(seed: int):
    """A small net (FC or CONV, either firing rule, dyadic weights half the time) and a set whose
    search goes past the root: an l0 ball of 1-2 flips or a box of 3-8 free bits; the label with the
    largest exact minimum margin (robust when any label is). Seeded numpy draws, not hypothesis: its
    small examples mostly tie all outputs at the root."""
    from verify.sets import BoxSet

    rng = np.random.default_rng(seed)
    dyadic = rng.random() < 0.5

    def weights(shape, scale):
        value = rng.normal(0, scale, shape)
        return np.round(value * 8) / 8 if dyadic else value

    firing = (">=", ">")[int(rng.integers(2))]
    if rng.random() < 0.7:
        widths = [int(rng.integers(4, 7))] + [int(rng.integers(3, 6)) for _ in range(rng.integers(1, 3))] \
            + [int(rng.integers(2, 4))]
        net = SNN([Linear(weights((widths[i + 1], widths[i]), 0.6), weights(widths[i + 1], 0.2))
                   for i in range(len(widths) - 1)], threshold=0.25, decay=0.25, firing=firing)
    else:
        net = SNN([Conv2d(weights((2, 1, 2, 2), 0.6), weights(2, 0.2), stride=1, padding=0), Flatten(),
                   Linear(weights((3, 8), 0.6), weights(3, 0.2))], threshold=0.25, decay=0.25, firing=firing,
                  input_shape=(1, 3, 3))
    steps = int(rng.integers(1, 4))
    center = rng.integers(0, 2, size=(steps,) + tuple(net.input_shape)).astype(np.uint8)
    if rng.random() < 0.5:
        input_set = SpikeL0Set(center, int(rng.integers(1, 3)), per_step=bool(rng.random() < 0.5))
        if input_set.count() > 1024:
            input_set = SpikeL0Set(center, 1, per_step=input_set.per_step)
    else:
        free = rng.choice(center.size, size=min(center.size, int(rng.integers(3, 9))), replace=False)
        lower, upper = center.reshape(-1).copy(), center.reshape(-1).copy()
        lower[free], upper[free] = 0, 1
        input_set = BoxSet(lower.reshape(center.shape), upper.reshape(center.shape))
    label = max(range(net.n_outputs), key=lambda c: exact_min_margin(net, input_set, c))
    return net, input_set, label


_COMPLETE = (("best", "neuron-babsr"), ("alpha", "mixed"), ("crown", "neuron-widest"), ("crown-ibp", "neuron-babsr"))


@pytest.mark.parametrize("seed", range(48))
def test_complete_verdict_with_beta_equals_enumeration(seed):
    # no attacks, no MILP, leaves of one member: the verdict comes from the spike splits and their bounds
    net, input_set, label = _deep_problem(seed)
    method, rule = _COMPLETE[seed % len(_COMPLETE)]
    config = BabConfig(method=method, branching=rule, enumerate_max=1, enumerate_always=0, milp_max_free=0,
                       attack_samples=0, search_starts=0, restarts=0, restart_share=0.0, root_milp=0.0, batch=2,
                       time_limit=None, beta=True, beta_iterations=3)
    result = robust_bab(net, input_set, label, config)
    assert_verdict_matches_enumeration(net, input_set, label, result)


def test_beta_closes_nodes_on_the_deep_problems():
    """On seeded problems where the search splits spikes, beta raises node bounds and the searches
    need fewer nodes in total (seeds 9, 22, 26 of ``_deep_problem``: 1,783 nodes without, 1,345 with)."""
    nodes, raised = {False: 0, True: 0}, 0
    for seed in (9, 22, 26):
        net, input_set, label = _deep_problem(seed)
        for beta in (False, True):
            config = BabConfig(branching="neuron-babsr", enumerate_max=1, enumerate_always=0, attack_samples=0,
                               search_starts=0, restarts=0, restart_share=0.0, root_milp=0.0, batch=2,
                               time_limit=None, beta=beta, beta_iterations=3)
            result = robust_bab(net, input_set, label, config)
            assert_verdict_matches_enumeration(net, input_set, label, result)
            nodes[beta] += result.stats["nodes"]
            raised += result.stats["beta_raised"]
    assert raised > 0 and nodes[True] < nodes[False], (nodes, raised)


def test_beta_proves_a_ball_with_fewer_nodes():
    """The balls of ``test_spike_splits_prove_a_ball_its_root_bound_leaves_open`` (root bound <= 0,
    exact margin > 0): robust with and without beta, beta never needs more nodes."""
    for seed in (68, 89):
        rng = np.random.default_rng(seed)
        net = SNN([Linear(np.round(rng.normal(size=(4, 6)) * 8) / 8, np.zeros(4)),
                   Linear(np.round(rng.normal(size=(3, 4)) * 8) / 8, np.full(3, 0.125))], threshold=0.25, decay=0.25)
        ball = SpikeL0Set(rng.integers(0, 2, size=(2, 6)).astype(np.uint8), 2)
        label = int(np.argmax(net.forward(ball.center[:, None].astype(np.float64))[0]))
        nodes = []
        for beta in (False, True):
            config = BabConfig(branching="neuron-babsr", enumerate_max=0, attack_samples=0, search_starts=0,
                               restarts=0, time_limit=None, beta=beta, batch=1)
            result = robust_bab(net, ball, label, config)
            assert result.status == "robust" and result.stats["milp"] == 0
            nodes.append(result.stats["nodes"])
        assert nodes[1] <= nodes[0], nodes


# --- the multipliers' gradient ------------------------------------------------------------------------------

_fc_net, _conv_net = small_fc_net, small_conv_net


@pytest.mark.parametrize("make", [_fc_net, _conv_net])
def test_beta_gradient_matches_finite_differences(make):
    rng = np.random.default_rng(7)
    net = make(rng)
    steps, batch = 3, 2
    x_lower, x_upper = random_binary_box(rng, net, steps, batch)
    stages = prepare_stages(net)
    bounds = interval_bounds(net, x_lower, x_upper, stages=stages)
    tables = [stage_tables(bounds, k, s) for k, s in enumerate(stages)]
    C = margin_spec(np.array([0, 2]), 3)
    spec = np.concatenate([C, -C], axis=1)
    conc = BoxConcretizer(x_lower.astype(float), x_upper.astype(float))
    # splits on every stage, stable and unstable spikes, both sides, several per sample
    index = [(b, k, t, j) for b in range(batch) for k in range(len(stages)) for t in range(steps)
             for j in rng.choice(stages[k].n_neurons, size=2, replace=False)]
    splits = SpikeSplits(np.array(index), rng.integers(0, 2, size=len(index)).astype(np.int8), float(net.threshold))
    params = random_params(tables, spec.shape[1], rng)
    for prm in params:  # interior points: the bound is smooth there unless a sign flips
        for name in prm:
            prm[name] = 0.1 + 0.8 * rng.random(prm[name].shape)
    beta = 0.1 + rng.random((splits.count, spec.shape[1]))
    weights = rng.random(spec.shape[:2])
    result = backsub(stages, tables, spec, conc, params, record=True, splits=splits, beta=beta)
    grads = backsub_gradient(stages, tables, result, conc, weights)
    g_beta = splits.beta_gradient([g.get("split_coef") for g in grads], spec.shape[1])

    def value(b_):
        return (backsub(stages, tables, spec, conc, params, splits=splits, beta=b_).value * weights).sum()

    h = 1e-6
    picks = [tuple(i) for i in np.argwhere(g_beta != 0)]
    assert len(picks) > 10
    for index in [picks[i] for i in rng.choice(len(picks), size=12, replace=False)]:
        plus, minus = beta.copy(), beta.copy()
        plus[index] += h
        minus[index] -= h
        fd = (value(plus) - value(minus)) / (2 * h)
        assert abs(fd - g_beta[index]) <= 1e-6 * (1 + abs(fd)), (index, fd, g_beta[index])
    # the slopes' gradient with the terms in place (the joint optimization's other half)
    name = "fire_lower"
    nonzero = np.argwhere(grads[0][name] != 0)
    for index in [tuple(nonzero[i]) for i in rng.choice(len(nonzero), size=4, replace=False)]:
        plus = [{n: v.copy() for n, v in p.items()} for p in params]
        minus = [{n: v.copy() for n, v in p.items()} for p in params]
        plus[0][name][index] += h
        minus[0][name][index] -= h
        fd = ((backsub(stages, tables, spec, conc, plus, splits=splits, beta=beta).value * weights).sum()
              - (backsub(stages, tables, spec, conc, minus, splits=splits, beta=beta).value * weights).sum()) / (2 * h)
        assert abs(fd - grads[0][name][index]) <= 1e-6 * (1 + abs(fd))


def test_optimized_beta_is_no_worse_than_beta_zero():
    rng = np.random.default_rng(11)
    net = _fc_net(rng)
    x_lower = (rng.random((3, 2, 5)) < 0.3).astype(np.uint8)
    x_upper = np.maximum(x_lower, (rng.random(x_lower.shape) < 0.6).astype(np.uint8))
    stages = prepare_stages(net)
    bounds = interval_bounds(net, x_lower, x_upper, stages=stages)
    tables = [stage_tables(bounds, k, s) for k, s in enumerate(stages)]
    C = margin_spec(np.array([0, 1]), 3)
    conc = BoxConcretizer(x_lower.astype(float), x_upper.astype(float))
    splits = SpikeSplits(np.array([(0, 1, 2, 0), (1, 0, 1, 3)]), np.array([1, 0], np.int8), 0.25)
    plain = backsub(stages, tables, C, conc, default_params(tables, 2)).sound
    best, history = optimize_rows(stages, tables, C, conc, 6, splits=splits, optimize_params=False)
    assert np.all(best >= plain) and history == sorted(history)


# --- settings and bad input ------------------------------------------------------------------------------------

def test_beta_settings_and_multipliers_are_validated():
    for bad in ({"beta": "yes"}, {"beta": 1}, {"beta": True, "method": "ibp"}, {"beta_iterations": 0},
                {"beta_iterations": 2.5}, {"beta_iterations": True}, {"beta_lr": 0.0}, {"beta_lr": float("nan")},
                {"beta_lr": "0.1"}):
        with pytest.raises(BabConfigError):
            BabConfig(**bad)
    splits = SpikeSplits.from_fixed([((0, 0, 0, SPIKE_ON),), ()], 0.25)
    assert splits.count == 1 and splits.index.tolist() == [[0, 0, 0, 0]]
    with pytest.raises(ValueError, match="0 or 1"):
        SpikeSplits.from_fixed([((0, 0, 0, 2),)], 0.25)
    rng = np.random.default_rng(0)
    net = _fc_net(rng)
    x = (rng.random((2, 1, 5)) < 0.5).astype(np.uint8)
    stages = prepare_stages(net)
    tables = [stage_tables(interval_bounds(net, x, np.ones_like(x), stages=stages), k, s) for k, s in enumerate(stages)]
    with pytest.raises(ValueError, match=">= 0"):
        splits.terms(np.array([[-1e-300]]), tables)
    with pytest.raises(ValueError, match="beta must be"):
        splits.terms(np.zeros((2, 1)), tables)
    with pytest.raises(ValueError, match="beta must be"):
        backsub(stages, tables, margin_spec(np.array([0]), 3), BoxConcretizer(x.astype(float), np.ones(x.shape)),
                splits=splits)


# Weights whose sums land exactly on the threshold 0.25 in exact arithmetic but not in floats
# (0.1 + 0.15): only the rounding allowance of the split terms keeps such a bound sound.
_NON_DYADIC = np.array([0.1, 0.15, -0.05, 0.2, 0.3, -0.1, 0.05, 0.35, -0.15, 0.25, 0.0, 0.45, -0.2, 0.6, 0.7])


def _non_dyadic_tie_problem(seed: int):
    rng = np.random.default_rng(seed)
    firing = (">=", ">")[int(rng.integers(2))]
    widths = [int(rng.integers(2, 5)), int(rng.integers(2, 4)), int(rng.integers(2, 4))]
    net = SNN([Linear(rng.choice(_NON_DYADIC, size=(widths[i + 1], widths[i])),
                      rng.choice(_NON_DYADIC, size=widths[i + 1])) for i in range(2)],
              threshold=0.25, decay=float(rng.choice([0.25, 0.5, 0.1])), firing=firing)
    steps = int(rng.integers(1, 4))
    shape = (steps,) + tuple(net.input_shape)
    center = rng.integers(0, 2, size=shape).astype(np.uint8)
    lower, upper = center.reshape(-1).copy(), center.reshape(-1).copy()
    free = rng.choice(center.size, size=int(rng.integers(0, 3)), replace=False)
    lower[free], upper[free] = 0, 1
    from verify.sets import BoxSet

    return rng, net, BoxSet(lower.reshape(shape), upper.reshape(shape)), int(rng.integers(net.n_outputs)), steps


@pytest.mark.parametrize("seed", [10466, *range(40)])
def test_huge_multipliers_on_non_dyadic_ties_stay_sound(seed):
    """Splits on every spike whose exact membrane equals the threshold in a member (plus a few others),
    multipliers up to 1e12: the float value of such a bound can exceed the exact minimum (seed
    10466: by 1.2e-9 at beta ~ 1e8), so this fails without the split terms' rounding allowance."""
    rng, net, input_set, label, steps = _non_dyadic_tie_problem(seed)
    search = _Search(net, input_set, label, BabConfig(beta=True), np.random.default_rng(0))
    traces = list(_members(net, input_set))
    first = traces[0]
    fixed = tuple((k, t, j, int(first.spikes[k][t, j]))
                  for k in range(len(search.stages)) for t in range(steps)
                  for j in range(search.stages[k].n_neurons)
                  if first.membranes[k][t][j] == Fraction(net.threshold) or rng.random() < 0.15)
    fixed = fixed or ((0, 0, 0, int(first.spikes[0][0, 0])),)  # at least one split per problem
    members = [tr for tr in traces if all(tr.spikes[k][t, j] == v for k, t, j, v in fixed)]
    inter, conc = _node(search, input_set, fixed)
    C = search.specs([search.all_rows])
    splits = SpikeSplits.from_fixed([fixed], float(net.threshold))
    tables = [stage_tables(inter, k, stage) for k, stage in enumerate(search.stages)]
    margin = output_rounding_margin(C, inter.rule, steps)
    for scale in (1e4, 1e8, 1e12):
        beta = rng.random((splits.count, C.shape[1])) * scale
        params = random_params(tables, C.shape[1], rng) if rng.random() < 0.5 else None
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            lower = backsub(search.stages, tables, C, conc, params, splits=splits, beta=beta).sound[0] - margin[0]
        for trace in members:
            for r in search.all_rows:
                assert Fraction(float(lower[r])) <= trace.value(search.C[r]), (seed, scale, r)
