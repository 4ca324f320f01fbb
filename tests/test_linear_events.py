"""The event kernels of a Linear's adjoint and weight gradient on sparse output-side coefficients
(``refsnn.kernels.event_linear_transpose``/``event_coef_weight_grad``, ``Linear.transpose(events=True)``):
every non-zero entry visited, taken only when asked and sparse, and the training bound graph's loss
and gradients equal to the dense path's on nets with all-stable and all-unstable stages."""
import numpy as np
import pytest

from gradcheck import assert_robust_loss_gradients
from refsnn import SNN, Conv2d, Flatten, Linear, Sigmoid, kernels
from refsnn.relaxations import UNSTABLE
from refsnn.robust import robust_loss


def _dyadic(rng, shape):
    """Values k / 8 with |k| <= 8: every sum below is exact in float64, in any order."""
    return rng.integers(-8, 9, shape) / 8.0


@pytest.mark.parametrize("n_out,n_in", [(5, 7), (1, 3), (9, 1)])
def test_event_adjoint_and_weight_gradient_visit_every_non_zero_entry(n_out, n_in):
    """One row per output entry, that entry alone non-zero, then every entry non-zero: the event
    adjoint and weight gradient equal BLAS bit for bit (dyadic values), so a skipped column shows up."""
    rng = np.random.default_rng(n_out * 10 + n_in)
    weight = _dyadic(rng, (n_out, n_in))
    diagonal = np.diag(_dyadic(rng, n_out) + 2.0)              # never zero
    for coef in (diagonal, _dyadic(rng, (4, n_out)) + 2.0):
        rows = _dyadic(rng, (coef.shape[0], n_in))
        np.testing.assert_array_equal(kernels.event_linear_transpose(coef, weight), coef @ weight)
        np.testing.assert_array_equal(kernels.event_coef_weight_grad(rows, coef), coef.T @ rows)


def test_linear_takes_the_event_kernels_only_when_asked_sparse_and_wide(monkeypatch):
    """``events=True`` (the training graph) with sparse coefficients on a layer of >= 256 outputs takes
    the event kernels; dense coefficients, narrow layers or ``events=False`` (the sound bounds,
    BPTT) the BLAS products."""
    monkeypatch.delenv("REFSNN_EVENT_LINEAR_ADJOINT", raising=False)
    rng = np.random.default_rng(0)
    calls = []
    for name in ("event_linear_transpose", "event_coef_weight_grad"):
        original = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    for n_out in (kernels.EVENT_ADJOINT_MIN_FEATURES, 10):
        layer = Linear(rng.normal(0, 1, (n_out, 12)), np.zeros(n_out))
        sparse = rng.normal(0, 1, (64, n_out)) * (rng.random((64, n_out)) < 0.05)
        dense = rng.normal(0, 1, (64, n_out))
        x = rng.normal(0, 1, (64, 12))
        for coef, expect in ((sparse, n_out >= kernels.EVENT_ADJOINT_MIN_FEATURES), (dense, False)):
            for events in (True, False):
                del calls[:]
                t = layer.transpose(coef, events=events)
                w = layer.param_grads(x, coef, events=events)["weight"]
                assert calls == (["event_linear_transpose", "event_coef_weight_grad"] if events and expect else [])
                np.testing.assert_allclose(t, coef @ layer.weight, rtol=0, atol=1e-12)
                np.testing.assert_allclose(w, coef.T @ x, rtol=0, atol=1e-11)


def _fc_layers(rng, case):
    """FC toy net 10-6-7-4; ``case``: the second stage all-stable (its coefficients vanish, and the
    first stage's with them), or the first stage all-unstable at the first step, or mixed."""
    first = Linear(rng.normal(0, 0.8, (6, 10)), rng.normal(0.3, 0.2, 6))
    second = Linear(rng.normal(0, 1.0, (7, 6)), rng.normal(0.3, 0.2, 7))
    return [first, second, Linear(rng.normal(0, 0.8, (4, 7)), rng.normal(0.1, 0.2, 4))], (10,)


def _conv_layers(rng, case):
    """CONV toy net; all-unstable: no padding, so every first-stage position sees the whole window."""
    padding = 0 if case == "all-unstable" else 1
    first = Conv2d(rng.normal(0, 0.6, (8, 1, 3, 3)), rng.normal(0.3, 0.2, 8), stride=2, padding=padding)
    second = Conv2d(rng.normal(0, 0.5, (3, 8, 2, 2)), rng.normal(0.3, 0.2, 3))
    flat = 3 if padding == 0 else 12
    return [first, second, Flatten(), Linear(rng.normal(0, 0.8, (3, flat)), rng.normal(0.1, 0.2, 3))], (1, 6, 6)


def _net(build, case, rng):
    layers, shape = build(rng, case)
    first, second = layers[0], layers[1]
    if case.startswith("all-stable"):   # tiny weights, bias far from the threshold 1
        second.weight *= 1e-3
        second.bias[:] = 5.0 if case == "all-stable-firing" else -5.0
    if case == "all-unstable":          # every first-stage membrane interval centred on the threshold
        rows = first.weight.reshape(first.weight.shape[0], -1)
        first.bias[:] = 1.0 - 0.5 * rows.sum(axis=1)
        assert np.all(np.abs(rows).sum(axis=1) > 0)
    input_shape = {"input_shape": shape} if len(shape) == 3 else {}
    return SNN(layers, threshold=1.0, decay=0.5, surrogate=Sigmoid(4.0), **input_shape), shape


def _force(monkeypatch, on: bool) -> None:
    """Every Linear and Conv2d coefficient product of the bound graph on the event path, or none."""
    monkeypatch.setattr(Linear, "_events", lambda self, coef: on)
    monkeypatch.setattr(Conv2d, "_events", lambda self, coef: on)


@pytest.mark.parametrize("build", [_fc_layers, _conv_layers])
@pytest.mark.parametrize("case", ["mixed", "all-stable-firing", "all-stable-silent", "all-unstable"])
@pytest.mark.parametrize("steps", [1, 3])
def test_bound_graph_event_path_equals_the_dense_path(monkeypatch, build, case, steps):
    """Loss, bounds and every parameter gradient of ``robust_loss`` with every Linear/Conv2d
    coefficient product on the event kernels equal those on BLAS (float64, up to summation order),
    on nets with an all-stable stage (firing or silent: its coefficients vanish), an all-unstable
    one and mixed ones, T' = 1 and 3. A dropped non-zero column or entry changes them by O(1)."""
    rng = np.random.default_rng(steps * 7 + len(case))
    net, shape = _net(build, case, rng)
    batch = 5
    x_lower = np.zeros((steps, batch) + shape)
    x_upper = np.ones_like(x_lower) if case == "all-unstable" else np.maximum(x_lower, rng.random(x_lower.shape) < 0.7)
    labels = rng.integers(0, net.n_outputs, batch)
    args = dict(kappa=0.2, beta=0.7, temperature=2.0)
    results = {}
    for on in (False, True):
        _force(monkeypatch, on)
        results[on] = robust_loss(net, x_lower, labels, x_lower, x_upper, **args)
    dense, event = results[False], results[True]
    states = dense.graph.choices.state
    if case.startswith("all-stable"):
        assert np.all(states[1] != UNSTABLE), "the test needs an all-stable stage"
    elif case == "all-unstable":
        assert np.all(states[0][0] == UNSTABLE), "the test needs an all-unstable stage"
    else:
        assert all(np.mean(state == UNSTABLE) > 0.1 for state in states[:2]), "the test needs unstable neurons"
    np.testing.assert_allclose(event.loss, dense.loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(event.margin_lower, dense.margin_lower, rtol=0, atol=1e-12)
    for grad_event, grad_dense in zip(event.grads, dense.grads):
        scale = max(np.abs(grad_dense).max(), 1.0)
        np.testing.assert_allclose(grad_event, grad_dense, rtol=0, atol=1e-12 * scale)
    assert any(np.abs(g).max() > 0 for g in dense.grads)


def test_robust_loss_gradient_through_the_linear_event_kernels_matches_finite_differences(monkeypatch):
    """The training graph's Linear adjoints and weight gradients on the event kernels (forced): the
    hand-written gradient still equals central differences of the loss."""
    calls = []
    for name in ("event_linear_transpose", "event_coef_weight_grad"):
        original = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    monkeypatch.setattr(Linear, "_events", lambda self, coef: True)
    rng = np.random.default_rng(11)
    layers = [Linear(rng.normal(0, 0.5, (7, 9)), rng.normal(0.2, 0.1, 7)),
              Linear(rng.normal(0, 0.6, (6, 7)), rng.normal(0.1, 0.1, 6)),
              Linear(rng.normal(0, 0.8, (3, 6)), rng.normal(0.1, 0.2, 3))]
    net = SNN(layers, surrogate=Sigmoid(4.0))
    steps, batch = 3, 4
    x_lower = (rng.random((steps, batch, 9)) < 0.3).astype(float)
    x_upper = np.maximum(x_lower, rng.random(x_lower.shape) < 0.5).astype(float)
    labels = rng.integers(0, 3, batch)
    args = dict(kappa=0.3, beta=0.6, temperature=2.0, smooth=True)
    reference = robust_loss(net, x_lower, labels, x_lower, x_upper, **args)
    assert "event_linear_transpose" in calls and "event_coef_weight_grad" in calls
    assert any(np.mean(state == UNSTABLE) > 0.1 for state in reference.graph.choices.state)
    assert_robust_loss_gradients(net, x_lower, labels, x_upper, reference, **args)


def test_event_adjoint_gate_refuses_empty_odd_shapes_and_bad_overrides(monkeypatch):
    """An empty batch or a coefficient array of another rank takes the BLAS product (as ``coef @ W``
    does) instead of failing in a kernel; ``REFSNN_EVENT_LINEAR_ADJOINT`` moves the crossover (0.9), disables (0) or
    is refused in one line on the first call, whatever the layer (crossovers are strict: density < limit)."""
    monkeypatch.delenv("REFSNN_EVENT_LINEAR_ADJOINT", raising=False)
    rng = np.random.default_rng(5)
    layer = Linear(rng.normal(size=(256, 40)).astype(np.float32), np.zeros(256, np.float32))
    sparse = np.zeros((64, 256), np.float32)
    sparse[::7, ::31] = 1.0
    for coef in (np.zeros((0, 256), np.float32), sparse[0], np.stack([sparse, sparse])):
        assert not layer._events(coef)
        np.testing.assert_array_equal(layer.transpose(coef, events=True), coef @ layer.weight)
    half = (rng.uniform(size=(64, 256)) < 0.5).astype(np.float32)
    assert layer._events(sparse) and not layer._events(half)
    monkeypatch.setenv("REFSNN_EVENT_LINEAR_ADJOINT", "0")
    assert not layer._events(sparse)
    monkeypatch.setenv("REFSNN_EVENT_LINEAR_ADJOINT", "0.9")
    assert layer._events(half)
    narrow = Linear(np.ones((3, 2), np.float32))
    monkeypatch.setenv("REFSNN_EVENT_LINEAR_ADJOINT", "abc")
    with pytest.raises(ValueError, match="REFSNN_EVENT_LINEAR_ADJOINT must be a number"):
        narrow._events(np.zeros((64, 3), np.float32))
