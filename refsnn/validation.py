"""The rules a network and a data set must satisfy before refsnn computes with them, written once.

Networks (``validate_network``; called by ``SNN(...)``, so by ``load_model`` and the importers,
and through ``check_parameter_array``/``check_int_pair`` by the layer constructors):

- ``threshold``: a finite real number ``> 0``, also after rounding to the network's dtype. The
  bound rules need ``th >= 0``: the unstable reset interval of eq. 9, ``[min(0, m_l), th]``, must
  hold the reset value 0 (a negative threshold gives false certificates). ``th = 0`` is refused
  too: a neuron at rest (``m = 0``) would fire, which is not the paper's LIF, and the attacks'
  rate-gradient rule divides by ``th``.
- ``decay`` (alpha): a finite real number in ``[0, 1]``, both ends included. The bounds need
  ``alpha >= 0`` (the carried reset term keeps its order); ``alpha > 1`` is not a leak.
- ``firing``: ``">="`` or ``">"``; ``reset_grad``: a bool; ``dtype``: float32 or float64.
- weights and biases: real float (or integer) arrays, finite in the network's dtype.
- ``input_shape``: positive integers; layer shapes must chain (checked while building stages).

Data sets (``check_labels``, ``check_images``, ``check_frames``, ``check_events`` and friends;
called by ``refsnn.data``): label count equals image count, integer labels in 0..9, uint8 pixels
of the expected shape, 0/1 frames, N-MNIST events inside the 34 x 34 sensor with polarity 0/1 and
non-decreasing timestamps, no empty recording, no duplicate sample id, SHA-256 manifests.

HDF5 (``check_h5_tree``): refsnn reads only hard-linked groups and datasets stored in the file
itself: external links, soft links, virtual datasets and datasets with external raw storage are
refused, so a file cannot make refsnn read another local file.

Every error is a ``ValueError`` subclass whose message names the field and the allowed range.
This module imports NumPy only (h5py lazily), so every other module may import it.
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Type

import numpy as np


class ModelValidationError(ValueError):
    """A network (or one of its layers) has a setting the bound rules and the LIF model do not cover."""


class DataValidationError(ValueError):
    """A data set file or array breaks the data rules (counts, dtypes, ranges, ordering, checksums)."""


FIRING_MODES: Tuple[str, ...] = (">=", ">")
# The neuron models (``refsnn.neurons``): what survives the spike, named as snnTorch's reset_mechanism.
RESET_MODES: Tuple[str, ...] = ("zero", "subtract")
NETWORK_DTYPES: Tuple[str, ...] = ("float32", "float64")
NUM_CLASSES = 10
NMNIST_SENSOR_SIZE = 34

# --- networks ------------------------------------------------------------------------------------


def _real_scalar(value: Any, field: str, error: Type[ValueError] = ModelValidationError) -> float:
    """``value`` as a Python float when it is a real number (not bool, not text, not an array)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise error(f"{field} must be a real number, got {value!r} ({type(value).__name__})")
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "iuf":
        raise error(f"{field} must be a real number, got {value!r}")
    return float(array)


def check_threshold(value: Any, dtype: Any = np.float64) -> float:
    """The firing threshold as a float: finite and ``> 0``, also in ``dtype``."""
    threshold = _real_scalar(value, "threshold")
    if not math.isfinite(threshold) or threshold <= 0.0:
        raise ModelValidationError(
            f"threshold must be a finite number > 0, got {threshold!r} (the bound rules need a reset value "
            "of 0 below the threshold; a threshold <= 0 is outside refsnn's LIF model)")
    with np.errstate(over="ignore"):
        as_run = float(np.dtype(dtype).type(threshold))
    if not math.isfinite(as_run) or as_run <= 0.0:
        raise ModelValidationError(f"threshold {threshold!r} becomes {as_run!r} in {np.dtype(dtype).name}; "
                                   f"it must stay a finite number > 0 in the network's dtype")
    return threshold


def check_decay(value: Any) -> float:
    """The decay ``alpha`` as a float in ``[0, 1]``."""
    decay = _real_scalar(value, "decay")
    if not 0.0 <= decay <= 1.0:  # also refuses NaN
        raise ModelValidationError(f"decay (alpha) must be a number in [0, 1], got {decay!r}")
    return decay


def check_firing(value: Any) -> str:
    """The firing comparison, ``">="`` or ``">"``."""
    if not isinstance(value, str) or value not in FIRING_MODES:
        raise ModelValidationError(f"firing must be '>=' (the paper's eq. 2, fires at threshold) or '>' "
                                   f"(fires strictly above, as snnTorch and the authors' code), got {value!r}")
    return value


def check_reset(value: Any) -> str:
    """The neuron model: ``"zero"`` (the paper's LIF, eq. 1) or ``"subtract"`` (reset by subtraction)."""
    if not isinstance(value, str) or value not in RESET_MODES:
        raise ModelValidationError(f"reset must be 'zero' (the paper's LIF: m_t = I_t + alpha m_(t-1) (1 - s_(t-1))) "
                                   f"or 'subtract' (m_t = I_t + alpha (m_(t-1) - th s_(t-1))), got {value!r}")
    return value


def check_reset_grad(value: Any) -> bool:
    """``reset_grad`` as a bool (text such as ``"false"`` is refused, not read as True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ModelValidationError(f"reset_grad must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_dtype(value: Any) -> np.dtype:
    """The network's compute dtype, float32 or float64."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in NETWORK_DTYPES:
        raise ModelValidationError(f"dtype must be float32 or float64, got {value!r}")
    return dtype


def check_input_shape(value: Any) -> Tuple[int, ...]:
    """A per-sample input shape: a non-empty sequence of positive integers."""
    array = np.atleast_1d(np.asarray(value))
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu" or np.any(array < 1):
        raise ModelValidationError(f"input_shape must be positive integers, e.g. (784,) or (1, 28, 28), "
                                   f"got {value!r}")
    return tuple(int(v) for v in array)


def check_parameter_array(value: Any, name: str, ndim: int) -> np.ndarray:
    """A weight or bias as a new float array (float32 kept, other reals to float64), finite.

    Booleans, complex numbers, text and objects are refused; nothing is clipped or cast silently.
    """
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" or array.dtype.itemsize > 8:
        raise ModelValidationError(f"{name} must hold real numbers (float32/float64, or integers), "
                                   f"got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ModelValidationError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    array = array.astype(np.float32 if array.dtype == np.float32 else np.float64, copy=True)
    _check_finite(array, name)
    return array


def _check_finite(array: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ModelValidationError(f"{name} contains NaN or infinite values ({int(bad.sum())} of {array.size}, "
                                   f"first at index {first}: {array[first]!r}); check the weights you loaded")


def check_int_pair(value: Any, name: str, minimum: int) -> Tuple[int, int]:
    """An int or a pair of ints, each ``>= minimum`` (``1.5`` is refused, not truncated)."""
    array = np.atleast_1d(np.asarray(value))
    if array.ndim != 1 or array.shape[0] not in (1, 2) or array.dtype.kind not in "iu":
        raise ModelValidationError(f"{name} must be an int or a pair of ints, got {value!r}")
    pair = tuple(int(v) for v in np.broadcast_to(array, (2,)))
    if min(pair) < minimum:
        raise ModelValidationError(f"{name} must be >= {minimum}, got {pair}")
    return pair  # type: ignore[return-value]


def check_surrogate(surrogate: Any) -> None:
    """A surrogate derivative with finite positive parameters (training only, but NaN stays refused)."""
    if not callable(getattr(surrogate, "derivative", None)) or not callable(getattr(surrogate, "smooth", None)):
        raise ModelValidationError(f"surrogate must have derivative() and smooth() (e.g. "
                                   f"refsnn.neurons.make_surrogate('rectangular')), got {surrogate!r}")
    for key in getattr(surrogate, "__dataclass_fields__", {}):
        value = getattr(surrogate, key)
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            if not math.isfinite(float(value)) or float(value) <= 0.0:
                raise ModelValidationError(f"surrogate {key} must be a finite number > 0, got {value!r}")


def validate_network(net: Any) -> None:
    """Checks every semantic setting of a built ``SNN`` (module docstring); raises ModelValidationError."""
    dtype = check_dtype(net.dtype)
    check_threshold(net.threshold, dtype)
    check_decay(net.decay)
    check_firing(net.firing)
    check_reset(getattr(net, "reset", "zero"))
    check_reset_grad(net.reset_grad)
    check_surrogate(net.surrogate)
    check_input_shape(net.input_shape)
    for index, layer in enumerate(net.layers):
        for key, array in layer.params().items():
            if array.dtype != dtype:
                raise ModelValidationError(f"layer {index} ({layer.kind}) {key} is {array.dtype}, the network "
                                           f"computes in {dtype.name}")
            _check_finite(array, f"layer {index} ({layer.kind}) {key} in {dtype.name}")


# --- data sets -----------------------------------------------------------------------------------


def check_labels(labels: np.ndarray, source: str, count: Optional[int] = None) -> np.ndarray:
    """Integer labels ``[N]`` in 0..9 (``count``: the number of images they belong to)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DataValidationError(f"{source}: labels must be integers 0..{NUM_CLASSES - 1}, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise DataValidationError(f"{source}: labels must be 1-D [N], got shape {labels.shape}")
    if count is not None and labels.shape[0] != count:
        raise DataValidationError(f"{source}: {labels.shape[0]} labels for {count} images; the label count must "
                                  "equal the image count (the files do not belong together)")
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        raise DataValidationError(f"{source}: labels must be 0..{NUM_CLASSES - 1}, found "
                                  f"{np.unique(labels[bad])[:10].tolist()} at index {int(np.flatnonzero(bad)[0])}")
    return labels


def check_images(images: np.ndarray, source: str, shape: Tuple[int, ...] = (28, 28)) -> np.ndarray:
    """Stored pixels: uint8 ``[N, *shape]`` (0..255 by their dtype; floats, NaN or wider ints refused)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataValidationError(f"{source}: images must be uint8 pixels 0..255, got dtype {images.dtype}")
    if images.ndim != 1 + len(shape) or tuple(images.shape[1:]) != tuple(shape):
        raise DataValidationError(f"{source}: images must have shape [N, {', '.join(map(str, shape))}], "
                                  f"got {images.shape}")
    return images


def check_frames(frames: np.ndarray, source: str, steps: Optional[int] = None) -> np.ndarray:
    """N-MNIST frames: uint8 ``[N, T, 2, 34, 34]`` holding only 0 and 1."""
    frames = np.asarray(frames)
    size = NMNIST_SENSOR_SIZE
    if frames.dtype != np.uint8:
        raise DataValidationError(f"{source}: frames must be uint8 0/1, got dtype {frames.dtype}")
    if frames.ndim != 5 or frames.shape[2:] != (2, size, size) or (steps is not None and frames.shape[1] != steps):
        raise DataValidationError(f"{source}: frames must have shape [N, {steps if steps else 'T'}, 2, {size}, {size}], "
                                  f"got {frames.shape}")
    if frames.size and frames.max() > 1:
        raise DataValidationError(f"{source}: frames must be binary (0/1 spikes), found values "
                                  f"{np.unique(frames[frames > 1])[:5].tolist()}")
    return frames


def check_event_fields(events: np.ndarray, source: str) -> None:
    """Event array shape, fields, sensor coordinates and polarity (any order, may be empty)."""
    missing = {"x", "y", "polarity", "t_us"} - set(events.dtype.names or ())
    if missing:
        raise DataValidationError(f"{source}: events must be a structured array with fields x, y, polarity, t_us "
                                  f"(see read_nmnist_bin); missing {sorted(missing)}")
    if events.ndim != 1:
        raise DataValidationError(f"{source}: events must be 1-D [n_events], got shape {events.shape}")
    size = NMNIST_SENSOR_SIZE
    bad = (events["x"] >= size) | (events["y"] >= size) | (events["x"] < 0) | (events["y"] < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{source}: {int(bad.sum())} event(s) outside the {size}x{size} N-MNIST sensor (x and y must be "
            f"0..{size - 1}), first at event index {first} (x={int(events['x'][first])}, "
            f"y={int(events['y'][first])}); the file is corrupt or not N-MNIST")
    if np.any(events["polarity"] > 1) or np.any(events["polarity"] < 0):
        raise DataValidationError(f"{source}: polarity must be 0 (OFF) or 1 (ON)")
    if np.any(events["t_us"] < 0):
        raise DataValidationError(f"{source}: timestamps must be >= 0")


def check_recording(events: np.ndarray, source: str) -> None:
    """One recording as read from disk: valid events, at least one, timestamps non-decreasing."""
    check_event_fields(events, source)
    if events.shape[0] == 0:
        raise DataValidationError(f"{source}: the recording holds no events (empty file); copy the file again")
    backwards = np.flatnonzero(np.diff(events["t_us"].astype(np.int64)) < 0)
    if backwards.size:
        i = int(backwards[0])
        raise DataValidationError(
            f"{source}: timestamps must be non-decreasing; event {i + 1} (t={int(events['t_us'][i + 1])} us) comes "
            f"before event {i} (t={int(events['t_us'][i])} us), {backwards.size} reversal(s); the file is corrupt")


def check_offsets(offsets: np.ndarray, n_events: int, source: str) -> np.ndarray:
    """Recording offsets ``[N + 1]``: from 0 to ``n_events``, strictly increasing (no empty recording)."""
    offsets = np.asarray(offsets)
    if offsets.dtype.kind not in "iu" or offsets.ndim != 1 or offsets.size < 1:
        raise DataValidationError(f"{source}: event_offsets must be integers [N + 1], got {offsets.dtype} "
                                  f"{offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != n_events or np.any(np.diff(offsets) <= 0):
        raise DataValidationError(f"{source}: event_offsets must increase strictly from 0 to the event count "
                                  f"{n_events} (every recording non-empty), got {offsets[:3].tolist()}..."
                                  f"{offsets[-3:].tolist()}")
    return offsets


def check_unique_ids(ids: np.ndarray, source: str, where: Optional[Sequence[str]] = None) -> None:
    """Sample ids must be unique (``where``: the file of each id, for the message)."""
    ids = np.asarray(ids)
    values, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if np.any(counts > 1):
        dup = values[counts > 1][0]
        places = [where[i] for i in np.flatnonzero(ids == dup)] if where is not None else []
        raise DataValidationError(f"{source}: sample id {int(dup)} occurs {int(counts[counts > 1][0])} times"
                                  + (f" ({', '.join(map(str, places[:3]))})" if places else "")
                                  + "; every recording must have its own id")


# --- checksum manifests --------------------------------------------------------------------------

MANIFEST_NAME = "SHA256SUMS"
_MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def read_manifest(path: Path) -> Dict[str, str]:
    """``SHA256SUMS`` (``<sha256>  <relative path>`` lines, as ``sha256sum`` writes) as ``{path: hex}``."""
    entries: Dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = _MANIFEST_LINE.match(line)
        if match is None:
            raise DataValidationError(f"{path}: line {number} is not '<64 hex digits>  <relative path>': {line[:80]!r}")
        name = match.group(2).strip()
        if name.startswith(("/", "\\")) or ".." in Path(name).parts:
            raise DataValidationError(f"{path}: line {number} names {name!r}; paths must be relative to the folder")
        entries[name] = match.group(1).lower()
    return entries


def format_manifest(entries: Dict[str, str]) -> str:
    """The text of a ``SHA256SUMS`` file holding ``{relative path: sha256 hex}`` (sorted by path),
    in the format :func:`read_manifest` reads and ``sha256sum -c`` checks."""
    for name, digest in entries.items():
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest) or name.startswith(("/", "\\")) or ".." in Path(name).parts \
                or not name.strip() or "\n" in name:
            raise DataValidationError(f"manifest entry {name!r}: needs a relative path without '..' and a SHA-256 "
                                      f"of 64 hex digits, got {digest!r}")
    return "".join(f"{entries[name].lower()}  {name}\n" for name in sorted(entries))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (data manifests, result identities)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_manifest(folder: Path, files: Iterable[Path]) -> None:
    """When ``folder/SHA256SUMS`` exists, each of ``files`` (inside ``folder``) must be listed and match."""
    manifest_path = Path(folder) / MANIFEST_NAME
    if not manifest_path.is_file():
        return
    manifest = read_manifest(manifest_path)
    for file in files:
        relative = Path(file).resolve().relative_to(Path(folder).resolve()).as_posix()
        if relative not in manifest:
            raise DataValidationError(f"{file}: not listed in {manifest_path}; add its line "
                                      f"(sha256sum {relative} >> {MANIFEST_NAME}) or remove the file")
        actual = sha256_file(Path(file))
        if actual != manifest[relative]:
            raise DataValidationError(f"{file}: SHA-256 {actual} differs from {manifest[relative]} in "
                                      f"{manifest_path}; the file is corrupt or was replaced, copy it again")


# --- HDF5 ----------------------------------------------------------------------------------------


def check_h5_tree(h5: Any, source: str, error: Type[ValueError]) -> None:
    """Refuses external and soft links, virtual datasets and external raw storage anywhere in ``h5``."""
    import h5py

    pending = [h5]
    while pending:
        group = pending.pop()
        for name in group:
            link = group.get(name, getlink=True)
            path = f"{group.name.rstrip('/')}/{name}"
            if isinstance(link, h5py.ExternalLink):
                raise error(f"{source}: {path} is an external link to {link.filename}:{link.path}; refsnn files "
                            "must hold their data themselves (external links are refused)")
            if isinstance(link, h5py.SoftLink):
                raise error(f"{source}: {path} is a soft link to {link.path}; refsnn files hold only groups and "
                            "datasets (links are refused)")
            item = group[name]
            if isinstance(item, h5py.Group):
                pending.append(item)
            elif isinstance(item, h5py.Dataset):
                if item.is_virtual:
                    raise error(f"{source}: {path} is a virtual dataset (its data lives in other files); refused")
                if item.id.get_create_plist().get_external_count() > 0:
                    raise error(f"{source}: {path} stores its raw data in external files; refused")
