"""Tests for refsnn.data and data_scripts/ (synthetic files; real data only when present)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsnn import data
from refsnn.data import (
    EVENT_DTYPE,
    bin_events,
    bin_recordings,
    load_dataset,
    read_idx,
    read_nmnist_bin,
    to_time_major,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Serialize a uint8 array as IDX (magic defaults to 0x801 / 0x803 by ndim)."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True, magic: int | None = None) -> Path:
    payload = idx_bytes(array, magic)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_events(rows: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Events from (x, y, polarity, t_us) tuples."""
    return np.array(rows, dtype=EVENT_DTYPE)


def nmnist_bytes(events: np.ndarray) -> bytes:
    """Encode events in the 40-bit N-MNIST layout (inverse of read_nmnist_bin)."""
    t = events["t_us"].astype(np.uint32)
    rows = np.stack(
        [
            events["x"],
            events["y"],
            (events["polarity"].astype(np.uint32) << 7) | ((t >> 16) & 0x7F),
            (t >> 8) & 0xFF,
            t & 0xFF,
        ],
        axis=1,
    ).astype(np.uint8)
    return rows.tobytes()


def random_events(rng: np.random.Generator, n: int, t_max: int = 300_000) -> np.ndarray:
    events = np.empty(n, dtype=EVENT_DTYPE)
    events["x"] = rng.integers(0, 34, n)
    events["y"] = rng.integers(0, 34, n)
    events["polarity"] = rng.integers(0, 2, n)
    events["t_us"] = np.sort(rng.integers(0, t_max, n))
    return events


def write_digital_dataset(root: Path, folder: str, n_train: int, n_test: int, gz: bool = True,
                          seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Synthetic MNIST-like IDX files under root/folder; returns the arrays written."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(root / folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        written[split] = (images, labels)
    return written


def write_nmnist_dataset(root: Path, n_train: int = 6, n_test: int = 3, seed: int = 0) -> dict:
    """Synthetic N-MNIST folders root/nmnist/{Train,Test}/<label>/<id>.bin."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, split_dir, n in (("train", "Train", n_train), ("test", "Test", n_test)):
        records = []
        for sample_id in range(1, n + 1):
            label = int(rng.integers(0, 10))
            events = random_events(rng, int(rng.integers(5, 60)))
            path = root / "nmnist" / split_dir / str(label) / f"{sample_id:05d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(nmnist_bytes(events))
            records.append((sample_id, label, events))
        written[split] = records
    return written


def load_script(name: str):
    """Import data_scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_data_dir() -> Path | None:
    candidates = [os.environ.get(data.ENV_DATA_DIR), REPO_ROOT / ".." / "shared" / "data",
                  Path.cwd() / ".." / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate).resolve()
    return None


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


@pytest.fixture
def isolated_lookup(monkeypatch, tmp_path):
    """No env var, cwd without ../shared/data, repo root and home pointing at empty dirs."""
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    work = tmp_path / "cwd" / "inner"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setattr(data, "HOME_DATA_DIR", tmp_path / "home")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    monkeypatch.setattr(data, "__file__", str(tmp_path / "fake_repo" / "refsnn" / "data.py"))
    return tmp_path


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip_gz_and_raw(tmp_path, gz):
    images = np.arange(3 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(3, 28, 28)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    got_images = read_idx(write_idx(tmp_path / "images", images, gz=gz))
    got_labels = read_idx(write_idx(tmp_path / "labels", labels, gz=gz))
    assert got_images.dtype == np.uint8 and got_images.shape == (3, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    got_images[0, 0, 0] = 255  # result is a writable array of its own
    assert got_images.flags.writeable


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path):
    labels = np.array([1, 2, 3], dtype=np.uint8)
    raw_named_gz = tmp_path / "labels.gz"
    raw_named_gz.write_bytes(idx_bytes(labels))
    gz_named_raw = tmp_path / "labels-idx1-ubyte"
    gz_named_raw.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(raw_named_gz), labels)
    np.testing.assert_array_equal(read_idx(gz_named_raw), labels)


def test_read_idx_wrong_magic(tmp_path):
    path = write_idx(tmp_path / "float.idx", np.zeros((2, 2, 2)), magic=0x00000D03)
    with pytest.raises(ValueError, match=r"float\.idx.*0x00000d03.*0x00000803"):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_truncated_names_sizes(tmp_path, gz):
    payload = idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8))[:-10]
    path = tmp_path / "short-images"
    path.write_bytes(gzip.compress(payload) if gz else payload)
    expected = 16 + 4 * 28 * 28
    with pytest.raises(ValueError, match=rf"short-images.*truncated.*expected {expected}.*actual {expected - 10}"):
        read_idx(path)


def test_read_idx_oversized_and_wrong_dims(tmp_path):
    labels = np.zeros(5, dtype=np.uint8)
    path = tmp_path / "long-labels"
    path.write_bytes(idx_bytes(labels) + b"\x00")
    with pytest.raises(ValueError, match=r"long-labels.*oversized.*expected 13.*actual 14"):
        read_idx(path)
    # header claims 2 images of 28x28 but holds 2 images of 27x27 bytes
    header = struct.pack(">IIII", 0x803, 2, 28, 28)
    wrong = tmp_path / "wrong-dims"
    wrong.write_bytes(header + bytes(2 * 27 * 27))
    with pytest.raises(ValueError, match=r"wrong-dims.*\(2, 28, 28\)"):
        read_idx(wrong)


def test_read_idx_corrupt_gzip_and_tiny_file(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-12])
    with pytest.raises(ValueError, match=r"cut\.gz.*gzip"):
        read_idx(path)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="tiny.*too short"):
        read_idx(tiny)


# --------------------------------------------------------------------------- N-MNIST reader


def test_read_nmnist_bin_decodes_fields(tmp_path):
    events = make_events([(0, 33, 1, 0), (5, 7, 0, 0x012345), (5, 7, 1, 0x012345), (33, 0, 0, 0x7FFFFF)])
    path = tmp_path / "00001.bin"
    path.write_bytes(nmnist_bytes(events))
    # spot-check the layout by hand: byte2 bit 7 = polarity, then 23-bit big-endian time
    assert path.read_bytes()[10:15] == bytes([5, 7, 0x80 | 0x01, 0x23, 0x45])
    got = read_nmnist_bin(path)
    assert got.dtype == EVENT_DTYPE and got.shape == (4,)
    for field in ("x", "y", "polarity", "t_us"):
        np.testing.assert_array_equal(got[field], events[field])


def test_read_nmnist_bin_refuses_unsorted_events(tmp_path):
    events = make_events([(1, 1, 0, 500), (2, 2, 1, 100), (3, 3, 0, 300)])
    path = tmp_path / "unsorted.bin"
    path.write_bytes(nmnist_bytes(events))
    with pytest.raises(ValueError, match=r"unsorted\.bin.*non-decreasing"):
        read_nmnist_bin(path)


def test_read_nmnist_bin_bad_length(tmp_path):
    path = tmp_path / "00007.bin"
    path.write_bytes(nmnist_bytes(make_events([(1, 2, 0, 3)])) + b"\x01\x02")
    with pytest.raises(ValueError, match=r"00007\.bin.*7 bytes.*multiple of 5"):
        read_nmnist_bin(path)


@pytest.mark.parametrize("x, y", [(34, 0), (0, 34), (255, 255)])
def test_read_nmnist_bin_out_of_range_coordinates(tmp_path, x, y):
    path = tmp_path / "bad.bin"
    path.write_bytes(nmnist_bytes(make_events([(1, 1, 0, 0), (x, y, 1, 10)])))
    with pytest.raises(ValueError, match=rf"bad\.bin.*1 event.*index 1 \(x={x}, y={y}\)"):
        read_nmnist_bin(path)


def test_read_nmnist_bin_empty_file(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.bin.*no events"):
        read_nmnist_bin(path)


# --------------------------------------------------------------------------- binning


def test_bin_events_fixed_duration_edges_and_polarities():
    events = make_events([
        (1, 2, 0, 0),     # bin 0, OFF
        (1, 2, 0, 99),    # bin 0 again, same pixel: still 1
        (3, 4, 1, 100),   # exactly on the edge 100 -> bin 1, ON
        (5, 6, 1, 250),   # bin 2
        (7, 8, 0, 399),   # last instant of the window -> bin 3
        (9, 9, 1, 400),   # t == duration: outside [0, 400)
    ])
    frames = bin_events(events, T=4, duration_us=400)
    assert frames.shape == (4, 2, 34, 34) and frames.dtype == np.uint8
    expected = np.zeros_like(frames)
    expected[0, 0, 2, 1] = 1  # frames[t, channel, y, x]
    expected[1, 1, 4, 3] = 1
    expected[2, 1, 6, 5] = 1
    expected[3, 0, 8, 7] = 1
    np.testing.assert_array_equal(frames, expected)


def test_bin_events_default_duration_puts_last_event_in_last_bin():
    events = make_events([(0, 0, 1, 0), (1, 1, 0, 500), (2, 2, 1, 999)])
    frames = bin_events(events, T=2)  # duration = 999 + 1 = 1000; edge at 500
    assert frames.sum() == 3
    assert frames[0, 1, 0, 0] == 1
    assert frames[1, 0, 1, 1] == 1  # t = 500 exactly on the edge -> second bin
    assert frames[1, 1, 2, 2] == 1


def test_bin_events_order_independent_and_empty():
    rng = np.random.default_rng(1)
    events = random_events(rng, 200)
    shuffled = events[rng.permutation(len(events))]
    np.testing.assert_array_equal(bin_events(events, 7), bin_events(shuffled, 7))
    assert bin_events(np.empty(0, EVENT_DTYPE), T=3).sum() == 0


def test_bin_events_validates_input():
    with pytest.raises(ValueError, match="fields x, y, polarity, t_us"):
        bin_events(np.zeros(3), T=2)
    with pytest.raises(ValueError, match="T must be a positive integer"):
        bin_events(make_events([(0, 0, 0, 1)]), T=0)
    with pytest.raises(ValueError, match="duration_us must be a positive integer"):
        bin_events(make_events([(0, 0, 0, 1)]), T=2, duration_us=0)
    with pytest.raises(ValueError, match="outside the 34x34"):
        bin_events(make_events([(40, 0, 0, 1)]), T=2)


@given(
    t_list=st.lists(st.integers(0, 2**23 - 1), min_size=1, max_size=40),
    T=st.integers(1, 12),
    duration=st.one_of(st.none(), st.integers(1, 2**23)),
)
def test_bin_events_matches_per_event_loop(t_list, T, duration):
    n = len(t_list)
    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["t_us"] = t_list
    events["x"] = np.arange(n) % 34
    events["y"] = (np.arange(n) * 7) % 34
    events["polarity"] = np.arange(n) % 2
    window = max(t_list) + 1 if duration is None else duration
    expected = np.zeros((T, 2, 34, 34), dtype=np.uint8)
    for e in events:  # slow reference, fine for <= 40 events
        if e["t_us"] < window:
            expected[int(e["t_us"]) * T // window, e["polarity"], e["y"], e["x"]] = 1
    np.testing.assert_array_equal(bin_events(events, T, duration), expected)


def test_bin_recordings_equals_per_recording_bin_events():
    rng = np.random.default_rng(2)
    recordings = [random_events(rng, n) for n in (30, 0, 1, 80)]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in recordings])])
    events = np.concatenate(recordings)
    for duration in (None, 150_000):
        batched = bin_recordings(events, offsets, 5, duration)
        single = np.stack([bin_events(r, 5, duration) for r in recordings])
        np.testing.assert_array_equal(batched, single)
    with pytest.raises(ValueError, match="offsets"):
        bin_recordings(events, offsets[:-1], 5)


def test_to_time_major():
    x = np.arange(3 * 4 * 2).reshape(3, 4, 2)
    y = to_time_major(x)
    assert y.shape == (4, 3, 2) and y.flags.c_contiguous
    np.testing.assert_array_equal(y[2, 1], x[1, 2])
    with pytest.raises(ValueError, match="at least 2 axes"):
        to_time_major(np.zeros(3))


# --------------------------------------------------------------------------- load_dataset


@pytest.mark.parametrize("name, folder, gz", [("mnist", "mnist", True), ("fmnist", "fashion-mnist", False)])
def test_load_digital_dataset(isolated_lookup, name, folder, gz):
    root = isolated_lookup / "data"
    written = write_digital_dataset(root, folder, n_train=30, n_test=12, gz=gz)
    for split, (images, labels) in written.items():
        x, y = load_dataset(name, split, data_dir=root)
        assert x.shape == (len(images), 1, 28, 28) and x.dtype == np.float64
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x[:, 0], images / 255.0)
        np.testing.assert_array_equal(y, labels)
    x, y = load_dataset(name, "train", data_dir=root, limit=7)
    assert x.shape[0] == y.shape[0] == 7


def test_load_dataset_returns_independent_copies(isolated_lookup):
    root = isolated_lookup / "data"
    write_digital_dataset(root, "mnist", 10, 10)
    x, y = load_dataset("mnist", "test", data_dir=root)
    x_before, y_before = x.copy(), y.copy()
    x[:] = -1.0
    y[:] = 99
    x2, y2 = load_dataset("mnist", "test", data_dir=root)  # served from the in-memory cache
    np.testing.assert_array_equal(x2, x_before)
    np.testing.assert_array_equal(y2, y_before)
    xs, ys = load_dataset("mnist-subset", "test", limit=5)
    xs[:] = 7.0
    np.testing.assert_array_equal(load_dataset("mnist-subset", "test", limit=5)[0] <= 1.0, True)


def test_load_dataset_env_var_and_home(isolated_lookup, monkeypatch):
    env_root, home_root = isolated_lookup / "env", isolated_lookup / "home"
    env_data = write_digital_dataset(env_root, "mnist", 10, 10, seed=1)
    write_digital_dataset(home_root, "mnist", 20, 20, seed=2)
    assert load_dataset("mnist", "train")[0].shape[0] == 20  # only ~/.refsnn/data exists
    monkeypatch.setenv(data.ENV_DATA_DIR, str(env_root))
    x, _ = load_dataset("mnist", "train")  # env var wins over the home folder
    np.testing.assert_array_equal(x[:, 0], env_data["train"][0] / 255.0)


def test_load_dataset_cwd_shared_data(isolated_lookup, monkeypatch):
    shared = isolated_lookup / "cwd" / "shared" / "data"  # = ../shared/data from cwd
    write_digital_dataset(shared, "mnist", 10, 10)
    assert load_dataset("mnist", "test")[0].shape == (10, 1, 28, 28)


def test_load_dataset_missing_says_what_to_put_where(isolated_lookup):
    empty = isolated_lookup / "empty"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", "train", data_dir=empty)
    message = str(info.value)
    assert str(empty / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert str(empty / "mnist" / "train-labels-idx1-ubyte.gz") in message
    assert "convert_to_hdf5.py" in message and "mnist-subset" in message
    with pytest.raises(FileNotFoundError, match=r"nmnist/Test/<label>/<id>\.bin"):
        load_dataset("nmnist", "test")
    with pytest.raises(FileNotFoundError, match="fashion-mnist"):
        load_dataset("fmnist", "test")


def test_load_dataset_bad_arguments(isolated_lookup):
    with pytest.raises(ValueError, match="mnist, fmnist, nmnist, mnist-subset"):
        load_dataset("cifar10", "train")
    with pytest.raises(ValueError, match="valid splits: train, test"):
        load_dataset("mnist", "validation")
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_dataset("mnist-subset", "train", limit=0)
    with pytest.raises(ValueError, match="T must be a positive integer"):
        load_dataset("nmnist", "train", T=0)


def test_load_dataset_rejects_inconsistent_files(isolated_lookup):
    root = isolated_lookup / "data"
    folder = root / "mnist"
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((4, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 10]))
    with pytest.raises(ValueError, match=r"t10k-labels.*labels must be 0\.\.9.*\[10\]"):
        load_dataset("mnist", "test", data_dir=root)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="4 images.*3 labels"):
        load_dataset("mnist", "test", data_dir=root)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((3, 27, 27)))
    with pytest.raises(ValueError, match=r"\[N, 28, 28\].*\(3, 27, 27\)"):
        load_dataset("mnist", "test", data_dir=root)


def test_load_nmnist_synthetic(isolated_lookup):
    root = isolated_lookup / "data"
    written = write_nmnist_dataset(root, n_train=6, n_test=3)
    x, y = load_dataset("nmnist", "train", data_dir=root, T=5)
    assert x.shape == (6, 5, 2, 34, 34) and x.dtype == np.uint8 and y.dtype == np.int64
    for i, (_sample_id, label, events) in enumerate(written["train"]):  # sorted by id
        assert y[i] == label
        np.testing.assert_array_equal(x[i], bin_events(events, 5))
    x_fixed, _ = load_dataset("nmnist", "train", data_dir=root, T=5, duration_us=100_000)
    np.testing.assert_array_equal(x_fixed[0], bin_events(written["train"][0][2], 5, 100_000))
    x_lim, y_lim = load_dataset("nmnist", "test", data_dir=root, T=3, limit=2)
    assert x_lim.shape == (2, 3, 2, 34, 34) and y_lim.tolist() == [r[1] for r in written["test"][:2]]
    assert to_time_major(x_lim).shape == (3, 2, 2, 34, 34)


def test_load_nmnist_rejects_bad_label_folder(isolated_lookup):
    root = isolated_lookup / "data"
    bad = root / "nmnist" / "Train" / "12" / "00001.bin"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(nmnist_bytes(make_events([(0, 0, 0, 0)])))
    with pytest.raises(ValueError, match="label 12 out of range"):
        load_dataset("nmnist", "train", data_dir=root)


# --------------------------------------------------------------------------- embedded subset


def test_mnist_subset_shapes_and_stratification():
    for split, per_class in (("train", 200), ("test", 50)):
        x, y = load_dataset("mnist-subset", split)
        assert x.shape == (10 * per_class, 1, 28, 28) and x.dtype == np.float64
        assert y.dtype == np.int64
        assert 0.0 <= x.min() and x.max() == 1.0
        np.testing.assert_array_equal(np.bincount(y, minlength=10), [per_class] * 10)


def test_mnist_subset_package_file_and_provenance():
    from importlib import resources

    folder = resources.files("refsnn._data")
    npz_bytes = folder.joinpath("mnist_subset.npz").read_bytes()
    assert len(npz_bytes) < 1_000_000
    readme = folder.joinpath("README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "LeCun" in readme
    with np.load(io.BytesIO(npz_bytes)) as npz:
        for split, n in (("train", 2000), ("test", 500)):
            indices = npz[f"{split}_indices"]
            assert indices.shape == (n,) and np.all(np.diff(indices) > 0)
            assert npz[f"{split}_images"].dtype == np.uint8


# --------------------------------------------------------------------------- convert_to_hdf5.py


def test_convert_to_hdf5_round_trip(isolated_lookup, capsys):
    pytest.importorskip("h5py")
    convert = load_script("convert_to_hdf5")
    raw_root, out_root = isolated_lookup / "raw", isolated_lookup / "out"
    write_digital_dataset(raw_root, "mnist", 20, 10)
    write_nmnist_dataset(raw_root, 5, 2)
    argv = ["mnist", "nmnist", "--data-dir", str(raw_root), "--out", str(out_root),
            "--no-download", "--skip-verify", "--T", "4"]
    assert convert.main(argv) == 0
    assert data.locate_dataset("mnist", "train", out_root)["kind"] == "hdf5"
    for name, T in (("mnist", 10), ("nmnist", 4), ("nmnist", 6)):
        for split in ("train", "test"):
            x_h5, y_h5 = load_dataset(name, split, data_dir=out_root, T=T)
            x_raw, y_raw = load_dataset(name, split, data_dir=raw_root, T=T)
            np.testing.assert_array_equal(x_h5, x_raw)
            np.testing.assert_array_equal(y_h5, y_raw)
    x_h5, _ = load_dataset("nmnist", "train", data_dir=out_root, T=4, limit=2, duration_us=50_000)
    x_raw, _ = load_dataset("nmnist", "train", data_dir=raw_root, T=4, limit=2, duration_us=50_000)
    np.testing.assert_array_equal(x_h5, x_raw)
    import h5py

    with h5py.File(out_root / "nmnist.h5") as h5:
        assert h5.attrs["T"] == 4 and h5.attrs["duration_us"] == 0
        assert h5["train/images"].shape == (5, 4, 2, 34, 34)
        assert h5["train/event_offsets"].shape == (6,)


def test_convert_to_hdf5_checksums_every_array_and_writes_a_manifest(isolated_lookup, capsys):
    import h5py

    from refsnn.validation import read_manifest

    convert = load_script("convert_to_hdf5")
    raw_root, out_root = isolated_lookup / "raw", isolated_lookup / "out"
    write_digital_dataset(raw_root, "mnist", 20, 10)
    write_nmnist_dataset(raw_root, 5, 2)
    out_root.mkdir()
    other = "0" * 64
    (out_root / "SHA256SUMS").write_text(f"{other}  fmnist.h5\n")  # a line of someone else's: kept
    argv = ["--data-dir", str(raw_root), "--out", str(out_root), "--no-download", "--skip-verify", "--T", "4"]
    assert convert.main(["mnist", "nmnist", "--compression", "gzip"] + argv) == 0
    manifest = read_manifest(out_root / "SHA256SUMS")
    assert manifest == {"fmnist.h5": other, **{name: hashlib.sha256((out_root / name).read_bytes()).hexdigest()
                                                for name in ("mnist.h5", "nmnist.h5")}}
    for name in ("mnist.h5", "nmnist.h5"):
        with h5py.File(out_root / name) as h5:
            arrays = []
            h5.visititems(lambda key, item: arrays.append(item) if isinstance(item, h5py.Dataset) else None)
            assert arrays and all(item.fletcher32 for item in arrays if item.size), name
    assert not [p.name for p in out_root.iterdir() if p.name.endswith((".tmp", ".part"))]
    load_dataset("nmnist", "test", data_dir=out_root, T=4)  # the manifest lists what load_dataset reads
    with open(out_root / "mnist.h5", "r+b") as handle:  # a changed byte is caught
        handle.seek(-100, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-100, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ValueError, match=r"SHA-256 .* differs .*SHA256SUMS"):
        load_dataset("mnist", "test", data_dir=out_root)
    (out_root / "SHA256SUMS").write_text("not a manifest\n")  # refused before converting, never overwritten
    assert convert.main(["mnist"] + argv) == 3
    assert "line 1 is not" in capsys.readouterr().err
    assert (out_root / "SHA256SUMS").read_text() == "not a manifest\n"


def test_convert_to_hdf5_manifest_lists_earlier_files_with_a_notice(isolated_lookup, capsys):
    from refsnn.validation import read_manifest

    convert = load_script("convert_to_hdf5")
    raw_root, out_root = isolated_lookup / "raw", isolated_lookup / "out"
    write_digital_dataset(raw_root, "mnist", 20, 10)
    out_root.mkdir()
    (out_root / "fmnist.h5").write_bytes(b"converted before manifests existed")
    assert convert.main(["mnist", "--data-dir", str(raw_root), "--out", str(out_root), "--no-download",
                         "--skip-verify"]) == 0
    assert read_manifest(out_root / "SHA256SUMS")["fmnist.h5"] == \
        hashlib.sha256(b"converted before manifests existed").hexdigest()
    assert re.search(r"note: SHA256SUMS now also lists .*fmnist\.h5 as it is now", capsys.readouterr().out)


def test_convert_to_hdf5_offline_lists_missing_files(isolated_lookup, capsys):
    convert = load_script("convert_to_hdf5")
    empty = isolated_lookup / "empty"
    assert convert.main(["mnist", "nmnist", "--data-dir", str(empty), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert str(empty / "mnist" / "t10k-labels-idx1-ubyte.gz") in err
    assert str(empty / "nmnist" / "Train") in err


def test_convert_to_hdf5_download_checks_md5(isolated_lookup, monkeypatch):
    convert = load_script("convert_to_hdf5")
    good = idx_bytes(np.array([1, 2, 3], dtype=np.uint8))
    stem = "t10k-labels-idx1-ubyte"
    monkeypatch.setitem(data.IDX_CONTENT_MD5, ("mnist", stem), hashlib.md5(good).hexdigest())
    served = {}

    def fake_urlopen(url, timeout):
        assert timeout == 1.5
        return io.BytesIO(served["payload"])

    monkeypatch.setattr(convert.urllib.request, "urlopen", fake_urlopen)
    folder = isolated_lookup / "dl" / "mnist"
    served["payload"] = gzip.compress(idx_bytes(np.array([9, 9, 9], dtype=np.uint8)))
    with pytest.raises(convert.MissingFiles, match="content md5"):
        convert.download_idx("mnist", stem, folder, timeout=1.5)
    assert not (folder / f"{stem}.gz").exists()
    served["payload"] = gzip.compress(good)
    saved = convert.download_idx("mnist", stem, folder, timeout=1.5)
    np.testing.assert_array_equal(read_idx(saved), [1, 2, 3])


# --------------------------------------------------------------------------- real data (optional)

REAL = real_data_dir()
needs_real = pytest.mark.skipif(REAL is None, reason="real data (../shared/data or $REFSNN_DATA_DIR) absent")


@needs_real
@pytest.mark.parametrize("name, folder", [("mnist", "mnist"), ("fmnist", "fashion-mnist")])
def test_real_digital_dataset_content_md5(name, folder):
    for (dataset, stem), expected in data.IDX_CONTENT_MD5.items():
        if dataset == name:
            path = data.find_idx_file(REAL / folder, stem)
            assert path is not None, f"{REAL / folder / stem}[.gz] missing"
            assert data.content_md5(path) == expected
    for split, n in (("train", 60_000), ("test", 10_000)):
        x, y = load_dataset(name, split, data_dir=REAL)
        assert x.shape == (n, 1, 28, 28) and y.shape == (n,)
        np.testing.assert_array_equal(np.unique(y), np.arange(10))


@needs_real
def test_real_mnist_subset_matches_source():
    images = read_idx(data.find_idx_file(REAL / "mnist", "t10k-images-idx3-ubyte"))
    labels = read_idx(data.find_idx_file(REAL / "mnist", "t10k-labels-idx1-ubyte"))
    from importlib import resources

    with resources.as_file(resources.files("refsnn._data") / "mnist_subset.npz") as path:
        with np.load(path) as npz:
            indices = npz["test_indices"]
            np.testing.assert_array_equal(npz["test_images"], images[indices])
            np.testing.assert_array_equal(npz["test_labels"], labels[indices])


@needs_real
def test_real_nmnist_file_loads_and_bins():
    root = REAL / "nmnist"
    if not (root / "Test").is_dir():
        pytest.skip("N-MNIST subset absent")
    events = read_nmnist_bin(root / "Train" / "5" / "00001.bin")  # MNIST train image #1 is a 5
    assert 1000 < len(events) < 10_000
    assert np.all(np.diff(events["t_us"].astype(np.int64)) >= 0)
    assert 250_000 < events["t_us"][-1] < 400_000
    frames = bin_events(events, T=10)
    assert frames.shape == (10, 2, 34, 34) and frames[:, 0].any() and frames[:, 1].any()
    x, y = load_dataset("nmnist", "test", data_dir=REAL, T=10)
    assert x.shape == (100, 10, 2, 34, 34)
    np.testing.assert_array_equal(np.bincount(y, minlength=10), [8, 14, 8, 11, 14, 7, 10, 15, 2, 11])
