"""Data layer: readers for MNIST / Fashion-MNIST (IDX) and N-MNIST (ATIS ``.bin``),
event binning, and a dataset API.

Conventions (see docs/DATA.md for the full description):

* Digital datasets ("mnist", "fmnist", "mnist-subset"): ``x`` is float64 ``[N, 1, 28, 28]``
  with values ``pixel / 255`` in [0, 1]; ``y`` is int64 ``[N]`` in 0..9.
* "nmnist": ``x`` is uint8 ``[N, T, 2, 34, 34]`` of 0/1 spike frames, sample-major;
  axis 2 is the polarity channel (0 = OFF events, 1 = ON events), then row = y, column = x.
  The network consumes time-major ``[T, B, *input_shape]`` arrays: use :func:`to_time_major`.

Nothing in this module downloads anything; see ``data_scripts/convert_to_hdf5.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from .validation import (DataValidationError, check_event_fields, check_frames, check_h5_tree, check_images,
                         check_labels, check_offsets, check_recording, check_unique_ids, verify_manifest)

__all__ = [
    "DATASET_NAMES",
    "EVENT_DTYPE",
    "IDX_CONTENT_MD5",
    "NMNIST_SENSOR_SIZE",
    "NMNIST_TYPICAL_DURATION_US",
    "content_md5",
    "read_idx",
    "read_nmnist_bin",
    "bin_events",
    "bin_recordings",
    "to_time_major",
    "load_dataset",
    "candidate_data_dirs",
    "locate_dataset",
    "DATASET_FOLDERS",
    "IDX_FILE_STEMS",
    "NMNIST_SPLIT_FOLDERS",
    "list_nmnist_files",
    "find_idx_file",
    "clear_cache",
]

DATASET_NAMES: tuple[str, ...] = ("mnist", "fmnist", "nmnist", "mnist-subset")
SPLITS: tuple[str, ...] = ("train", "test")
NUM_CLASSES = 10

#: ATIS sensor used for N-MNIST is 34 x 34 pixels.
NMNIST_SENSOR_SIZE = 34
#: A common fixed window for N-MNIST (three saccades of ~100 ms). Not used by default:
#: bin_events / load_dataset default to each recording's last timestamp + 1.
NMNIST_TYPICAL_DURATION_US = 300_000

#: One decoded N-MNIST event. ``polarity`` is 1 for ON, 0 for OFF; ``t_us`` in microseconds.
EVENT_DTYPE = np.dtype(
    [("x", np.uint8), ("y", np.uint8), ("polarity", np.uint8), ("t_us", np.uint32)]
)

IDX_MAGIC_LABELS = 0x00000801  # unsigned byte, 1-D
IDX_MAGIC_IMAGES = 0x00000803  # unsigned byte, 3-D
_GZIP_MAGIC = b"\x1f\x8b"

#: MD5 of the DECOMPRESSED canonical IDX files, keyed by (dataset name, file stem).
#: (gzip streams differ between copies; the content does not.)
IDX_CONTENT_MD5: dict[tuple[str, str], str] = {
    ("mnist", "train-images-idx3-ubyte"): "6bbc9ace898e44ae57da46a324031adb",
    ("mnist", "train-labels-idx1-ubyte"): "a25bea736e30d166cdddb491f175f624",
    ("mnist", "t10k-images-idx3-ubyte"): "2646ac647ad5339dbf082846283269ea",
    ("mnist", "t10k-labels-idx1-ubyte"): "27ae3e4e09519cfbb04c329615203637",
    ("fmnist", "train-images-idx3-ubyte"): "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    ("fmnist", "train-labels-idx1-ubyte"): "9018921c3c673c538a1fc5bad174d6f9",
    ("fmnist", "t10k-images-idx3-ubyte"): "8181f5470baa50b63fa0f6fddb340f0a",
    ("fmnist", "t10k-labels-idx1-ubyte"): "15d484375f8d13e6eb1aabb0c3f46965",
}

ENV_DATA_DIR = "REFSNN_DATA_DIR"
HOME_DATA_DIR = Path("~/.refsnn/data")
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
HDF5_FORMAT = "refsnn-dataset-1"
CONVERT_COMMAND = "python data_scripts/convert_to_hdf5.py"


def source_checkout() -> Path | None:
    """The repository root when refsnn runs from a source checkout (it has ``data_scripts/``),
    None for an installed wheel, which ships neither ``data_scripts/`` and ``docs/`` nor ``../shared/data``."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "data_scripts" / "convert_to_hdf5.py").is_file() else None


def repo_path(relative: str) -> str:
    """A repository file (e.g. ``docs/FORMAT.md``) for a message: its absolute path in a source
    checkout, else named as a file of the source repository that the installed package lacks."""
    root = source_checkout()
    if root is not None:
        return str(root / relative)
    return f"{relative} of the refsnn source repository (not installed with the package)"


def convert_hint(arguments: str = "") -> str:
    """How to run the HDF5 converter with ``arguments``: by the script's absolute path in a source
    checkout (right from any working directory), else where the script is found."""
    root = source_checkout()
    command = f"{CONVERT_COMMAND} {arguments}".strip()
    if root is not None:
        return f"`{command.replace('data_scripts/', str(root / 'data_scripts') + os.sep, 1)}`"
    return (f"`{command}` from a checkout of the refsnn source repository (an installed refsnn package "
            "does not ship data_scripts/)")

#: Folder of each dataset under a data root (``<root>/<folder>/...``).
DATASET_FOLDERS = {"mnist": "mnist", "fmnist": "fashion-mnist", "nmnist": "nmnist"}
#: IDX file names (without .gz) per split: (images, labels).
IDX_FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: N-MNIST split folders inside ``<root>/nmnist/``.
NMNIST_SPLIT_FOLDERS = {"train": "Train", "test": "Test"}
_PRETTY_NAMES = {
    "mnist": "MNIST",
    "fmnist": "Fashion-MNIST",
    "nmnist": "N-MNIST",
    "mnist-subset": "MNIST subset",
}

PathLike = str | os.PathLike

# In-process cache of decoded raw arrays (read-only); outputs are always fresh copies.
_CACHE: dict[tuple, object] = {}


def clear_cache() -> None:
    """Forget every decoded file kept in memory by :func:`load_dataset`."""
    _CACHE.clear()


# --------------------------------------------------------------------------- IDX


def _read_maybe_gzip(path: Path) -> bytes:
    """Return the file's bytes, decompressed if they start with the gzip magic bytes."""
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(
            f"{path}: gzip stream is truncated or corrupt ({exc}); "
            "download or copy the file again"
        ) from exc


def content_md5(path: PathLike) -> str:
    """MD5 hex digest of a file's content, after gunzip when it is gzip-compressed."""
    return hashlib.md5(_read_maybe_gzip(Path(path))).hexdigest()


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed or raw).

    Accepts magic 0x00000803 (images, returns uint8 ``[N, rows, cols]``) and
    0x00000801 (labels, returns uint8 ``[N]``). Gzip is detected by its magic bytes,
    not by the file name. Raises ValueError naming the file when the magic number is
    wrong or the byte length disagrees with the dimension sizes in the header.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header (4-byte magic)")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (IDX_MAGIC_IMAGES, IDX_MAGIC_LABELS):
        raise ValueError(
            f"{path}: IDX magic number is 0x{magic:08x}, expected 0x{IDX_MAGIC_IMAGES:08x} "
            f"(uint8 images, 3-D) or 0x{IDX_MAGIC_LABELS:08x} (uint8 labels, 1-D); "
            "this is not an MNIST-style IDX file"
        )
    ndim = magic & 0xFF
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise ValueError(
            f"{path}: truncated header: expected {header_bytes} header bytes for a "
            f"{ndim}-D IDX file, file has {len(data)} bytes"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_bytes + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "oversized"
        raise ValueError(
            f"{path}: {kind} IDX file: header declares shape {shape}, so expected "
            f"{expected} bytes (decompressed), actual {len(data)} bytes"
        )
    # frombuffer over bytes is read-only; copy once so callers get a normal array.
    return np.frombuffer(data, dtype=np.uint8, offset=header_bytes).reshape(shape).copy()


# --------------------------------------------------------------------------- N-MNIST events


def read_nmnist_bin(path: PathLike) -> np.ndarray:
    """Decode an N-MNIST ATIS ``.bin`` file into a structured array of :data:`EVENT_DTYPE`.

    Each event is 5 bytes: byte0 = x, byte1 = y, bit 7 of byte2 = polarity (1 = ON),
    the other 23 bits (byte2 bits 6..0, byte3, byte4, big-endian) = timestamp in us.
    Returns ``[n_events]`` with fields ``x, y, polarity, t_us`` in file order; no event
    is dropped or reordered. Raises DataValidationError (a ValueError) naming the file when its
    length is not a multiple of 5 (a truncated record), it holds no event, a coordinate is
    outside the 34 x 34 sensor or a timestamp goes backwards (``refsnn.validation.check_recording``).
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 5 != 0:
        raise DataValidationError(
            f"{path}: {raw.size} bytes is not a multiple of 5 (N-MNIST events are 40 bits); "
            "the file is truncated or not an N-MNIST .bin file"
        )
    rows = raw.reshape(-1, 5)
    events = np.empty(rows.shape[0], dtype=EVENT_DTYPE)
    events["x"] = rows[:, 0]
    events["y"] = rows[:, 1]
    events["polarity"] = rows[:, 2] >> 7
    events["t_us"] = (
        ((rows[:, 2].astype(np.uint32) & 0x7F) << 16)
        | (rows[:, 3].astype(np.uint32) << 8)
        | rows[:, 4].astype(np.uint32)
    )
    check_recording(events, source=str(path))
    return events


def bin_recordings(
    events: np.ndarray, offsets: np.ndarray, T: int, duration_us: int | None = None
) -> np.ndarray:
    """Bin N concatenated recordings at once: sample i = ``events[offsets[i]:offsets[i+1]]``.

    Same rule as :func:`bin_events`, applied per recording (with ``duration_us=None`` each
    recording uses its own last timestamp + 1). ``offsets`` is int ``[N + 1]``, starting at 0
    and ending at ``len(events)``. Returns uint8 ``[N, T, 2, 34, 34]``; vectorized over all
    events of all samples.
    """
    _check_positive_int(T, "T")
    check_event_fields(events, "bin_recordings")
    offsets = np.asarray(offsets, dtype=np.int64)
    well_formed = offsets.ndim == 1 and offsets.size >= 1
    if not (
        well_formed
        and offsets[0] == 0
        and offsets[-1] == len(events)
        and np.all(np.diff(offsets) >= 0)
    ):
        raise ValueError(
            f"offsets must be non-decreasing [N + 1] from 0 to len(events)={len(events)}, "
            f"got {offsets[:3]}...{offsets[-3:]} (size {offsets.size})"
        )
    n_samples = len(offsets) - 1
    counts = np.diff(offsets)
    sample_of_event = np.repeat(np.arange(n_samples), counts)
    t_us = events["t_us"].astype(np.int64)
    if duration_us is None:
        # Per recording: last (= largest) timestamp + 1, so the last event is in bin T-1.
        last_t = np.zeros(n_samples, dtype=np.int64)
        np.maximum.at(last_t, sample_of_event, t_us)
        durations = last_t + 1
    else:
        _check_positive_int(duration_us, "duration_us")
        durations = np.full(n_samples, int(duration_us), dtype=np.int64)
    event_durations = durations[sample_of_event]
    in_window = t_us < event_durations  # window is [0, duration); t_us >= 0 always
    # Integer arithmetic: bin k holds k*D/T <= t < (k+1)*D/T exactly, no float rounding.
    time_bin = (t_us * T) // event_durations
    frames = np.zeros((n_samples, T, 2, NMNIST_SENSOR_SIZE, NMNIST_SENSOR_SIZE), np.uint8)
    frames[
        sample_of_event[in_window],
        time_bin[in_window],
        events["polarity"][in_window],
        events["y"][in_window],
        events["x"][in_window],
    ] = 1
    return frames


def bin_events(events: np.ndarray, T: int, duration_us: int | None = None) -> np.ndarray:
    """Bin one recording into 0/1 frames, uint8 ``[T, 2, 34, 34]`` = [bin, polarity, y, x].

    The window ``[0, duration_us)`` is cut into ``T`` equal half-open bins; event at time t
    goes to bin ``floor(t * T / duration_us)`` (an event exactly on an edge starts the next
    bin). A pixel is 1 when at least one event of that polarity hit it in the bin; channel 0
    holds OFF events (polarity 0), channel 1 ON events (polarity 1). ``duration_us=None``
    uses the recording's last timestamp + 1, so every event lands in a bin; with a fixed
    duration (e.g. 300_000) events at ``t_us >= duration_us`` are outside the window and
    do not appear in the frames. Event order does not matter.
    """
    events = np.asarray(events)
    offsets = np.array([0, events.shape[0] if events.ndim else 0], dtype=np.int64)
    return bin_recordings(events, offsets, T, duration_us)[0]


def to_time_major(x: np.ndarray) -> np.ndarray:
    """Swap the first two axes: ``[N, T, ...] -> [T, N, ...]`` (C-contiguous copy).

    The network consumes time-major ``[T, B, *input_shape]`` spike arrays.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"to_time_major needs at least 2 axes [N, T, ...], got shape {x.shape}")
    return np.ascontiguousarray(np.swapaxes(x, 0, 1))


# --------------------------------------------------------------------------- lookup


def candidate_data_dirs(data_dir: PathLike | None = None) -> list[tuple[Path, str]]:
    """Data roots searched by :func:`load_dataset`, in order, as ``(path, why)`` pairs.

    An explicit ``data_dir`` is searched alone. Otherwise: $REFSNN_DATA_DIR,
    ``./../shared/data`` (from the current directory), ``<repo>/../shared/data`` (source checkouts only),
    ``~/.refsnn/data``. Each root holds ``mnist/``, ``fashion-mnist/``, ``nmnist/`` folders
    and/or ``<name>.h5`` files. (Fashion-MNIST is also looked for in Debian's
    /usr/share/datasets/fashion-mnist, see :func:`locate_dataset`.)
    """
    if data_dir is not None:
        return [(Path(data_dir).expanduser(), "data_dir argument")]
    candidates: list[tuple[Path, str]] = []
    env_value = os.environ.get(ENV_DATA_DIR)
    if env_value:
        candidates.append((Path(env_value).expanduser(), f"${ENV_DATA_DIR}"))
    candidates.append((Path.cwd() / ".." / "shared" / "data", "../shared/data from the working dir"))
    repo_root = source_checkout()
    if repo_root is not None:   # an installed package has no repository around it
        candidates.append((repo_root / ".." / "shared" / "data", "../shared/data from the repo root"))
    candidates.append((HOME_DATA_DIR.expanduser(), "home data dir"))
    unique: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for path, why in candidates:
        key = os.path.normpath(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            unique.append((Path(key), why))
    return unique


def find_idx_file(folder: PathLike, stem: str) -> Path | None:
    """``<folder>/<stem>.gz`` if it exists, else ``<folder>/<stem>``, else None."""
    folder = Path(folder)
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def list_nmnist_files(split_dir: PathLike) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """List ``<split_dir>/<label>/<id>.bin`` sorted by id: ``(paths, labels [N], ids [N])``.

    Every sub-folder must be a label 0..9 (ValueError otherwise). Ids are the integer
    file stems (the 1-based MNIST index in the official archive); a non-numeric stem or an id
    found twice (e.g. in two label folders) raises DataValidationError.
    """
    split_dir = Path(split_dir)
    entries: list[tuple[int, str, int, Path]] = []
    for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        try:
            label = int(label_dir.name)
        except ValueError:
            raise ValueError(
                f"{label_dir}: N-MNIST sub-folders must be labels 0..9, found {label_dir.name!r}"
            ) from None
        if not 0 <= label < NUM_CLASSES:
            raise ValueError(f"{label_dir}: label {label} out of range 0..{NUM_CLASSES - 1}")
        for file in label_dir.glob("*.bin"):
            if not file.stem.isdigit():
                raise DataValidationError(f"{file}: N-MNIST files must be named <id>.bin with a numeric id "
                                          "(the 1-based MNIST index, e.g. 00001.bin)")
            entries.append((int(file.stem), file.name, label, file))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    paths = [e[3] for e in entries]
    labels = np.array([e[2] for e in entries], dtype=np.int64)
    ids = np.array([e[0] for e in entries], dtype=np.int64)
    check_unique_ids(ids, str(split_dir), where=[p.relative_to(split_dir) for p in paths])
    return paths, labels, ids


def locate_dataset(
    name: str, split: str, data_dir: PathLike | None = None, *, raw_only: bool = False
) -> dict | None:
    """Locate a dataset split on disk, or return None.

    Returns ``{"kind": "hdf5", "path": Path}``, or ``{"kind": "idx", "images": Path,
    "labels": Path}`` (mnist/fmnist), or ``{"kind": "nmnist", "split_dir": Path}``.
    Within each root of :func:`candidate_data_dirs`, ``<root>/<name>.h5`` wins over raw files
    (unless ``raw_only``; .h5 files are ignored when h5py is not installed).
    """
    _check_name_split(name, split)
    if name == "mnist-subset":
        raise ValueError("mnist-subset ships inside the package; it has no files to find")
    for root, _why in candidate_data_dirs(data_dir):
        found = _find_in_root(name, split, root, raw_only)
        if found is not None:
            return found
    if name == "fmnist" and data_dir is None:
        return _find_digital_folder(name, split, DEBIAN_FASHION_MNIST_DIR)
    return None


def _find_in_root(name: str, split: str, root: Path, raw_only: bool = False) -> dict | None:
    h5_path = root / f"{name}.h5"
    if not raw_only and h5_path.is_file() and _have_h5py():
        return {"kind": "hdf5", "path": h5_path}
    if name == "nmnist":
        split_dir = root / DATASET_FOLDERS["nmnist"] / NMNIST_SPLIT_FOLDERS[split]
        if split_dir.is_dir() and any(split_dir.glob("*/*.bin")):
            return {"kind": "nmnist", "split_dir": split_dir}
        return None
    return _find_digital_folder(name, split, root / DATASET_FOLDERS[name])


def _have_h5py() -> bool:
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


def _find_digital_folder(name: str, split: str, folder: Path) -> dict | None:
    image_stem, label_stem = IDX_FILE_STEMS[split]
    images, labels = find_idx_file(folder, image_stem), find_idx_file(folder, label_stem)
    if images is None or labels is None:
        return None
    return {"kind": "idx", "images": images, "labels": labels}


def _not_found_message(name: str, split: str, data_dir: PathLike | None) -> str:
    roots = candidate_data_dirs(data_dir)
    folder_name = DATASET_FOLDERS[name]
    lines = [f"{_PRETTY_NAMES[name]} ({split} split) not found. Searched, in order:"]
    for root, why in roots:
        lines.append(f"  {root / (name + '.h5')} and {root / folder_name}/  ({why})")
    if name == "fmnist" and data_dir is None:
        lines.append(f"  {DEBIAN_FASHION_MNIST_DIR}/  (Debian package dataset-fashion-mnist)")
    target = roots[0][0] if data_dir is not None else HOME_DATA_DIR.expanduser()
    if name == "nmnist":
        split_folder = target / DATASET_FOLDERS["nmnist"] / NMNIST_SPLIT_FOLDERS[split]
        lines.append(f"Fix: put the N-MNIST recordings in {split_folder}/<label>/<id>.bin")
        lines.append(
            "  (original ATIS .bin files from the N-MNIST archive, label folders 0..9), or "
            f"run {convert_hint(f'nmnist --data-dir {target}')} to pack them into "
            f"{target / 'nmnist.h5'}."
        )
    else:
        folder = target / folder_name
        lines.append("Fix: put these files (gzipped or not) in place:")
        for stem in IDX_FILE_STEMS[split]:
            lines.append(f"  {folder / (stem + '.gz')}")
        lines.append(
            f"  or run {convert_hint(f'{name} --data-dir {target}')} (downloads them with checksum checks when "
            f"online, else tells you where to get them, and writes {target / (name + '.h5')})."
        )
    if data_dir is None:
        lines.append(f"You can also set ${ENV_DATA_DIR} to a folder laid out like this.")
    if name == "mnist":
        lines.append('For a quick start without downloads use load_dataset("mnist-subset", ...).')
    return "\n".join(lines)


def _check_name_split(name: str, split: str) -> None:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def _check_positive_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


_IDX_CONTENT_BYTES = {"train-images-idx3-ubyte": 47_040_016, "train-labels-idx1-ubyte": 60_008,
                      "t10k-images-idx3-ubyte": 7_840_016, "t10k-labels-idx1-ubyte": 10_008}


def _check_published_md5(name: str | None, path: Path, array: np.ndarray, magic: int) -> None:
    """A file with a canonical IDX name and the full split's size must have the published content."""
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    expected = IDX_CONTENT_MD5.get((name, stem)) if name is not None else None
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    if expected is None or len(header) + array.size != _IDX_CONTENT_BYTES[stem]:
        return
    actual = hashlib.md5(header + array.tobytes()).hexdigest()
    if actual != expected:
        raise DataValidationError(f"{path}: content MD5 {actual} differs from the published {expected} of "
                                  f"{_PRETTY_NAMES[name]} {stem} (docs/DATA.md); the file is corrupt or another "
                                  "data set's, copy it again")


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


# --------------------------------------------------------------------------- loaders


def _load_idx_pair(
    images_path: Path, labels_path: Path, name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and labels [N], validated (manifest, published MD5), cached read-only."""
    key = ("idx", name, _file_key(images_path), _file_key(labels_path))
    if key not in _CACHE:
        verify_manifest(images_path.parent, [images_path])
        verify_manifest(labels_path.parent, [labels_path])
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataValidationError(
                f"{images_path}: expected an images file of shape [N, 28, 28], "
                f"got {images.shape}"
            )
        if labels.ndim != 1:
            raise DataValidationError(f"{labels_path}: expected a labels file [N], got {labels.shape}")
        if labels.shape[0] != images.shape[0]:
            raise DataValidationError(
                f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                f"{labels.shape[0]} labels; the files do not belong together"
            )
        check_labels(labels, str(labels_path))
        _check_published_md5(name, images_path, images, IDX_MAGIC_IMAGES)
        _check_published_md5(name, labels_path, labels, IDX_MAGIC_LABELS)
        _CACHE[key] = (_read_only(images), _read_only(labels))
    return _CACHE[key]  # type: ignore[return-value]


def _digital_output(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 28, 28] -> float64 [N, 1, 28, 28] in [0, 1]; labels -> int64 (new arrays)."""
    x = np.empty((images.shape[0], 1) + images.shape[1:], dtype=np.float64)
    np.divide(images[:, None], 255.0, out=x)
    return x, labels.astype(np.int64)


def _load_mnist_subset(split: str) -> tuple[np.ndarray, np.ndarray]:
    key = ("mnist-subset", split)
    if key not in _CACHE:
        resource = resources.files("refsnn._data").joinpath("mnist_subset.npz")
        with resources.as_file(resource) as path, np.load(path, allow_pickle=False) as npz:
            images = npz[f"{split}_images"]
            labels = npz[f"{split}_labels"]
        check_images(images, f"refsnn/_data/mnist_subset.npz:{split}_images")
        check_labels(labels, f"refsnn/_data/mnist_subset.npz:{split}_labels", count=images.shape[0])
        _CACHE[key] = (_read_only(images), _read_only(labels))
    return _CACHE[key]  # type: ignore[return-value]


def _read_nmnist_split(
    split_dir: Path, limit: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All events of a split, concatenated: ``(events, offsets [N+1], labels [N])``."""
    paths, labels, _ids = list_nmnist_files(split_dir)
    if limit is not None:
        paths, labels = paths[:limit], labels[:limit]
    key = ("nmnist", tuple(_file_key(p) for p in paths))
    if key not in _CACHE:
        verify_manifest(split_dir.parent, paths)
        per_file = [read_nmnist_bin(p) for p in paths]
        counts = np.array([len(e) for e in per_file], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        events = np.concatenate(per_file) if per_file else np.empty(0, EVENT_DTYPE)
        _CACHE[key] = (_read_only(events), _read_only(offsets), _read_only(labels))
    return _CACHE[key]  # type: ignore[return-value]


def _load_hdf5(
    path: Path, name: str, split: str, T: int, limit: int | None, duration_us: int | None
) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    verify_manifest(path.parent, [path])
    try:
        with h5py.File(path, "r") as h5:
            check_h5_tree(h5, str(path), DataValidationError)
            return _read_hdf5_split(h5, path, name, split, T, limit, duration_us)
    except OSError as error:
        raise DataValidationError(f"{path}: unreadable or corrupt HDF5 file ({error}); regenerate it with "
                                  f"{convert_hint(name)}") from None


def _h5_dataset(group, key: str, path: Path):
    import h5py

    if key not in group or not isinstance(group[key], h5py.Dataset):
        raise DataValidationError(f"{path}: {group.name}/{key} is missing; regenerate the file with "
                                  f"{convert_hint()}")
    return group[key]


def _read_hdf5_split(h5, path: Path, name: str, split: str, T: int, limit: int | None,
                     duration_us: int | None) -> tuple[np.ndarray, np.ndarray]:
    stop = limit  # slicing [:None] reads everything
    if h5.attrs.get("format") != HDF5_FORMAT or h5.attrs.get("dataset") != name:
        raise DataValidationError(
            f"{path}: not a refsnn {name} file (attrs format={h5.attrs.get('format')!r}, "
            f"dataset={h5.attrs.get('dataset')!r}, expected {HDF5_FORMAT!r}, {name!r}); "
            f"regenerate it with {convert_hint(name)}"
        )
    if split not in h5:
        raise DataValidationError(f"{path}: has no group {split!r}; regenerate it")
    group = h5[split]
    images_ds = _h5_dataset(group, "images", path)
    source = f"{path}:{split}"
    count = images_ds.shape[0] if images_ds.ndim else 0
    labels = check_labels(_h5_dataset(group, "labels", path)[()], f"{source}/labels", count=count)
    labels = labels[:stop].astype(np.int64)
    if name != "nmnist":
        if images_ds.dtype != np.uint8 or images_ds.shape[1:] != (28, 28):
            check_images(np.empty((0,) + images_ds.shape[1:], images_ds.dtype), f"{source}/images")
        x, _ = _digital_output(images_ds[:stop], labels)
        return x, labels
    stored_T = int(h5.attrs["T"])
    if "ids" in group:
        ids = group["ids"][()]
        if ids.shape != (count,):
            raise DataValidationError(f"{source}/ids: {ids.shape[0] if ids.ndim else 0} ids for {count} recordings")
        check_unique_ids(ids, f"{source}/ids")
    if images_ds.dtype != np.uint8 or images_ds.ndim != 5 or images_ds.shape[1:] != (
            stored_T, 2, NMNIST_SENSOR_SIZE, NMNIST_SENSOR_SIZE):
        raise DataValidationError(f"{source}/images: frames must be uint8 [N, T={stored_T}, 2, 34, 34], got "
                                  f"{images_ds.dtype} {images_ds.shape}")
    events_ds = _h5_dataset(group, "events", path)
    offsets = check_offsets(_h5_dataset(group, "event_offsets", path)[()], events_ds.shape[0],
                            f"{source}/event_offsets")
    if offsets.shape[0] != count + 1:
        raise DataValidationError(f"{source}/event_offsets: {offsets.shape[0]} offsets for {count} recordings "
                                  f"(must be {count + 1})")
    stored_duration = int(h5.attrs["duration_us"])  # 0 = per-recording
    same_binning = stored_T == T and stored_duration == (duration_us or 0)
    if same_binning:
        return check_frames(images_ds[:stop], f"{source}/images", steps=T), labels
    offsets = offsets[: None if stop is None else stop + 1].astype(np.int64)
    events = events_ds[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    _check_stored_recordings(events, offsets, f"{source}/events")
    return bin_recordings(events, offsets, T, duration_us), labels


def _check_stored_recordings(events: np.ndarray, offsets: np.ndarray, source: str) -> None:
    """Every stored recording obeys the rules of a ``.bin`` file (``check_recording``), vectorized."""
    check_event_fields(events, source)
    backwards = np.diff(events["t_us"].astype(np.int64)) < 0
    backwards[offsets[1:-1] - 1] = False  # a new recording may start earlier than the last one ended
    if backwards.any():
        i = int(np.flatnonzero(backwards)[0])
        sample = int(np.searchsorted(offsets, i, side="right") - 1)
        raise DataValidationError(f"{source}: timestamps of recording {sample} go backwards at event {i + 1} "
                                  f"({int(events['t_us'][i + 1])} us after {int(events['t_us'][i])} us); "
                                  "the file is corrupt")


def load_dataset(
    name: str,
    split: str,
    data_dir: PathLike | None = None,
    T: int = 10,
    limit: int | None = None,
    *,
    duration_us: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a dataset split as fresh NumPy arrays ``(x, y)`` that are safe to modify.

    ``name`` in ``DATASET_NAMES``; ``split`` in {"train", "test"}.

    * "mnist", "fmnist", "mnist-subset": ``x`` float64 ``[N, 1, 28, 28]`` = pixel / 255.
    * "nmnist": ``x`` uint8 ``[N, T, 2, 34, 34]`` of 0/1 frames (see :func:`bin_events`;
      ``duration_us=None`` = each recording's last timestamp + 1). Sample-major: use
      :func:`to_time_major` for the network's ``[T, B, ...]`` layout.

    ``y`` is int64 ``[N]`` in 0..9. ``limit`` keeps the first ``limit`` samples in file
    order (N-MNIST: ascending id; mnist-subset: ascending original MNIST index); it is not
    stratified. ``T`` and ``duration_us`` only matter for "nmnist"; ``data_dir`` is
    ignored for "mnist-subset". Search order and the HDF5 fast path: see
    :func:`candidate_data_dirs` and :func:`locate_dataset`. Raises FileNotFoundError
    listing what to put where when the data is absent.
    """
    _check_name_split(name, split)
    _check_positive_int(T, "T")
    if limit is not None:
        _check_positive_int(limit, "limit")
    if duration_us is not None:
        _check_positive_int(duration_us, "duration_us")

    if name == "mnist-subset":
        images, labels = _load_mnist_subset(split)
        return _digital_output(images[:limit], labels[:limit])

    found = locate_dataset(name, split, data_dir)
    if found is None:
        raise FileNotFoundError(_not_found_message(name, split, data_dir))
    if found["kind"] == "hdf5":
        return _load_hdf5(found["path"], name, split, T, limit, duration_us)
    if found["kind"] == "idx":
        images, labels = _load_idx_pair(found["images"], found["labels"], name)
        return _digital_output(images[:limit], labels[:limit])
    events, offsets, labels = _read_nmnist_split(found["split_dir"], limit)
    frames = bin_recordings(events, offsets, T, duration_us)
    return frames, labels.astype(np.int64)
