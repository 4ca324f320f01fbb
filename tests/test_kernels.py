"""refsnn.kernels: event-driven Linear vs dense BLAS, fused LIF loops vs the NumPy recurrence."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsnn import SNN, Linear, kernels
from refsnn.neurons import loops
from refsnn.neurons import ATan, Rectangular, Sigmoid, lif_backward, lif_forward


def _numpy_lif_forward(current, threshold, decay, firing):
    """The recurrence of eqs. 1-2 step by step in NumPy (the pre-kernel reference)."""
    membrane, spike = np.empty_like(current), np.empty_like(current)
    carried = np.zeros_like(current[0])
    for t in range(current.shape[0]):
        membrane[t] = current[t] + carried
        spike[t] = (membrane[t] >= threshold if firing == ">=" else membrane[t] > threshold).astype(current.dtype)
        carried = decay * membrane[t] * (1.0 - spike[t])
    return membrane, spike


def _numpy_lif_backward(membrane, spike, grad_spike, threshold, decay, surrogate, reset_grad):
    grad_current = np.empty_like(membrane)
    grad_next = np.zeros_like(membrane[0])
    for t in range(membrane.shape[0] - 1, -1, -1):
        grad_s = grad_spike[t]
        if reset_grad:
            grad_s = grad_s - decay * membrane[t] * grad_next
        grad_m = grad_s * surrogate.derivative(membrane[t] - threshold) + decay * (1.0 - spike[t]) * grad_next
        grad_current[t] = grad_m
        grad_next = grad_m
    return grad_current


def _dyadic(rng, shape, dtype, scale=16):
    """Values on a 1/scale grid: every sum is exact, so membranes hit the threshold exactly (ties)."""
    return (rng.integers(-scale, scale + 1, shape) / scale).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("firing", [">=", ">"])
@given(seed=st.integers(0, 2**31 - 1), reset_grad=st.booleans())
def test_fused_lif_is_bit_for_bit_the_numpy_recurrence(dtype, firing, seed, reset_grad):
    rng = np.random.default_rng(seed)
    current = _dyadic(rng, (6, 5, 7), dtype, scale=8) if seed % 2 else rng.normal(0.2, 0.3, (6, 5, 7)).astype(dtype)
    membrane, spike = lif_forward(current, 0.25, 0.25, firing)
    ref_membrane, ref_spike = _numpy_lif_forward(current, 0.25, 0.25, firing)
    assert membrane.dtype == dtype and np.array_equal(membrane, ref_membrane) and np.array_equal(spike, ref_spike)
    grad = rng.normal(size=current.shape).astype(dtype)
    for surrogate in (Rectangular(), Sigmoid(), ATan()):
        got = lif_backward(membrane, spike, grad, 0.25, 0.25, surrogate, reset_grad)
        want = _numpy_lif_backward(membrane, spike, grad, 0.25, 0.25, surrogate, reset_grad)
        assert got.dtype == dtype and np.array_equal(got, want)


@pytest.mark.parametrize("width", [1, 4, 5, 64])
def test_fused_lif_blocks_of_any_width_give_the_numpy_recurrence(monkeypatch, width):
    # 37 neurons in blocks of ``width`` (the last one partial): every block but the first starts at
    # an offset, which the default block (>= _NEURON_BLOCK neurons) never does at test sizes
    monkeypatch.setattr(loops, "_neuron_block", lambda size: width)
    rng = np.random.default_rng(width)
    current = rng.normal(0.2, 0.3, (6, 37)).astype(np.float32)
    membrane, spike = lif_forward(current, 0.25, 0.25, ">=")
    ref_membrane, ref_spike = _numpy_lif_forward(current, 0.25, 0.25, ">=")
    assert np.array_equal(membrane, ref_membrane) and np.array_equal(spike, ref_spike)
    grad = rng.normal(size=current.shape).astype(np.float32)
    for surrogate in (Rectangular(), Sigmoid()):
        got = lif_backward(membrane, spike, grad, 0.25, 0.25, surrogate, True)
        assert np.array_equal(got, _numpy_lif_backward(membrane, spike, grad, 0.25, 0.25, surrogate, True))


def test_fused_lif_fires_at_the_threshold_only_for_ge():
    current = np.array([[0.25], [0.0], [0.25]])
    _, spike_ge = lif_forward(current, 0.25, 0.5, ">=")
    _, spike_gt = lif_forward(current, 0.25, 0.5, ">")
    assert spike_ge.ravel().tolist() == [1, 0, 1] and spike_gt.ravel().tolist() == [0, 0, 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(seed=st.integers(0, 2**31 - 1), density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]))
def test_event_linear_equals_dense_gemm(dtype, seed, density):
    rng = np.random.default_rng(seed)
    x = (rng.random((40, 30)) < density).astype(dtype)
    # dyadic weights: every partial sum is exact, so any summation order gives the same bits
    weight, bias = _dyadic(rng, (9, 30), dtype), _dyadic(rng, 9, dtype)
    grad_out = _dyadic(rng, (40, 9), dtype)
    assert np.array_equal(kernels.event_linear_forward(x, weight, bias), x @ weight.T + bias)
    assert np.array_equal(kernels.event_weight_grad(x, grad_out), grad_out.T @ x)
    # general weights: equal up to the summation order (documented tolerance gamma_n * sum |terms|)
    weight, grad_out = rng.normal(size=(9, 30)).astype(dtype), rng.normal(size=(40, 9)).astype(dtype)
    tol = 30 * np.finfo(dtype).eps * 4
    scale = np.abs(x) @ np.abs(weight).T + np.abs(bias)
    assert np.all(np.abs(kernels.event_linear_forward(x, weight, bias) - (x @ weight.T + bias)) <= tol * scale)
    gscale = np.abs(grad_out).T @ np.abs(x)
    assert np.all(np.abs(kernels.event_weight_grad(x, grad_out) - grad_out.T @ x) <= tol * (gscale + 1e-30))
    # non-binary inputs are multiplied, not only summed
    values = np.where(x > 0, rng.random(x.shape), 0).astype(dtype)
    np.testing.assert_allclose(kernels.event_linear_forward(values, weight, bias), values @ weight.T + bias,
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-12)


def test_crossover_table_and_environment_override(monkeypatch):
    monkeypatch.delenv("REFSNN_EVENT_FORWARD", raising=False)
    assert kernels.crossover("forward", 10) == 0.0  # narrow layers: BLAS always (measured)
    assert kernels.crossover("forward", 512) >= kernels.crossover("wgrad", 512) > 0
    sparse = np.zeros((64, 20))
    sparse[::7, 3] = 1
    assert kernels.use_event_driven(sparse, "forward", 512)
    assert not kernels.use_event_driven(sparse, "forward", 10)
    assert not kernels.use_event_driven(sparse[:8], "forward", 512)  # too few rows
    monkeypatch.setenv("REFSNN_EVENT_FORWARD", "0")
    assert not kernels.use_event_driven(sparse, "forward", 512)
    monkeypatch.setenv("REFSNN_EVENT_FORWARD", "2")
    with pytest.raises(ValueError, match="REFSNN_EVENT_FORWARD"):
        kernels.crossover("forward", 512)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_network_with_event_path_equals_dense_path(monkeypatch, dtype):
    """Forced event-driven vs forced dense Linear layers.

    The forward trace is bit-identical: dyadic weights make every membrane exact (ties at the
    threshold included), so the summation order cannot matter. The backward deltas, input and bias
    gradients come from the same code in both modes and are bit-identical too. The weight gradients
    sum ``T * B`` products of surrogate-scaled deltas that need more mantissa bits than the dtype
    has, in BLAS order on one side and the event kernel's order on the other; they agree within
    the summation bound: each is within ``gamma_n * (|delta|^T |x|)`` of the exact sum,
    ``gamma_n = n u / (1 - n u)``, so they are within twice that of each other.
    """
    rng = np.random.default_rng(7)
    layers = [Linear(_dyadic(rng, (24, 40), np.float64), _dyadic(rng, 24, np.float64)),
              Linear(_dyadic(rng, (5, 24), np.float64), _dyadic(rng, 5, np.float64))]
    net = SNN(layers, dtype=dtype)
    spikes = (rng.random((6, 11, 40)) < 0.1).astype(np.uint8)
    grad_rates = _dyadic(rng, (11, 5), np.float64)
    original = Linear.param_grads
    results, deltas = {}, {}

    def recording(layer, x, grad_out):
        deltas[mode].append((x, grad_out))
        return original(layer, x, grad_out)

    monkeypatch.setattr(Linear, "param_grads", recording)
    for mode in ("0", "1"):
        monkeypatch.setenv("REFSNN_EVENT_FORWARD", mode)
        monkeypatch.setenv("REFSNN_EVENT_WGRAD", mode)
        deltas[mode] = []
        trace = net.run(spikes)
        grads, grad_inputs = net.backward(trace, grad_rates)
        results[mode] = (trace, grads, grad_inputs)
    dense, event = results["0"], results["1"]
    for a, b in zip(dense[0].membranes + dense[0].spikes, event[0].membranes + event[0].spikes):
        assert a.dtype == b.dtype == dtype and np.array_equal(a, b)
    assert np.array_equal(dense[2], event[2])
    assert len(deltas["0"]) == len(deltas["1"]) == len(layers)
    unit = np.finfo(dtype).eps / 2
    # params() order is (weight, bias) per layer; the backward pass visits the layers last to first
    for index, ((x, delta), (x_event, delta_event)) in enumerate(zip(reversed(deltas["0"]), reversed(deltas["1"]))):
        assert np.array_equal(x, x_event) and np.array_equal(delta, delta_event)
        grad_weight_dense, grad_bias_dense = dense[1][2 * index], dense[1][2 * index + 1]
        grad_weight_event, grad_bias_event = event[1][2 * index], event[1][2 * index + 1]
        assert grad_weight_dense.dtype == grad_weight_event.dtype == dtype
        assert np.array_equal(grad_bias_dense, grad_bias_event)
        n = x.shape[0]
        gamma = n * unit / (1 - n * unit)
        bound = 2 * gamma * (np.abs(delta).astype(np.float64).T @ np.abs(x).astype(np.float64))
        assert np.all(np.abs(grad_weight_dense.astype(np.float64) - grad_weight_event) <= bound)


@pytest.mark.parametrize("shape", [(1, 1), (31, 33), (64, 65), (100, 7)])
def test_transpose_contiguous(shape):
    matrix = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = kernels.transpose_contiguous(matrix)
    assert out.flags.c_contiguous and np.array_equal(out, matrix.T)


def test_event_linear_mixed_rows_and_column_remainders():
    """Rows with 0..9 active inputs (every remainder of the four-column pass) and one non-binary row."""
    rng = np.random.default_rng(5)
    x = np.zeros((10, 12))
    for row in range(10):
        x[row, rng.choice(12, size=row, replace=False)] = 1.0
    x[3, 2] = 0.5
    weight, bias = _dyadic(rng, (6, 12), np.float64), _dyadic(rng, 6, np.float64)
    assert np.array_equal(kernels.event_linear_forward(x, weight, bias), x @ weight.T + bias)


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_backward_without_input_gradient_gives_the_same_parameter_gradients(arch):
    from refsnn.architectures import build_network
    net = build_network(arch, (1, 8, 8), seed=3, dtype=np.float32)
    rng = np.random.default_rng(0)
    spikes = (rng.random((4, 5, 1, 8, 8)) < 0.3).astype(np.float32)
    trace = net.run(spikes)
    grad_rates = rng.normal(size=(5, 10)).astype(np.float32)
    grads, grad_inputs = net.backward(trace, grad_rates)
    grads_only, nothing = net.backward(trace, grad_rates, input_grad=False)
    assert grad_inputs.shape == spikes.shape and nothing is None
    assert len(grads) == len(grads_only)
    for a, b in zip(grads, grads_only):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def _ibp_recurrence_numpy(cur_lower, cur_upper, alpha, rule, firing):
    """The S-IBP time loop as NumPy rules (Precision, Fire.classify, Reset.interval), per step."""
    from refsnn.relaxations import Fire, Reset
    out = {name: np.empty_like(cur_lower) for name in ("ml", "mu", "margin", "rl", "ru")}
    state = np.empty(cur_lower.shape, np.int8)
    carried_lower = np.zeros(cur_lower.shape[1:])
    carried_upper = np.zeros(cur_lower.shape[1:])
    for t in range(cur_lower.shape[0]):
        size = np.maximum(np.abs(cur_lower[t]), np.abs(cur_upper[t])) \
            + np.maximum(np.abs(carried_lower), np.abs(carried_upper))
        out["margin"][t] = rule.membrane_margin(size)
        out["ml"][t] = cur_lower[t] + carried_lower - out["margin"][t]
        out["mu"][t] = cur_upper[t] + carried_upper + out["margin"][t]
        state[t] = Fire.classify(out["ml"][t], out["mu"][t], rule, firing)
        out["rl"][t], out["ru"][t] = Reset.interval(out["ml"][t], out["mu"][t], state[t], rule)
        carried_lower, carried_upper = alpha * out["rl"][t], alpha * out["ru"][t]
    return out, state


@pytest.mark.parametrize("firing", [">=", ">"])
@pytest.mark.parametrize("net_dtype", [np.float32, np.float64])
def test_ibp_time_kernel_is_bit_for_bit_the_numpy_rules(firing, net_dtype):
    from refsnn.ibp import _ibp_time_kernel
    from refsnn.relaxations import Precision, gamma

    class _Net:
        threshold, dtype = 0.3, net_dtype

    rule = Precision.sound(_Net)
    rng = np.random.default_rng(11)
    steps, batch, n = 4, 5, 64
    cur_lower = rng.normal(0.2, 0.3, (steps, batch, n))
    cur_lower[:, :, :8] = rule.th_hi  # ties at the threshold
    cur_upper = cur_lower + np.abs(rng.normal(0, 0.2, (steps, batch, n))) * (rng.random((steps, batch, n)) < 0.7)
    want, want_state = _ibp_recurrence_numpy(cur_lower, cur_upper, 0.7, rule, firing)
    got = [np.empty_like(cur_lower) for _ in range(5)]
    state = np.empty(cur_lower.shape, np.int8)
    spikes = [np.empty_like(cur_lower) for _ in range(2)]
    _ibp_time_kernel(cur_lower, cur_upper, 0.7, 2.0 * gamma(6, rule.u), rule.th_lo, rule.th_hi, firing == ">=",
                     got[0], got[1], got[2], got[3], got[4], state, spikes[0], spikes[1])
    for key, value in zip(("ml", "mu", "margin", "rl", "ru"), got):
        assert np.array_equal(value, want[key]), key
    assert np.array_equal(state, want_state)
    assert np.array_equal(spikes[0], (want_state == 1).astype(float))
    assert np.array_equal(spikes[1], (want_state != 0).astype(float))


@pytest.mark.parametrize("firing", [">=", ">"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_ibp_kernel_is_bit_for_bit_the_numpy_loop(firing, dtype):
    """refsnn.robust's S-IBP recurrence (training bounds, no margins) against its NumPy form."""
    from refsnn.relaxations import STABLE_OFF, UNSTABLE, Fire, Precision
    from refsnn.bound_graph import _ibp_time_kernel
    alpha, th = 0.3, 0.3  # neither is a float32 number
    rng = np.random.default_rng(12)
    steps, batch, n = 4, 3, 40
    cur_lower = rng.normal(0.2, 0.3, (steps, batch, n)).astype(dtype)
    cur_lower[:, :, :6] = dtype(th)
    cur_upper = (cur_lower + np.abs(rng.normal(0, 0.2, cur_lower.shape))).astype(dtype)
    rule = Precision(u=0.0, th_lo=th, th_hi=th, net_dtype=np.dtype(dtype).name)
    ml_want, mu_want = np.empty_like(cur_lower), np.empty_like(cur_upper)
    state_want = np.empty(cur_lower.shape, np.int8)
    negative_want = np.empty(cur_lower.shape, bool)
    carried_lower = np.zeros((batch, n), dtype)
    carried_upper = np.zeros((batch, n), dtype)
    for t in range(steps):
        ml_want[t] = cur_lower[t] + carried_lower
        mu_want[t] = cur_upper[t] + carried_upper
        state_want[t] = Fire.classify(ml_want[t], mu_want[t], rule, firing)
        negative_want[t] = ml_want[t] < 0.0
        off, unstable = state_want[t] == STABLE_OFF, state_want[t] == UNSTABLE
        reset_lower = np.where(off, ml_want[t], np.where(unstable & negative_want[t], ml_want[t], 0.0))
        reset_upper = np.where(off, mu_want[t], np.where(unstable, th, 0.0))
        carried_lower, carried_upper = alpha * reset_lower, alpha * reset_upper
    ml, mu = np.empty_like(cur_lower), np.empty_like(cur_upper)
    state, negative = np.empty(cur_lower.shape, np.int8), np.empty(cur_lower.shape, bool)
    _ibp_time_kernel(cur_lower, cur_upper, alpha, dtype(alpha), th, dtype(th), dtype(0), firing == ">=", False,
                     ml, mu, state, negative)
    assert np.array_equal(ml, ml_want) and np.array_equal(mu, mu_want)
    assert np.array_equal(state, state_want) and np.array_equal(negative, negative_want)
    # frozen: the recorded choices are read back and give the same membranes
    ml2, mu2 = np.empty_like(ml), np.empty_like(mu)
    _ibp_time_kernel(cur_lower, cur_upper, alpha, dtype(alpha), th, dtype(th), dtype(0), firing == ">=", True,
                     ml2, mu2, state, negative)
    assert np.array_equal(ml2, ml) and np.array_equal(mu2, mu)


@pytest.mark.parametrize("channels", [1, 3, 9])  # 9 >= EVENT_CONV_WINDOW_CHANNELS: the window kernel
@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (3, 1, 0), (2, 3, 2), (1, 1, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_event_conv_equals_im2col_gemm(channels, kernel, stride, padding, dtype):
    from refsnn.layers import Conv2d
    rng = np.random.default_rng(channels * 100 + kernel * 10 + stride)
    # dyadic weights: every partial sum is exact, so any summation order gives the same bits
    weight, bias = _dyadic(rng, (5, channels, kernel, kernel), dtype), _dyadic(rng, 5, dtype)
    conv = Conv2d(weight, bias, stride, padding)
    conv.output_shape((channels, 7, 8))
    geometry = conv._geometry((channels, 7, 8))
    for density in (0.0, 0.1, 0.5, 1.0):
        x = (rng.random((6, channels, 7, 8)) < density).astype(dtype)
        assert np.array_equal(kernels.event_conv_forward(x, weight, bias, geometry),
                              conv._linear(x, conv.weight, conv.bias))
    values = np.where(rng.random((6, channels, 7, 8)) < 0.3, rng.random((6, channels, 7, 8)), 0).astype(dtype)
    np.testing.assert_allclose(kernels.event_conv_forward(values, weight, bias, geometry),
                               conv._linear(values, conv.weight, conv.bias),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_network_with_event_path_equals_dense_path(monkeypatch, dtype):
    from refsnn.layers import Conv2d, Flatten
    rng = np.random.default_rng(8)
    layers = [Conv2d(_dyadic(rng, (4, 1, 3, 3), np.float64), _dyadic(rng, 4, np.float64), 2, 1),
              Conv2d(_dyadic(rng, (9, 4, 3, 3), np.float64), _dyadic(rng, 9, np.float64), 1, 1),
              Flatten(), Linear(_dyadic(rng, (3, 9 * 5 * 5), np.float64), _dyadic(rng, 3, np.float64))]
    net = SNN(layers, dtype=dtype, input_shape=(1, 10, 10))
    spikes = (rng.random((5, 8, 1, 10, 10)) < 0.15).astype(np.uint8)
    traces = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("REFSNN_EVENT_CONV", mode)
        traces[mode] = net.run(spikes)
    for a, b in zip(traces["0"].membranes + traces["0"].spikes, traces["1"].membranes + traces["1"].spikes):
        assert a.dtype == b.dtype == dtype and np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width,height,threshold", [(1.0, 1.0, 0.25), (0.6, 0.7, 0.3)])
@pytest.mark.parametrize("reset_grad", [True, False])
def test_rectangular_bptt_kernel_is_bit_for_bit_the_derivative_array_path(dtype, width, height, threshold,
                                                                           reset_grad):
    from refsnn.neurons import Rectangular
    rng = np.random.default_rng(4)
    membrane = rng.normal(0.25, 0.5, (6, 4, 9)).astype(dtype)
    half = dtype(width / 2)
    edge = dtype(threshold) + half  # values on and next to the window's edges
    membrane[0, 0, :3] = [edge, np.nextafter(edge, dtype(0)), np.nextafter(edge, dtype(2))]
    membrane[1, 0, :2] = [dtype(threshold) - half, dtype(threshold)]
    spike = (membrane >= dtype(threshold)).astype(dtype)
    grad_spike = rng.normal(size=membrane.shape).astype(dtype)
    surrogate = Rectangular(width, height)
    want = loops.lif_backward_fused(membrane, spike, grad_spike, surrogate.derivative(membrane - threshold),
                                      0.3, reset_grad)
    got = loops.lif_backward_rectangular_fused(membrane, spike, grad_spike, threshold, width, height, 0.3,
                                                 reset_grad)
    assert got.dtype == dtype and np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sound_ibp_event_interval_equals_gemm_path(monkeypatch, dtype):
    """S-IBP with the event-driven eq. 11 forced on vs off: same bounds up to the summation order
    (float32 weights: exactly), same stability states."""
    from refsnn import ibp
    from refsnn.architectures import build_network
    from refsnn.input_sets import digital_linf_set
    net = build_network("fc", (1, 8, 8), seed=5, dtype=dtype)
    rng = np.random.default_rng(3)
    images = rng.random((6, 1, 8, 8))
    box = digital_linf_set(images, 0.1, rng.random((3, 6, 1, 8, 8)))
    results = {}
    for limit in (1.0, 0.0):
        monkeypatch.setattr(ibp, "EVENT_INTERVAL_DENSITY", limit)
        results[limit] = ibp.interval_bounds(net, box.x_lower, box.x_upper)
    event, dense = results[1.0], results[0.0]
    for name in ("current_lower", "current_upper", "current_center", "current_magnitude", "mem_lower", "mem_upper"):
        for a, b in zip(getattr(event, name), getattr(dense, name)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * (1 + np.abs(b).max()))
    for a, b in zip(event.state, dense.state):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("n", [1, 7, 8 * 16 * 2 + 3])  # one partial block; several blocks per group
def test_conv_weight_gradient_over_blocks_equals_the_windowed_sum(n):
    """``Conv2d.param_grads`` (blocks of samples im2col'ed into scratch, partial sums per group)
    equals ``sum_n grad[n, o, a, b] * x_padded[n, c, a*sh + i, b*sw + j]`` for every sample count."""
    from refsnn.layers import Conv2d
    rng = np.random.default_rng(n)
    conv = Conv2d(rng.normal(0, 1, (3, 2, 3, 2)), np.zeros(3), stride=(2, 1), padding=(1, 1))
    out_shape = conv.output_shape((2, 5, 6))
    x = rng.normal(0, 1, (n, 2, 5, 6))
    grad = rng.normal(0, 1, (n,) + out_shape)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 2), axis=(2, 3))[:, :, ::2, ::1]
    expected = np.einsum("noab,ncabij->ocij", grad, windows)
    grads = conv.param_grads(x, grad)
    np.testing.assert_allclose(grads["weight"], expected, rtol=0, atol=1e-11 * max(1, n))
    np.testing.assert_allclose(grads["bias"], grad.sum(axis=(0, 2, 3)), rtol=0, atol=1e-11 * max(1, n))


def _conv_windows_reference(x, weight, stride, padding):
    """``[N, C, OH, OW, kh, kw]`` windows of the zero-padded ``x`` (float64, NumPy only)."""
    padded = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    windows = np.lib.stride_tricks.sliding_window_view(padded, weight.shape[2:], axis=(2, 3))
    return padded, windows[:, :, ::stride[0], ::stride[1]]


@pytest.mark.parametrize("n", [1, 3, 3 * 3 + 2, 8 * 16 * 2 + 3])  # one partial block; blocks of 3 and of 8
@pytest.mark.parametrize("kernel,stride,padding", [((3, 2), (2, 1), (1, 1)), ((3, 3), (2, 2), (1, 1)),
                                                   ((2, 2), (3, 1), (2, 0))])
def test_conv_forward_and_backward_over_blocks_equal_the_windowed_sums(monkeypatch, n, kernel, stride, padding):
    """The blocked forward (3 samples per im2col/GEMM block here), the per-sample adjoint and the blocked
    weight gradient give every sample the windowed sums of its own input: a block boundary that
    dropped, repeated or shifted a sample would leave some output, input gradient or weight
    gradient off."""
    from refsnn import layers
    rng = np.random.default_rng(n + 10 * kernel[1] + 100 * stride[0])
    conv = layers.Conv2d(rng.normal(0, 1, (3, 2) + kernel), rng.normal(0, 1, 3), stride=stride, padding=padding)
    out_shape = conv.output_shape((2, 5, 6))
    positions = out_shape[1] * out_shape[2]
    monkeypatch.setattr(layers, "_FORWARD_BLOCK_BYTES", 3 * (2 * kernel[0] * kernel[1] + 3) * positions * 8)
    assert layers._forward_block(2 * kernel[0] * kernel[1], 3, positions, 8) == 3
    x = rng.normal(0, 1, (n, 2, 5, 6))
    grad = rng.normal(0, 1, (n,) + out_shape)
    padded, windows = _conv_windows_reference(x, conv.weight, stride, padding)
    expected = np.einsum("ncabij,ocij->noab", windows, conv.weight) + conv.bias[None, :, None, None]
    np.testing.assert_allclose(conv.forward(x), expected, rtol=0, atol=1e-12)
    grad_padded = np.zeros_like(padded)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            grad_padded[:, :, i:i + stride[0] * out_shape[1]:stride[0], j:j + stride[1] * out_shape[2]:stride[1]] += \
                np.einsum("noab,oc->ncab", grad, conv.weight[:, :, i, j])
    grad_x, grads = conv.backward(x, grad)
    np.testing.assert_allclose(grad_x, grad_padded[:, :, padding[0]:padding[0] + 5, padding[1]:padding[1] + 6],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads["weight"], np.einsum("noab,ncabij->ocij", grad, windows), rtol=0,
                               atol=1e-11 * max(1, n))
    np.testing.assert_allclose(grads["bias"], grad.sum(axis=(0, 2, 3)), rtol=0, atol=1e-11 * max(1, n))


def test_conv_forward_blocks_do_not_depend_on_the_thread_count():
    """Each block of the forward is one single-threaded GEMM on its own samples: the same bits at
    one thread and at all of them (the whole-batch float32 GEMM of NumPy's threaded BLAS was not)."""
    from refsnn import layers, threads
    if threads.max_threads() < 2:
        pytest.skip("Numba started with one thread")
    dtype = np.float32
    rng = np.random.default_rng(5)
    conv = layers.Conv2d(rng.normal(0, 0.3, (16, 8, 3, 3)).astype(dtype), rng.normal(0, 1, 16).astype(dtype),
                         stride=2, padding=1)
    conv.output_shape((8, 12, 12))
    x = rng.normal(0, 1, (45, 8, 12, 12)).astype(dtype)
    results = []
    for count in (1, threads.max_threads()):
        with threads.scoped_threads(count):
            results.append(conv.forward(x))
    assert np.array_equal(results[0], results[1])


def test_frozen_weights_transposes_each_weight_once_and_only_inside_the_block(monkeypatch):
    rng = np.random.default_rng(0)
    x = (rng.random((40, 30)) < 0.1).astype(np.float32)
    weight = rng.normal(size=(20, 30)).astype(np.float32)
    bias = rng.normal(size=20).astype(np.float32)
    expected = kernels.event_linear_forward(x, weight, bias)
    calls = []
    transpose = kernels.transpose_contiguous
    monkeypatch.setattr(kernels, "transpose_contiguous", lambda m: calls.append(1) or transpose(m))
    with kernels.frozen_weights():
        with kernels.frozen_weights():  # nested: the outer cache
            first = kernels.event_linear_forward(x, weight, bias)
        second = kernels.event_linear_forward(x, weight, bias)
        other = kernels.event_linear_forward(x, weight.copy(), bias)  # another array: its own transpose
    assert len(calls) == 2
    for out in (first, second, other):
        np.testing.assert_array_equal(out, expected)
    weight *= 2  # outside the block nothing is cached: a changed weight is seen at once
    changed = kernels.event_linear_forward(x, weight, bias)
    np.testing.assert_array_equal(changed, kernels.event_linear_forward(x, weight.copy(), bias))
    assert not np.array_equal(changed, expected) and len(calls) == 4
