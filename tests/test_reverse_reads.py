"""The training graph's reverse computes ``dL/d lam_cur`` of a convolution stage only where the step's
reverse reads it (``refsnn.operator.reverse_reads``, ``Conv2d.forward_at``): the entries it skips are
never read, the read ones equal the dense convolution, and loss and gradients equal the dense path."""
import numpy as np
import pytest

import refsnn.bound_graph as bound_graph
from gradcheck import assert_robust_loss_gradients
from refsnn import SNN, AvgPool2d, Conv2d, Flatten, Linear, Sigmoid
from refsnn.operator import StepTables, backsub_stage, backsub_stage_reverse, reverse_reads
from refsnn.relaxations import STABLE_OFF, STABLE_ON, UNSTABLE
from refsnn.robust import robust_loss

GEOMETRIES = [
    ((3, 3), (2, 2), (1, 1), (3, 7, 6)),   # the paper's CONV layers
    ((3, 2), (1, 2), (0, 1), (2, 6, 7)),
    ((2, 3), (3, 1), (2, 0), (1, 8, 5)),
    ((5, 4), (2, 3), (2, 3), (3, 9, 8)),   # padding beyond half the kernel: edge outputs see no input
]


@pytest.mark.parametrize("kernel,stride,padding,shape", GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv_forward_at_equals_the_dense_forward_at_the_read_entries(kernel, stride, padding, shape, dtype):
    """Every read entry is the dense convolution's (without the bias), every other entry is 0; a
    missed window position, channel or row would change some entry."""
    rng = np.random.default_rng(sum(kernel) + 5 * sum(stride) + 11 * sum(padding))
    conv = Conv2d(rng.normal(0, 1, (4, shape[0]) + kernel).astype(dtype), rng.normal(0, 1, 4).astype(dtype),
                  stride=stride, padding=padding)
    out_shape = conv.output_shape(shape)
    groups, rows = 5, 3
    x = rng.normal(0, 1, (groups * rows,) + shape).astype(dtype)
    x[rng.random(x.shape) < 0.6] = 0.0  # the reverse's inputs are sparse
    reads = rng.random((groups, int(np.prod(out_shape)))) < 0.4
    reads[0] = True
    reads[1] = False
    at = conv.forward_at(x, reads, rows)
    assert at.dtype == dtype and at.shape == (groups * rows,) + out_shape
    dense = conv.forward(x) - conv.bias[None, :, None, None]
    expected = np.where(np.repeat(reads, rows, axis=0).reshape(dense.shape), dense, 0.0)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(at, expected, rtol=0, atol=tolerance * np.abs(dense).max())
    with pytest.raises(ValueError, match="reads"):
        conv.forward_at(x, reads[:, :-1], rows)
    with pytest.raises(ValueError, match="x"):
        conv.forward_at(x[:-1], reads, rows)


def _random_stage(rng, steps, batch, n, states):
    state = rng.choice(np.array(states, np.int8), size=(steps, batch, n))
    mem_lower = rng.normal(0, 1, (steps, batch, n))
    table = lambda: rng.normal(0, 1, (steps, batch, n))  # noqa: E731
    reset_hi = np.full_like(mem_lower, 0.5)
    return StepTables(state, np.abs(table()), table(), np.abs(table()), table(), mem_lower, reset_hi, 0.7,
                      rng.normal(0, 1, n)), mem_lower


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("states", [(STABLE_OFF, STABLE_ON, UNSTABLE), (UNSTABLE,), (STABLE_OFF,), (STABLE_ON,),
                                    (STABLE_OFF, UNSTABLE), (STABLE_ON, UNSTABLE)])
def test_the_reverse_reads_only_the_entries_reverse_reads_names(steps, states):
    """NaN in every entry outside ``reverse_reads`` leaves the step's reverse bit-identical (nothing
    outside is read), and changing any entry inside changes its result (none is dropped)."""
    rng = np.random.default_rng(steps + 10 * len(states))
    batch, rows, n = 3, 4, 7
    tables, mem_lower = _random_stage(rng, steps, batch, n, states)
    lam_s = rng.normal(0, 1, (steps, batch, rows, n))
    forward = backsub_stage(lam_s, tables, record=True)
    g_row = rng.normal(0, 1, (batch, rows))
    grad = rng.normal(0, 1, (steps, batch, rows, n))
    reads = reverse_reads(tables.state)
    assert reads.shape == tables.state.shape
    reference = backsub_stage_reverse(grad, forward, tables, mem_lower, g_row, 0.5)
    masked = np.where(reads[:, :, None, :], grad, np.nan)
    result = backsub_stage_reverse(masked, forward, tables, mem_lower, g_row, 0.5)
    for mine, expected in zip([result[0], *result[1]], [reference[0], *reference[1]]):
        np.testing.assert_array_equal(mine, expected)
    for t, b, j in zip(*np.nonzero(reads)):  # every read entry reaches some output
        changed = grad.copy()
        changed[t, b, :, j] += 1.0
        other = backsub_stage_reverse(changed, forward, tables, mem_lower, g_row, 0.5)
        assert any(not np.array_equal(mine, expected)
                   for mine, expected in zip([other[0], *other[1]], [reference[0], *reference[1]])), (t, b, j)
    if states == (STABLE_ON,):
        assert not reads.any()
    if UNSTABLE in states and len(states) == 1:
        assert reads.all()
    with pytest.raises(ValueError, match="reset"):
        reverse_reads(tables.state, neuron="subtract")


def _conv_net(rng, bias_shift=(0.0, 0.0, 0.0), dtype=np.float64):
    """Two convolutions after the first stage, so the reverse convolves twice; ``bias_shift`` per
    spiking layer makes it all stable (large) or mostly unstable (0 with a wide box)."""
    layers = [Conv2d(rng.normal(0, 0.6, (3, 2, 3, 3)), rng.normal(0.1, 0.1, 3) + bias_shift[0], stride=2, padding=1),
              AvgPool2d(2, 1),
              Conv2d(rng.normal(0, 0.6, (4, 3, 2, 2)), rng.normal(0.1, 0.1, 4) + bias_shift[1]),
              Conv2d(rng.normal(0, 0.6, (2, 4, 1, 1)), rng.normal(0.1, 0.1, 2) + bias_shift[2]),
              Flatten(),
              Linear(rng.normal(0, 0.8, (3, 2)), rng.normal(0.1, 0.2, 3))]
    return SNN(layers, input_shape=(2, 5, 5), surrogate=Sigmoid(4.0), dtype=dtype)


def _box(rng, steps, batch):
    x_lower = (rng.random((steps, batch, 2, 5, 5)) < 0.3).astype(float)
    return x_lower, np.maximum(x_lower, rng.random(x_lower.shape) < 0.5).astype(float)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("shift", [(0.0, 0.0, 0.0), (0.0, -9.0, 0.0), (0.0, 9.0, 0.0), (0.0, 0.0, -9.0),
                                   (-9.0, 0.0, 0.0)])
def test_read_entries_path_equals_the_dense_path(monkeypatch, steps, shift):
    """Loss, bounds and every parameter gradient with ``dL/d lam_cur`` at the read entries only
    equal the dense convolution's, on nets with a stage all silent, all firing or mixed."""
    rng = np.random.default_rng(steps + int(sum(abs(v) for v in shift)) + 100 * int(shift[1] > 0))
    net = _conv_net(rng, shift)
    x_lower, x_upper = _box(rng, steps, 4)
    labels = rng.integers(0, 3, 4)
    args = dict(kappa=0.3, beta=0.6, temperature=2.0)
    calls = []
    original = Conv2d.forward_at
    monkeypatch.setattr(Conv2d, "forward_at", lambda self, *a: calls.append(1) or original(self, *a))
    results = []
    for crossover in (2.0, 0.0):  # always the read entries, then never
        monkeypatch.setattr(bound_graph, "READ_FRACTION_CROSSOVER", crossover)
        results.append(robust_loss(net, x_lower, labels, x_lower, x_upper, **args))
    assert len(calls) == 3  # the three convolution stages of the always run (the first one's input is dense)
    at, dense = results
    assert at.loss == pytest.approx(dense.loss, rel=0, abs=1e-12)
    np.testing.assert_array_equal(at.margin_lower, dense.margin_lower)
    for mine, expected in zip(at.grads, dense.grads):
        np.testing.assert_allclose(mine, expected, rtol=0, atol=1e-12 * max(1.0, np.abs(expected).max()))
    states = at.graph.choices.state
    if shift[1] == -9.0:
        assert np.all(states[1] == STABLE_OFF)
    if shift[1] == 9.0:
        assert np.all(states[1] == STABLE_ON)


def test_robust_loss_gradient_through_the_read_entries_matches_finite_differences(monkeypatch):
    """The hand-written gradient with the read-entries convolution in the reverse equals central
    differences of the loss (smooth eq. 7, every choice frozen)."""
    monkeypatch.setattr(bound_graph, "READ_FRACTION_CROSSOVER", 2.0)
    calls = []
    original = Conv2d.forward_at
    monkeypatch.setattr(Conv2d, "forward_at", lambda self, *a: calls.append(1) or original(self, *a))
    rng = np.random.default_rng(4)
    net = _conv_net(rng)
    x_lower, x_upper = _box(rng, 3, 3)
    labels = rng.integers(0, 3, 3)
    args = dict(kappa=0.3, beta=0.6, temperature=2.0, smooth=True)
    reference = robust_loss(net, x_lower, labels, x_lower, x_upper, **args)
    assert calls
    assert any(np.mean(state == UNSTABLE) > 0.1 for state in reference.graph.choices.state)
    assert_robust_loss_gradients(net, x_lower, labels, x_upper, reference, **args)
