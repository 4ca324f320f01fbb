"""Branch and bound (``verify.bab``) against exhaustive enumeration, and its node sets (``LevelSet``).

The complete verdict must equal enumeration in exact semantics on every random small net (FC and
CONV, both firing rules, dyadic weights that put membranes exactly on the threshold, float weights
whose sums round onto it), the returned margins must bracket the exact minimum margin, and every
witness must be a member with an exact margin <= 0.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsnn import SNN, Linear
from refsnn.testing import input_set_strategy, snn_strategy
from verify import BoxSet, DigitalLinfSet, SpikeL0Set, enumerate_bounds, enumerate_robust, exact_bounds
from verify.bab import BOUND_METHODS, BRANCHING, NEURON_BRANCHING, BabConfig, BabConfigError, robust_bab
from verify.exact import ExactNetwork
from verify.sets import LevelSet

from exact_oracle import exact_counts


def _members(input_set) -> list:
    return sorted(bytes(row) for xs in input_set.enumerate(64)
                  for row in xs.swapaxes(0, 1).reshape(xs.shape[1], -1))


def _exact_min_margin(net, input_set, label: int) -> Fraction:
    """Smallest ``f_label - f_j`` over every member, in exact semantics (``exact_oracle.exact_counts``)."""
    others = [j for j in range(net.n_outputs) if j != label]
    lowest = min(counts[label] - max(counts[j] for j in others) for counts in exact_counts(net, input_set))
    return Fraction(lowest, input_set.steps)


@st.composite
def _problem(draw):
    arch = draw(st.sampled_from(["fc", "conv"]))
    net = draw(snn_strategy(arch, max_inputs=6, dyadic=draw(st.booleans())))
    input_set = draw(input_set_strategy(net, steps=(1, 3), kinds=("box", "digital", "l0"),
                                        max_members=draw(st.sampled_from([64, 1024]))))
    if draw(st.booleans()):  # a label the net gives some member: robust cases, not only misclassified ones
        label = int(np.argmax(net.forward(input_set.sample(np.random.default_rng(0), 1))[0]))
    else:
        label = draw(st.integers(0, net.n_outputs - 1))
    config = BabConfig(method=draw(st.sampled_from(BOUND_METHODS)),
                       branching=draw(st.sampled_from(BRANCHING)), search_every=draw(st.sampled_from([0, 4])),
                       enumerate_max=draw(st.sampled_from([1, 2, 16])), milp_max_free=draw(st.sampled_from([0, 3])),
                       enumerate_always=draw(st.sampled_from([0, 1, 4])),
                       attack_samples=draw(st.sampled_from([0, 8])), search_starts=draw(st.sampled_from([0, 1])),
                       batch=draw(st.sampled_from([1, 4])), root_milp=draw(st.sampled_from([0.0, 0.5])),
                       root_milp_after=draw(st.sampled_from([0, 8])),
                       restarts=draw(st.sampled_from([0, 3])), search_steps=draw(st.sampled_from([0, 5])),
                       root_milp_max_unstable=draw(st.sampled_from([None, 0, 4])),
                       time_limit=None)
    return net, input_set, label, config


@settings(max_examples=300)
@given(problem=_problem())
def test_complete_verdict_equals_enumeration(problem):
    net, input_set, label, config = problem
    result = robust_bab(net, input_set, label, config)
    exact = _exact_min_margin(net, input_set, label)
    assert result.status == ("robust" if exact > 0 else "not_robust"), (result, exact)
    # margins are multiples of 1/T': compare exactly on that grid, without slack
    steps = input_set.steps
    assert Fraction(result.margin_lower) <= exact, (result, exact)
    grid = Fraction(result.margin_lower) * steps  # the bound is rounded up onto the 1/T' grid (then down one ulp)
    assert abs(grid - round(grid)) < Fraction(1, 10 ** 12), result
    if result.attack_margin != float("inf"):  # inf: no member was evaluated (closed by a bound alone)
        assert exact <= Fraction(round(result.attack_margin * steps), steps), (result, exact)
    if result.status == "not_robust":
        assert input_set.contains(result.witness)
        counts = ExactNetwork(net).run(result.witness).counts
        assert min(counts[label] - counts[j] for j in range(net.n_outputs) if j != label) <= 0
    else:
        assert result.margin_lower > 0


@settings(max_examples=80)
@given(problem=_problem(), branching=st.sampled_from(NEURON_BRANCHING),
       method=st.sampled_from(["ibp", "best", "crown"]))
def test_spike_branching_verdict_equals_enumeration(problem, branching, method):
    # no attacks, no MILP, leaves of one member: the verdict comes from the spike splits and their bounds
    net, input_set, label, _ = problem
    config = BabConfig(method=method, branching=branching, enumerate_max=1, milp_max_free=0, attack_samples=0,
                       search_starts=0, restarts=0, root_milp=0.0, batch=2, time_limit=None)
    result = robust_bab(net, input_set, label, config)
    exact = _exact_min_margin(net, input_set, label)
    assert result.status == ("robust" if exact > 0 else "not_robust"), (result, exact)
    assert Fraction(result.margin_lower) <= exact
    if result.attack_margin != float("inf"):
        assert exact <= Fraction(round(result.attack_margin * input_set.steps), input_set.steps)


@settings(max_examples=100)
@given(data=st.data())
def test_spike_split_children_hold_every_member_by_its_exact_spikes(data):
    """A node split on spikes (one or two, any neuron, stable or not): every member lies in the child
    of its exact spikes, a membrane exactly at the threshold included, that child is not called empty,
    and its bounds hold the member's exact margins."""
    import itertools

    from verify.bab import SPIKE_OFF, SPIKE_ON, _Child, _Search

    net = data.draw(snn_strategy(data.draw(st.sampled_from(["fc", "conv"])), max_inputs=5,
                                 dyadic=data.draw(st.booleans())))
    input_set = data.draw(input_set_strategy(net, steps=(1, 3), kinds=("box", "digital"), max_members=256))
    label = data.draw(st.integers(0, net.n_outputs - 1))
    method = data.draw(st.sampled_from(BOUND_METHODS))
    search = _Search(net, input_set, label, BabConfig(method=method, branching="neuron-babsr", time_limit=None),
                     np.random.default_rng(0))
    picks = []
    for _ in range(data.draw(st.integers(1, 2))):
        k = data.draw(st.integers(0, len(net.stages) - 1))
        picks.append((k, data.draw(st.integers(0, input_set.steps - 1)),
                      data.draw(st.integers(0, search.stages[k].n_neurons - 1))))
    root = LevelSet.of(input_set)
    sides = list(itertools.product((SPIKE_OFF, SPIKE_ON), repeat=len(picks)))
    children = [_Child(root, search.all_rows, float("inf"), 1, tuple((*p, v) for p, v in zip(picks, side)))
                for side in sides]
    lower, _, empty, *_ = search.bound(children)
    exact = ExactNetwork(net)
    for xs in input_set.enumerate(64):
        for i in range(xs.shape[1]):
            trace = exact.run(xs[:, i])
            side = tuple(int(trace.spikes[k][t, j]) for k, t, j in picks)
            b = sides.index(side)
            assert not empty[b], (picks, side)
            for r in search.all_rows:  # the margin rows f_label - f_j, j != label
                assert trace.value(search.C[r]) >= Fraction(float(lower[b, r]))


def test_open_nodes_own_their_coefficients():
    """A node keeps its worst row's S-CROWN coefficients ``[T', *in]`` as its own array, not as a view
    of the batch's ``[T', B, S, *in]`` (which kept every bounded batch alive: 1.3 GB after 7,000 nodes
    on a plain MNIST FC image at eps 0.05, 0.19 GB with copies)."""
    from verify.bab import _Child, _Search

    rng = np.random.default_rng(3)
    net = SNN([Linear(rng.normal(0, 0.6, (6, 8)), rng.normal(0, 0.1, 6)),
               Linear(rng.normal(0, 0.6, (3, 6)), np.zeros(3))], threshold=0.25, decay=0.5, input_shape=(8,))
    box = BoxSet(np.zeros((2, 8), np.uint8), np.ones((2, 8), np.uint8))
    search = _Search(net, box, 0, BabConfig(time_limit=None), np.random.default_rng(0))
    search.offer = lambda *args, **kwargs: None   # the bound's minimizers are no concern here
    root = LevelSet.of(box)
    v = int(root.open_variables[0])
    children = [_Child(root.restrict(v, side, side), search.all_rows, float("inf"), 1) for side in (0, 1)]
    nodes = search.make_nodes(children)
    assert nodes and all(node.coefs is not None for node in nodes)
    for node in nodes:
        assert node.coefs.base is None and node.coefs.shape == (2, 8)


@settings(max_examples=150)
@given(data=st.data())
def test_reduced_pass_gives_the_spike_counts_of_the_full_forward(data):
    """``reduced_spike_counts`` (stable neurons folded into per-step constants) equals ``net64.run`` on
    every member of a node's input subset: FC and CONV, both firing rules, ties at the threshold;
    members with a membrane within rounding of the threshold (which the leaf replays exactly) aside."""
    from refsnn.ibp import interval_bounds_of_box, prepare_stages
    from refsnn.input_sets import binary_box
    from verify.encoding import float64_network
    from verify.enumerate import reduced_maps, reduced_spike_counts

    net = data.draw(snn_strategy(data.draw(st.sampled_from(["fc", "conv"])), max_inputs=6,
                                 dyadic=data.draw(st.booleans())))
    level = LevelSet.of(data.draw(input_set_strategy(net, steps=(1, 3), kinds=("box", "digital"), max_members=256)))
    for _ in range(data.draw(st.integers(0, 2))):  # a node below the root: some variables narrowed
        if level.open_variables.size:
            v = int(data.draw(st.sampled_from(level.open_variables.tolist())))
            cut = data.draw(st.integers(int(level.lo[v]), int(level.hi[v])))
            level = level.restrict(v, cut, int(level.hi[v])) if data.draw(st.booleans()) \
                else level.restrict(v, int(level.lo[v]), cut)
    net64 = float64_network(net)
    lower, upper = level.box()
    inter = interval_bounds_of_box(net, binary_box(lower[:, None], upper[:, None], net), prepare_stages(net))
    steps = level.steps
    states = [st_.reshape(steps, -1) for st_ in inter.state]
    base = level.from_levels(level.lo[None])[:, 0].reshape(steps, -1).astype(np.float64)
    varying = np.unique(level.open_bits()[0] % base.shape[1])
    for xs in level.enumerate(64):
        counts, _ = reduced_spike_counts(net64, reduced_maps(net64), base, varying, states,
                                         xs.reshape(steps, xs.shape[1], -1))
        trace = net64.run(xs)
        want = trace.spikes[-1].reshape(steps, xs.shape[1], -1).sum(axis=0)
        near = np.zeros(xs.shape[1], dtype=bool)
        for mem in trace.membranes:
            mem = mem.reshape(steps, xs.shape[1], -1)
            near |= (np.abs(mem - net.threshold) <= 1e-9 * (1 + abs(net.threshold) + np.abs(mem))).any(axis=(0, 2))
        np.testing.assert_array_equal(counts[~near], want[~near])


@settings(max_examples=60)
@given(data=st.data())
def test_leaf_chunks_partition_the_leaf(data):
    from verify.bab import _chunks

    net = data.draw(snn_strategy("fc", max_inputs=5))
    level = LevelSet.of(data.draw(input_set_strategy(net, steps=(1, 3), kinds=("box", "digital"), max_members=256)))
    limit = data.draw(st.sampled_from([1, 2, 5, 16, 1000]))
    coefs = None if data.draw(st.booleans()) else np.random.default_rng(0).normal(size=level.base.shape)
    parts = list(_chunks(level, limit, coefs))
    assert all(part.count() <= limit for part in parts) or len(parts) == level.count()
    members = sum((_members(part) for part in parts), [])
    assert sorted(members) == _members(level)


def test_a_leaf_with_spike_splits_is_enumerated_with_the_intervals_of_its_whole_input_subset():
    """A spike split clips the node's intervals (the split spike is stable in each child), while a leaf
    enumerates its whole input subset: folding the clipped states would miscount the members of the
    other side. Hidden neuron h fires iff x = 1; output 1 copies h, output 0 always fires, so x = 1
    ties the label 0. The leaf of the child h = 0 enumerates its whole input subset, x = 1 included,
    and must find that tie."""
    from verify.bab import SPIKE_OFF, _Done, _Node, _Search

    net = SNN([Linear(np.array([[0.5]]), np.array([0.0])),
               Linear(np.array([[0.0], [0.5]]), np.array([0.5, 0.0]))])
    box = BoxSet(np.zeros((1, 1), np.uint8), np.ones((1, 1), np.uint8))
    config = BabConfig(time_limit=None, restarts=0, method="ibp", branching="widest")
    search = _Search(net, box, 0, config, np.random.default_rng(0))
    leaf = _Node(0.0, 0, LevelSet.of(box), search.all_rows, np.zeros(1), float("inf"), 1,
                 fixed=((0, 0, 0, SPIKE_OFF),))
    with pytest.raises(_Done):
        search.enumerate_leaf(leaf)
    assert search.best_margin == 0


def _tie_net(firing: str) -> SNN:
    # both outputs see the input with weight exactly th: equal spike counts whenever x = 1
    return SNN([Linear(np.array([[0.25], [0.25]]), np.array([0.0, -0.125]))], firing=firing)


@pytest.mark.parametrize("firing", [">=", ">"])
def test_a_tie_is_not_robust_even_when_no_attack_runs(firing):
    net = _tie_net(firing)
    box = BoxSet(np.zeros((2, 1), np.uint8), np.ones((2, 1), np.uint8))
    result = robust_bab(net, box, 0, BabConfig(attack_samples=0, search_starts=0, restarts=0, enumerate_max=1,
                                               milp_max_free=0, time_limit=None))
    robust, exact_min, _ = enumerate_robust(net, box, 0)
    assert not robust and result.status == "not_robust"
    assert result.margin_lower <= exact_min <= result.attack_margin <= 0
    assert result.attack_margin == 0.0  # a tie: SNN.predict would say the label, robust it is not


def test_node_limit_gives_unknown_with_a_bracket():
    rng = np.random.default_rng(3)
    net = SNN([Linear(rng.integers(-4, 5, (4, 6)) / 8.0, np.full(4, 0.125)),
               Linear(rng.integers(-4, 5, (3, 4)) / 8.0, np.array([0.25, 0.0, 0.0]))])
    box = BoxSet(np.zeros((2, 6), np.uint8), np.ones((2, 6), np.uint8))
    robust, exact_min, _ = enumerate_robust(net, box, 0)
    result = robust_bab(net, box, 0, BabConfig(max_nodes=1, enumerate_max=0, milp_max_free=0, attack_samples=4,
                                               time_limit=None, method="ibp"))
    assert result.status in ("unknown", "not_robust")
    if result.status == "unknown":
        assert result.reason == "node limit"
    assert result.margin_lower <= exact_min <= result.attack_margin


@settings(max_examples=60)
@given(data=st.data())
def test_level_set_holds_the_members_and_restrict_partitions(data):
    net = data.draw(snn_strategy("fc", max_inputs=4))
    input_set = data.draw(input_set_strategy(net, kinds=("box", "digital"), max_members=256))
    level = LevelSet.of(input_set)
    assert _members(level) == _members(input_set)
    assert level.count() == input_set.count()
    for got, want in zip(level.box(), input_set.box()):
        np.testing.assert_array_equal(got, want)
    if level.open_variables.size:
        v = int(data.draw(st.sampled_from(level.open_variables.tolist())))
        cut = data.draw(st.integers(int(level.lo[v]), int(level.hi[v]) - 1))
        left, right = level.restrict(v, int(level.lo[v]), cut), level.restrict(v, cut + 1, int(level.hi[v]))
        assert sorted(_members(left) + _members(right)) == _members(level)
        assert not set(_members(left)) & set(_members(right))
        # the MILP encoding of a restricted node is exact too
        lower, upper = exact_bounds(net, input_sets=[right], time_limit=20)
        want_lower, want_upper = enumerate_bounds(net, input_sets=[right])
        np.testing.assert_array_equal(lower, want_lower)
        np.testing.assert_array_equal(upper, want_upper)
        x = right.sample(np.random.default_rng(0), 1)[:, 0]
        assert right.contains(x) and not left.contains(x)


def _chain_net() -> SNN:
    # output 0 fires at every step; output 1 fires at both steps (a tie) only when at least 7 of the
    # 8 inputs are on at each: 81 of 65,536 members, which random members miss and a greedy climb finds
    return SNN([Linear(np.vstack([np.zeros((1, 8)), np.full((1, 8), 1 / 16)]), np.array([0.5, -0.1875]))])


def test_restarts_find_the_witness_that_sampling_and_bounds_miss():
    net = _chain_net()
    box = BoxSet(np.zeros((2, 8), np.uint8), np.ones((2, 8), np.uint8))
    robust, exact_min, _ = enumerate_robust(net, box, 0)
    assert not robust and exact_min == 0
    # IBP bounds and widest-first branching: no S-CROWN minimizer is offered as a witness candidate
    base = dict(max_nodes=1, enumerate_max=0, milp_max_free=0, attack_samples=0, search_starts=0, time_limit=None,
                root_milp=0.0, method="ibp", branching="widest")
    without = robust_bab(net, box, 0, BabConfig(restarts=0, **base))
    assert without.status == "unknown" and without.stats["restarts"] == 0
    found = robust_bab(net, box, 0, BabConfig(restarts=2, search_steps=16, **base))
    assert found.status == "not_robust" and found.stats["restarts"] >= 1
    assert box.contains(found.witness) and found.witness.sum() >= 14
    assert found.margin_lower <= exact_min <= found.attack_margin <= 0


def test_a_large_node_is_enumerated_only_when_its_bound_is_far_from_closing():
    net = _chain_net()
    box = BoxSet(np.zeros((2, 8), np.uint8), np.ones((2, 8), np.uint8))
    config = BabConfig(max_nodes=3, enumerate_max=1 << 16, enumerate_always=4, attack_samples=0, search_starts=0,
                       restarts=0, root_milp=0.0, time_limit=None, method="ibp", branching="widest")
    # label 0: the root bound is 0, one grid step from closing: split, not enumerated
    near = robust_bab(net, box, 0, config)
    assert near.stats["enumerated"] == 0 and near.stats["splits"] == 1 and near.status == "unknown"
    # label 1: output 0 always fires, the bound is -1 = -2/T': the whole root is one enumerated leaf
    far = robust_bab(net, box, 1, config)
    assert far.stats["enumerated"] == 1 and far.stats["splits"] == 0 and far.status == "not_robust"


def test_root_milp_is_skipped_when_the_root_has_too_many_unstable_spikes(monkeypatch):
    from verify.bab import _Search

    net = _chain_net()
    box = BoxSet(np.zeros((2, 8), np.uint8), np.ones((2, 8), np.uint8))
    calls: list = []

    def undecided(self, node, budget):
        calls.append(node.n_unstable)
        return False

    monkeypatch.setattr(_Search, "milp_leaf", undecided)
    base = dict(max_nodes=3, enumerate_max=0, milp_max_free=0, attack_samples=0, search_starts=0, restarts=0,
                time_limit=None, root_milp=0.5, root_milp_after=0, method="ibp", branching="widest")
    # the root has 2 unstable spikes (output 1 at both steps)
    skipped = robust_bab(net, box, 0, BabConfig(root_milp_max_unstable=1, **base))
    assert calls == [] and skipped.stats["root_milp_skipped"] == 1
    robust_bab(net, box, 0, BabConfig(root_milp_max_unstable=2, **base))
    assert calls == [2]
    robust_bab(net, box, 0, BabConfig(root_milp_max_unstable=None, **base))
    assert calls == [2, 2]


@pytest.mark.parametrize("kwargs, field", [
    ({"method": "full"}, "method"),
    ({"branching": "random"}, "branching"),
    ({"time_limit": 0.0}, "time_limit"),
    ({"time_limit": -1.0}, "time_limit"),
    ({"time_limit": float("nan")}, "time_limit"),
    ({"time_limit": float("inf")}, "time_limit"),
    ({"milp_time_limit": 0.0}, "milp_time_limit"),
    ({"enumerate_max": -1}, "enumerate_max"),
    ({"milp_max_free": 1.5}, "milp_max_free"),
    ({"attack_samples": -3}, "attack_samples"),
    ({"batch": 0}, "batch"),
    ({"max_nodes": 0}, "max_nodes"),
    ({"root_milp": 1.5}, "root_milp"),
    ({"root_milp_after": -1}, "root_milp_after"),
    ({"root_milp": float("nan")}, "root_milp"),
    ({"candidates": 0}, "candidates"),
    ({"search_every": -1}, "search_every"),
    ({"restarts": -1}, "restarts"),
    ({"enumerate_always": -2}, "enumerate_always"),
    ({"search_steps": 2.5}, "search_steps"),
    ({"restart_share": 1.5}, "restart_share"),
    ({"restart_share": float("nan")}, "restart_share"),
    ({"root_milp_max_unstable": -1}, "root_milp_max_unstable"),
    ({"ball_split": "yes"}, "ball_split"),
])
def test_bad_config_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(BabConfigError, match=field):
        BabConfig(**kwargs)
    assert issubclass(BabConfigError, ValueError)


def test_bad_queries_are_refused():
    net = _tie_net(">=")
    box = BoxSet(np.zeros((2, 1), np.uint8), np.ones((2, 1), np.uint8))
    with pytest.raises(ValueError, match="label"):
        robust_bab(net, box, 2)
    with pytest.raises(ValueError, match="shape"):
        robust_bab(net, BoxSet(np.zeros((2, 3), np.uint8), np.ones((2, 3), np.uint8)), 0)
    level = LevelSet.of(box)
    with pytest.raises(ValueError, match="inside"):
        level.restrict(0, 0, 2)
    with pytest.raises(ValueError, match="lo <= hi"):
        LevelSet(level.base, level.variable, level.rank, level.n_levels, lo=[1, 0], hi=[0, 1])
    with pytest.raises(TypeError, match="SpikeL0Set"):
        LevelSet.of(SpikeL0Set(np.zeros((2, 1), np.uint8), 1))
    assert isinstance(LevelSet.of(DigitalLinfSet(np.array([0.5]), 0.5, np.array([[0.4], [0.6]]))), LevelSet)


def test_dataset_complete_method_agrees_with_the_milp_method():
    from verify.dataset import DatasetVerifyConfig, sample_set, verify_dataset

    rng = np.random.default_rng(4)
    images = rng.random((7, 16))
    indices = np.arange(100, 107)
    net_rng = np.random.default_rng(2)
    net = SNN([Linear(net_rng.normal(0, 0.6 / np.sqrt(a), (b, a)), net_rng.normal(0.05, 0.05, b))
               for a, b in ((16, 12), (12, 10), (10, 3))])
    reports = {}
    for method in ("milp", "complete"):
        config = DatasetVerifyConfig(eps=0.2, horizon=2, time_limit=30.0, attack_samples=8, method=method)
        labels = np.array([net.predict(sample_set(image, index, config)[1][:, None])[0]
                           for image, index in zip(images, indices)])
        reports[method] = verify_dataset(net, images, labels, indices, config)
    statuses = {m: [r["status"] for r in reports[m]["samples"]] for m in reports}
    assert statuses["complete"] == statuses["milp"]
    assert "unknown" not in statuses["complete"] and len(set(statuses["complete"])) == 2
    for record in reports["complete"]["samples"]:
        assert (record["margin_lower"] > 0) == (record["status"] == "robust")
    with pytest.raises(ValueError, match="method"):
        DatasetVerifyConfig(method="bab")


def test_dataset_cli_refuses_an_unknown_method(capsys):
    from verify.dataset import main

    with pytest.raises(SystemExit) as stop:
        main(["--model", "missing.h5", "--dataset", "mnist", "--method", "bab"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --method: invalid choice: 'bab'" in err[0]


def test_milp_query_past_its_deadline_says_unknown_and_only_asked_classes_count():
    import time

    from verify.milp import robust_query

    rng = np.random.default_rng(7)
    net = SNN([Linear(rng.integers(-4, 5, (4, 5)) / 8.0, np.full(4, 0.125)),
               Linear(rng.integers(-4, 5, (3, 4)) / 8.0, np.array([0.5, 0.0, 0.0]))])
    box = BoxSet(np.zeros((2, 5), np.uint8), np.ones((2, 5), np.uint8))
    late = robust_query(net, box, 0, attack_samples=0, deadline=time.perf_counter() - 1.0)
    assert late.status == "unknown" and "deadline" in late.reason
    _, exact_min, _ = enumerate_robust(net, box, 0)
    for j in (1, 2):
        one = robust_query(net, box, 0, attack_samples=0, classes=[j], time_limit=20)
        rows = np.zeros((1, 3))
        rows[0, 0], rows[0, j] = 1.0, -1.0
        lowest = enumerate_bounds(net, box.lower[:, None], box.upper[:, None], rows)[0][0, 0]
        assert one.status == ("robust" if lowest > 0 else "not_robust")
        assert np.isnan(one.margins[3 - j])  # the class not asked stays unsolved
    with pytest.raises(ValueError, match="classes"):
        robust_query(net, box, 0, classes=[0])


@settings(max_examples=40)
@given(data=st.data())
def test_a_spike_split_does_not_rerun_its_parents_milp(data):
    """The MILP of a node's input subset ignores spike splits, so once it has run undecided the
    node's spike children (same subset) must not run it again."""
    from verify.bab import _Search

    net = data.draw(snn_strategy(data.draw(st.sampled_from(["fc", "conv"])), max_inputs=5, dyadic=True))
    input_set = data.draw(input_set_strategy(net, steps=(1, 3), kinds=("box", "digital"), max_members=256))
    label = data.draw(st.integers(0, net.n_outputs - 1))
    runs: list = []

    def undecided_milp(self, node, budget):
        runs.append(node.subset)
        return False

    config = BabConfig(branching="neuron-widest", enumerate_max=1, milp_max_free=64, attack_samples=0,
                       search_starts=0, restarts=0, root_milp=0.0, batch=2, time_limit=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_Search, "milp_leaf", undecided_milp)
        robust_bab(net, input_set, label, config)
    assert len(runs) == len({id(subset) for subset in runs})


@pytest.mark.parametrize("seed", range(4))
def test_a_member_whose_float64_run_disagrees_with_the_exact_run_is_not_closed_as_robust(seed):
    """A weight of 2^-60 against a threshold of 2^-61: float64 loses the spike of output 0 that exact
    arithmetic fires, so float64 says the member is robust (rates [0, 1, 0]) while its exact margin
    for label 1 is 0 (counts [1, 1, 0]). The leaf that enumerates it must report the witness, whatever
    order the search met the members in (the seed)."""
    from verify import BabConfig, BoxSet, robust_bab, spec_bab
    from verify.exact import ExactNetwork

    tiny = 2.0 ** -60
    weight = np.array([[1.0, tiny, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [0.0, -1.0, 1.0, 0.0]])
    net = SNN([Linear(weight, np.array([0.0, 1.0, 0.0]))], threshold=2.0 ** -61, decay=0.25)
    member = np.array([[[1.0, 1.0, 0.0, 1.0]]])
    assert list(net.forward(member)[0]) == [0, 1, 0] and list(ExactNetwork(net).run(member[:, 0]).counts) == [1, 1, 0]
    box = BoxSet(np.array([[1.0, 0.0, 0.0, 1.0]]), np.ones((1, 4)))
    result = robust_bab(net, box, 1, BabConfig(time_limit=20), rng=np.random.default_rng(seed))
    assert result.status == "not_robust" and result.attack_margin <= 0
    # C f >= 0 for C = (-2, 1, -1): the exact counts [1, 1, 0] give -1
    result = spec_bab(net, box, [[-2.0, 1.0, -1.0]], 0, strict=False, config=BabConfig(time_limit=20),
                      rng=np.random.default_rng(seed))
    assert result.status == "not_robust"
