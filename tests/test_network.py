"""Core LIF network: a hand-computed example, shape/validation errors, finite-difference BPTT."""
import numpy as np
import pytest

from gradcheck import numeric_gradient
from refsnn import SNN, AvgPool2d, Conv2d, Flatten, Linear, Sigmoid

# Dyadic weights so every membrane below is exact in binary floating point.
W = np.array([[0.25, 0.125], [0.5, -0.25]])
B = np.array([0.0, -0.125])
X = np.array([[[1, 0]], [[0, 1]], [[1, 1]]], dtype=np.uint8)  # [T=3, B=1, 2]


def test_hand_computed_example_fires_at_threshold():
    net = SNN([Linear(W, B)], threshold=0.25, decay=0.25)
    trace = net.run(X)
    # Neuron 0: I = .25, .125, .375. t1: m = .25 -> fires AT threshold (eq. 2), reset;
    # t2: m = .125, no spike, carries .25 * .125 = .03125; t3: m = .40625 -> fires.
    # Neuron 1: I = .375, -.375, .125. t1 fires; t2: m = -.375 carries -.09375; t3: m = .03125.
    np.testing.assert_array_equal(trace.membranes[0][:, 0], [[0.25, 0.375], [0.125, -0.375], [0.40625, 0.03125]])
    np.testing.assert_array_equal(trace.spikes[0][:, 0], [[1, 1], [0, 0], [1, 0]])
    np.testing.assert_array_equal(trace.resets[0][:, 0], [[0, 0], [0.125, -0.375], [0, 0.03125]])
    np.testing.assert_array_equal(net.forward(X), [[2 / 3, 1 / 3]])
    assert net.predict(X).tolist() == [0]


def test_hand_computed_example_strict_firing():
    net = SNN([Linear(W, B)], threshold=0.25, decay=0.25, firing=">")
    trace = net.run(X)
    # Neuron 0 no longer fires at m = .25: it carries .0625, then m = .1875, carries .046875, m = .421875.
    np.testing.assert_array_equal(trace.membranes[0][:, 0, 0], [0.25, 0.1875, 0.421875])
    np.testing.assert_array_equal(trace.spikes[0][:, 0, 0], [0, 0, 1])
    np.testing.assert_array_equal(net.forward(X), [[1 / 3, 1 / 3]])
    assert net.predict(X).tolist() == [0]  # tie: lowest class index


def test_two_layer_reset_and_decay():
    net = SNN([Linear(W, B), Linear(np.array([[0.5, 0.5]]), np.array([0.0]))], threshold=0.25, decay=0.5)
    trace = net.run(X)
    # layer 1 with alpha = .5: neuron 0: .25 fire; .125 (carry .0625); .4375 fire.
    # neuron 1: .375 fire; -.375 (carry -.1875); .125 - .1875 = -.0625.
    np.testing.assert_array_equal(trace.spikes[0][:, 0], [[1, 1], [0, 0], [1, 0]])
    np.testing.assert_array_equal(trace.membranes[1][:, 0, 0], [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(trace.spikes[1][:, 0, 0], [1, 0, 1])


@pytest.mark.parametrize("bad, message", [
    (np.full((3, 1, 2), 0.5), "binary"),
    (np.zeros((3, 1, 3)), "expects"),
    (np.zeros((1, 2)), "time-major"),
])
def test_bad_inputs_are_rejected(bad, message):
    net = SNN([Linear(W, B)])
    with pytest.raises(ValueError, match=message):
        net.forward(bad)


def test_bad_construction_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        Linear(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="last layer"):
        SNN([Linear(W, B), Flatten()])
    with pytest.raises(ValueError, match="firing"):
        SNN([Linear(W, B)], firing="=>")
    with pytest.raises(ValueError, match="input_shape"):
        SNN([Conv2d(np.ones((1, 1, 2, 2)))])
    with pytest.raises(ValueError, match="expects"):
        SNN([Linear(W, B), Linear(np.ones((1, 3)))])


def _small_net(arch, rng, dtype=np.float64):
    if arch == "fc":
        layers = [Linear(rng.normal(0, 0.6, (5, 6)), rng.normal(0, 0.1, 5)),
                  Linear(rng.normal(0, 0.6, (4, 5)), rng.normal(0, 0.1, 4)),
                  Linear(rng.normal(0, 0.6, (3, 4)), rng.normal(0, 0.1, 3))]
        return SNN(layers, surrogate=Sigmoid(4.0), dtype=dtype), (6,)
    layers = [Conv2d(rng.normal(0, 0.5, (3, 2, 3, 3)), rng.normal(0, 0.1, 3), stride=2, padding=1),
              AvgPool2d(2, 1),
              Conv2d(rng.normal(0, 0.5, (2, 3, 2, 2)), rng.normal(0, 0.1, 2), stride=1, padding=0),
              Flatten(),
              Linear(rng.normal(0, 0.6, (3, 2)), rng.normal(0, 0.1, 3))]
    return SNN(layers, input_shape=(2, 5, 5), surrogate=Sigmoid(4.0), dtype=dtype), (2, 5, 5)


@pytest.mark.parametrize("arch", ["fc", "conv"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("reset_grad", [True, False])
def test_bptt_matches_finite_differences_on_smooth_network(arch, steps, reset_grad):
    rng = np.random.default_rng(7 + steps)
    net, input_shape = _small_net(arch, rng)
    net.reset_grad = reset_grad
    x = (rng.random((steps, 2) + input_shape) < 0.5).astype(np.float64)
    readout = rng.normal(size=(2, 3))

    def loss():
        return float(np.sum(net.run(x, smooth=True).rates * readout))

    trace = net.run(x, smooth=True)
    grads, grad_x = net.backward(trace, readout, smooth=True)
    if not reset_grad:
        # Detached reset: the gradient is of a different (stop-gradient) function; only check shapes.
        assert [g.shape for g in grads] == [p.shape for p in net.params()]
        return
    for param, grad in zip(net.params(), grads):
        np.testing.assert_allclose(grad, numeric_gradient(loss, param), rtol=1e-6, atol=1e-9)
    # Input gradient too (the input enters linearly, so FD on a real-valued input is exact).
    def loss_of_input():
        return float(np.sum(net.run(x, smooth=True, validate=False).rates * readout))

    np.testing.assert_allclose(grad_x, numeric_gradient(loss_of_input, x), rtol=1e-6, atol=1e-9)


def test_float32_and_float64_agree_on_dyadic_example():
    spikes32 = SNN([Linear(W, B)], dtype=np.float32).run(X).spikes[0]
    spikes64 = SNN([Linear(W, B)]).run(X).spikes[0]
    assert spikes32.dtype == np.float32
    np.testing.assert_array_equal(spikes32, spikes64)
