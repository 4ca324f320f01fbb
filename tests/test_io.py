"""HDF5 model files and checkpoints: exact round trips, atomic writes, clear errors on bad files."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from refsnn import SNN, ATan, AvgPool2d, Conv2d, Flatten, Linear
from refsnn.config import TrainConfig
from refsnn.io import (FormatError, load_checkpoint, load_model, read_metadata, save_checkpoint, save_model,
                       write_model)
from refsnn.optim import SGD, Adam

import refsnn.io as refsnn_io


def _conv_net(dtype=np.float64, firing=">="):
    rng = np.random.default_rng(1)
    layers = [Conv2d(rng.normal(0, 0.5, (3, 2, 3, 3)), rng.normal(0, 0.1, 3), stride=2, padding=1),
              AvgPool2d(2, 1),
              Conv2d(rng.normal(0, 0.5, (4, 3, 2, 2)), rng.normal(0, 0.1, 4), stride=(1, 2), padding=(0, 1)),
              Flatten(),
              Linear(rng.normal(0, 0.6, (3, 8)), rng.normal(0, 0.1, 3))]
    return SNN(layers, input_shape=(2, 5, 5), threshold=0.3, decay=0.5, firing=firing,
               surrogate=ATan(3.0), reset_grad=False, dtype=dtype)


def _fc_net(dtype=np.float32):
    rng = np.random.default_rng(2)
    return SNN([Linear(rng.normal(size=(5, 6)), rng.normal(size=5)), Linear(rng.normal(size=(3, 5)))], dtype=dtype)


def _assert_same_net(a: SNN, b: SNN):
    assert [layer.kind for layer in a.layers] == [layer.kind for layer in b.layers]
    assert (a.threshold, a.decay, a.firing, a.input_shape, a.reset_grad, a.dtype, a.surrogate) == \
           (b.threshold, b.decay, b.firing, b.input_shape, b.reset_grad, b.dtype, b.surrogate)
    for pa, pb in zip(a.params(), b.params()):
        assert pa.dtype == pb.dtype
        np.testing.assert_array_equal(pa, pb)
    for la, lb in zip(a.layers, b.layers):
        assert la.config() == lb.config()


@pytest.mark.parametrize("make", [lambda: _conv_net(np.float64), lambda: _conv_net(np.float32, ">"),
                                  lambda: _fc_net(np.float32), lambda: _fc_net(np.float64)])
def test_model_round_trip_is_exact(tmp_path, make):
    net = make()
    save_model(tmp_path / "m.h5", net, dataset="mnist", accuracy=0.5, history=[{"epoch": 1}])
    loaded = load_model(tmp_path / "m.h5")
    _assert_same_net(net, loaded)
    x = (np.random.default_rng(0).random((3, 2) + net.input_shape) < 0.5).astype(np.uint8)
    np.testing.assert_array_equal(net.forward(x), loaded.forward(x))
    assert read_metadata(tmp_path / "m.h5") == {"dataset": "mnist", "accuracy": 0.5, "history": [{"epoch": 1}]}
    assert load_model(tmp_path / "m.h5", dtype=np.float64).dtype == np.float64


def test_schema_matches_docs(tmp_path):
    save_model(tmp_path / "m.h5", _conv_net())
    with h5py.File(tmp_path / "m.h5", "r") as h5:
        assert h5.attrs["format"] == "refsnn-model" and h5.attrs["format_version"] == 1
        assert h5.attrs["firing"] == ">=" and list(h5.attrs["input_shape"]) == [2, 5, 5]
        assert json.loads(h5.attrs["surrogate"]) == {"name": "atan", "alpha": 3.0}
        assert sorted(h5["layers"].keys()) == ["0", "1", "2", "3", "4"]
        conv = h5["layers/2"]
        assert conv.attrs["kind"] == "conv2d" and list(conv.attrs["stride"]) == [1, 2]
        assert list(conv.attrs["padding"]) == [0, 1] and conv["weight"].shape == (4, 3, 2, 2)
        assert h5["layers/1"].attrs["kind"] == "avgpool2d" and h5["layers/3"].attrs["kind"] == "flatten"


def test_minimal_external_writer_from_docs(tmp_path):
    """The few-line h5py writer shown in docs/FORMAT.md (as another implementation would write it)."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(8, 16)).astype(np.float32), np.zeros(8, np.float32)
    w2, b2 = rng.normal(size=(10, 8)).astype(np.float32), np.zeros(10, np.float32)
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.attrs.update(format="refsnn-model", format_version=1, threshold=0.25, decay=0.25,
                       firing=">", input_shape=[16], dtype="float32")
        for i, (w, b) in enumerate([(w1, b1), (w2, b2)]):
            g = f.create_group(f"layers/{i}")
            g.attrs["kind"] = "linear"
            g["weight"], g["bias"] = w, b
    net = load_model(tmp_path / "ext.h5")
    assert net.firing == ">" and net.dtype == np.float32 and net.surrogate.name == "rectangular"
    np.testing.assert_array_equal(net.layers[1].weight, w2)


def test_checkpoint_round_trip_is_exact(tmp_path):
    net = _fc_net(np.float32)
    rng = np.random.default_rng(5)
    for optimizer in (SGD(net.params(), lr=0.1, momentum=0.9, weight_decay=0.01), Adam(net.params(), lr=1e-3)):
        for _ in range(2):
            optimizer.step([rng.normal(size=p.shape).astype(np.float32) for p in net.params()])
        generator = np.random.default_rng(123)
        generator.random(7)
        config = TrainConfig(epochs=3, milestones=(2,), method_options={"eps": 0.05})
        history = [{"epoch": 1, "train_loss": 0.1 + 1e-17, "test_acc": float("nan")}]
        save_checkpoint(tmp_path / "c.h5", net, optimizer, config, history, generator, epoch=1, step=4,
                        global_step=9, extra={"running": {"loss_sum": 1 / 3}})
        ckpt = load_checkpoint(tmp_path / "c.h5")
        _assert_same_net(net, ckpt.net)
        assert (ckpt.epoch, ckpt.step, ckpt.global_step) == (1, 4, 9)
        assert TrainConfig.from_dict(ckpt.config) == config
        assert ckpt.history[0]["train_loss"] == history[0]["train_loss"] and np.isnan(ckpt.history[0]["test_acc"])
        assert ckpt.extra == {"running": {"loss_sum": 1 / 3}}
        restored = np.random.default_rng()
        restored.bit_generator.state = ckpt.rng_state
        np.testing.assert_array_equal(restored.random(5), generator.random(5))
        state = optimizer.state_dict()
        assert ckpt.optimizer_state["name"] == state["name"]
        assert ckpt.optimizer_state["step_count"] == state["step_count"] == 2
        for key, arrays in state["buffers"].items():
            for a, b in zip(arrays, ckpt.optimizer_state["buffers"][key]):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)
        fresh = type(optimizer)(ckpt.net.params(), lr=0.5)
        fresh.load_state_dict(ckpt.optimizer_state)
        assert fresh.lr == optimizer.lr
        # a checkpoint is also a model file
        _assert_same_net(net, load_model(tmp_path / "c.h5"))


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.h5"
    save_model(path, _fc_net(), note="old")
    before = path.read_bytes()

    def failing_write_model(h5, net):
        h5.attrs["format"] = "refsnn-model"
        h5.create_group("layers/0")
        raise RuntimeError("disk full")

    monkeypatch.setattr(refsnn_io, "write_model", failing_write_model)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(path, _fc_net(), note="new")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]  # no temporary file left
    with pytest.raises(TypeError, match="cannot store"):
        save_model(tmp_path / "other.h5", _fc_net(), bad=object())
    assert not (tmp_path / "other.h5").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]


def test_atomic_write_creates_directories_and_normal_permissions(tmp_path):
    path = save_model(tmp_path / "a" / "b" / "m.h5", _fc_net())
    assert path.exists() and (path.stat().st_mode & 0o644) == 0o644


def _edit(path: Path, edit):
    with h5py.File(path, "r+") as h5:
        edit(h5)


def _set_bias(h5, value):
    del h5["layers/0/bias"]
    h5["layers/0/bias"] = value


@pytest.mark.parametrize("edit, message", [
    (lambda h5: h5.attrs.__delitem__("format"), "missing attribute 'format'"),
    (lambda h5: h5.attrs.__setitem__("format", "onnx"), "expected 'refsnn-model'"),
    (lambda h5: h5.attrs.__setitem__("format_version", 2), "newer"),
    (lambda h5: h5.attrs.__delitem__("firing"), "missing attribute 'firing'"),
    (lambda h5: h5.attrs.__setitem__("firing", "=>"), "firing must be one of"),
    (lambda h5: h5.__delitem__("layers"), "missing group 'layers'"),
    (lambda h5: h5["layers/1"].attrs.__setitem__("kind", "lstm"), "unknown kind 'lstm'"),
    (lambda h5: h5["layers/0"].__delitem__("weight"), "no 'weight' dataset"),
    (lambda h5: _set_bias(h5, np.zeros(4, np.float32)), "bias must have shape"),
    (lambda h5: _set_bias(h5, np.array([np.nan, 0, 0, 0, 0], np.float32)), "NaN"),
    (lambda h5: h5.__delitem__("layers/0"), "named 0..n-1"),
    (lambda h5: h5.__delitem__("layers/1"), "truncated write"),
    (lambda h5: h5["layers"].attrs.__setitem__("count", 3), "truncated"),
    (lambda h5: h5.attrs.__setitem__("input_shape", [7]), "do not form a valid network"),
    (lambda h5: h5.attrs.__setitem__("surrogate", '{"name": "spline"}'), "bad surrogate"),
    (lambda h5: h5.attrs.__setitem__("dtype", "float16"), "dtype must be"),
])
def test_corrupt_or_incompatible_models_give_clear_errors(tmp_path, edit, message):
    path = tmp_path / "m.h5"
    save_model(path, _fc_net())
    _edit(path, edit)
    with pytest.raises(FormatError, match=message):
        load_model(path)


def test_conv_attribute_errors(tmp_path):
    path = tmp_path / "c.h5"
    save_model(path, _conv_net())
    _edit(path, lambda h5: h5["layers/0"].attrs.__delitem__("stride"))
    with pytest.raises(FormatError, match="missing attribute 'stride'"):
        load_model(path)
    save_model(path, _conv_net())
    _edit(path, lambda h5: h5["layers/0"].attrs.__setitem__("kernel_size", [5, 5]))
    with pytest.raises(FormatError, match="disagrees"):
        load_model(path)


def test_unreadable_files(tmp_path):
    path = tmp_path / "m.h5"
    save_model(path, _fc_net())
    data = path.read_bytes()
    (tmp_path / "truncated.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(FormatError, match="not a readable HDF5 file"):
        load_model(tmp_path / "truncated.h5")
    (tmp_path / "noise.h5").write_bytes(b"\x00not hdf5" * 100)
    with pytest.raises(FormatError, match="not a readable HDF5 file"):
        load_model(tmp_path / "noise.h5")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.h5")
    with pytest.raises(FormatError, match="not a training checkpoint"):
        load_checkpoint(path)


def test_checkpoint_errors(tmp_path):
    net = _fc_net()
    path = tmp_path / "c.h5"
    save_checkpoint(path, net, SGD(net.params(), lr=0.1), TrainConfig(), [], np.random.default_rng(0), 0, 0)
    _edit(path, lambda h5: h5["checkpoint"].attrs.__setitem__("format_version", 9))
    with pytest.raises(FormatError, match="newer"):
        load_checkpoint(path)
    save_checkpoint(path, net, SGD(net.params(), lr=0.1), TrainConfig(), [], np.random.default_rng(0), 0, 0)
    _edit(path, lambda h5: h5["checkpoint"].attrs.__setitem__("config", "{not json"))
    with pytest.raises(FormatError, match="JSON"):
        load_checkpoint(path)
    save_checkpoint(path, net, SGD(net.params(), lr=0.1, momentum=0.9), TrainConfig(), [],
                    np.random.default_rng(0), 0, 0)
    other = SNN([Linear(np.zeros((2, 6)))])
    with pytest.raises(ValueError, match="another network|shape"):
        SGD(other.params(), lr=0.1, momentum=0.9).load_state_dict(load_checkpoint(path).optimizer_state)


def test_write_model_into_a_group(tmp_path):
    """write_model works on any h5py group, e.g. to bundle several models in one file."""
    with h5py.File(tmp_path / "bundle.h5", "w") as h5:
        write_model(h5.create_group("first"), _fc_net())
    with h5py.File(tmp_path / "bundle.h5", "r") as h5:
        net = refsnn_io.read_model(h5["first"])
    _assert_same_net(net, _fc_net())
