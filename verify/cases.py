"""CASES.h5: another implementation's claims about a model, for ``python -m verify.check``.

Layout (format ``refsnn-cases``, version 1; arrays are time-major like refsnn's)::

    /                        attrs: format = "refsnn-cases", format_version = 1, producer (text)
    /cases/<name>/           one group per case (any name without "/")
        x_lower, x_upper     uint8 [T', B, *input_shape]      the input box, 0/1, lower <= upper
        C                    float [n_spec, n_out] or [B, n_spec, n_out]   (optional, default identity)
        claimed_lower        float [B, n_spec]                 claimed bounds of C f (optional)
        claimed_upper        float [B, n_spec]
        claimed_membranes/lower/<k>, claimed_membranes/upper/<k>
                             float [T', B, *neuron_shape_k]    claimed membrane bounds of stage k
                                                               (optional; any subset of stages)
        labels               int [B]                           (optional; required with certified)
        certified            uint8/bool [B]                    the implementation's verdicts (optional)
        attrs: eps (float), method (text), dtype (text), description (text)   all optional

``f`` is the vector of mean output spike rates over the box's ``T'`` steps; stage ``k`` is the
k-th Linear/Conv2d with its LIF neuron. Write it with :func:`write_cases`::

    from verify.cases import Case, write_cases
    write_cases("CASES.h5", [Case("eps0.1", x_lower, x_upper, claimed_lower=lo, claimed_upper=up,
                                  labels=y, certified=lo.min(axis=1) > 0, eps=0.1, method="my-crown")],
                producer="my-implementation 1.2")

Errors name the file, the case and the field (``CasesError``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

FORMAT_NAME = "refsnn-cases"
FORMAT_VERSION = 1
ARRAY_FIELDS = ("x_lower", "x_upper", "C", "claimed_lower", "claimed_upper", "labels", "certified")
ATTR_FIELDS = ("eps", "method", "dtype", "description")


class CasesError(ValueError):
    """A CASES file or a case is malformed; the message names the case and the field."""


@dataclass
class Case:
    """One case: an input box per sample, optional specification, claims and verdicts.

    ``claimed_mem_lower/upper``: dict ``{stage k: [T', B, *neuron_shape_k]}`` (or a list over
    stages, ``None`` entries skipped).
    """

    name: str
    x_lower: np.ndarray
    x_upper: np.ndarray
    C: Optional[np.ndarray] = None
    claimed_lower: Optional[np.ndarray] = None
    claimed_upper: Optional[np.ndarray] = None
    claimed_mem_lower: Optional[Dict[int, np.ndarray]] = None
    claimed_mem_upper: Optional[Dict[int, np.ndarray]] = None
    labels: Optional[np.ndarray] = None
    certified: Optional[np.ndarray] = None
    eps: Optional[float] = None
    method: str = ""
    dtype: str = ""
    description: str = ""

    @property
    def batch(self) -> int:
        return int(np.asarray(self.x_lower).shape[1])

    @property
    def steps(self) -> int:
        return int(np.asarray(self.x_lower).shape[0])


def _stage_dict(value, where: str) -> Optional[Dict[int, np.ndarray]]:
    if value is None:
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = [(k, v) for k, v in enumerate(value) if v is not None]
    else:
        raise CasesError(f"{where}: membrane claims must be a dict {{stage: array}} or a list over stages")
    out = {}
    for k, v in items:
        try:
            out[int(k)] = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise CasesError(f"{where}: stage {k!r} is not a numeric array") from None
    return out


def _fail(case: str, field_name: str, message: str) -> CasesError:
    return CasesError(f"case {case!r}: field {field_name!r}: {message}")


def _binary(name: str, field_name: str, value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != bool and not np.issubdtype(array.dtype, np.number):
        raise _fail(name, field_name, f"must be numeric 0/1, got dtype {array.dtype}")
    if array.ndim < 3:
        raise _fail(name, field_name, f"must be time-major [T', B, *input_shape], got shape {array.shape}")
    if array.dtype != bool and not np.all((array == 0) | (array == 1)):
        bad = array[(array != 0) & (array != 1)].ravel()[:3]
        raise _fail(name, field_name, f"must hold binary spikes (0/1), found {bad.tolist()}")
    return array.astype(np.uint8)


CLAIM_VALUES = "allowed: real numbers, -inf/+inf for no bound"


def _finite(name: str, field_name: str, value, shape=None, allowed: str = CLAIM_VALUES) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(name, field_name, "must be a numeric array") from None
    if shape is not None and array.shape != tuple(shape):
        raise _fail(name, field_name, f"has shape {array.shape}, expected {tuple(shape)}")
    if np.any(np.isnan(array)):
        index = tuple(int(v) for v in np.argwhere(np.isnan(array))[0])
        raise _fail(name, field_name, f"contains NaN (first at index {list(index)}); {allowed}")
    return array


def validate_case(case: Case, net=None) -> Case:
    """Checks shapes, binarity, order and NaN; with ``net`` also the model's shapes. Returns a clean copy."""
    name = case.name
    if not isinstance(name, str) or not name or "/" in name:
        raise CasesError(f"case name {name!r} must be a non-empty string without '/'")
    x_lower = _binary(name, "x_lower", case.x_lower)
    x_upper = _binary(name, "x_upper", case.x_upper)
    if x_lower.shape != x_upper.shape:
        raise _fail(name, "x_upper", f"shape {x_upper.shape} differs from x_lower {x_lower.shape}")
    if np.any(x_lower > x_upper):
        index = tuple(int(v) for v in np.argwhere(x_lower > x_upper)[0])
        raise _fail(name, "x_lower", f"x_lower > x_upper at index {list(index)} ([t, b, ...]): the box is empty there")
    steps, batch = x_lower.shape[:2]
    if batch < 1 or steps < 1:
        raise _fail(name, "x_lower", f"needs at least one time step and one sample, got shape {x_lower.shape}")
    if net is not None and tuple(x_lower.shape[2:]) != tuple(net.input_shape):
        raise _fail(name, "x_lower", f"per-sample shape {tuple(x_lower.shape[2:])} does not match the model's "
                                     f"input shape {tuple(net.input_shape)}")
    n_out = net.n_outputs if net is not None else None
    C = None
    if case.C is not None:
        C = _finite(name, "C", case.C, allowed="allowed: finite numbers")
        if not np.all(np.isfinite(C)):
            raise _fail(name, "C", "contains infinite values")
        if C.ndim == 2:
            C = np.broadcast_to(C, (batch,) + C.shape).copy()
        if C.ndim != 3 or C.shape[0] != batch:
            raise _fail(name, "C", f"must be [n_spec, n_out] or [B={batch}, n_spec, n_out], got shape {np.shape(case.C)}")
        if n_out is not None and C.shape[2] != n_out:
            raise _fail(name, "C", f"has {C.shape[2]} columns but the model has {n_out} outputs")
    n_spec = C.shape[1] if C is not None else n_out
    claims = {}
    for side in ("claimed_lower", "claimed_upper"):
        value = getattr(case, side)
        if value is None:
            claims[side] = None
            continue
        array = _finite(name, side, value)
        if array.ndim != 2 or array.shape[0] != batch or (n_spec is not None and array.shape[1] != n_spec):
            expected = f"[B={batch}, n_spec={n_spec if n_spec is not None else '?'}]"
            source = (f"the {C.shape[1]} rows of C" if C is not None else
                      f"the model's {n_out} outputs" if n_out is not None else "the rows of C")
            raise _fail(name, side, f"has shape {array.shape}, expected {expected} (B: samples of x_lower; "
                                    f"n_spec: {source})")
        claims[side] = array
    if claims["claimed_lower"] is not None and claims["claimed_upper"] is not None:
        if claims["claimed_lower"].shape != claims["claimed_upper"].shape:
            raise _fail(name, "claimed_upper", f"shape {claims['claimed_upper'].shape} differs from claimed_lower "
                                               f"{claims['claimed_lower'].shape}")
    membranes = {}
    for side in ("claimed_mem_lower", "claimed_mem_upper"):
        stages = _stage_dict(getattr(case, side), f"case {name!r}: field {side!r}")
        if stages is not None:
            for k, array in stages.items():
                field_name = f"claimed_membranes/{side[12:]}/{k}"
                if np.any(np.isnan(array)):
                    raise _fail(name, field_name, f"contains NaN; {CLAIM_VALUES}")
                if net is not None:
                    if not 0 <= k < len(net.stages):
                        raise _fail(name, field_name, f"stage {k} does not exist (the model has {len(net.stages)})")
                    expected = (steps, batch) + tuple(net.stages[k].neuron_shape)
                    if array.shape != expected:
                        raise _fail(name, field_name, f"has shape {array.shape}, expected {expected} "
                                                      "([T', B, *neuron_shape])")
                elif array.shape[:2] != (steps, batch):
                    raise _fail(name, field_name, f"has shape {array.shape}, expected [T'={steps}, B={batch}, ...]")
        membranes[side] = stages
    labels = certified = None
    if case.labels is not None:
        labels = np.asarray(case.labels)
        if labels.shape != (batch,) or not np.issubdtype(labels.dtype, np.integer):
            raise _fail(name, "labels", f"must be integers of shape ({batch},), got {labels.dtype} {labels.shape}")
        if n_out is not None and (labels.min() < 0 or labels.max() >= n_out):
            raise _fail(name, "labels", f"must lie in [0, {n_out}), got range [{labels.min()}, {labels.max()}]")
    if case.certified is not None:
        certified = np.asarray(case.certified)
        if certified.shape != (batch,) or not (certified.dtype == bool or np.all((certified == 0) | (certified == 1))):
            raise _fail(name, "certified", f"must be 0/1 flags of shape ({batch},), got {certified.dtype} {certified.shape}")
        certified = certified.astype(bool)
        if labels is None:
            raise _fail(name, "labels", "verdicts (certified) need the labels they were made for")
    eps = None
    if case.eps is not None:
        eps = float(case.eps)
        if not np.isfinite(eps):
            raise _fail(name, "eps", f"must be finite, got {case.eps!r}")
    return Case(name, x_lower, x_upper, C, claims["claimed_lower"], claims["claimed_upper"],
                membranes["claimed_mem_lower"], membranes["claimed_mem_upper"], labels, certified, eps,
                str(case.method or ""), str(case.dtype or ""), str(case.description or ""))


def write_cases(path: Union[str, os.PathLike], cases: Sequence[Case], producer: str = "") -> Path:
    """Validates and writes ``cases`` to ``path`` (atomically: a failed write leaves no file)."""
    from refsnn.io import atomic_write_h5
    cases = [validate_case(case) for case in cases]
    names = [case.name for case in cases]
    if len(set(names)) != len(names):
        raise CasesError(f"case names must be unique, got {names}")
    if not cases:
        raise CasesError("no cases to write")

    def write(h5):
        h5.attrs["format"] = FORMAT_NAME
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["producer"] = producer
        root = h5.create_group("cases")
        for case in cases:
            group = root.create_group(case.name)
            for name in ARRAY_FIELDS:
                value = getattr(case, name)
                if value is not None:
                    group.create_dataset(name, data=value.astype(np.uint8) if name == "certified" else value)
            for side, stages in (("lower", case.claimed_mem_lower), ("upper", case.claimed_mem_upper)):
                if stages:
                    sub = group.require_group(f"claimed_membranes/{side}")
                    for k, array in stages.items():
                        sub.create_dataset(str(k), data=array)
            for name in ATTR_FIELDS:
                value = getattr(case, name)
                if value not in (None, ""):
                    group.attrs[name] = value

    return atomic_write_h5(path, write)


def read_cases(path: Union[str, os.PathLike], net=None) -> List[Case]:
    """Reads and validates every case of a CASES file (against ``net``'s shapes if given)."""
    import h5py
    path = Path(path)
    if not path.exists():
        raise CasesError(f"{path}: no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise CasesError(f"{path}: not a readable HDF5 file (truncated or not HDF5?): {error}") from None
    with h5:
        file_format = h5.attrs.get("format")
        if isinstance(file_format, bytes):
            file_format = file_format.decode()
        if file_format != FORMAT_NAME:
            raise CasesError(f"{path}: root attribute 'format' is {file_format!r}, expected {FORMAT_NAME!r} "
                             "(write the file with verify.cases.write_cases)")
        version = int(h5.attrs.get("format_version", 0))
        if version < 1 or version > FORMAT_VERSION:
            raise CasesError(f"{path}: format_version {version} is not supported (this reader: {FORMAT_VERSION})")
        if "cases" not in h5 or not isinstance(h5["cases"], h5py.Group) or not len(h5["cases"]):
            raise CasesError(f"{path}: missing or empty group 'cases'")
        cases = []
        for name, group in h5["cases"].items():
            if not isinstance(group, h5py.Group):
                raise CasesError(f"{path}: case {name!r}: must be a group, found a dataset")
            values = {}
            for field_name in ARRAY_FIELDS:
                if field_name in group:
                    if not isinstance(group[field_name], h5py.Dataset):
                        raise CasesError(f"{path}: case {name!r}: field {field_name!r} must be a dataset")
                    values[field_name] = group[field_name][()]
                elif field_name in ("x_lower", "x_upper"):
                    raise CasesError(f"{path}: case {name!r}: missing required dataset {field_name!r}")
            for side in ("lower", "upper"):
                key = f"claimed_membranes/{side}"
                if key in group:
                    values[f"claimed_mem_{side}"] = {k: group[key][k][()] for k in group[key]
                                                    if isinstance(group[key][k], h5py.Dataset)}
                    bad = [k for k in group[key] if not k.isdigit()]
                    if bad:
                        raise CasesError(f"{path}: case {name!r}: field {key!r}: entries must be named by stage "
                                         f"index 0, 1, ..., found {bad}")
            attrs = {}
            for attr in ATTR_FIELDS:
                if attr in group.attrs:
                    value = group.attrs[attr]
                    attrs[attr] = value.decode() if isinstance(value, bytes) else value
            try:
                case = Case(name, **values, **attrs)
                cases.append(validate_case(case, net))
            except CasesError as error:
                raise CasesError(f"{path}: {error}") from None
        return cases
