"""Bounds export: run another implementation's bound routine and write CASES.h5 for ``verify.check``.

Checking a PyTorch S-CROWN (or any bound code) against refsnn takes three steps::

    net = import_module(model, "snntorch", out="model.h5")            # 1. the model, validated
    export_bounds(my_bounds, cases, "CASES.h5", producer="mylib 0.3")  # 2. its claims
    python -m verify.check --model model.h5 --cases CASES.h5          # 3. SOUND / UNSOUND + witness

``bound_fn(x_lower, x_upper, C)`` receives torch tensors: the input box ``[T', B, *input_shape]``
(0/1, time-major like refsnn) and the specification ``C [B, n_spec, n_out]`` (None: identity, i.e.
bounds of the output rates). It returns ``(lower, upper)`` of ``C f`` as ``[B, n_spec]`` tensors
(either may be None), or a dict with any of ``lower``, ``upper``, ``membranes_lower``,
``membranes_upper`` (lists or dicts over stages of ``[T', B, *neuron_shape]``) and ``certified``
(``[B]`` 0/1 verdicts, needs the case's labels). ``f`` is the vector of mean output spike rates.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from . import require_torch

_CASE_KEYS = ("name", "x_lower", "x_upper", "C", "labels", "eps", "method", "description")


def _as_numpy(value, what: str) -> Optional[np.ndarray]:
    torch = require_torch()
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.numpy().astype(np.float64)  # float32 -> float64 is exact: the claim is kept as made
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: expected a tensor or an array, got {type(value).__name__}") from None


def _stages(value, what: str):
    if value is None:
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return {int(k): _as_numpy(v, f"{what}[{k}]") for k, v in items if v is not None}


def _case_fields(case, index: int) -> dict:
    if isinstance(case, dict):
        fields = dict(case)
    else:  # a verify.cases.Case or any object with the same attributes
        fields = {key: getattr(case, key) for key in _CASE_KEYS if hasattr(case, key)}
    unknown = set(fields) - set(_CASE_KEYS)
    if unknown:
        raise ValueError(f"case {index}: unknown fields {sorted(unknown)}; a case has {list(_CASE_KEYS)}")
    for key in ("x_lower", "x_upper"):
        if fields.get(key) is None:
            raise ValueError(f"case {index}: missing {key!r} ([T', B, *input_shape], 0/1)")
    fields.setdefault("name", f"case{index}")
    return fields


def export_bounds(bound_fn: Callable, cases: Iterable[Any], out_path: Union[str, os.PathLike], *,
                  producer: str = "", method: str = "", dtype=None, device: Optional[str] = None,
                  net=None) -> Path:
    """Runs ``bound_fn`` on every case and writes the CASES file ``verify.check`` reads.

    Parameters
    ----------
    bound_fn: ``bound_fn(x_lower, x_upper, C) -> (lower, upper)`` or a dict (module docstring).
    cases: dicts (or ``verify.cases.Case`` objects) with ``x_lower``, ``x_upper`` (numpy or torch,
        ``[T', B, *input_shape]`` of 0/1) and optionally ``name``, ``C`` (``[n_spec, n_out]`` or
        ``[B, n_spec, n_out]``), ``labels`` ``[B]``, ``eps``, ``method``, ``description``.
    out_path: the CASES.h5 to write (atomically; nothing is written if any case fails).
    producer: who made the claims (name and version), stored in the file.
    dtype: torch dtype of the tensors given to ``bound_fn`` (default ``torch.float32``, what most
        PyTorch code runs in); the returned claims are stored exactly (float64 holds any float32).
    net: a refsnn SNN to check the shapes against before writing (optional).
    """
    torch = require_torch()
    from verify.cases import Case, write_cases
    dtype = torch.float32 if dtype is None else dtype
    written = []
    for index, case in enumerate(cases):
        fields = _case_fields(case, index)
        name = str(fields["name"])
        x_lower = np.asarray(_as_numpy(fields["x_lower"], f"{name}: x_lower"))
        x_upper = np.asarray(_as_numpy(fields["x_upper"], f"{name}: x_upper"))
        batch = x_lower.shape[1] if x_lower.ndim >= 2 else 0
        C = _as_numpy(fields.get("C"), f"{name}: C")
        if C is not None and C.ndim == 2:
            C = np.broadcast_to(C, (batch,) + C.shape).copy()
        tensors = [None if a is None else torch.as_tensor(a, dtype=dtype, device=device) for a in (x_lower, x_upper, C)]
        with torch.no_grad():
            result = bound_fn(*tensors)
        if isinstance(result, dict):
            unknown = set(result) - {"lower", "upper", "membranes_lower", "membranes_upper", "certified"}
            if unknown:
                raise ValueError(f"case {name!r}: bound_fn returned unknown keys {sorted(unknown)}")
            claims = result
        elif isinstance(result, (tuple, list)) and len(result) == 2:
            claims = {"lower": result[0], "upper": result[1]}
        else:
            raise TypeError(f"case {name!r}: bound_fn must return (lower, upper) or a dict, "
                            f"got {type(result).__name__}")
        returned = [v for v in (claims.get("lower"), claims.get("upper")) if isinstance(v, torch.Tensor)]
        certified = claims.get("certified")
        labels = fields.get("labels")
        labels = None if labels is None else np.asarray(
            labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
        written.append(Case(
            name, x_lower, x_upper, C=C,
            claimed_lower=_as_numpy(claims.get("lower"), f"{name}: lower"),
            claimed_upper=_as_numpy(claims.get("upper"), f"{name}: upper"),
            claimed_mem_lower=_stages(claims.get("membranes_lower"), f"{name}: membranes_lower"),
            claimed_mem_upper=_stages(claims.get("membranes_upper"), f"{name}: membranes_upper"),
            labels=labels,
            certified=None if certified is None else np.asarray(_as_numpy(certified, f"{name}: certified")) != 0,
            eps=fields.get("eps"), method=str(fields.get("method") or method),
            dtype=str(returned[0].dtype).replace("torch.", "") if returned else "",
            description=str(fields.get("description") or "")))
    if not written:
        raise ValueError("no cases given")
    if net is not None:
        from verify.cases import validate_case
        for case in written:
            validate_case(case, net)
    return write_cases(out_path, written, producer=producer)
