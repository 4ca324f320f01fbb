"""HDF5 model files and training checkpoints (schema: docs/FORMAT.md).

A model file holds the network: root attributes for the neuron model and one group per layer
``layers/<i>`` with ``kind``, hyper-parameter attributes and ``weight``/``bias`` datasets. A
checkpoint is a model file plus a ``checkpoint`` group (optimizer state, training config,
metrics history, RNG state, position), so ``load_model`` reads checkpoints too.

Every write is atomic: the file is written under a temporary name in the same directory,
flushed to disk (fsync) and renamed over the target, so an interrupted or failing write never
leaves a partial file behind and never destroys the previous version.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import h5py
import numpy as np

from .data import repo_path
from .layers import LAYER_KINDS, AvgPool2d, Conv2d, Flatten, Layer, Linear
from .network import SNN
from .neurons import SURROGATES, make_surrogate, surrogate_config
from .validation import FIRING_MODES, RESET_MODES, check_h5_tree
from .runlock import pid_running

PathLike = Union[str, os.PathLike]

FORMAT_NAME = "refsnn-model"
FORMAT_VERSION = 1  # major version written (as the int 1, read as 1.0)
FORMAT_MINOR = 0
CHECKPOINT_FORMAT = "refsnn-checkpoint"
CHECKPOINT_VERSION = 1  # major version written (as the int 1, read as 1.0)
CHECKPOINT_MINOR = 0


class FormatError(ValueError):
    """A model or checkpoint file is unreadable, corrupt or incompatible."""


class FormatNotice(UserWarning):
    """A file written by a newer minor version of the format, read because everything in it is known."""


# --- atomic writes -------------------------------------------------------------------------------

class OutputWriteError(OSError, ValueError):
    """A file could not be written (disk full, read-only or unwritable folder); the previous
    version of the file is unchanged and no temporary file is left behind."""


class CheckpointVerifyError(FormatError):
    """A checkpoint written to its temporary file did not read back identical; not installed."""


class NonFiniteError(ValueError):
    """Refused to write a checkpoint holding NaN or Inf values (it could not be trained on)."""


# Temporary files are ``.<target name>.<writer PID>.<8 random characters>.tmp`` next to the
# target: the PID lets a later writer of the same target remove those of writers that died.
_TEMP_SUFFIX = ".tmp"


def _temp_pattern(path: Path) -> "re.Pattern[str]":
    return re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[a-z0-9_]{{8}}{re.escape(_TEMP_SUFFIX)}$")


def clean_orphan_temps(path: PathLike) -> List[Path]:
    """Removes the temporary files of target ``path`` left by writers that are no longer
    running on this host (killed mid-write); returns the removed paths. Only names of
    :func:`_make_temp`'s pattern for this exact target are touched."""
    path = Path(path)
    pattern = _temp_pattern(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or pid_running(pid):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(Path(entry.path))
    return removed


def _write_error(path: Path, error: OSError) -> OutputWriteError:
    reason = error.strerror or str(error) or type(error).__name__
    hint = {errno.ENOSPC: "free disk space or write elsewhere", errno.EDQUOT: "free quota or write elsewhere",
            errno.EROFS: "the file system is read-only: write elsewhere",
            errno.EACCES: "no permission: write elsewhere", errno.EPERM: "no permission: write elsewhere"}
    where = hint.get(error.errno, "check the folder and the disk")
    unchanged = "the previous version is unchanged" if path.exists() else "nothing was written"
    return OutputWriteError(error.errno, f"cannot write {path}: {reason}; {unchanged} ({where})")


def _atomic_write(path: PathLike, fill: Callable[[str], None], verify: Optional[Callable[[str], None]]) -> Path:
    path = Path(path)
    temp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_orphan_temps(path)
        temp_name = _make_temp(path)
        fill(temp_name)
        with open(temp_name, "rb+") as raw:
            os.fsync(raw.fileno())
        if verify is not None:
            verify(temp_name)
        os.replace(temp_name, path)
        temp_name = None
    except OSError as error:
        if isinstance(error, OutputWriteError):
            raise
        raise _write_error(path, error) from None
    finally:
        if temp_name is not None:
            try:
                os.unlink(temp_name)
            except FileNotFoundError:
                pass
    _fsync_directory(path.parent)
    return path


def atomic_write_h5(path: PathLike, write: Callable[[h5py.File], None],
                    verify: Optional[Callable[[str], None]] = None) -> Path:
    """Runs ``write(h5file)`` on a temporary file next to ``path``, fsyncs it, runs
    ``verify(temp_path)`` (which raises when the file is wrong) and renames it onto ``path``.
    On any exception the temporary file is removed and ``path`` is untouched; an ``OSError``
    (disk full, unwritable folder) comes out as :class:`OutputWriteError` with a one-line message."""
    def fill(temp_name: str) -> None:
        with h5py.File(temp_name, "w") as h5:
            write(h5)

    return _atomic_write(path, fill, verify)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Writes a text file atomically (temp file + fsync + rename), as :func:`atomic_write_h5`."""
    def fill(temp_name: str) -> None:
        with open(temp_name, "w", encoding="utf-8") as out:
            out.write(text)

    return _atomic_write(path, fill, None)


def _make_temp(path: Path) -> str:
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    os.close(handle)
    # mkstemp creates the file 0600; give the final file the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp_name, 0o666 & ~umask)
    return temp_name


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (e.g. Windows).
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# --- writing -------------------------------------------------------------------------------------

def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a refsnn file (use numbers, strings, "
                    "lists or dicts)")


def _create_dataset(group: h5py.Group, name: str, data, **options) -> h5py.Dataset:
    """Creates a dataset with a Fletcher-32 checksum (verified by HDF5 on every read).

    Every array refsnn writes (models, checkpoints, converted data sets) goes through here.
    ``options`` (``compression``, ``chunks``) go to ``create_dataset``. HDF5 can checksum only
    chunked data, so a scalar or an empty array is stored plainly, without ``options`` (nothing to
    corrupt silently in the latter; refsnn writes no scalar datasets).
    """
    array = np.asarray(data)
    if array.ndim == 0 or array.size == 0:
        return group.create_dataset(name, data=array)
    return group.create_dataset(name, data=array, fletcher32=True, **options)


def write_model(h5: h5py.Group, net: SNN) -> None:
    """Writes the network into an open file or group: root attributes + ``layers/<i>``."""
    h5.attrs["format"] = FORMAT_NAME
    h5.attrs["format_version"] = FORMAT_VERSION
    h5.attrs["threshold"] = float(net.threshold)
    h5.attrs["decay"] = float(net.decay)
    h5.attrs["firing"] = net.firing
    h5.attrs["input_shape"] = np.asarray(net.input_shape, dtype=np.int64)
    h5.attrs["surrogate"] = _json(surrogate_config(net.surrogate))
    h5.attrs["reset_grad"] = bool(net.reset_grad)
    if net.reset != "zero":  # written only when set: every LIF file stays as before, old readers refuse it
        h5.attrs["reset"] = net.reset
    h5.attrs["dtype"] = net.dtype.name
    layers = h5.create_group("layers")
    layers.attrs["count"] = len(net.layers)
    for index, layer in enumerate(net.layers):
        group = layers.create_group(str(index))
        group.attrs["kind"] = layer.kind
        if isinstance(layer, Conv2d):
            group.attrs["stride"] = np.asarray(layer.stride, dtype=np.int64)
            group.attrs["padding"] = np.asarray(layer.padding, dtype=np.int64)
            group.attrs["kernel_size"] = np.asarray(layer.kernel_size, dtype=np.int64)
        elif isinstance(layer, AvgPool2d):
            group.attrs["kernel_size"] = np.asarray(layer.kernel_size, dtype=np.int64)
            group.attrs["stride"] = np.asarray(layer.stride, dtype=np.int64)
        for name, array in layer.params().items():
            _create_dataset(group, name, array)


def save_model(path: PathLike, net: SNN, **metadata) -> Path:
    """Writes ``net`` to ``path`` atomically. Each ``metadata`` value (numbers, strings, lists,
    dicts) is stored as a JSON attribute of the ``metadata`` group."""
    encoded = {key: _json(value) for key, value in metadata.items()}  # fail before touching disk

    def write(h5):
        write_model(h5, net)
        group = h5.create_group("metadata")
        for key, text in encoded.items():
            group.attrs[key] = text

    return atomic_write_h5(path, write)


# --- reading -------------------------------------------------------------------------------------

_ROOT_ATTRS = {"format", "format_version", "threshold", "decay", "firing", "input_shape", "dtype", "surrogate",
               "reset_grad", "reset"}
_ROOT_MEMBERS = {"layers", "metadata", "checkpoint"}
_LAYER_ATTRS = {"linear": {"kind"}, "conv2d": {"kind", "stride", "padding", "kernel_size"},
                "avgpool2d": {"kind", "kernel_size", "stride"}, "flatten": {"kind"}}
_LAYER_MEMBERS = {"linear": {"weight", "bias"}, "conv2d": {"weight", "bias"}, "avgpool2d": set(), "flatten": set()}


def _open(path: PathLike) -> h5py.File:
    """Opens a model or checkpoint file for reading, after checking it holds only its own data.

    External links, soft links, virtual datasets and external raw storage are refused
    (``refsnn.validation.check_h5_tree``), so a file cannot make refsnn read another file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model or checkpoint file: {path}")
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise FormatError(f"{path} is not a readable HDF5 file (truncated or corrupt?): {error}") from None
    try:
        check_h5_tree(h5, str(path), FormatError)
    except OSError as error:
        h5.close()
        raise FormatError(f"{path} is corrupt (HDF5 error while listing its objects): {error}") from None
    except BaseException:
        h5.close()
        raise
    return h5


def _read_array(dataset: h5py.Dataset, source: str) -> np.ndarray:
    """A dataset's values; a failed Fletcher-32 checksum or any HDF5 read error is a FormatError."""
    try:
        return dataset[()]
    except OSError as error:
        raise FormatError(f"{source}: {dataset.name} cannot be read (checksum mismatch or corrupt data: "
                          f"{error}); the file is damaged, restore it") from None


def _check_version(group: h5py.Group, source: str, what: str, supported: tuple) -> tuple:
    """Parses ``format_version`` as ``(major, minor)`` (docs/FORMAT.md, "Versions").

    An int ``N`` (or an integral float) is ``N.0``; a string must be ``"MAJOR.MINOR"``. A newer
    major is refused; the same major with a newer minor is read with a ``FormatNotice`` (minor
    versions only add items, and every unknown item is refused anyway). ``1.9`` as a float is
    refused, never truncated to 1.
    """
    value = _attr(group, "format_version", source)
    major = minor = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        major, minor = int(value), 0
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        major, minor = int(value), 0
    elif isinstance(value, str) and re.fullmatch(r"\d+\.\d+", value.strip()):
        major, minor = (int(part) for part in value.strip().split("."))
    if major is None:
        shown = value.item() if isinstance(value, np.generic) else value  # 1.9, not np.float64(1.9)
        raise FormatError(f"{source}: {what} format_version must be an integer or a 'MAJOR.MINOR' string, got "
                          f"{shown!r} ({type(value).__name__})")
    if major < 1:
        raise FormatError(f"{source}: invalid {what} format version {major}.{minor}")
    if major > supported[0]:
        raise FormatError(f"{source}: {what} format version {major}.{minor} is newer than this refsnn supports "
                          f"({supported[0]}.{supported[1]}); upgrade refsnn")
    if major == supported[0] and minor > supported[1]:
        warnings.warn(f"{source}: {what} format version {major}.{minor} is newer than {supported[0]}."
                      f"{supported[1]}; every item in the file is known to this refsnn, so it is read",
                      FormatNotice, stacklevel=3)
    return major, minor


def _attr(group: h5py.Group, name: str, source: str):
    if name not in group.attrs:
        raise FormatError(f"{source}: missing attribute {name!r} on {group.name}; see {repo_path('docs/FORMAT.md')}")
    value = group.attrs[name]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return value


def _known_items(group: h5py.Group, source: str, attrs: set, members: set) -> None:
    """Refuses attributes and members this reader does not know (they could change the meaning)."""
    unknown_attrs = sorted(set(group.attrs) - attrs)
    unknown_members = sorted(set(group) - members)
    if unknown_attrs or unknown_members:
        parts = ([f"attribute(s) {unknown_attrs}"] if unknown_attrs else []) + \
                ([f"member(s) {unknown_members}"] if unknown_members else [])
        raise FormatError(f"{source}: {group.name} has unknown {' and '.join(parts)}; allowed attributes "
                          f"{sorted(attrs)}, members {sorted(members)} (an unknown setting may change the network's "
                          "meaning, so it is refused, not ignored)")


def _number_attr(group: h5py.Group, name: str, source: str) -> float:
    value = _attr(group, name, source)
    array = np.asarray(value)
    if isinstance(value, str) or array.shape != () or array.dtype.kind not in "iuf":
        raise FormatError(f"{source}: attribute {name!r} must be a number, got {value!r}")
    return float(array)


def _int_pair(group: h5py.Group, name: str, source: str) -> tuple:
    value = np.atleast_1d(np.asarray(_attr(group, name, source)))
    if value.shape not in ((1,), (2,)) or not np.issubdtype(value.dtype, np.integer):
        raise FormatError(f"{source}: attribute {name!r} of {group.name} must be one or two integers, "
                          f"got {value.tolist()}")
    return tuple(int(v) for v in np.broadcast_to(value, (2,)))


def _dataset(group: h5py.Group, name: str, source: str) -> np.ndarray:
    if name not in group or not isinstance(group[name], h5py.Dataset):
        raise FormatError(f"{source}: layer {group.name} ({group.attrs.get('kind')!r}) has no "
                          f"{name!r} dataset")
    array = _read_array(group[name], source)
    if not np.issubdtype(array.dtype, np.floating):
        raise FormatError(f"{source}: {group.name}/{name} must be a float array, got {array.dtype}")
    return array


def _read_layer(group: h5py.Group, source: str) -> Layer:
    if not isinstance(group, h5py.Group):
        raise FormatError(f"{source}: {group.name} must be a group (one per layer)")
    kind = _attr(group, "kind", source)
    if kind not in LAYER_KINDS:
        raise FormatError(f"{source}: layer {group.name} has unknown kind {kind!r}; "
                          f"known kinds: {sorted(LAYER_KINDS)}")
    _known_items(group, source, _LAYER_ATTRS[kind], _LAYER_MEMBERS[kind])
    try:
        if kind == "linear":
            return Linear(_dataset(group, "weight", source), _dataset(group, "bias", source))
        if kind == "conv2d":
            weight = _dataset(group, "weight", source)
            layer = Conv2d(weight, _dataset(group, "bias", source), stride=_int_pair(group, "stride", source),
                           padding=_int_pair(group, "padding", source))
            if "kernel_size" in group.attrs and _int_pair(group, "kernel_size", source) != layer.kernel_size:
                raise FormatError(f"{source}: {group.name} kernel_size attribute "
                                  f"{_int_pair(group, 'kernel_size', source)} disagrees with the weight "
                                  f"shape {weight.shape}")
            return layer
        if kind == "avgpool2d":
            return AvgPool2d(_int_pair(group, "kernel_size", source), _int_pair(group, "stride", source))
        return Flatten()
    except FormatError:
        raise
    except (ValueError, TypeError) as error:
        raise FormatError(f"{source}: layer {group.name} ({kind}): {error}") from None


def read_model(h5: h5py.Group, source: str = "model", dtype=None) -> SNN:
    """Builds the ``SNN`` stored in an open file or group (see :func:`write_model`).

    Every rule of docs/FORMAT.md is checked and the network is validated by ``SNN(...)``
    (``refsnn.validation``); any problem, HDF5 read errors included, is a :class:`FormatError`.
    """
    try:
        return _read_model(h5, source, dtype)
    except OSError as error:
        raise FormatError(f"{source}: the file is corrupt (HDF5 read error: {error}); restore it") from None


def _read_model(h5: h5py.Group, source: str, dtype) -> SNN:
    file_format = _attr(h5, "format", source)
    if file_format != FORMAT_NAME:
        raise FormatError(f"{source}: root attribute format is {file_format!r}, expected {FORMAT_NAME!r}")
    _check_version(h5, source, "model", (FORMAT_VERSION, FORMAT_MINOR))
    _known_items(h5, source, _ROOT_ATTRS, _ROOT_MEMBERS)
    firing = _attr(h5, "firing", source)
    if firing not in FIRING_MODES:
        raise FormatError(f"{source}: firing must be one of {FIRING_MODES}, got {firing!r}")
    input_shape = np.atleast_1d(np.asarray(_attr(h5, "input_shape", source)))
    if input_shape.ndim != 1 or not np.issubdtype(input_shape.dtype, np.integer) or np.any(input_shape < 1):
        raise FormatError(f"{source}: input_shape must be positive integers, got {input_shape.tolist()}")
    surrogate = make_surrogate()
    if "surrogate" in h5.attrs:
        try:
            options = json.loads(_attr(h5, "surrogate", source))
            name = options.pop("name")
            if name not in SURROGATES:
                raise ValueError(f"unknown surrogate {name!r}")
            surrogate = make_surrogate(name, **options)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise FormatError(f"{source}: bad surrogate attribute: {error}") from None
    file_dtype = _attr(h5, "dtype", source) if "dtype" in h5.attrs else "float64"
    if file_dtype not in ("float32", "float64"):
        raise FormatError(f"{source}: dtype must be 'float32' or 'float64', got {file_dtype!r}")
    reset_grad = True
    if "reset_grad" in h5.attrs:
        reset_grad = h5.attrs["reset_grad"]
        if not isinstance(reset_grad, (bool, np.bool_)):
            raise FormatError(f"{source}: attribute 'reset_grad' must be a boolean, got {reset_grad!r}")
    reset = _attr(h5, "reset", source) if "reset" in h5.attrs else "zero"
    if reset not in RESET_MODES:
        raise FormatError(f"{source}: reset must be one of {RESET_MODES}, got {reset!r}")
    threshold = _number_attr(h5, "threshold", source)
    decay = _number_attr(h5, "decay", source)
    if "layers" not in h5 or not isinstance(h5["layers"], h5py.Group):
        raise FormatError(f"{source}: missing group 'layers'; see {repo_path('docs/FORMAT.md')}")
    layers_group = h5["layers"]
    names = sorted(layers_group.keys(), key=lambda key: (not key.isdigit(), int(key) if key.isdigit() else 0))
    if names != [str(i) for i in range(len(names))] or not names:
        raise FormatError(f"{source}: 'layers' must hold groups named 0..n-1 (n >= 1), found {list(layers_group)}")
    if set(layers_group.attrs) - {"count"}:
        raise FormatError(f"{source}: /layers has unknown attribute(s) {sorted(set(layers_group.attrs) - {'count'})}")
    if "count" in layers_group.attrs and int(layers_group.attrs["count"]) != len(names):
        raise FormatError(f"{source}: layers/count says {int(layers_group.attrs['count'])} layers, "
                          f"the file holds {len(names)} (truncated write?)")
    layers = [_read_layer(layers_group[name], source) for name in names]
    try:
        return SNN(layers, threshold=threshold, decay=decay, firing=firing, surrogate=surrogate,
                   reset_grad=bool(reset_grad), input_shape=tuple(int(v) for v in input_shape),
                   dtype=np.dtype(dtype if dtype is not None else file_dtype), reset=reset)
    except (ValueError, TypeError) as error:
        raise FormatError(f"{source}: the stored layers do not form a valid network: {error}") from None


def load_model(path: PathLike, dtype=None) -> SNN:
    """Reads a model (or checkpoint) file; ``dtype`` overrides the stored compute dtype."""
    with _open(path) as h5:
        return read_model(h5, str(path), dtype)


def read_metadata(path: PathLike) -> Dict[str, Any]:
    """The ``metadata`` attributes of a model file, JSON-decoded (empty dict if none)."""
    with _open(path) as h5:
        if "metadata" not in h5:
            return {}
        try:
            return {key: json.loads(value) for key, value in h5["metadata"].attrs.items()}
        except (TypeError, ValueError) as error:
            raise FormatError(f"{path}: metadata attributes must be JSON text: {error}") from None
        except OSError as error:
            raise FormatError(f"{path}: metadata cannot be read (corrupt file: {error})") from None


# --- checkpoints ---------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """Everything needed to continue a training run exactly where it stopped.

    ``epoch``: the epoch in progress (from 0); ``step``: batches of that epoch already done;
    ``global_step``: optimizer steps so far; ``extra``: loop state (e.g. running sums).
    """

    net: SNN
    optimizer_state: Dict[str, Any]
    config: Dict[str, Any]
    history: List[Dict[str, Any]]
    rng_state: Dict[str, Any]
    epoch: int
    step: int
    global_step: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: PathLike, net: SNN, optimizer, config, history, rng_state, epoch: int,
                    step: int, global_step: int = 0, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Writes a checkpoint atomically. ``optimizer``: an optimizer from :mod:`refsnn.optim` (or
    its ``state_dict``); ``config``: a ``TrainConfig`` or dict; ``rng_state``: a NumPy
    ``bit_generator.state`` dict (or a ``Generator``)."""
    optimizer_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    config_dict = config if isinstance(config, dict) else config.to_dict()
    if isinstance(rng_state, np.random.Generator):
        rng_state = rng_state.bit_generator.state
    arrays = dict(zip(net.param_names(), net.params()))
    arrays.update({f"optimizer {name}[{i}]": array for name, buffers in optimizer_state["buffers"].items()
                   for i, array in enumerate(buffers)})
    bad = [name for name, array in arrays.items() if not np.all(np.isfinite(array))]
    if bad:
        raise NonFiniteError(f"refusing to write checkpoint {path}: {', '.join(bad)} hold NaN or Inf "
                             "(the previous checkpoint is kept)")
    texts = {"config": _json(config_dict), "history": _json(list(history)), "rng_state": _json(rng_state),
             "extra": _json(extra or {}), "optimizer_hyperparams": _json(optimizer_state["hyperparams"])}

    def write(h5):
        write_model(h5, net)
        group = h5.create_group("checkpoint")
        group.attrs["format"] = CHECKPOINT_FORMAT
        group.attrs["format_version"] = CHECKPOINT_VERSION
        group.attrs["epoch"] = int(epoch)
        group.attrs["step"] = int(step)
        group.attrs["global_step"] = int(global_step)
        for key in ("config", "history", "rng_state", "extra"):
            group.attrs[key] = texts[key]
        opt = group.create_group("optimizer")
        opt.attrs["name"] = optimizer_state["name"]
        opt.attrs["lr"] = float(optimizer_state["lr"])
        opt.attrs["step_count"] = int(optimizer_state["step_count"])
        opt.attrs["hyperparams"] = texts["optimizer_hyperparams"]
        for buffer_name, arrays in optimizer_state["buffers"].items():
            buffers = opt.create_group(f"buffers/{buffer_name}")
            buffers.attrs["count"] = len(arrays)
            for index, array in enumerate(arrays):
                _create_dataset(buffers, str(index), array)

    def verify(temp_name: str) -> None:
        # Read the written file back before it replaces the previous checkpoint: a file that
        # does not reload identical (bad disk, bad driver, full disk on close) is never installed.
        try:
            stored = load_checkpoint(temp_name)
        except (FormatError, OSError) as error:
            raise CheckpointVerifyError(f"checkpoint {path} did not read back after writing ({error}); "
                                        "the previous checkpoint is kept") from None
        stored_arrays = dict(zip(stored.net.param_names(), stored.net.params()))
        stored_arrays.update({f"optimizer {name}[{i}]": array for name, buffers in stored.optimizer_state["buffers"].items()
                              for i, array in enumerate(buffers)})
        differ = [name for name in arrays if name not in stored_arrays
                  or stored_arrays[name].dtype != arrays[name].dtype
                  or not np.array_equal(stored_arrays[name], arrays[name])]
        differ += [name for name in stored_arrays if name not in arrays]
        position = (stored.epoch, stored.step, stored.global_step)
        if position != (int(epoch), int(step), int(global_step)):
            differ.append("epoch/step")
        for key, value in (("config", stored.config), ("history", stored.history), ("rng_state", stored.rng_state),
                           ("extra", stored.extra), ("optimizer_hyperparams", stored.optimizer_state["hyperparams"])):
            if _json(value) != texts[key]:
                differ.append(key)
        if differ:
            raise CheckpointVerifyError(f"checkpoint {path} read back different from what was written "
                                        f"({', '.join(differ)}); the previous checkpoint is kept")

    return atomic_write_h5(path, write, verify)


def load_checkpoint(path: PathLike, dtype=None) -> Checkpoint:
    """Reads a checkpoint written by :func:`save_checkpoint` (clear errors when it is not one)."""
    source = str(path)
    with _open(path) as h5:
        net = read_model(h5, source, dtype)
        if "checkpoint" not in h5:
            raise FormatError(f"{source} is a model file, not a training checkpoint (no 'checkpoint' group)")
        group = h5["checkpoint"]
        if _attr(group, "format", source) != CHECKPOINT_FORMAT:
            raise FormatError(f"{source}: checkpoint/format must be {CHECKPOINT_FORMAT!r}")
        _check_version(group, source, "checkpoint", (CHECKPOINT_VERSION, CHECKPOINT_MINOR))
        try:
            decoded = {key: json.loads(_attr(group, key, source))
                       for key in ("config", "history", "rng_state", "extra")}
        except (TypeError, ValueError) as error:
            raise FormatError(f"{source}: checkpoint attributes must be JSON text: {error}") from None
        if "optimizer" not in group:
            raise FormatError(f"{source}: checkpoint has no 'optimizer' group")
        opt = group["optimizer"]
        buffers = {}
        if "buffers" in opt:
            for buffer_name, arrays in opt["buffers"].items():
                count = int(arrays.attrs.get("count", len(arrays)))
                if sorted(arrays.keys(), key=int) != [str(i) for i in range(count)]:
                    raise FormatError(f"{source}: optimizer buffer {buffer_name!r} is incomplete")
                buffers[buffer_name] = [_read_array(arrays[str(i)], source) for i in range(count)]
        try:
            hyperparams = json.loads(_attr(opt, "hyperparams", source))
        except (TypeError, ValueError) as error:
            raise FormatError(f"{source}: checkpoint/optimizer hyperparams must be JSON text: {error}") from None
        if not all(isinstance(decoded[key], kind) for key, kind in
                   (("config", dict), ("history", list), ("rng_state", dict), ("extra", dict))) \
                or not isinstance(hyperparams, dict):
            raise FormatError(f"{source}: checkpoint attributes config, rng_state, extra and optimizer hyperparams "
                              "must be JSON objects and history a JSON list")
        optimizer_state = {"name": _attr(opt, "name", source), "lr": float(_attr(opt, "lr", source)),
                           "step_count": int(_attr(opt, "step_count", source)),
                           "hyperparams": hyperparams, "buffers": buffers}
        return Checkpoint(net=net, optimizer_state=optimizer_state, config=decoded["config"],
                          history=decoded["history"], rng_state=decoded["rng_state"],
                          epoch=int(_attr(group, "epoch", source)), step=int(_attr(group, "step", source)),
                          global_step=int(_attr(group, "global_step", source)), extra=decoded["extra"])
