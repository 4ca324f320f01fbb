"""The event kernels of a convolution's adjoint and weight gradient (sparse output-side
coefficients, ``refsnn.kernels.event_conv_transpose``/``event_conv_weight_grad``): equal to the
dense GEMM path, every non-zero entry visited, and taken by the training bound graph."""
import numpy as np
import pytest

from gradcheck import assert_robust_loss_gradients
from refsnn import SNN, Conv2d, Flatten, Linear, Sigmoid, kernels
from refsnn.robust import robust_loss

GEOMETRIES = [
    ((3, 3), (2, 2), (1, 1), (3, 7, 6)),   # the paper's CONV layers
    ((3, 2), (1, 2), (0, 1), (2, 6, 7)),
    ((2, 3), (3, 1), (2, 0), (1, 8, 5)),
    ((5, 4), (2, 3), (2, 3), (3, 9, 8)),   # padding beyond half the kernel: edge outputs see no input
]


def _dyadic(rng, shape):
    """Values k / 8 with |k| <= 8: every sum below is exact in float64, in any order."""
    return rng.integers(-8, 9, shape) / 8.0


def _conv(kernel, stride, padding, shape, rng, out_channels=4):
    conv = Conv2d(_dyadic(rng, (out_channels, shape[0]) + kernel), np.zeros(out_channels), stride=stride,
                  padding=padding)
    return conv, conv.output_shape(shape)


@pytest.mark.parametrize("kernel,stride,padding,shape", GEOMETRIES)
def test_event_adjoint_and_weight_gradient_visit_every_non_zero_entry(kernel, stride, padding, shape):
    """One sample per output entry (o, oy, ox), that entry alone non-zero: the event adjoint and
    weight gradient equal the dense ones bit for bit (dyadic values), so an entry skipped as zero,
    a channel or position left out, or a pixel shifted by the padding or stride shows up."""
    rng = np.random.default_rng(sum(kernel) + 7 * sum(stride) + 3 * sum(padding))
    conv, out_shape = _conv(kernel, stride, padding, shape, rng)
    count = int(np.prod(out_shape))
    coef = np.zeros((count, count))
    coef[np.arange(count), np.arange(count)] = _dyadic(rng, count) + 2.0   # never zero
    coef = coef.reshape((count,) + out_shape)
    geometry = conv._geometry(shape)
    np.testing.assert_array_equal(kernels.event_conv_transpose(coef, conv.weight, geometry, shape),
                                  conv.transpose(coef))
    x = _dyadic(rng, (count,) + shape)
    np.testing.assert_array_equal(kernels.event_conv_weight_grad(x, coef, conv.weight.shape, geometry),
                                  conv.param_grads(x, coef)["weight"])


@pytest.mark.parametrize("kernel,stride,padding,shape", GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_event_kernels_equal_the_dense_path_on_structured_zeros(kernel, stride, padding, shape, dtype):
    """Coefficients as after a spiking layer: whole channels, whole positions and scattered entries
    zero (stable neurons), the rest dense; float64 dyadic values bit for bit, float32 random values
    up to float32 summation order; more samples than the kernel's 16 partial-sum groups."""
    rng = np.random.default_rng(len(shape) + sum(kernel))
    conv, out_shape = _conv(kernel, stride, padding, shape, rng, out_channels=5)
    n = 37
    coef = _dyadic(rng, (n,) + out_shape) if dtype == np.float64 else rng.normal(0, 1, (n,) + out_shape)
    coef[:, 1] = 0.0                                # a silent channel
    coef[:, :, 0, :] = 0.0                          # a row of positions
    coef[rng.random(coef.shape) < 0.5] = 0.0        # scattered zeros
    coef[3] = 0.0                                   # an all-zero sample
    x = _dyadic(rng, (n,) + shape) if dtype == np.float64 else rng.normal(0, 1, (n,) + shape)
    conv = conv.astype(dtype)
    coef, x = coef.astype(dtype), x.astype(dtype)
    geometry = conv._geometry(shape)
    event_t = kernels.event_conv_transpose(coef, conv.weight, geometry, shape)
    event_w = kernels.event_conv_weight_grad(x, coef, conv.weight.shape, geometry)
    dense_t, dense_w = conv.transpose(coef), conv.param_grads(x, coef)["weight"]
    assert event_t.dtype == event_w.dtype == dtype
    if dtype == np.float64:
        np.testing.assert_array_equal(event_t, dense_t)
        np.testing.assert_array_equal(event_w, dense_w)
    else:
        np.testing.assert_allclose(event_t, dense_t, rtol=0, atol=1e-5 * np.abs(dense_t).max())
        np.testing.assert_allclose(event_w, dense_w, rtol=0, atol=1e-5 * np.abs(dense_w).max())


def test_conv2d_takes_the_event_kernels_only_when_asked_and_sparse(monkeypatch):
    """``events=True`` (the training graph, BPTT's ``backward``) with sparse coefficients and >= 8
    input channels takes the event kernels; dense coefficients, few channels or ``events=False``
    (the sound bounds) the GEMM."""
    rng = np.random.default_rng(0)
    calls = []
    for name in ("event_conv_transpose", "event_conv_weight_grad"):
        original = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    for channels in (8, 4):
        conv = Conv2d(rng.normal(0, 1, (6, channels, 3, 3)), np.zeros(6), stride=2, padding=1)
        out_shape = conv.output_shape((channels, 8, 8))
        sparse = rng.normal(0, 1, (40,) + out_shape) * (rng.random((40,) + out_shape) < 0.05)
        dense = rng.normal(0, 1, (40,) + out_shape)
        x = rng.normal(0, 1, (40, channels, 8, 8))
        for coef, expect in ((sparse, channels >= 8), (dense, False)):
            for events in (True, False):
                del calls[:]
                t = conv.transpose(coef, events=events)
                w = conv.param_grads(x, coef, events=events)["weight"]
                assert calls == (["event_conv_transpose", "event_conv_weight_grad"] if events and expect else [])
                np.testing.assert_allclose(t, conv.transpose(coef), rtol=0, atol=1e-12)
                np.testing.assert_allclose(w, conv.param_grads(x, coef)["weight"], rtol=0, atol=1e-11)
            del calls[:]
            grad_x, grads = conv.backward(x, coef)   # BPTT: sparse spike gradients take them too
            assert calls == (["event_conv_weight_grad", "event_conv_transpose"] if expect else [])
            np.testing.assert_allclose(grad_x, conv.transpose(coef), rtol=0, atol=1e-12)
            np.testing.assert_allclose(grads["weight"], conv.param_grads(x, coef)["weight"], rtol=0, atol=1e-11)


def test_robust_loss_gradient_through_the_event_kernels_matches_finite_differences(monkeypatch):
    """A conv net whose second conv has 8 input channels, 36 back-substitution rows: the training
    graph's adjoint and weight gradient of that conv take the event kernels (crossover forced to 1),
    and the hand-written gradient still equals central differences of the loss."""
    monkeypatch.setenv("REFSNN_EVENT_CONV_ADJOINT", "1")
    calls = []
    for name in ("event_conv_transpose", "event_conv_weight_grad"):
        original = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    rng = np.random.default_rng(5)
    layers = [Conv2d(rng.normal(0, 0.6, (8, 1, 3, 3)), rng.normal(0.1, 0.1, 8), stride=2, padding=1),
              Conv2d(rng.normal(0, 0.4, (2, 8, 2, 2)), rng.normal(0.1, 0.1, 2)),
              Flatten(),
              Linear(rng.normal(0, 0.8, (3, 8)), rng.normal(0.1, 0.2, 3))]
    net = SNN(layers, input_shape=(1, 6, 6), surrogate=Sigmoid(4.0))
    steps, batch = 3, 6
    x_lower = (rng.random((steps, batch, 1, 6, 6)) < 0.3).astype(float)
    x_upper = np.maximum(x_lower, rng.random(x_lower.shape) < 0.5).astype(float)
    labels = rng.integers(0, 3, batch)
    args = dict(kappa=0.3, beta=0.6, temperature=2.0, smooth=True)
    reference = robust_loss(net, x_lower, labels, x_lower, x_upper, **args)
    assert "event_conv_transpose" in calls and "event_conv_weight_grad" in calls
    choices = reference.graph.choices
    assert any(np.mean(state == 2) > 0.1 for state in choices.state), "the test needs unstable neurons"

    assert_robust_loss_gradients(net, x_lower, labels, x_upper, reference, **args)


def test_the_event_weight_gradient_computes_in_the_weights_dtype():
    """float32 inputs with float64 weights: the dense path computes in float64, and so must the
    event path (not in float32 and cast afterwards)."""
    rng = np.random.default_rng(5)
    layer = Conv2d(rng.normal(0, 1, (4, 8, 3, 3)), np.zeros(4), stride=1, padding=1)
    shape = layer.output_shape((8, 6, 6))
    x = rng.random((32, 8, 6, 6)).astype(np.float32)
    grad_out = np.zeros((32,) + shape, dtype=np.float32)
    grad_out[0, 1, 2, 3] = np.float32(1 / 3)
    grad_out[1, 3, 5, 0] = np.float32(-2 / 7)
    dense = layer.param_grads(x, grad_out, events=False)["weight"]
    assert layer._events(grad_out)
    sparse = layer.param_grads(x, grad_out, events=True)["weight"]
    assert sparse.dtype == dense.dtype == np.float64
    np.testing.assert_array_equal(sparse, dense)   # one product per weight entry: exact in float64
