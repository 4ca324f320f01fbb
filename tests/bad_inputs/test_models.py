"""Bad models: every row is refused with a ValueError subclass naming the field, at construction
(``SNN``/layers) or at load (``load_model``: FormatError), and no existing file changes."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from refsnn import SNN, AvgPool2d, Conv2d, Flatten, Linear
from refsnn.io import FormatError, FormatNotice, load_checkpoint, load_model, save_model
from refsnn.validation import ModelValidationError

W = np.array([[0.5, -0.25, 0.125], [0.25, 0.5, -0.5]])
B = np.array([0.0, 0.125])


def _net(**kwargs) -> SNN:
    return SNN([Linear(W, B)], **kwargs)


# --- construction ------------------------------------------------------------------------------

CONSTRUCTION = [
    ("negative threshold", lambda: _net(threshold=-0.25), "threshold must be a finite number > 0"),
    ("zero threshold", lambda: _net(threshold=0.0), "threshold must be a finite number > 0"),
    ("threshold as text", lambda: _net(threshold="0.25"), "threshold must be a real number"),
    ("threshold as bool", lambda: _net(threshold=True), "threshold must be a real number"),
    ("threshold 0 in float32", lambda: _net(threshold=1e-50, dtype=np.float32), "becomes 0.0 in float32"),
    ("threshold inf in float32", lambda: _net(threshold=1e39, dtype=np.float32), "in float32"),
    ("decay above 1", lambda: _net(decay=1.5), r"decay \(alpha\) must be a number in \[0, 1\]"),
    ("negative decay", lambda: _net(decay=-0.25), r"decay \(alpha\) must be a number in \[0, 1\]"),
    ("NaN decay", lambda: _net(decay=float("nan")), r"decay \(alpha\)"),
    ("reset_grad as text", lambda: _net(reset_grad="false"), "reset_grad must be True or False"),
    ("surrogate NaN width", lambda: _net(surrogate=__import__("refsnn.neurons").neurons.Rectangular(float("nan"))),
     "surrogate width"),
    ("object weight", lambda: Linear(W.astype(object)), "must hold real numbers"),
    ("empty Conv2d", lambda: Conv2d(np.ones((0, 1, 2, 2))), "Conv2d weight must have every axis >= 1"),
    ("negative surrogate slope", lambda: _net(surrogate=__import__("refsnn.neurons").neurons.Sigmoid(-5.0)),
     "surrogate slope must be a finite number > 0"),
    ("complex weight", lambda: Linear(W.astype(complex)), "must hold real numbers"),
    ("bool weight", lambda: Linear(W > 0), "must hold real numbers"),
    ("bias overflows float32", lambda: Linear(W.astype(np.float32), np.array([1e39, 0.0])), "Linear bias as float32"),
    ("fractional stride", lambda: Conv2d(np.ones((1, 1, 2, 2)), stride=1.5), "Conv2d stride must be an int"),
    ("zero pooling kernel", lambda: AvgPool2d(0), "AvgPool2d kernel_size must be >= 1"),
    ("empty Linear", lambda: Linear(np.zeros((0, 3))), r"Linear weight must be \[out >= 1, in >= 1\]"),
    ("float input_shape", lambda: SNN([Flatten(), Linear(W)], input_shape=(3.0,)), "input_shape must be positive"),
]


@pytest.mark.parametrize("build, message", [row[1:] for row in CONSTRUCTION], ids=[row[0] for row in CONSTRUCTION])
def test_bad_networks_are_refused_at_construction(build, message):
    with pytest.raises(ModelValidationError, match=message):
        build()


@pytest.mark.parametrize("threshold, decay", [(1e-30, 0.0), (2.0 ** -20, 1.0), (0.25, 0.25)])
def test_edge_parameters_are_accepted(threshold, decay):
    net = _net(threshold=threshold, decay=decay)
    assert net.threshold == threshold and net.decay == decay


# --- files -------------------------------------------------------------------------------------

def _set(name, value):
    return lambda h5, tmp: h5.attrs.__setitem__(name, value)


def _external_link(h5, tmp):
    other = tmp / "other.h5"
    save_model(other, _net())
    del h5["layers/0/weight"]
    h5["layers/0/weight"] = h5py.ExternalLink(str(other), "/layers/0/weight")


def _soft_link(h5, tmp):
    h5["layers/0/alias"] = h5py.SoftLink("/layers/0/weight")


def _virtual_dataset(h5, tmp):
    other = tmp / "other.h5"
    save_model(other, _net())
    del h5["layers/0/weight"]
    layout = h5py.VirtualLayout(shape=W.shape, dtype="f8")
    layout[:] = h5py.VirtualSource(str(other), "layers/0/weight", shape=W.shape)
    h5["layers/0"].create_virtual_dataset("weight", layout)


def _external_storage(h5, tmp):
    raw = tmp / "raw.bin"
    raw.write_bytes(W.tobytes())
    del h5["layers/0/weight"]
    h5["layers/0"].create_dataset("weight", shape=W.shape, dtype="f8", external=[(str(raw), 0, W.nbytes)])


def _replace(name, value):
    def edit(h5, tmp):
        del h5[name]
        h5[name] = value
    return edit


FILES = [
    ("negative threshold", _set("threshold", -0.25), "threshold must be a finite number > 0"),
    ("zero threshold", _set("threshold", 0.0), "threshold must be a finite number > 0"),
    ("threshold as text", _set("threshold", "0.25"), "attribute 'threshold' must be a number"),
    ("decay above 1", _set("decay", 2.0), r"decay \(alpha\) must be a number in \[0, 1\]"),
    ("reset_grad as text", _set("reset_grad", "false"), "'reset_grad' must be a boolean"),
    ("unknown reset setting", _set("reset_mechanism", "subtract"), r"unknown attribute\(s\) \['reset_mechanism'\]"),
    ("unknown conv setting", lambda h5, tmp: h5["layers/0"].attrs.__setitem__("dilation", 2),
     r"unknown attribute\(s\) \['dilation'\]"),
    ("extra dataset in a layer", lambda h5, tmp: h5["layers/0"].__setitem__("scale", np.array([2.0])),
     r"unknown member\(s\) \['scale'\]"),
    ("unknown root group", lambda h5, tmp: h5.create_group("preprocessing"), r"unknown member\(s\) \['preprocessing'\]"),
    ("unknown /layers attribute", lambda h5, tmp: h5["layers"].attrs.__setitem__("order", "reversed"),
     r"/layers has unknown attribute\(s\) \['order'\]"),
    ("format_version 1.9 as float", _set("format_version", 1.9), "integer or a 'MAJOR.MINOR' string"),
    ("format_version as text '1'", _set("format_version", "1"), "integer or a 'MAJOR.MINOR' string"),
    ("newer major", _set("format_version", "2.0"), "2.0 is newer than this refsnn supports"),
    ("external link", _external_link, "external link"),
    ("soft link", _soft_link, "soft link"),
    ("virtual dataset", _virtual_dataset, "virtual dataset"),
    ("external raw storage", _external_storage, "external files"),
    ("2-D input_shape", _set("input_shape", np.array([[3]])), "input_shape must be positive integers"),
]


def _snapshot(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("edit, message", [row[1:] for row in FILES], ids=[row[0] for row in FILES])
def test_bad_model_files_are_refused_at_load(tmp_path, edit, message):
    path = tmp_path / "model.h5"
    save_model(path, _net())
    with h5py.File(path, "r+") as h5:
        edit(h5, tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(FormatError, match=message):
        load_model(path)
    assert _snapshot(tmp_path) == before


def _flip_a_weight_byte(path: Path) -> None:
    with h5py.File(path, "r") as h5:
        offset = h5["layers/0/weight"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0x10
    path.write_bytes(bytes(data))


def test_written_arrays_carry_checksums_and_corruption_is_a_format_error(tmp_path):
    path = tmp_path / "model.h5"
    save_model(path, _net())
    with h5py.File(path, "r") as h5:
        assert all(h5[f"layers/0/{name}"].fletcher32 for name in ("weight", "bias"))
    _flip_a_weight_byte(path)
    with pytest.raises(FormatError, match="cannot be read .checksum mismatch"):
        load_model(path)


def test_checkpoints_share_the_link_rules(tmp_path):
    from refsnn.config import TrainConfig
    from refsnn.io import save_checkpoint
    from refsnn.optim import SGD

    net = _net()
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, net, SGD(net.params(), lr=0.1), TrainConfig(), [], np.random.default_rng(0), 0, 0)
    with h5py.File(path, "r+") as h5:
        _external_link(h5, tmp_path)
    with pytest.raises(FormatError, match="external link"):
        load_checkpoint(path)


def test_same_major_newer_minor_is_read_with_a_notice(tmp_path):
    path = tmp_path / "model.h5"
    save_model(path, _net())
    with h5py.File(path, "r+") as h5:
        h5.attrs["format_version"] = "1.3"
    with pytest.warns(FormatNotice, match="1.3 is newer than 1.0"):
        net = load_model(path)
    assert net.threshold == 0.25
    with h5py.File(path, "r+") as h5:
        h5.attrs["format_version"] = "1.0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(path)
