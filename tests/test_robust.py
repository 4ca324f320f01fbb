"""Robust training: hand-written gradients of the bound loss, agreement with the sound bounds, schedules."""
import numpy as np
import pytest

from gradcheck import assert_robust_loss_gradients
from refsnn import SNN, AvgPool2d, Conv2d, Flatten, Linear, Sigmoid
from refsnn.architectures import build_network
from refsnn.bounds import compute_bounds, margin_spec
from refsnn.encoders import draw_rand_maps
from refsnn.input_sets import digital_linf_set
from refsnn.robust import (BoundGraph, RobustOptions, ramp_progress, robust_loss, robust_options,
                           schedule_values)


def _small_net(arch, rng):
    if arch == "fc-wide":  # 40 inputs: a box with 1-2 free bits per step takes the sparse input path
        layers = [Linear(rng.normal(0, 0.5, (5, 40)), rng.normal(0.1, 0.2, 5)),
                  Linear(rng.normal(0, 0.8, (3, 5)), rng.normal(0.1, 0.2, 3))]
        return SNN(layers, surrogate=Sigmoid(4.0)), (40,)
    if arch == "fc":
        layers = [Linear(rng.normal(0, 0.8, (5, 6)), rng.normal(0.1, 0.2, 5)),
                  Linear(rng.normal(0, 0.8, (4, 5)), rng.normal(0.1, 0.2, 4)),
                  Linear(rng.normal(0, 0.8, (3, 4)), rng.normal(0.1, 0.2, 3))]
        return SNN(layers, surrogate=Sigmoid(4.0)), (6,)
    # "conv" and "conv-sparse" (a box with 8 free bits per step: the sparse input path of a conv)
    layers = [Conv2d(rng.normal(0, 0.6, (3, 2, 3, 3)), rng.normal(0.1, 0.1, 3), stride=2, padding=1),
              AvgPool2d(2, 1),
              Conv2d(rng.normal(0, 0.6, (2, 3, 2, 2)), rng.normal(0.1, 0.1, 2)),
              Flatten(),
              Linear(rng.normal(0, 0.8, (3, 2)), rng.normal(0.1, 0.2, 3))]
    return SNN(layers, input_shape=(2, 5, 5), surrogate=Sigmoid(4.0)), (2, 5, 5)


@pytest.mark.parametrize("arch", ["fc", "fc-wide", "conv", "conv-sparse"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_robust_loss_gradient_matches_finite_differences(arch, steps):
    """Smooth surrogate in eq. 7, every discrete choice frozen: the manual reverse pass through
    S-CROWN, the relaxations and S-IBP must equal central differences of the loss."""
    rng = np.random.default_rng(steps)
    net, shape = _small_net(arch, rng)
    batch = 3
    x_lower = (rng.random((steps, batch) + shape) < 0.3).astype(float)
    if arch == "fc-wide":
        x_upper = x_lower.copy()
        x_upper[..., :2] = 1.0  # two free bits at most per step and sample
    elif arch == "conv-sparse":  # 8 of 50 bits free per step: corners, edges and inner bits, both channels
        free = (np.array([0, 0, 1, 0, 1, 0, 1, 1]), np.array([0, 2, 4, 4, 0, 1, 2, 3]),
                np.array([0, 3, 1, 4, 2, 1, 2, 4]))
        x_lower[(Ellipsis,) + free] = 0.0
        x_upper = x_lower.copy()
        x_upper[(Ellipsis,) + free] = 1.0
    else:
        x_upper = np.maximum(x_lower, rng.random((steps, batch) + shape) < 0.5).astype(float)
    labels = rng.integers(0, 3, batch)
    args = dict(kappa=0.3, beta=0.6, temperature=2.0, smooth=True)
    reference = robust_loss(net, x_lower, labels, x_lower, x_upper, **args)
    choices = reference.graph.choices
    assert reference.graph.sparse_input == (arch in ("fc-wide", "conv-sparse"))
    assert any(np.mean(state == 2) > 0.1 for state in choices.state), "the test needs unstable neurons"

    assert_robust_loss_gradients(net, x_lower, labels, x_upper, reference, **args)


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_training_bounds_equal_sound_bounds_up_to_rounding(arch):
    rng = np.random.default_rng(0)
    net = build_network(arch, (1, 12, 12), seed=3)
    images = rng.random((4, 1, 12, 12))
    labels = rng.integers(0, 10, 4)
    box = digital_linf_set(images, 0.1, draw_rand_maps(rng, 3, images.shape))
    C = margin_spec(labels, 10)
    graph = BoundGraph(net, box.x_lower, box.x_upper, C)
    ibp_lower, _ = compute_bounds(net, box.x_lower, box.x_upper, "ibp", C)
    crown_lower, _ = compute_bounds(net, box.x_lower, box.x_upper, "crown-ibp", C)
    # the sound bounds only add outward rounding margins
    assert np.all(ibp_lower <= graph.ibp_lower + 1e-15)
    assert np.all(crown_lower <= graph.crown_lower + 1e-15)
    np.testing.assert_allclose(graph.ibp_lower, ibp_lower, atol=1e-9)
    np.testing.assert_allclose(graph.crown_lower, crown_lower, atol=1e-8)


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_sparse_first_stage_at_the_paper_mnist_eps_matches_the_dense_path(monkeypatch, arch):
    """The FC and CONV presets on MNIST digits at the paper's eps 0.12 (about 9 % of the pixels
    free per step) take the free-column path of the first stage, and its bounds and gradients equal
    the dense ``lam W`` path up to float32 summation order."""
    import refsnn.bound_graph as bound_graph
    from refsnn.data import load_dataset
    images, labels = load_dataset("mnist-subset", "train")
    images, labels = images[:6], labels[:6]
    net = build_network(arch, (1, 28, 28), seed=0, dtype=np.float32)
    box = digital_linf_set(images, 0.12, draw_rand_maps(np.random.default_rng(0), 3, images.shape))
    C = margin_spec(labels, 10).astype(np.float32)
    grad = np.random.default_rng(1).standard_normal((6, 9)).astype(np.float32)
    results = {}
    for fraction in (bound_graph.SPARSE_INPUT_FRACTION, 10 ** 9):  # the default, then never sparse
        monkeypatch.setattr(bound_graph, "SPARSE_INPUT_FRACTION", fraction)
        graph = BoundGraph(net, box.x_lower, box.x_upper, C)
        results[fraction] = (graph.sparse_input, graph.crown_lower, graph.backward(grad_ibp=grad, grad_crown=grad))
    (sparse, sparse_lower, sparse_grads), (dense, dense_lower, dense_grads) = results.values()
    assert sparse and not dense
    np.testing.assert_allclose(sparse_lower, dense_lower, rtol=0, atol=1e-5 * np.abs(dense_lower).max())
    for mine, reference in zip(sparse_grads, dense_grads):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("kernel,stride,padding,shape", [
    ((3, 3), (2, 2), (1, 1), (2, 7, 6)),   # the paper's CONV layers
    ((3, 2), (1, 2), (0, 1), (2, 6, 7)),
    ((2, 3), (3, 1), (2, 0), (1, 8, 5)),
    ((5, 4), (2, 3), (2, 3), (3, 9, 8)),   # padding beyond half the kernel: edge outputs see no input
])
def test_conv_adjoint_at_positions_equals_the_dense_adjoint(kernel, stride, padding, shape):
    """``Conv2d.transpose_at`` reads ``transpose`` at every input position exactly (a missed or
    shifted column, e.g. an off-by-one in padding or stride, changes some position), and its
    reverse equals the dense reverse: the convolution of the scattered gradient (``dL/d coef``)
    and the weight gradient of that convolution."""
    rng = np.random.default_rng(sum(kernel) + 7 * sum(stride) + 3 * sum(padding))
    conv = Conv2d(rng.normal(0, 1, (4, shape[0]) + kernel), np.zeros(4), stride=stride, padding=padding)
    out_shape = conv.output_shape(shape)
    n, rows, n_in = 5, 3, int(np.prod(shape))
    coef = rng.normal(0, 1, (n, rows) + out_shape)
    index = np.stack([rng.permutation(n_in) for _ in range(n)])  # every position, in a shuffled order
    columns = conv.adjoint_columns(index)
    at = conv.transpose_at(coef.reshape(n, rows, -1), columns)
    dense = conv.transpose(coef.reshape((n * rows,) + out_shape)).reshape(n, rows, n_in)
    np.testing.assert_allclose(at, np.take_along_axis(dense, index[:, None, :], axis=2), rtol=0, atol=1e-12)
    grad = rng.normal(0, 1, (n, rows, n_in))
    grad[:, :, ::4] = 0.0  # skipped entries (padded positions of a box) contribute nothing
    grad_coef = np.zeros((n, rows, int(np.prod(out_shape))))
    grad_weight = conv.transpose_at_backward(coef.reshape(n, rows, -1), columns, grad, grad_coef)
    scattered = np.zeros((n, rows, n_in))
    np.put_along_axis(scattered, index[:, None, :], grad, axis=2)
    scattered = scattered.reshape((n * rows,) + shape)
    np.testing.assert_allclose(grad_coef.reshape((n * rows,) + out_shape), conv.forward(scattered),
                               rtol=0, atol=1e-12)
    expected = conv.param_grads(scattered, coef.reshape((n * rows,) + out_shape))["weight"]
    np.testing.assert_allclose(grad_weight, expected, rtol=0, atol=1e-11)


@pytest.mark.parametrize("arch", ["fc", "fc-wide", "conv"])
def test_training_graph_back_substitutes_through_the_one_stage_driver(monkeypatch, arch):
    """``BoundGraph`` runs ``refsnn.crown.backsub_stages`` (tables built per stage, sides passed
    when frozen, stage 0 left untransposed on the sparse path); a frozen graph reproduces its
    bound bit for bit."""
    import refsnn.bound_graph as bound_graph
    from refsnn.crown import backsub_stages
    calls = []

    def spy(stages, tables, lam_s, **options):
        calls.append((callable(tables), options["sides"], options["transpose_first"], lam_s.dtype))
        return backsub_stages(stages, tables, lam_s, **options)

    monkeypatch.setattr(bound_graph, "backsub_stages", spy)
    rng = np.random.default_rng(5)
    net, shape = _small_net(arch, rng)
    x_lower = (rng.random((2, 3) + shape) < 0.3).astype(float)
    x_upper = x_lower.copy()
    x_upper[..., :2] = 1.0
    C = margin_spec(rng.integers(0, 3, 3), 3)
    graph = BoundGraph(net, x_lower, x_upper, C)
    frozen = BoundGraph(net, x_lower, x_upper, C, choices=graph.choices)
    assert [c[0] for c in calls] == [True, True] and calls[0][1] is None
    assert len(calls[1][1]) == len(net.stages) and calls[0][3] == net.dtype
    assert calls[0][2] == (not graph.sparse_input) and graph.sparse_input == (arch == "fc-wide")
    np.testing.assert_array_equal(frozen.crown_lower, graph.crown_lower)


def test_stage_driver_takes_tables_by_callable_and_held_sides_and_keeps_the_policy_dtype():
    """The driver's options give bit-identical results: tables as a list or built per stage, the
    sides it chose or the same sides held fixed. Under ``exact`` (training tables, float32) the
    constant stays float32 and no rounding bound accrues; under ``sound`` it does."""
    from refsnn.crown import backsub_stages, stage_step_tables
    from refsnn.ibp import interval_bounds, prepare_stages
    rng = np.random.default_rng(2)
    net, shape = _small_net("conv", rng)
    x_lower = (rng.random((3, 2) + shape) < 0.3).astype(float)
    x_upper = np.maximum(x_lower, rng.random((3, 2) + shape) < 0.5).astype(float)
    stages = prepare_stages(net)
    bounds = interval_bounds(net, x_lower, x_upper, stages)
    tables = [stage_step_tables(bounds, k, stage) for k, stage in enumerate(stages)]
    lam_s = np.ascontiguousarray(np.broadcast_to(rng.standard_normal((1, 2, 4, 3)), (3, 2, 4, 3)))
    runs = [backsub_stages(stages, tables, lam_s, record=True)]
    runs.append(backsub_stages(stages, lambda k: tables[k], lam_s, record=True))
    sides = [(rec.step.reset_side, rec.step.fire_side) for rec in runs[0][3]]
    runs.append(backsub_stages(stages, tables, lam_s, record=True, sides=sides))
    for lam, bias, err, _ in runs[1:]:
        for mine, reference in zip((lam, bias, err), runs[0][:3]):
            np.testing.assert_array_equal(mine, reference)
    assert bias.dtype == np.float64 and np.all(err > 0)
    with pytest.raises(ValueError, match="lam_s"):  # a rounding bound in float64 terms needs float64 sums
        backsub_stages(stages, tables, lam_s.astype(np.float32))
    net32 = SNN(net.layers, input_shape=shape, surrogate=net.surrogate, dtype=np.float32)
    graph = BoundGraph(net32, x_lower, x_upper, np.eye(3)[None].repeat(2, axis=0))
    exact_tables = [rec["tables"] for rec in graph.crown_records]
    lam, bias, err, _ = backsub_stages(graph.maps, exact_tables, lam_s[:, :, :3].astype(np.float32))
    assert lam.dtype == bias.dtype == np.float32 and not np.any(err)


def test_kappa_one_is_natural_training():
    rng = np.random.default_rng(1)
    net, shape = _small_net("fc", rng)
    x = (rng.random((3, 4) + shape) < 0.5).astype(float)
    labels = rng.integers(0, 3, 4)
    result = robust_loss(net, x, labels, x, x, kappa=1.0, beta=1.0, temperature=1.0)
    from refsnn.losses import softmax_cross_entropy
    trace = net.run(x)
    loss, grad_rates = softmax_cross_entropy(trace.rates, labels)
    grads, _ = net.backward(trace, grad_rates)
    assert result.loss == pytest.approx(loss)
    for mine, reference in zip(result.grads, grads):
        np.testing.assert_allclose(mine, reference)


def test_eps_zero_box_gives_exact_margins_for_ibp():
    rng = np.random.default_rng(2)
    net, shape = _small_net("fc", rng)
    x = (rng.random((3, 4) + shape) < 0.5).astype(float)
    labels = rng.integers(0, 3, 4)
    result = robust_loss(net, x, labels, x, x, kappa=0.0, beta=0.0, temperature=1.0)
    rates = net.forward(x)
    C = margin_spec(labels, 3)
    np.testing.assert_allclose(result.margin_lower, np.einsum("bsn,bn->bs", C, rates), atol=1e-12)


def test_schedules():
    options = robust_options({"eps": 0.12, "ramp_epochs": 10}, "mnist", "fc", epochs=12)
    assert schedule_values(options, ramp_progress(options, 0, 0, 100)) == (0.0, 1.0, 1.0)
    eps, kappa, beta = schedule_values(options, ramp_progress(options, 5, 0, 100))
    assert eps == pytest.approx(0.06) and kappa == pytest.approx(0.5) and beta == pytest.approx(0.5)
    assert schedule_values(options, ramp_progress(options, 11, 50, 100)) == (0.12, 0.0, 0.0)
    authors = robust_options({"recipe": "authors", "ramp_epochs": 2}, "fmnist", "fc", epochs=3)
    assert authors.eps == 0.01 and authors.kappa_start == 0.4 and authors.beta_end == 1.0
    # three eps steps per epoch: 1/6, 2/6, 3/6 of the ramp in epoch 0
    assert [ramp_progress(authors, 0, s, 99) for s in (0, 33, 66)] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert ramp_progress(authors, 1, 98, 99) == pytest.approx(1.0)
    defaults = robust_options({}, "mnist", "conv", epochs=300)
    assert defaults.ramp_epochs == pytest.approx(250) and defaults.robust_T == 3


@pytest.mark.parametrize("bad", [{"eps": -1}, {"recipe": "nope"}, {"kappa_start": 2}, {"temperature": 0},
                                 {"unknown_option": 1}, {"robust_T": 0}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValueError):
        robust_options(bad, "mnist", "fc", epochs=10)


def test_robust_options_dataclass_defaults():
    assert RobustOptions().recipe == "crown-ibp"


def test_robust_method_trains_and_resumes_through_the_cli(tmp_path):
    import json

    from refsnn.train import main
    out = tmp_path / "run"
    args = ["--method", "robust", "--dataset", "mnist-subset", "--arch", "fc", "--epochs", "2", "--eps", "0.05",
            "--ramp-epochs", "1", "--limit-train", "64", "--limit-test", "16", "--batch-size", "32",
            "--eval-seeds", "1", "--method-option", "eval_n=8", "--out", str(out), "--no-progress", "--quiet"]
    assert main(args + ["--stop-after-steps", "3"]) == 0
    assert main(["--out", str(out), "--resume", "--no-progress", "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["eps"] == pytest.approx(0.05) and records[-1]["cert_n"] == 8
    assert 0.0 <= records[-1]["cert_error_crown-ibp_final"] <= 1.0


def test_report_draws_the_curves(tmp_path):
    import json

    pytest.importorskip("matplotlib")
    from refsnn.report import main
    run = tmp_path / "run"
    run.mkdir()
    records = [{"epoch": e, "test_acc": 0.9, "train_robust_loss": 2.0 / e, "cert_error_crown-ibp_now": 0.5,
                "cert_error_crown-ibp_final": 0.9} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "figures"
    assert main([str(run), "--out", str(out)]) == 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path / "missing"), "--out", str(out)]) == 2


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_bound_graph_backward_asks_for_weight_gradients_only(monkeypatch, arch):
    """The bound graph's weight gradients come from ``weight_grad``: no bias gradient is summed and
    thrown away (its bias gradients are the per-neuron sums of ``reduce_bias_grad``)."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("param_grads computes a bias gradient the bound graph discards")

    rng = np.random.default_rng(6)
    net, shape = _small_net(arch, rng)
    x_lower = (rng.random((2, 3) + shape) < 0.3).astype(float)
    x_upper = np.maximum(x_lower, rng.random((2, 3) + shape) < 0.5).astype(float)
    graph = BoundGraph(net, x_lower, x_upper, margin_spec(rng.integers(0, 3, 3), 3))
    expected = graph.backward(grad_ibp=np.ones_like(graph.ibp_lower), grad_crown=np.ones_like(graph.crown_lower))
    for layer_type in (Linear, Conv2d):
        monkeypatch.setattr(layer_type, "param_grads", refuse)
    grads = graph.backward(grad_ibp=np.ones_like(graph.ibp_lower), grad_crown=np.ones_like(graph.crown_lower))
    for got, want in zip(grads, expected):
        np.testing.assert_array_equal(got, want)
