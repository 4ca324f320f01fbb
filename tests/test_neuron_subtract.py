"""The second neuron model, reset by subtraction (``reset="subtract"``, refsnn/neurons/subtract.py):
its forward pass against a plain NumPy loop, its BPTT against finite differences, and S-IBP and
S-CROWN (``ibp``, ``crown-ibp``, ``crown-ibp-paper``, ``best``) against every enumerated trajectory
of small random networks (membranes exactly at the threshold, eps = 0, T' = 1 included), plus the
methods and tools that refuse it."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import numeric_gradient
from refsnn import SNN, Linear, Sigmoid
from refsnn.bounds import compute_bounds, interval_bounds, prepare_stages
from refsnn.crown import _lower_bound_rows
from refsnn.io import FormatError, load_model, save_model
from refsnn.neurons import Rectangular, lif_backward, lif_forward, neuron_model
from refsnn.relaxations import UNSTABLE
from refsnn.spec import normalize_spec
from refsnn.validation import ModelValidationError

from test_bounds_helpers import assert_each_step_sound, exhaustive_check, small_boxes, small_networks, spec_list


def _subtract(net: SNN) -> SNN:
    """``net`` with the neuron model replaced by reset by subtraction (same layers and settings)."""
    return SNN(net.layers, threshold=net.threshold, decay=net.decay, firing=net.firing, input_shape=net.input_shape,
               dtype=net.dtype, reset="subtract")


def _numpy_forward(current, threshold, decay, firing):
    """``m_t = I_t + alpha (m_{t-1} - th s_{t-1})``, ``s_t = 1[m_t >= th]`` (or ``>``), written out."""
    dtype = current.dtype.type
    th, alpha = dtype(threshold), dtype(decay)
    membrane, spike = np.zeros_like(current), np.zeros_like(current)
    previous_m, previous_s = np.zeros_like(current[0]), np.zeros_like(current[0])
    for t in range(current.shape[0]):
        membrane[t] = current[t] + alpha * (previous_m - th * previous_s)
        spike[t] = (membrane[t] >= th) if firing == ">=" else (membrane[t] > th)
        previous_m, previous_s = membrane[t], spike[t]
    return membrane, spike


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("firing", [">=", ">"])
def test_forward_matches_a_numpy_loop(dtype, firing):
    rng = np.random.default_rng(1)
    # multiples of th/4: membranes land exactly on the threshold and on multiples of it
    current = (rng.integers(-4, 9, size=(6, 3, 40)) * 0.0625).astype(dtype)
    membrane, spike = lif_forward(current, 0.25, 0.5, firing, reset="subtract")
    want_m, want_s = _numpy_forward(current, 0.25, 0.5, firing)
    np.testing.assert_array_equal(membrane, want_m)
    np.testing.assert_array_equal(spike, want_s)
    assert (membrane == 0.25).any() and (spike == 1).any() and (spike == 0).any()
    # the network runs the same loop, and its reset terms are z = m - th s
    net = SNN([Linear(np.eye(3, dtype=dtype))], threshold=0.25, decay=0.5, firing=firing, dtype=dtype,
              reset="subtract")
    x = (rng.random((5, 4, 3)) < 0.6).astype(np.uint8)
    trace = net.run(x)
    want_m, want_s = _numpy_forward(x.astype(dtype), 0.25, 0.5, firing)
    np.testing.assert_array_equal(trace.membranes[0], want_m)
    np.testing.assert_array_equal(trace.resets[0], want_m - dtype(0.25) * want_s)


def test_subtraction_differs_from_the_lif():
    """Above twice the threshold the LIF forgets, the subtracting neuron keeps the excess."""
    current = np.array([[0.75], [0.0], [0.0]])
    _, lif_spikes = lif_forward(current, 0.25, 1.0)
    _, sub_spikes = lif_forward(current, 0.25, 1.0, reset="subtract")
    assert lif_spikes[:, 0].tolist() == [1, 0, 0] and sub_spikes[:, 0].tolist() == [1, 1, 1]


def _numpy_backward(membrane, spike, grad_spike, threshold, decay, derivative, reset_grad):
    grad_current = np.zeros_like(membrane)
    grad_next = np.zeros_like(membrane[0])
    for t in range(membrane.shape[0] - 1, -1, -1):
        grad_s = grad_spike[t] - (decay * threshold * grad_next if reset_grad else 0.0)
        grad_current[t] = grad_s * derivative[t] + decay * grad_next
        grad_next = grad_current[t]
    return grad_current


@pytest.mark.parametrize("reset_grad", [True, False])
@pytest.mark.parametrize("surrogate", [Rectangular(), Sigmoid(4.0)])
def test_fused_bptt_matches_the_written_out_rule(reset_grad, surrogate):
    rng = np.random.default_rng(2)
    current = rng.normal(0.2, 0.3, size=(5, 2, 30))
    membrane, spike = lif_forward(current, 0.25, 0.5, reset="subtract")
    grad_spike = rng.normal(size=membrane.shape)
    got = lif_backward(membrane, spike, grad_spike, 0.25, 0.5, surrogate, reset_grad, reset="subtract")
    want = _numpy_backward(membrane, spike, grad_spike, 0.25, 0.5, surrogate.derivative(membrane - 0.25), reset_grad)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)
    assert not np.allclose(got, lif_backward(membrane, spike, grad_spike, 0.25, 0.5, surrogate, reset_grad))


@pytest.mark.parametrize("steps", [1, 3])
def test_bptt_matches_finite_differences_on_smooth_network(steps):
    rng = np.random.default_rng(7 + steps)
    layers = [Linear(rng.normal(0, 0.6, (4, 6)), rng.normal(0, 0.1, 4)),
              Linear(rng.normal(0, 0.6, (3, 4)), rng.normal(0, 0.1, 3))]
    net = SNN(layers, surrogate=Sigmoid(4.0), reset="subtract")
    x = (rng.random((steps, 2, 6)) < 0.5).astype(np.float64)
    readout = rng.normal(size=(2, 3))

    def loss():
        return float(np.sum(net.run(x, smooth=True).rates * readout))

    grads, grad_x = net.backward(net.run(x, smooth=True), readout, smooth=True)
    for param, grad in zip(net.params(), grads):
        np.testing.assert_allclose(grad, numeric_gradient(loss, param), rtol=1e-6, atol=1e-9)

    def loss_of_input():
        return float(np.sum(net.run(x, smooth=True, validate=False).rates * readout))

    np.testing.assert_allclose(grad_x, numeric_gradient(loss_of_input, x), rtol=1e-6, atol=1e-9)


# --- soundness of S-IBP and S-CROWN on every trajectory ----------------------------------------------

@settings(deadline=None, max_examples=25)
@given(data=st.data())
def test_every_member_of_small_boxes_is_inside_all_bounds(data):
    net = _subtract(data.draw(small_networks(), label="net"))
    x_lower, x_upper = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    exhaustive_check(net, x_lower, x_upper, spec_list(net, x_lower.shape[1], rng))


@settings(deadline=None, max_examples=15)
@given(data=st.data())
def test_degenerate_boxes_contain_the_forward_pass(data):
    """eps = 0 (``x_lower == x_upper``): the bounds contain the forward pass and, unless a membrane
    lies within the rounding margin of the threshold, equal it up to the outward rounding."""
    net = _subtract(data.draw(small_networks(), label="net"))
    x_lower, _ = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    computed = exhaustive_check(net, x_lower, x_lower, spec_list(net, x_lower.shape[1], rng))
    if not any((s == UNSTABLE).any() for s in interval_bounds(net, x_lower, x_lower).state):
        rates = net.forward(x_lower).astype(np.float64)
        tolerance = 1e-12 if net.dtype == np.float64 else 1e-6
        for method in ("ibp", "crown-ibp", "best"):
            lower, upper = computed[(0, method)]
            np.testing.assert_allclose(lower, rates, rtol=0, atol=tolerance)
            np.testing.assert_allclose(upper, rates, rtol=0, atol=tolerance)


@settings(deadline=None, max_examples=20)
@given(data=st.data())
def test_each_backsubstitution_step_is_sound_on_every_trajectory(data):
    """Each time step of S-CROWN replaces ``lam_s s + lam_z z`` by ``lam_m m + bias`` within its
    rounding bound on every member: the reset relation and the side of ``th`` it takes."""
    net = _subtract(data.draw(small_networks(), label="net"))
    x_lower, x_upper = data.draw(small_boxes(net), label="box")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="spec seed"))
    batch = x_lower.shape[1]
    C = normalize_spec(rng.normal(size=(3, net.n_outputs)), batch, net.n_outputs)
    spec = np.concatenate([C, -C], axis=1)
    record = []
    _lower_bound_rows(prepare_stages(net), interval_bounds(net, x_lower, x_upper), spec, x_lower.astype(float),
                      x_upper.astype(float), record=record)
    assert_each_step_sound(net, x_lower, x_upper, spec, prepare_stages(net), record)


def _all_boxes(n_in: int, steps: int):
    x_lower = np.zeros((steps, 1, n_in), dtype=np.uint8)
    return x_lower, np.ones_like(x_lower)


@pytest.mark.parametrize("firing", [">=", ">"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rules_too_tight_are_caught(firing, dtype):
    """Fixed cases where a tighter (wrong) rule breaks containment: an unstable neuron whose
    membrane can reach 3 th carries ``z = 2 th`` (above the LIF's ``th``); surely firing neurons
    carry ``m - th``, not 0; the side of the threshold (float32: ``th_lo < th_hi``) matters."""
    th = 0.3 if dtype == np.float32 else 0.25
    weights = np.array([[3 * th, 0.0], [th, th], [2 * th, -th]])
    bias = np.array([0.0, 0.0, th])
    out = np.array([[1.0, -1.0, 0.5], [0.0, 1.0, 1.0]])
    net = SNN([Linear(weights, bias), Linear(out, np.array([-0.5 * th, 0.0]))], threshold=th, decay=1.0,
              firing=firing, dtype=dtype, reset="subtract")
    for steps in (1, 2, 3):
        x_lower, x_upper = _all_boxes(2, steps)
        specs = [np.eye(2), np.array([[1.0, -1.0], [-1.0, 1.0]])]
        exhaustive_check(net, x_lower, x_upper, specs)
        record = []
        spec = normalize_spec(np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, 0.0], [0.0, -1.0]]), 1, 2)
        _lower_bound_rows(prepare_stages(net), interval_bounds(net, x_lower, x_upper), spec, x_lower.astype(float),
                          x_upper.astype(float), record=record)
        assert_each_step_sound(net, x_lower, x_upper, spec, prepare_stages(net), record)


@pytest.mark.parametrize("firing", [">=", ">"])
def test_the_side_of_a_float32_threshold_is_respected(firing):
    """float32(0.3) > 0.3: a surely firing neuron subtracts ``th_net = th_hi``; where the coefficient
    on ``z`` is positive only ``- lz th_hi s`` bounds ``lz z`` from below (``th_lo`` would be
    1.2e-8 |lz| too high). Here ``m_0 = 0.45`` fires and ``m_1`` in ``{0, 0.6}`` is unstable, so the
    lower chord at ``t = 1`` puts ``lz > 0`` on ``z_0``."""
    net = SNN([Linear(np.array([[0.6]]), np.array([-0.15]))], threshold=0.3, decay=1.0, firing=firing,
              dtype=np.float32, reset="subtract")
    x_lower = np.array([[[1]], [[0]]], dtype=np.uint8)
    x_upper = np.array([[[1]], [[1]]], dtype=np.uint8)
    spec = normalize_spec(np.array([[1.0], [-1.0]]), 1, 1)
    record = []
    bounds = interval_bounds(net, x_lower, x_upper)
    assert bounds.state[0][0].ravel().tolist() == [1] and bounds.state[0][1].ravel().tolist() == [UNSTABLE]
    _lower_bound_rows(prepare_stages(net), bounds, spec, x_lower.astype(float), x_upper.astype(float), record=record)
    assert_each_step_sound(net, x_lower, x_upper, spec, prepare_stages(net), record)


def test_unstable_reset_interval_reaches_above_the_threshold():
    model = neuron_model("subtract")

    class Rule:
        th_lo, th_hi = 0.25, 0.25

    lower, upper = model.reset_interval(np.array([-0.1, 0.1, 0.3]), np.array([0.9, 0.3, 0.9]),
                                        np.array([UNSTABLE, UNSTABLE, 1], dtype=np.int8), Rule)
    np.testing.assert_array_equal(lower, [-0.1, 0.0, 0.3 - 0.25])
    np.testing.assert_array_equal(upper, [0.9 - 0.25, 0.25, 0.9 - 0.25])


# --- what refuses this model -----------------------------------------------------------------------

def _tiny_net(reset="subtract"):
    return SNN([Linear(np.array([[0.5, -0.25], [0.25, 0.5]]), np.zeros(2))], reset=reset)


@pytest.mark.parametrize("method", ["alpha", "crown"])
def test_methods_without_rules_for_this_model_refuse_it(method):
    x_lower, x_upper = _all_boxes(2, 2)
    with pytest.raises(ValueError, match="reset='subtract'.*reset='zero'") as error:
        compute_bounds(_tiny_net(), x_lower, x_upper, method=method)
    assert "\n" not in str(error.value)


def test_robust_training_and_verify_refuse_it():
    from refsnn.robust import robust_loss
    from verify.milp import exact_bounds
    net = _tiny_net()
    x = np.zeros((2, 1, 2))
    for kappa in (0.5, 1.0):  # at kappa = 1 the graph still reports bound_robust_error: no LIF bounds for it
        with pytest.raises(ValueError, match="reset='subtract'"):
            robust_loss(net, x, np.array([0]), x, x + 1, kappa=kappa, beta=0.5, temperature=1.0)
    with pytest.raises(ValueError, match="reset='subtract'"):
        exact_bounds(net, x_lower=x, x_upper=x + 1)


def test_reset_is_validated_and_saved(tmp_path):
    with pytest.raises(ModelValidationError, match="reset must be 'zero' .* or 'subtract'"):
        _tiny_net(reset="snntorch")
    path = tmp_path / "subtract.h5"
    save_model(path, _tiny_net())
    assert load_model(path).reset == "subtract"
    save_model(tmp_path / "lif.h5", _tiny_net("zero"))
    with h5py.File(tmp_path / "lif.h5", "r") as h5:
        assert "reset" not in h5.attrs   # LIF files are written as before
    assert load_model(tmp_path / "lif.h5").reset == "zero"
    with h5py.File(path, "a") as h5:
        h5.attrs["reset"] = "none"
    with pytest.raises(FormatError, match="reset must be one of"):
        load_model(path)
