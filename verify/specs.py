"""Output specifications ``C f`` (f = mean output rate ``[n_out]``), same conventions as
``refsnn.bounds.compute_bounds``: ``C`` is None (identity: bounds of each rate), ``[n_spec, n_out]``
(shared by the batch) or ``[B, n_spec, n_out]`` (per sample)."""
from __future__ import annotations

from typing import Optional

import numpy as np


def normalize_specs(C, batch: int, n_out: int, name: str = "C") -> np.ndarray:
    """Returns ``C`` as float64 ``[B, n_spec, n_out]``; clear errors for wrong shapes or NaN."""
    if C is None:
        return np.broadcast_to(np.eye(n_out), (batch, n_out, n_out)).copy()
    C = np.asarray(C, dtype=np.float64)
    if C.ndim == 2:
        C = np.broadcast_to(C, (batch,) + C.shape).copy()
    if C.ndim != 3 or C.shape[0] != batch or C.shape[2] != n_out:
        raise ValueError(f"{name} must be [n_spec, {n_out}] or [{batch}, n_spec, {n_out}] "
                         f"(batch {batch}, {n_out} outputs), got shape {np.shape(C)}")
    if not np.all(np.isfinite(C)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return C


def margin_specs(labels, n_out: int) -> np.ndarray:
    """Margin rows ``e_label - e_j`` for every ``j != label``: ``[B, n_out - 1, n_out]``."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if np.any(labels < 0) or np.any(labels >= n_out):
        raise ValueError(f"labels must lie in [0, {n_out}), got {labels.tolist()}")
    out = np.zeros((labels.size, n_out - 1, n_out))
    for b, label in enumerate(labels):
        others = [j for j in range(n_out) if j != label]
        out[b, np.arange(n_out - 1), label] = 1.0
        out[b, np.arange(n_out - 1), others] = -1.0
    return out


def other_classes(label: int, n_out: int) -> list:
    return [j for j in range(n_out) if j != int(label)]


def spec_grid(C_row: np.ndarray, steps: int) -> Optional[float]:
    """Spacing of the values ``C_row . f`` can take when ``C_row`` is integral (f in multiples of 1/T'), else None."""
    if np.all(C_row == np.round(C_row)):
        return 1.0 / steps
    return None
