"""Natural training: losses, optimizers, schedules, the training loop, resume, determinism, CLI."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsnn import SNN, Linear
from refsnn.architectures import build_network
from refsnn.config import TrainConfig, preset_config
from refsnn.evaluate import clean_accuracy
from refsnn.io import load_checkpoint, load_model
from refsnn.losses import make_loss, mse_one_hot, rate_cross_entropy, softmax_cross_entropy
from refsnn.optim import SGD, Adam, MultiStepLR, StepLR, clip_grad_norm, make_schedule
from refsnn.train import METHODS, StepResult, Trainer, main, register_method, train

REPO = Path(__file__).resolve().parents[1]


# --- losses ---------------------------------------------------------------------------------------

def _numeric_grad(fn, x, h=1e-6):
    grad = np.empty_like(x)
    for index in np.ndindex(x.shape):
        original = x[index]
        x[index] = original + h
        plus = fn(x)
        x[index] = original - h
        minus = fn(x)
        x[index] = original
        grad[index] = (plus - minus) / (2 * h)
    return grad


def test_cross_entropy_value_by_hand():
    loss, grad = softmax_cross_entropy(np.array([[0.0, 0.0], [math.log(3.0), 0.0]]), np.array([0, 1]))
    # sample 0: -log(1/2); sample 1: p = (3/4, 1/4), -log(1/4). Mean over the batch.
    assert loss == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-12)
    np.testing.assert_allclose(grad, [[-0.25, 0.25], [0.375, -0.375]], rtol=1e-12)


@pytest.mark.parametrize("name, fn", [
    ("softmax_ce", lambda r, y: softmax_cross_entropy(r, y)),
    ("rate_ce_scale_3", lambda r, y: rate_cross_entropy(r, y, scale=3.0)),
    ("mse", mse_one_hot),
])
def test_loss_gradients_match_finite_differences(name, fn):
    rng = np.random.default_rng(3)
    rates = rng.random((4, 5))
    labels = np.array([0, 4, 2, 2])
    _, grad = fn(rates, labels)
    numeric = _numeric_grad(lambda r: fn(r, labels)[0], rates.copy())
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-10)


@given(st.lists(st.floats(-30, 30), min_size=3, max_size=3), st.integers(0, 2))
def test_cross_entropy_gradient_rows_sum_to_zero_and_loss_is_stable(logits, label):
    loss, grad = softmax_cross_entropy(np.array([logits]), np.array([label]))
    assert np.isfinite(loss) and loss >= 0
    assert abs(grad.sum()) < 1e-12
    assert grad[0, label] <= 0


def test_losses_reject_bad_labels_and_inputs():
    with pytest.raises(ValueError, match="0..2"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        mse_one_hot(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(TypeError, match="integers"):
        rate_cross_entropy(np.zeros((1, 3)), np.array([0.5]))
    with pytest.raises(ValueError, match="NaN"):
        softmax_cross_entropy(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="positive"):
        make_loss("ce", scale=0.0)


# --- optimizers and schedules ---------------------------------------------------------------------

def test_sgd_momentum_weight_decay_by_hand():
    param = np.array([1.0, -2.0])
    opt = SGD([param], lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.step([np.array([0.5, 0.25])])
    # g' = g + 0.1 p = (0.6, 0.05) = buf; p -= 0.1 buf
    np.testing.assert_allclose(param, [0.94, -2.005], rtol=1e-14)
    opt.step([np.array([0.0, 1.0])])
    # g' = (0.094, 0.7995); buf = 0.9 (0.6, 0.05) + g' = (0.634, 0.8445)
    np.testing.assert_allclose(param, [0.94 - 0.0634, -2.005 - 0.08445], rtol=1e-14)
    np.testing.assert_allclose(opt.momentum_buffers[0], [0.634, 0.8445], rtol=1e-14)


def test_plain_sgd_and_nesterov_by_hand():
    param = np.array([1.0])
    SGD([param], lr=0.5).step([np.array([0.2])])
    assert param[0] == pytest.approx(0.9, abs=1e-15)
    param = np.array([0.0])
    opt = SGD([param], lr=1.0, momentum=0.5, nesterov=True)
    opt.step([np.array([1.0])])  # buf = 1; update = g + 0.5 buf = 1.5
    opt.step([np.array([1.0])])  # buf = 1.5; update = 1 + 0.75 = 1.75
    assert param[0] == pytest.approx(-3.25, abs=1e-15)


def test_adam_by_hand():
    param = np.array([0.0])
    opt = Adam([param], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    opt.step([np.array([1.0])])
    # m = 0.1, v = 0.001; bias-corrected m = 1, v = 1 -> step lr * 1 / (1 + eps)
    assert param[0] == pytest.approx(-0.1 / (1 + 1e-8), rel=1e-14)
    opt.step([np.array([-0.5])])
    m = 0.9 * 0.1 - 0.1 * 0.5          # 0.04
    v = 0.999 * 0.001 + 0.001 * 0.25   # 0.001249
    m_hat, v_hat = m / (1 - 0.9 ** 2), v / (1 - 0.999 ** 2)
    expected = -0.1 / (1 + 1e-8) - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
    assert param[0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
                                  lambda p: Adam(p, lr=0.01, weight_decay=1e-3)])
def test_optimizer_state_dict_continues_exactly(make):
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)] for _ in range(4)]
    params_a = [np.ones((3, 2), np.float32), np.zeros(2, np.float32)]
    params_b = [p.copy() for p in params_a]
    opt_a = make(params_a)
    for g in grads:
        opt_a.step(g)
    opt_b = make(params_b)
    for g in grads[:2]:
        opt_b.step(g)
    state = opt_b.state_dict()
    params_c = [p.copy() for p in params_b]
    opt_c = make(params_c)
    opt_c.load_state_dict(state)
    for g in grads[2:]:
        opt_c.step(g)
    for a, c in zip(params_a, params_c):
        np.testing.assert_array_equal(a, c)
        assert c.dtype == np.float32


def test_optimizer_errors():
    with pytest.raises(ValueError, match="momentum"):
        SGD([np.zeros(2)], momentum=1.0)
    with pytest.raises(ValueError, match="shape"):
        SGD([np.zeros(2)]).step([np.zeros(3)])
    with pytest.raises(ValueError, match="'adam'"):
        SGD([np.zeros(2)]).load_state_dict(Adam([np.zeros(2)]).state_dict())


def test_clip_grad_norm():
    grads = [np.array([3.0]), np.array([4.0])]
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate(grads), [3 / (5 + 1e-6), 4 / (5 + 1e-6)])
    small = [np.array([0.1])]
    clip_grad_norm(small, 1.0)
    assert small[0][0] == 0.1  # below the limit: untouched


def test_schedules():
    paper = MultiStepLR(0.01, (55,), 0.1)
    assert paper.lr_at(0) == 0.01 and paper.lr_at(54) == 0.01
    assert paper.lr_at(55) == pytest.approx(0.001) and paper.lr_at(79) == pytest.approx(0.001)
    step35 = StepLR(0.01, 35)
    assert step35.lr_at(34) == 0.01
    assert step35.lr_at(35) == pytest.approx(1e-3) and step35.lr_at(70) == pytest.approx(1e-4)
    assert make_schedule("constant", 0.3).lr_at(99) == 0.3
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("cosine", 0.1)


def test_presets_and_config_validation():
    paper = preset_config("paper")
    assert (paper.epochs, paper.lr, paper.milestones, paper.firing) == (80, 0.01, (55,), ">=")
    assert preset_config("authors").firing == ">"
    assert preset_config("authors-step35").milestones == (36, 71)
    assert preset_config("paper", epochs=3, lr=None).epochs == 3
    assert preset_config("default").loss_scale == 5.0 and preset_config("default", arch="conv").loss_scale == 2.0
    assert preset_config("default", arch="conv", loss_scale=3.0).loss_scale == 3.0
    with pytest.raises(ValueError, match="arch"):
        preset_config("default", arch="resnet")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(ValueError, match="unknown training config fields"):
        TrainConfig.from_dict({"epochs": 1, "warp_drive": True})
    config = TrainConfig(milestones=(3, 5), method_options={"eps": 0.1})
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config


# --- the training loop ----------------------------------------------------------------------------

TINY = dict(dataset="mnist-subset", arch="fc", epochs=2, batch_size=16, limit_train=48, limit_test=24,
            eval_seeds=2, milestones=(1,), seed=3)


def _weights(net):
    return [p.copy() for p in net.params()]


def test_training_learns_on_the_embedded_subset():
    config = preset_config("default", epochs=2, limit_train=256, batch_size=16, lr=0.02, loss_scale=5.0,
                           limit_test=200, eval_seeds=1, milestones=(99,))
    result = train(config)
    assert result.finished
    assert result.history[-1]["train_loss"] < 0.8 * result.history[0]["train_loss"]
    assert result.test_accuracy.mean > 0.3  # chance is 0.1; about 0.55 after these 32 steps


def test_same_seed_same_weights_and_different_seed_differs():
    config = preset_config("default", **TINY)
    first, second = train(config), train(config)
    for a, b in zip(first.net.params(), second.net.params()):
        np.testing.assert_array_equal(a, b)
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
    other = train(config.replace(seed=4))
    assert not np.array_equal(other.net.params()[0], first.net.params()[0])


@pytest.mark.parametrize("stop_after, checkpoint_every", [(4, 0), (3, 0), (5, 2)])
def test_resume_is_bit_for_bit(tmp_path, stop_after, checkpoint_every):
    # 48 samples / batch 16 = 3 steps per epoch: stop mid-epoch (4, 5) or at an epoch end (3).
    config = preset_config("default", **TINY, checkpoint_every=checkpoint_every)
    reference = train(config, tmp_path / "reference")
    stopped = train(config, tmp_path / "run", stop_after_steps=stop_after)
    assert not stopped.finished
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.h5")
    assert checkpoint.global_step == stop_after
    assert (checkpoint.epoch, checkpoint.step) == divmod(stop_after, 3)
    resumed = train(config, tmp_path / "run", resume=True)
    assert resumed.finished
    for a, b in zip(reference.net.params(), resumed.net.params()):
        np.testing.assert_array_equal(a, b)
    keys = ("train_loss", "train_acc", "test_acc", "lr")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in reference.history]
    assert resumed.test_accuracy.per_seed == reference.test_accuracy.per_seed
    final = load_model(tmp_path / "run" / "model.h5")
    np.testing.assert_array_equal(final.params()[0], reference.net.params()[0])


def test_resume_can_extend_the_run(tmp_path):
    config = preset_config("default", **TINY)
    train(config.replace(epochs=1), tmp_path)
    extended = train(config, tmp_path, resume=True)  # epochs=2 from the passed config
    reference = train(config)
    np.testing.assert_array_equal(extended.net.params()[0], reference.net.params()[0])


def test_float64_and_adam_and_mse_train(tmp_path):
    config = preset_config("default", **{**TINY, "epochs": 1}, dtype="float64", optimizer="adam", lr=1e-3,
                           loss="mse", grad_clip=1.0)
    result = train(config, tmp_path)
    assert result.net.dtype == np.float64
    state = load_checkpoint(tmp_path / "checkpoint.h5").optimizer_state
    assert state["name"] == "adam" and state["step_count"] == 3


def test_conv_preset_takes_steps():
    config = preset_config("default", dataset="mnist-subset", arch="conv", epochs=1, batch_size=8,
                           limit_train=16, limit_test=8, eval_seeds=1)
    trainer = Trainer(config, progress=False, verbose=False)
    before = _weights(trainer.net)
    result = trainer.fit()
    assert trainer.global_step == 2
    assert any(not np.array_equal(a, b) for a, b in zip(before, result.net.params()))


def _synthetic_events(rng, n, steps):
    frames = (rng.random((n, steps, 2, 34, 34)) < 0.05).astype(np.uint8)
    return frames, rng.integers(0, 10, n)


def test_event_data_pass_through_and_deterministic_accuracy():
    rng = np.random.default_rng(0)
    x_train, y_train = _synthetic_events(rng, 16, 4)
    x_test, y_test = _synthetic_events(rng, 8, 4)
    config = preset_config("default", dataset="nmnist", arch="fc", T=4, epochs=1, batch_size=8)
    trainer = Trainer(config, progress=False, verbose=False, data=(x_train, y_train, x_test, y_test))
    assert trainer.net.input_shape == (2, 34, 34)
    batch = trainer.make_batch(np.arange(3))
    np.testing.assert_array_equal(batch.spikes, np.swapaxes(x_train[:3], 0, 1))
    assert batch.rand_maps is None
    result = trainer.fit()
    assert result.test_accuracy.encoding == "events" and result.test_accuracy.std == 0.0
    with pytest.raises(ValueError, match="T = 4"):
        Trainer(config.replace(T=5), progress=False, verbose=False, data=(x_train, y_train, x_test, y_test))


def test_clean_accuracy_over_seeds():
    net = SNN([Linear(np.eye(2) * 0.5, np.zeros(2))], input_shape=(2,))
    images = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    labels = np.array([0, 1, 0])
    result = clean_accuracy(net, images, labels, T=8, seeds=[0, 1, 2])
    assert len(result.per_seed) == 3 and result.seeds == [0, 1, 2]
    assert result.mean == pytest.approx(np.mean(result.per_seed))
    assert result.std == pytest.approx(np.std(result.per_seed, ddof=1))
    again = clean_accuracy(net, images, labels, T=8, seeds=[0, 1, 2])
    assert again.per_seed == result.per_seed
    with pytest.raises(ValueError, match="fit neither"):
        clean_accuracy(net, np.zeros((3, 3)), labels)


def test_method_registry_hook(tmp_path):
    calls = []

    def frozen_step(net, batch, ctx):
        calls.append((ctx.epoch, ctx.step, ctx.options, batch.rand_maps.shape))
        rates = net.run(batch.spikes).rates
        return StepResult(0.5, [np.zeros_like(p) for p in net.params()], rates, {"bound_gap": 2.0})

    register_method("frozen-test", frozen_step, options=lambda options, config: dict(options))
    try:
        config = preset_config("default", **{**TINY, "epochs": 1}, method="frozen-test", method_options={"eps": 0.1})
        result = train(config, tmp_path)
        assert calls[0] == (0, 0, {"eps": 0.1}, (10, 16, 1, 28, 28)) and len(calls) == 3
        assert result.history[0]["train_loss"] == 0.5 and result.history[0]["train_bound_gap"] == 2.0
        initial = build_network("fc", (1, 28, 28), seed=config.seed, dtype=np.float32)
        for a, b in zip(result.net.params(), initial.params()):  # zero gradients: weights unchanged
            np.testing.assert_array_equal(a, b)
    finally:
        METHODS.pop("frozen-test")
    with pytest.raises(ValueError, match="unknown method"):
        Trainer(preset_config("default", **TINY, method="nope"), progress=False, verbose=False)
    with pytest.raises(ValueError, match="takes no method_options"):
        Trainer(preset_config("default", **TINY, method_options={"eps": 1}), progress=False, verbose=False)


def test_init_from_model_file(tmp_path):
    config = preset_config("default", **{**TINY, "epochs": 1})
    first = train(config, tmp_path / "a")
    init = train(config.replace(init=str(tmp_path / "a" / "model.h5"), lr=1e-12, momentum=0.0))
    np.testing.assert_allclose(init.net.params()[0], first.net.params()[0], atol=1e-9)
    with pytest.raises(ValueError, match="firing"):
        Trainer(config.replace(init=str(tmp_path / "a" / "model.h5"), firing=">"), progress=False, verbose=False)


# --- command line ---------------------------------------------------------------------------------

def test_cli_tiny_run_and_resume(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--epochs", "2", "--limit-train", "32", "--limit-test", "16", "--batch-size", "16",
            "--eval-seeds", "2", "--out", str(out), "--no-progress"]
    assert main(args + ["--stop-after-steps", "3"]) == 0
    assert "stopped at epoch 2, batch 1" in capsys.readouterr().out
    assert main(["--resume", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "done:" in printed and "over 2 sampling seeds" in printed
    for name in ("model.h5", "checkpoint.h5", "config.json", "metrics.jsonl", "metrics.csv", "summary.json"):
        assert (out / name).exists(), name
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["limit_train"] == 32 and len(summary["test_accuracy"]["per_seed"]) == 2
    assert load_model(out / "model.h5").input_shape == (1, 28, 28)


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--epochs", "0", "--out", str(tmp_path), "--quiet"])
    assert exit_info.value.code == 2
    assert "argument --epochs: must be an integer >= 1" in capsys.readouterr().err
    assert main(["--resume", "--out", str(tmp_path / "missing"), "--quiet"]) == 2
    with pytest.raises(SystemExit):
        main(["--resume", "--lr", "0.1", "--out", str(tmp_path)])
    assert "only --epochs and --data-dir may change" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "refsnn.train", "--epochs", "1", "--limit-train", "32", "--limit-test", "16",
         "--eval-seeds", "1", "--out", str(tmp_path / "m"), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, completed.stderr
    assert "test accuracy" in completed.stdout
    assert (tmp_path / "m" / "model.h5").exists()


# --- Conv2d im2col/GEMM path (training speed work) vs. the definition -------------------------------

def _direct_conv(x, weight, stride, padding):
    """Cross-correlation by its definition: one output pixel at a time (slow, obviously right)."""
    n, _, height, width = x.shape
    out_c, _, kernel_h, kernel_w = weight.shape
    padded = np.zeros((n, x.shape[1], height + 2 * padding[0], width + 2 * padding[1]))
    padded[:, :, padding[0]:padding[0] + height, padding[1]:padding[1] + width] = x
    out_h = (height + 2 * padding[0] - kernel_h) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kernel_w) // stride[1] + 1
    out = np.zeros((n, out_c, out_h, out_w))
    for a in range(out_h):
        for b in range(out_w):
            patch = padded[:, :, a * stride[0]:a * stride[0] + kernel_h, b * stride[1]:b * stride[1] + kernel_w]
            out[:, :, a, b] = np.einsum("nchw,ochw->no", patch, weight)
    return out


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.tuples(st.integers(1, 4), st.integers(1, 4)),
       st.tuples(st.integers(1, 3), st.integers(1, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3)),
       st.tuples(st.integers(1, 9), st.integers(1, 9)), st.integers(0, 2 ** 31))
def test_conv2d_matches_its_definition(n, in_c, out_c, kernel, stride, padding, size, seed):
    from hypothesis import assume

    from refsnn import Conv2d
    assume(size[0] + 2 * padding[0] >= kernel[0] and size[1] + 2 * padding[1] >= kernel[1])
    rng = np.random.default_rng(seed)
    layer = Conv2d(rng.normal(size=(out_c, in_c) + kernel), rng.normal(size=out_c), stride=stride, padding=padding)
    out_shape = layer.output_shape((in_c,) + size)
    x = rng.normal(size=(n, in_c) + size)
    expected = _direct_conv(x, layer.weight, stride, padding) + layer.bias[None, :, None, None]
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-10, atol=1e-10)
    # adjoint: <conv(x) - b, g> == <x, transpose(g)>; backward's weight gradient by linearity in W
    grad = rng.normal(size=(n,) + out_shape)
    grad_x, grads = layer.backward(x, grad)
    np.testing.assert_allclose(grad_x, layer.transpose(grad), rtol=1e-12, atol=1e-12)
    assert np.sum((expected - layer.bias[None, :, None, None]) * grad) == pytest.approx(np.sum(x * grad_x), rel=1e-9, abs=1e-9)
    expected_w = np.array([np.sum(_direct_conv(x, np.eye(out_c * in_c * kernel[0] * kernel[1])[k].reshape(layer.weight.shape),
                                               stride, padding) * grad) for k in range(layer.weight.size)])
    np.testing.assert_allclose(grads["weight"].ravel(), expected_w, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(grads["bias"], grad.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    lower, upper = layer.interval(x - 0.5, x + 0.5)
    assert np.all(lower <= expected + 1e-9) and np.all(expected <= upper + 1e-9)
    float32 = layer.astype(np.float32)
    float32.input_shape = layer.input_shape
    assert float32.forward(x.astype(np.float32)).dtype == np.float32


def test_evaluate_cli(tmp_path, capsys):
    from refsnn.evaluate import main as evaluate_main
    from refsnn.io import save_model
    save_model(tmp_path / "m.h5", build_network("fc", (1, 28, 28), seed=0))
    assert evaluate_main(["--model", str(tmp_path / "m.h5"), "--dataset", "mnist-subset", "--n", "20", "--seeds", "2",
                          "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_samples"] == 20 and result["seeds"] == [0, 1] and result["encoding"] == "bernoulli"
