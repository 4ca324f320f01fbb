"""Bad data sets: every row is refused by ``load_dataset`` with a DataValidationError (a
ValueError) naming the file and the rule, and no file in the data folder changes."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from refsnn.data import EVENT_DTYPE, IDX_MAGIC_IMAGES, IDX_MAGIC_LABELS, clear_cache, load_dataset
from refsnn.validation import DataValidationError


def _nmnist_bytes(rows) -> bytes:
    """(x, y, polarity, t_us) rows in the 40-bit N-MNIST layout."""
    out = bytearray()
    for x, y, polarity, t in rows:
        out += bytes([x, y, (polarity << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    return bytes(out)


GOOD_EVENTS = [(1, 2, 0, 10), (3, 4, 1, 20), (33, 33, 1, 30)]


def _write_nmnist(root: Path, files: dict) -> None:
    """``files``: ``{"Train/3/00001.bin": bytes}`` under ``root/nmnist``."""
    for relative, payload in files.items():
        path = root / "nmnist" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)


def _nmnist(**files):
    base = {"Train/3/00001.bin": _nmnist_bytes(GOOD_EVENTS), "Train/5/00002.bin": _nmnist_bytes(GOOD_EVENTS)}
    base.update({key.replace("__", "/").replace("_bin", ".bin"): value for key, value in files.items()})
    return lambda root: _write_nmnist(root, base)


def _with_manifest(write, edit_line=None, skip=None):
    def build(root: Path) -> None:
        write(root)
        folder = root / "nmnist"
        lines = []
        for path in sorted(folder.rglob("*.bin")):
            relative = path.relative_to(folder).as_posix()
            if relative != skip:
                lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {relative}")
        if edit_line is not None:
            lines[0] = edit_line(lines[0])
        (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return build


def _h5(name: str, **arrays):
    """A refsnn-dataset-1 file ``<root>/<name>.h5`` with a ``train`` group from ``arrays``."""
    def build(root: Path) -> None:
        with h5py.File(root / f"{name}.h5", "w") as h5:
            h5.attrs.update(format="refsnn-dataset-1", dataset=name, T=2, duration_us=0)
            group = h5.create_group("train")
            for key, value in arrays.items():
                if isinstance(value, h5py.ExternalLink):
                    group[key] = value
                else:
                    group.create_dataset(key, data=value)
    return build


IMAGES = np.zeros((4, 28, 28), np.uint8)
LABELS = np.array([0, 1, 2, 3], np.uint8)
FRAMES = np.zeros((2, 2, 2, 34, 34), np.uint8)
EVENTS = np.array([(1, 1, 0, 5), (2, 2, 1, 9), (3, 3, 0, 4), (4, 4, 1, 8)], EVENT_DTYPE)


def _nmnist_h5(**override):
    arrays = dict(images=FRAMES, labels=np.array([1, 2], np.uint8), ids=np.array([1, 2], np.int64),
                  events=EVENTS, event_offsets=np.array([0, 2, 4], np.int64))
    arrays.update(override)
    return _h5("nmnist", **arrays)


def _h5_with_manifest(write, name):
    def build(root: Path) -> None:
        write(root)
        (root / "SHA256SUMS").write_text(f"{'0' * 64}  {name}.h5\n")
    return build


def _external_labels(root: Path) -> None:
    np.save(root / "secret.npy", LABELS)
    with h5py.File(root / "labels_source.h5", "w") as other:
        other["labels"] = LABELS
    _h5("mnist", images=IMAGES, labels=h5py.ExternalLink(str(root / "labels_source.h5"), "/labels"))(root)


def _idx(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return gzip.compress(header + array.tobytes(), compresslevel=1)


def _full_size_idx_with_wrong_content(root: Path) -> None:
    folder = root / "mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(_idx(IDX_MAGIC_IMAGES, np.zeros((10000, 28, 28), np.uint8)))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(_idx(IDX_MAGIC_LABELS, np.zeros(10000, np.uint8)))


# (id, dataset, split, writer, message)
ROWS = [
    ("nmnist timestamps go backwards", "nmnist", "train",
     _nmnist(Train__3__00001_bin=_nmnist_bytes([(1, 1, 0, 50), (2, 2, 1, 40)])), r"00001\.bin: timestamps must be non-decreasing"),
    ("nmnist empty file", "nmnist", "train", _nmnist(Train__3__00001_bin=b""), r"00001\.bin: the recording holds no events"),
    ("nmnist event outside 34x34", "nmnist", "train",
     _nmnist(Train__3__00001_bin=_nmnist_bytes([(1, 1, 0, 5), (34, 2, 1, 6)])), r"outside the 34x34 N-MNIST sensor"),
    ("nmnist truncated record", "nmnist", "train",
     _nmnist(Train__3__00001_bin=_nmnist_bytes(GOOD_EVENTS)[:-2]), "not a multiple of 5"),
    ("nmnist duplicate sample id", "nmnist", "train",
     _nmnist(Train__7__00001_bin=_nmnist_bytes(GOOD_EVENTS)), "sample id 1 occurs 2 times"),
    ("nmnist non-numeric file name", "nmnist", "train",
     _nmnist(Train__7__copy_bin=_nmnist_bytes(GOOD_EVENTS)), r"copy\.bin: N-MNIST files must be named <id>\.bin"),
    ("nmnist SHA-256 mismatch", "nmnist", "train",
     _with_manifest(_nmnist(), edit_line=lambda line: "f" * 64 + line[64:]), "SHA-256 .* differs from"),
    ("nmnist file missing from SHA256SUMS", "nmnist", "train",
     _with_manifest(_nmnist(), skip="Train/5/00002.bin"), r"00002\.bin: not listed in .*SHA256SUMS"),
    ("nmnist malformed SHA256SUMS", "nmnist", "train",
     _with_manifest(_nmnist(), edit_line=lambda line: "md5:" + line), "line 1 is not '<64 hex digits>"),
    ("h5 label count differs from image count", "mnist", "train",
     _h5("mnist", images=IMAGES, labels=LABELS[:3]), "3 labels for 4 images"),
    ("h5 float labels", "mnist", "train", _h5("mnist", images=IMAGES, labels=LABELS.astype(np.float64)),
     "labels must be integers 0..9, got dtype float64"),
    ("h5 labels 2-D", "mnist", "train", _h5("mnist", images=IMAGES, labels=LABELS[:, None]),
     r"labels must be 1-D \[N\]"),
    ("h5 NaN float images", "mnist", "train",
     _h5("mnist", images=np.full((4, 28, 28), np.nan), labels=LABELS), "images must be uint8 pixels 0..255, got dtype float64"),
    ("h5 pixels beyond uint8", "mnist", "train",
     _h5("mnist", images=np.full((4, 28, 28), 300, np.int16), labels=LABELS), "images must be uint8 .* int16"),
    ("h5 external link", "mnist", "train", _external_labels, "external link"),
    ("h5 SHA-256 mismatch", "mnist", "train", _h5_with_manifest(_h5("mnist", images=IMAGES, labels=LABELS), "mnist"),
     r"mnist\.h5: SHA-256 .* differs"),
    ("h5 non-binary frames", "nmnist", "train", _nmnist_h5(images=np.full((2, 2, 2, 34, 34), 2, np.uint8)),
     r"frames must be binary \(0/1 spikes\)"),
    ("h5 frames of the wrong shape", "nmnist", "train", _nmnist_h5(images=np.zeros((2, 2, 2, 28, 28), np.uint8)),
     r"frames must be uint8 \[N, T=2, 2, 34, 34\]"),
    ("h5 duplicate ids", "nmnist", "train", _nmnist_h5(ids=np.array([7, 7], np.int64)), "sample id 7 occurs 2 times"),
    ("h5 stored events go backwards", "nmnist", "train:T=3",
     _nmnist_h5(events=np.array([(1, 1, 0, 5), (2, 2, 1, 9), (3, 3, 0, 8), (4, 4, 1, 4)], EVENT_DTYPE)),
     "timestamps of recording 1 go backwards"),
    ("h5 empty stored recording", "nmnist", "train", _nmnist_h5(event_offsets=np.array([0, 0, 4], np.int64)),
     "every recording non-empty"),
    ("idx full-size file with other content", "mnist", "test", _full_size_idx_with_wrong_content,
     "differs from the published"),
]


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name, split, write, message", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_bad_data_sets_are_refused(tmp_path, name, split, write, message):
    write(tmp_path)
    before = _snapshot(tmp_path)
    split, _, option = split.partition(":")
    T = int(option.split("=")[1]) if option else 2
    clear_cache()
    with pytest.raises(DataValidationError, match=message):
        load_dataset(name, split, data_dir=tmp_path, T=T)
    assert _snapshot(tmp_path) == before


def test_good_files_and_a_matching_manifest_load(tmp_path):
    _with_manifest(_nmnist())(tmp_path)
    clear_cache()
    x, y = load_dataset("nmnist", "train", data_dir=tmp_path, T=2)
    assert x.shape == (2, 2, 2, 34, 34) and y.tolist() == [3, 5]
    # stored events re-binned: a recording may start before the previous one ended (9 us -> 4 us)
    _nmnist_h5()(tmp_path)
    x, y = load_dataset("nmnist", "train", data_dir=tmp_path, T=3)
    assert x.shape == (2, 3, 2, 34, 34) and y.tolist() == [1, 2]
