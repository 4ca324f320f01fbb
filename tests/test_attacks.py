"""Attacks: gradient rules, threat-model constraints, eps = 0, monotonicity, ensemble >= paper,
and the cross-check with the certified bounds (a certified sample is never broken)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsnn import SNN, Linear
from refsnn.attacks import (GreedyFlip, GradientRule, PaperAttack, PGD, SpikeBudget, Strongest, best_pixel_levels,
                            fresh_error, gradient_to_spikes, input_gradient, l0_changes, rate_loss)
from refsnn.attacks.constraints import DigitalBox, encode, select_flips
from refsnn.attacks.gradients import attack_backward, attack_forward, rate_derivative
from refsnn.encoders import rate_encode
from refsnn.neurons import fire

N_IN, N_CLASSES, T = 16, 3, 8


def _random_net(seed=0, sizes=(N_IN, 12, 10, N_CLASSES), scale=0.6):
    rng = np.random.default_rng(seed)
    layers = [Linear(rng.normal(0, scale / np.sqrt(a), (b, a)), rng.normal(0.05, 0.05, b))
              for a, b in zip(sizes[:-1], sizes[1:])]
    return SNN(layers)


def _synthetic(n, rng):
    prototypes = np.linspace(0, 1, N_IN)[None, :] * np.array([[1.0], [0.0], [0.5]]) + \
        np.array([[0.0], [1.0], [0.25]]) * np.linspace(1, 0, N_IN)[None, :]
    labels = rng.integers(0, N_CLASSES, n)
    images = np.clip(prototypes[labels] + rng.normal(0, 0.12, (n, N_IN)), 0, 1)
    return images, labels


@pytest.fixture(scope="module")
def trained():
    """A small FC SNN trained in a second by manual BPTT on separable synthetic images."""
    rng = np.random.default_rng(0)
    net = _random_net(1, sizes=(N_IN, 32, 16, N_CLASSES))
    params = net.params()
    velocity = [np.zeros_like(p) for p in params]
    for _ in range(300):
        images, labels = _synthetic(32, rng)
        spikes, _ = rate_encode(images, T, rng)
        trace = net.run(spikes)
        _, grad = rate_loss(trace.rates, labels, "ce", scale=4.0)
        grads, _ = net.backward(trace, grad / labels.size)  # descend the cross-entropy
        for param, g, v in zip(params, grads, velocity):
            v *= 0.9
            v -= g
            param += 0.02 * v
    images, labels = _synthetic(60, np.random.default_rng(1))
    maps = np.random.default_rng(2).random((T,) + images.shape)
    accuracy = (net.predict(encode(images, maps)) == labels).mean()
    assert accuracy > 0.85, f"test fixture failed to train (accuracy {accuracy})"
    return net, images, labels, maps


# --- gradient rules ---------------------------------------------------------------------------------

def test_bptt_rule_matches_network_backward():
    net = _random_net()
    rng = np.random.default_rng(3)
    spikes = (rng.random((T, 5, N_IN)) < 0.4).astype(np.uint8)
    labels = rng.integers(0, N_CLASSES, 5)
    loss, grad, rates = input_gradient(net, spikes, labels, GradientRule("bptt"), "ce", 2.0)
    trace = net.run(spikes)
    _, grad_rates = rate_loss(trace.rates, labels, "ce", 2.0)
    _, expected = net.backward(trace, grad_rates)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(rates, trace.rates)
    assert np.abs(grad).sum() > 0


@pytest.mark.parametrize("ratio", [None, 3.0])
def test_attack_forward_refuses_a_plain_trace_of_other_inputs_in_one_line(ratio):
    net = _random_net()
    rng = np.random.default_rng(5)
    spikes = (rng.random((T, 6, N_IN)) < 0.6).astype(np.uint8)
    rule = GradientRule("bptt", penultimate_threshold_ratio=ratio)
    other = spikes.copy()
    other[0, 0, 0] = 1 - other[0, 0, 0]
    wrong = {"fewer samples": net.run(spikes[:, :5]), "other spikes": net.run(other),
             "another network": _random_net(sizes=(N_IN, 7, 10, N_CLASSES)).run(spikes)}
    for name, plain in wrong.items():
        with pytest.raises(ValueError, match="^plain must be a trace of") as raised:
            attack_forward(net, spikes, rule, plain=plain)
        assert "\n" not in str(raised.value), name
    reused = attack_forward(net, spikes, rule, plain=net.run(spikes))  # the right one is taken
    fresh = attack_forward(net, spikes, rule)
    for a, b in zip(reused.spikes, fresh.spikes):
        np.testing.assert_array_equal(a, b)


def test_raised_penultimate_threshold_fires_less_and_keeps_surrogate_centre():
    net = _random_net()
    rng = np.random.default_rng(4)
    spikes = (rng.random((T, 6, N_IN)) < 0.6).astype(np.uint8)
    rule = GradientRule("bptt", penultimate_threshold_ratio=3.0)
    trace = attack_forward(net, spikes, rule)
    plain = net.run(spikes)
    np.testing.assert_array_equal(trace.spikes[0], plain.spikes[0])
    # The penultimate stage fires exactly by eq. 2 at 3 * th on its own membranes.
    np.testing.assert_array_equal(trace.spikes[1], fire(trace.membranes[1], 3 * net.threshold))
    assert trace.spikes[1].sum() < plain.spikes[1].sum()
    # Backward equals the network's BPTT on the same trace (surrogate centred on th).
    _, grad_rates = rate_loss(trace.rates, np.zeros(6, dtype=int))
    _, expected = net.backward(trace, grad_rates)
    np.testing.assert_allclose(attack_backward(net, trace, grad_rates, rule), expected, rtol=1e-12, atol=1e-14)


def test_rate_rule_on_one_layer_is_the_rate_curve_slope():
    weight = np.array([[0.3, -0.2, 0.1], [0.05, 0.2, 0.4]])
    net = SNN([Linear(weight, np.array([0.0, 0.05]))])
    spikes = (np.random.default_rng(5).random((T, 4, 3)) < 0.5).astype(np.uint8)
    grad_rates = np.random.default_rng(6).normal(size=(4, 2))
    trace = net.run(spikes)
    got = attack_backward(net, trace, grad_rates, GradientRule("rate"))
    slope = rate_derivative(trace.currents[0].mean(axis=0), 0.25, 0.25)
    expected = np.broadcast_to((grad_rates * slope / T) @ weight, got.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_rate_curve_slopes():
    th, alpha = 0.25, 0.25
    current = np.array([-0.1, 0.0, 0.1, th * (1 - alpha), 0.3, th * 2, th * 2 + 1e-9])
    slope = rate_derivative(current, th, alpha, gamma=0.2, ext=1.0)
    low, high = 0.2 / th, (1 - 0.2 * (1 - alpha)) / (th * (alpha + 1.0))
    np.testing.assert_allclose(slope, [0, low, low, high, high, high, 0])
    # The curve it integrates is continuous and reaches 1 at th (1 + ext).
    assert np.isclose(low * th * (1 - alpha) + high * th * (alpha + 1.0), 1.0)


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_rate_loss_gradient_finite_difference(loss):
    rng = np.random.default_rng(7)
    rates = rng.random((4, 5))
    labels = rng.integers(0, 5, 4)
    values, grad = rate_loss(rates, labels, loss, 3.0)
    h = 1e-6
    for i in range(5):
        bump = np.zeros_like(rates)
        bump[:, i] = h
        fd = (rate_loss(rates + bump, labels, loss, 3.0)[0] - rate_loss(rates - bump, labels, loss, 3.0)[0]) / (2 * h)
        np.testing.assert_allclose(grad[:, i], fd, atol=1e-6)
    if loss == "margin":
        assert np.all((values > 0) == (np.argmax(rates, axis=1) != labels))


# --- building blocks ------------------------------------------------------------------------------------

def test_gradient_to_spikes_follows_the_sign_and_the_zero_gradient_fallback():
    rng = np.random.default_rng(8)
    spikes = (rng.random((T, 3, 20)) < 0.5).astype(np.uint8)
    grad = rng.normal(size=spikes.shape)
    grad[:, 2] = 0.0
    target, priority = gradient_to_spikes(spikes, grad, np.random.default_rng(0), zero_grad_flip_prob=0.5)
    changed = target != spikes
    assert np.all(target[changed & (grad > 0)] == 1) and np.all(target[changed & (grad < 0)] == 0)
    assert not changed[:, :2][grad[:, :2] == 0].any()
    # The element of largest |g| of a sample has probability 1: it is set by its sign.
    for b in range(2):
        t, i = np.unravel_index(np.argmax(np.abs(grad[:, b])), grad[:, b].shape)
        assert target[t, b, i] == (grad[t, b, i] > 0)
    assert changed[:, 2].any() and np.all(priority[:, :2] <= 1.0)


@given(st.integers(0, 2 ** 31 - 1), st.integers(0, 12), st.integers(1, 6))
def test_select_flips_respects_budgets(seed, new_allowed, per_step):
    rng = np.random.default_rng(seed)
    priority = rng.random((2, 15))
    candidate = rng.random((2, 15)) < 0.6
    is_new = rng.random((2, 15)) < 0.7
    chosen = select_flips(priority, candidate, is_new, np.array([new_allowed, 0]), per_step)
    assert not (chosen & ~candidate).any()
    assert np.all(chosen.sum(axis=1) <= per_step)
    assert (chosen & is_new).sum(axis=1)[0] <= new_allowed and not (chosen & is_new)[1].any()
    # Greedy by priority: every unchosen admissible flip ranks below every chosen flip of its kind.
    for b in range(2):
        admissible = candidate[b] & (~is_new[b] | (np.argsort(np.argsort(-np.where(
            candidate[b] & is_new[b], priority[b], -np.inf))) < [new_allowed, 0][b]))
        if chosen[b].sum() == per_step and (admissible & ~chosen[b]).any():
            assert priority[b][admissible & ~chosen[b]].max() <= priority[b][chosen[b]].min()


@given(st.integers(0, 2 ** 31 - 1), st.floats(0.0, 0.6))
def test_best_pixel_levels_is_the_exact_maximizer(seed, radius):
    rng = np.random.default_rng(seed)
    images = rng.random((2, 5))
    maps = rng.random((6, 2, 5))
    grad = rng.normal(size=maps.shape)
    x = np.clip(images + rng.uniform(-radius, radius, images.shape), 0, 1)
    box = DigitalBox.around(images, 2 * radius)
    x = box.project(x)
    spikes = encode(x, maps)
    gain, value = best_pixel_levels(grad, maps, spikes, box.lower, box.upper)
    assert box.contains(value).all()
    realized = (grad * (encode(value, maps).astype(float) - spikes)).sum(axis=0)
    np.testing.assert_allclose(realized, gain, atol=1e-12)
    # Brute force over the box: every breakpoint, its neighbours and a fine grid.
    candidates = [box.lower, box.upper] + [box.lower + f * (box.upper - box.lower) for f in np.linspace(0, 1, 101)]
    candidates += [np.clip(maps[t] + d, box.lower, box.upper) for t in range(6) for d in (-1e-9, 0.0, 1e-9)]
    best = np.max([(grad * (encode(c, maps).astype(float) - spikes)).sum(axis=0) for c in candidates], axis=0)
    np.testing.assert_allclose(gain, best, atol=1e-12)


def test_spike_budget_counts():
    net = _random_net()
    budget = SpikeBudget.for_network(net, T, 0.05)
    assert budget.size == T * N_IN and budget.total == round(T * N_IN * 0.05 + 1e-12)
    assert budget.per_step == int(np.floor(T * N_IN * 0.05 / 2 + 0.5))
    assert SpikeBudget.for_network(net, T, 0.0).total == 0


# --- attacks: constraints, eps = 0, determinism ------------------------------------------------------

DIGITAL_ATTACKS = {
    "paper": lambda net, eps: PaperAttack(net, eps, steps=10),
    "paper-authors": lambda net, eps: PaperAttack(net, eps, steps=10, convention="authors"),
    "pgd": lambda net, eps: PGD(net, eps, steps=10, restarts=2, eot=2),
    "pgd-mean-rate": lambda net, eps: PGD(net, eps, steps=8, encoder="mean", gradient=GradientRule("rate"),
                                          schedule="constant", loss="margin"),
    "greedy": lambda net, eps: GreedyFlip(net, eps, steps=10, restarts=2),
    "strongest": lambda net, eps: Strongest(net, eps, effort=0.2),
}
SPIKE_ATTACKS = {
    "paper": lambda net, eps: PaperAttack(net, eps, kind="spike", steps=10),
    "greedy": lambda net, eps: GreedyFlip(net, eps, kind="spike", steps=10, restarts=2),
    "strongest": lambda net, eps: Strongest(net, eps, kind="spike", effort=0.2),
}


@pytest.mark.parametrize("name", sorted(DIGITAL_ATTACKS))
def test_digital_attacks_respect_the_box_and_eps_zero(trained, name):
    net, images, labels, maps = trained
    clean_wrong = net.predict(encode(images, maps)) != labels
    zero = DIGITAL_ATTACKS[name](net, 0.0)(images, labels, maps)
    np.testing.assert_array_equal(zero.x_adv, images)
    np.testing.assert_array_equal(zero.adv_wrong, clean_wrong)
    assert zero.error == zero.clean_error == clean_wrong.mean()

    eps = 0.3
    result = DIGITAL_ATTACKS[name](net, eps)(images, labels, maps)
    radius = eps / 2 if result.config["convention"] == "paper" else eps
    assert result.config["radius"] == radius
    box = DigitalBox.around(images, eps, result.config["convention"])
    assert box.contains(result.x_adv).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert np.all(np.abs(result.x_adv - images) <= radius + 1e-15)
    np.testing.assert_array_equal(result.spikes_adv, encode(result.x_adv, maps))
    lower, upper = box.spike_bounds(maps)
    assert np.all((lower <= result.spikes_adv) & (result.spikes_adv <= upper))
    np.testing.assert_array_equal(result.adv_pred, net.predict(result.spikes_adv))
    # Wrong samples are not attacked; the attack breaks some of the others.
    np.testing.assert_array_equal(result.x_adv[clean_wrong], images[clean_wrong])
    assert result.success.any()
    again = DIGITAL_ATTACKS[name](net, eps)(images, labels, maps)
    np.testing.assert_array_equal(again.x_adv, result.x_adv)


@pytest.mark.parametrize("name", sorted(SPIKE_ATTACKS))
def test_spike_attacks_respect_the_l0_budget_and_eps_zero(trained, name):
    net, images, labels, maps = trained
    spikes = encode(images, maps)
    clean_wrong = net.predict(spikes) != labels
    zero = SPIKE_ATTACKS[name](net, 0.0)(spikes, labels)
    np.testing.assert_array_equal(zero.x_adv, spikes)
    np.testing.assert_array_equal(zero.adv_wrong, clean_wrong)

    eps = 0.05
    result = SPIKE_ATTACKS[name](net, eps)(spikes, labels)
    budget = SpikeBudget.for_network(net, T, eps)
    assert result.x_adv.dtype == np.uint8 and set(np.unique(result.x_adv)) <= {0, 1}
    assert np.all(l0_changes(result.x_adv, spikes) <= budget.total)
    assert l0_changes(result.x_adv, spikes).max() > 0
    np.testing.assert_array_equal(result.x_adv[:, clean_wrong], spikes[:, clean_wrong])
    # Confined to a mask, no other bit moves.
    allowed = np.random.default_rng(9).random(spikes.shape) < 0.3
    masked = SPIKE_ATTACKS[name](net, eps)(spikes, labels, allowed=allowed)
    assert not (masked.x_adv != spikes)[~allowed].any()


def test_paper_spike_attack_flips_at_most_per_step_per_iteration(trained):
    net, images, labels, maps = trained
    spikes = encode(images, maps)
    budget = SpikeBudget.for_network(net, T, 0.1)
    one = PaperAttack(net, 0.1, kind="spike", steps=1)(spikes, labels)
    assert 0 < l0_changes(one.x_adv, spikes).max() <= budget.per_step < budget.total
    assert np.all(one.iterations <= 1)


def test_early_stop_per_sample(trained):
    net, images, labels, maps = trained
    result = PaperAttack(net, 0.5, steps=25)(images, labels, maps)
    assert result.success.any()
    assert result.iterations[result.success].min() < 25
    assert np.all(result.iterations[result.clean_wrong] == 0)
    # A sample that was never broken used every iteration.
    assert np.all(result.iterations[~result.adv_wrong] == 25)


# --- attack strength ------------------------------------------------------------------------------

def test_attack_error_grows_with_eps_on_average(trained):
    net, images, labels, maps = trained
    grid = [0.0, 0.2, 0.4, 0.8]
    errors = np.array([[PaperAttack(net, eps, steps=15, seed=seed)(images, labels, maps).error for eps in grid]
                       for seed in range(2)]).mean(axis=0)
    assert np.all(np.diff(errors) >= -0.02), errors
    assert errors[-1] >= errors[0] + 0.3, errors


@pytest.mark.parametrize("kind", ["digital", "spike"])
def test_strongest_is_never_weaker_than_the_paper_attack(trained, kind):
    net, images, labels, maps = trained
    eps = 0.2 if kind == "digital" else 0.03
    x, rand_maps = (images, maps) if kind == "digital" else (encode(images, maps), None)
    paper = PaperAttack(net, eps, kind=kind, seed=3)(x, labels, rand_maps)
    strongest = Strongest(net, eps, kind=kind, seed=3, effort=0.2)
    full = strongest(x, labels, rand_maps)
    reused = strongest(x, labels, rand_maps, start=paper)
    for result in (full, reused):
        assert not (paper.adv_wrong & ~result.adv_wrong).any()
        assert result.error >= paper.error
    np.testing.assert_array_equal(full.adv_wrong, reused.adv_wrong)


def test_fresh_error_of_clean_images_is_the_clean_error_over_draws(trained):
    net, images, labels, _ = trained
    mean, rate = fresh_error(net, images, labels, T, draws=3, seed=11)
    rng = np.random.default_rng(11)
    expected = np.mean([(net.predict(encode(images, rng.random((T,) + images.shape))) != labels).mean()
                        for _ in range(3)])
    assert mean == pytest.approx(expected) and rate.shape == labels.shape


# --- input validation -------------------------------------------------------------------------------

def test_bad_inputs_are_rejected(trained):
    net, images, labels, maps = trained
    with pytest.raises(ValueError, match="kind"):
        PaperAttack(net, 0.1, kind="events")
    with pytest.raises(ValueError, match="convention"):
        PaperAttack(net, 0.1, convention="half")
    with pytest.raises(ValueError, match="eps"):
        PGD(net, -0.1)
    with pytest.raises(ValueError, match="rand_maps"):
        PaperAttack(net, 0.1)(images, labels, maps[:, :3])
    with pytest.raises(ValueError, match="rand_maps only apply"):
        PaperAttack(net, 0.1, kind="spike")(encode(images, maps), labels, maps)
    with pytest.raises(ValueError, match="binary"):
        PaperAttack(net, 0.1, kind="spike")(np.full((T, 2, N_IN), 0.5), labels[:2])
    with pytest.raises(ValueError, match="labels"):
        PaperAttack(net, 0.1)(images, labels.astype(float), maps)
    with pytest.raises(ValueError, match="PGD works on images"):
        PGD(net, 0.1, kind="spike")
    with pytest.raises(ValueError, match="gradient rule"):
        GradientRule("spsa")
    other = _random_net(5, sizes=(N_IN, 12, 10, N_CLASSES))
    with pytest.raises(ValueError, match="same network"):
        Strongest(net, 0.1, components=[PaperAttack(other, 0.1)])


# --- cross-check with the certified bounds --------------------------------------------------------

def test_certified_samples_are_never_broken(trained):
    """A sample certified at eps (S-IBP / S-CROWN, strict margins) survives every attack at that eps."""
    bounds = pytest.importorskip("refsnn.bounds")
    from refsnn.input_sets import digital_linf_set, spike_l0_set

    net, images, labels, maps = trained
    checked = 0
    for eps in (0.05, 0.1, 0.2):
        x_lower, x_upper, _ = digital_linf_set(images, eps, maps, convention="paper")
        certified = bounds.certify(net, x_lower, x_upper, labels, method="best")
        result = Strongest(net, eps, effort=0.3)(images, labels, maps)
        assert not (certified & result.adv_wrong).any(), f"eps={eps}: certified yet broken"
        checked += certified.sum()
    spikes = encode(images, maps)
    for eps in (0.05, 0.1):
        free_set = spike_l0_set(spikes, eps, np.random.default_rng(0))
        certified = bounds.certify(net, free_set.x_lower, free_set.x_upper, labels, method="best")
        result = Strongest(net, eps, kind="spike", effort=0.3)(spikes, labels, allowed=free_set.free)
        assert not (certified & result.adv_wrong).any(), f"spike eps={eps}: certified yet broken"
        checked += certified.sum()
    assert checked > 0, "no sample certified: the cross-check tested nothing"


# --- Table 2 protocol and CLI -----------------------------------------------------------------------

def test_sample_selection_is_fixed_and_sorted():
    from refsnn.attacks.protocol import select_samples

    first = select_samples(10000, 300, seed=0)
    np.testing.assert_array_equal(first, select_samples(10000, 300, seed=0))
    assert first.size == 300 and np.all(np.diff(first) > 0) and first.max() < 10000
    assert not np.array_equal(first, select_samples(10000, 300, seed=1))
    with pytest.raises(ValueError, match="cannot select"):
        select_samples(100, 300)


def test_cli_writes_the_table_for_two_models(tmp_path):
    import json

    from refsnn.architectures import build_network
    from refsnn.attack import main
    from refsnn.io import save_model

    paths = []
    for seed in (0, 1):
        path = tmp_path / f"m{seed}" / "model.h5"
        path.parent.mkdir()
        save_model(path, build_network("fc", (1, 28, 28), seed=seed), config={"T": 4})
        paths.append(str(path))
    out = tmp_path / "out"
    code = main(["--model", paths[0], "--model2", paths[1], "--dataset", "mnist-subset", "--n", "6",
                 "--eps", "0,0.3", "--attack", "strongest,paper", "--steps", "2", "--effort", "0.05",
                 "--fresh-draws", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "table.json").read_text())
    assert summary["T"] == 4 and len(summary["sample_indices"]) == 6
    rows = summary["rows"]
    assert {(r["model"], r["attack"], r["eps"]) for r in rows} == {
        (m, a, e) for m in ("m0", "m1") for a in ("paper", "strongest") for e in (0.0, 0.3)}
    for row in rows:
        if row["eps"] == 0.0:
            assert row["attack_error"] == row["original_error"]
        assert row["attack_error"] >= row["original_error"]
    by = {(r["model"], r["attack"], r["eps"]): r for r in rows}
    for model in ("m0", "m1"):
        assert by[(model, "strongest", 0.3)]["attack_error"] >= by[(model, "paper", 0.3)]["attack_error"]
    markdown = (out / "table.md").read_text()
    assert "attack err. difference m0 - m1" in markdown and "| 0.3 |" in markdown
    assert (out / "table.csv").read_text().startswith("model,attack,eps,radius,n,original_error,attack_error")


def test_attacks_run_on_a_convolutional_network():
    from refsnn import AvgPool2d, Conv2d, Flatten

    rng = np.random.default_rng(12)
    net = SNN([Conv2d(rng.normal(0, 0.5, (3, 1, 3, 3)), rng.normal(0.1, 0.05, 3), stride=1, padding=1),
               AvgPool2d(2), Flatten(), Linear(rng.normal(0, 0.5, (8, 27)), np.full(8, 0.05)),
               Linear(rng.normal(0, 0.6, (3, 8)), np.full(3, 0.05))], input_shape=(1, 6, 6))
    images = rng.random((5, 1, 6, 6))
    labels = rng.integers(0, 3, 5)
    maps = rng.random((4,) + images.shape)
    budget = SpikeBudget.for_network(net, 4, 0.1)
    assert budget.per_step == int(np.floor(4 * 36 * 0.1 / 6 + 0.5))  # the paper's CONV cap: size eps / 6
    for attack in (PaperAttack(net, 0.3, steps=3), PGD(net, 0.3, steps=3), GreedyFlip(net, 0.3, steps=3)):
        result = attack(images, labels, maps)
        assert DigitalBox.around(images, 0.3).contains(result.x_adv).all()
        assert result.spikes_adv.shape == maps.shape
    spikes = encode(images, maps)
    for attack in (PaperAttack(net, 0.1, kind="spike", steps=3), GreedyFlip(net, 0.1, kind="spike", steps=3)):
        result = attack(spikes, labels)
        assert np.all(l0_changes(result.x_adv, spikes) <= budget.total)


def test_protocol_on_spike_inputs(trained):
    from refsnn.attacks.protocol import ProtocolConfig, markdown_table, run_protocol

    net, images, labels, maps = trained
    spikes = encode(images[:12], maps[:, :12])
    config = ProtocolConfig(attacks=("paper", "strongest"), eps=(0.0, 0.05), kind="spike", T=T, fresh_draws=0,
                            batch_size=5, effort=0.1)
    rows = run_protocol({"a": net}, spikes, labels[:12], config)
    by = {(r.attack, r.eps): r for r in rows}
    assert by[("paper", 0.0)].attack_error == by[("paper", 0.0)].original_error
    assert by[("paper", 0.05)].l0_budget == SpikeBudget.for_network(net, T, 0.05).total
    assert by[("strongest", 0.05)].attack_error >= by[("paper", 0.05)].attack_error
    assert by[("paper", 0.05)].radius is None and by[("paper", 0.05)].attack_error_fresh is None
    assert f"| 0.05 ({SpikeBudget.for_network(net, T, 0.05).total} bits) |" in markdown_table(rows, "paper", ["a"])


@pytest.mark.parametrize("output", ["rates", "currents"])
def test_gradient_is_exact_on_the_smooth_network(output):
    """With the smooth forward (fire = the surrogate's antiderivative) the attack's BPTT gradient is the
    exact gradient of the loss on rates or on mean output currents: finite differences agree."""
    from refsnn import Sigmoid
    from refsnn.attacks.gradients import output_currents

    rng = np.random.default_rng(13)
    sizes = (5, 6, 4, 3)
    net = SNN([Linear(rng.normal(0, 0.8, (b, a)), rng.normal(0.1, 0.1, b)) for a, b in zip(sizes[:-1], sizes[1:])],
              surrogate=Sigmoid(4.0))
    x = rng.random((4, 2, 5))
    labels = np.array([0, 2])
    rule = GradientRule("bptt", output=output)

    def loss_of(inputs):
        trace = net.run(inputs, smooth=True, validate=False)
        out = trace.rates if output == "rates" else output_currents(trace)
        return rate_loss(out, labels, "ce", 2.0)[0].sum()

    trace = net.run(x, smooth=True, validate=False)
    _, grad, _ = input_gradient(net, x, labels, rule, "ce", 2.0, trace=trace)
    h = 1e-6
    for index in [(0, 0, 1), (3, 1, 4), (2, 0, 0), (1, 1, 2)]:
        bump = np.zeros_like(x)
        bump[index] = h
        fd = (loss_of(x + bump) - loss_of(x - bump)) / (2 * h)
        assert grad[index] == pytest.approx(fd, rel=1e-5, abs=1e-8)


# --- fast paths compute what the reference computes ----------------------------------------------------

def _reference_best(levels, grad, spikes, index):
    """``PixelLevels.best`` written as whole-array NumPy operations (the former implementation):
    the oracle of the fused kernel, bit for bit."""
    in_range, order, padded = levels.in_range[:, index], levels.order[:, index], levels.padded[:, index]
    valid, count, lower, upper = levels.valid[:, index], levels.count[index], levels.lower[index], levels.upper[index]
    masked = np.where(in_range, grad, 0.0)
    sorted_grad = np.take_along_axis(masked, order, axis=0)
    prefix = np.concatenate([np.zeros((1,) + grad.shape[1:]), np.cumsum(sorted_grad, axis=0)], axis=0)
    objective = np.where(valid, prefix, -np.inf)
    best_level = np.argmax(objective, axis=0)
    current = np.where(spikes > 0, masked, 0.0).sum(axis=0)
    gain = np.take_along_axis(objective, best_level[None], axis=0)[0] - current
    below = np.take_along_axis(padded, best_level[None], axis=0)[0]
    above = np.take_along_axis(padded, best_level[None] + 1, axis=0)[0]
    with np.errstate(invalid="ignore"):
        midpoint = 0.5 * (below + above)
    value = np.where(best_level == 0, lower, np.where(best_level == count, upper, midpoint))
    return gain, np.clip(value, lower, upper)


@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([np.float32, np.float64]), st.booleans())
def test_pixel_levels_kernel_is_bit_identical_to_the_array_reference(seed, dtype, ties):
    from refsnn.attacks.pgd import PixelLevels

    rng = np.random.default_rng(seed)
    # pixels >= 2: with one sample of one pixel the reference's sum over time is contiguous and
    # NumPy sums it pairwise (T >= 8), not in time order like the kernel (docs/ATTACKS.md, "Speed")
    steps, batch, pixels = int(rng.integers(1, 12)), int(rng.integers(1, 6)), int(rng.integers(2, 30))
    images = np.where(rng.random((batch, pixels)) < 0.4, 0.0, rng.random((batch, pixels)))
    radius = rng.uniform(0.0, 0.3)
    lower, upper = np.maximum(images - radius, 0.0), np.minimum(images + radius, 1.0)
    maps = rng.random((steps, batch, pixels))
    if ties:  # equal maps: levels that no image realizes
        maps = np.round(maps * 6) / 6
    grad = np.where(rng.random(maps.shape) < 0.2, 0.0, rng.normal(size=maps.shape)).astype(dtype)
    x = lower + rng.random((batch, pixels)) * (upper - lower)
    spikes = encode(x, maps)
    index = np.sort(rng.choice(batch, int(rng.integers(1, batch + 1)), replace=False))
    levels = PixelLevels(maps, lower, upper)
    gain, value = levels.best(grad[:, index], spikes[:, index], index)
    ref_gain, ref_value = _reference_best(levels, grad[:, index], spikes[:, index], index)
    assert gain.dtype == ref_gain.dtype and value.dtype == ref_value.dtype
    np.testing.assert_array_equal(gain, ref_gain)
    np.testing.assert_array_equal(value, ref_value)


@pytest.mark.parametrize("index", [[3], [-1], [0, 5], [0.0], [[0]]])
def test_pixel_levels_refuse_sample_numbers_out_of_range_in_one_line(index):
    from refsnn.attacks.pgd import PixelLevels

    rng = np.random.default_rng(0)
    maps = rng.random((4, 3, 5))
    levels = PixelLevels(maps, np.zeros((3, 5)), np.ones((3, 5)))
    index = np.asarray(index)
    grad = rng.normal(size=(4, index.size, 5))
    with pytest.raises(ValueError, match=r"^index must be a 1-D array of sample numbers in \[0, 3\)") as raised:
        levels.best(grad, (grad > 0).astype(np.float64), index)
    assert "\n" not in str(raised.value)


def _assert_same_outcomes(results, references) -> None:
    """Each attack result equals its reference run: adversarial inputs, predictions, iterations."""
    for result, reference in zip(results, references, strict=True):
        assert result.success.any()
        np.testing.assert_array_equal(result.x_adv, reference.x_adv)
        np.testing.assert_array_equal(result.adv_pred, reference.adv_pred)
        np.testing.assert_array_equal(result.iterations, reference.iterations)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_outcomes_equal_the_reference_path(trained, seed, monkeypatch):
    """The fused per-pixel kernel and the trace reuse leave every outcome and image as the reference
    (array-wise per-pixel search, every gradient on a fresh forward pass) computes them."""
    from refsnn.attacks import pgd

    net, images, labels, maps = trained
    attacks = [GreedyFlip(net, 0.3, steps=12, restarts=2, seed=seed),
               GreedyFlip(net, 0.3, steps=12, gradient=GradientRule("bptt", penultimate_threshold_ratio=10 / 3),
                          loss="margin", seed=seed)]
    fast = [attack(images, labels, maps) for attack in attacks]
    monkeypatch.setattr(pgd.PixelLevels, "best", lambda self, grad, spikes, index: _reference_best(
        self, grad, spikes, index))
    monkeypatch.setattr(pgd._SearchAttack, "_gradient", lambda self, spikes, labels, index: input_gradient(
        self.net, spikes, labels, self.gradient, self.loss, self.loss_scale))
    _assert_same_outcomes(fast, [attack(images, labels, maps) for attack in attacks])


def test_attacks_compute_at_the_attack_thread_count(trained, numpy_blas_getters):
    """Every GEMM and LIF loop of an attack (and of its re-scoring) runs at ``ATTACK_THREADS``, whatever
    the process's count; the counts are restored afterwards."""
    import numba

    from refsnn import layers, threads
    from refsnn.attacks.base import ATTACK_THREADS

    net, images, labels, maps = trained
    getters = numpy_blas_getters
    seen = set()
    forward = layers.Linear.forward

    def spy(self, x):
        seen.add((numba.get_num_threads(), tuple(getter() for getter in getters)))
        return forward(self, x)

    top = threads.max_threads()
    before = numba.get_num_threads()
    try:
        threads.set_num_threads(top)
        layers.Linear.forward = spy
        Strongest(net, 0.3, effort=0.1)(images[:10], labels[:10], maps[:, :10])
        fresh_error(net, images[:10], labels[:10], T, draws=1)
        layers.Linear.forward = forward
        assert seen == {(ATTACK_THREADS, (ATTACK_THREADS,) * len(getters))}
        assert numba.get_num_threads() == top and all(getter() == top for getter in getters)
    finally:
        layers.Linear.forward = forward
        threads.set_num_threads(before)


@pytest.mark.parametrize("kind", ["digital", "spike"])
def test_paper_attack_reusing_the_success_check_changes_nothing(trained, kind, monkeypatch):
    """Without resampling the next gradient sees the spikes the success check just ran: reusing that
    pass (all of it, or the stages before the raised threshold) gives the outcomes and images of a
    fresh forward pass."""
    from refsnn.attacks import paper

    net, images, labels, maps = trained
    x = images if kind == "digital" else encode(images, maps)
    attacks = [PaperAttack(net, 0.3, kind=kind, steps=15, resample=False, seed=3),
               PaperAttack(net, 0.3, kind=kind, steps=15, resample=False, gradient=GradientRule("bptt", surrogate="atan"),
                           seed=4)]
    if kind == "spike":
        attacks = [PaperAttack(net, 0.05, kind=kind, steps=15, seed=3),
                   PaperAttack(net, 0.05, kind=kind, steps=15, gradient=GradientRule("bptt", surrogate="atan"), seed=4)]
    reused = []
    calls = {"with trace": 0}
    original = paper.input_gradient

    def counting(*args, trace=None, **kwargs):
        calls["with trace"] += trace is not None
        return original(*args, trace=trace, **kwargs)

    monkeypatch.setattr(paper, "input_gradient", counting)
    maps_arg = maps if kind == "digital" else None
    reused = [attack(x, labels, maps_arg) for attack in attacks]
    assert calls["with trace"] > 0  # the reuse is exercised
    monkeypatch.setattr(paper, "input_gradient", lambda *args, trace=None, **kwargs: original(*args, **kwargs))
    _assert_same_outcomes(reused, [attack(x, labels, maps_arg) for attack in attacks])


def test_attack_thread_count_is_read_at_the_call_and_can_be_left_to_the_process(trained, numpy_blas_getters,
                                                                                monkeypatch):
    """``ATTACK_THREADS`` changed after import takes effect; ``None`` (module, attack or
    ``fresh_error(threads=)``) keeps the process's count; ``config()`` records the count."""
    import numba

    from refsnn import layers, threads
    from refsnn.attacks import base

    net, images, labels, maps = trained
    top = threads.max_threads()
    seen = []
    forward = layers.Linear.forward

    def spy(self, x):
        seen.append((numba.get_num_threads(), tuple(getter() for getter in numpy_blas_getters)))
        return forward(self, x)

    def counts(run):
        seen.clear()
        run()
        return set(seen)

    at_top = {(top, (top,) * len(numpy_blas_getters))}
    at_one = {(1, (1,) * len(numpy_blas_getters))}
    before = numba.get_num_threads()
    try:
        threads.set_num_threads(top)
        monkeypatch.setattr(layers.Linear, "forward", spy)
        attack = PaperAttack(net, 0.3, steps=2)
        assert attack.config()["threads"] == 1
        assert counts(lambda: fresh_error(net, images[:4], labels[:4], T, draws=1, threads=None)) == at_top
        assert counts(lambda: fresh_error(net, images[:4], labels[:4], T, draws=1)) == at_one
        monkeypatch.setattr(base, "ATTACK_THREADS", None)
        assert attack.config()["threads"] is None
        assert counts(lambda: attack(images[:4], labels[:4], maps[:, :4])) == at_top
        assert counts(lambda: fresh_error(net, images[:4], labels[:4], T, draws=1)) == at_top
        monkeypatch.setattr(base, "ATTACK_THREADS", 1)
        attack.threads = None
        assert attack.config()["threads"] is None
        assert counts(lambda: attack(images[:4], labels[:4], maps[:, :4])) == at_top
        assert counts(lambda: PaperAttack(net, 0.3, steps=2)(images[:4], labels[:4], maps[:, :4])) == at_one
    finally:
        threads.set_num_threads(before)
