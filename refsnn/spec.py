"""Output specifications ``C f`` (``f`` the output rates ``[B, n_out]`` over the ``T'`` steps) and the
bound helpers every method shares: the margin rows, the trivial range, interval arithmetic on ``C``
and the "best" intersection.

``C`` is ``[B, n_spec, n_out]``, ``[n_spec, n_out]`` (shared by the batch) or None (identity:
bounds of each rate). Pure NumPy; nothing here depends on the network.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

__all__ = ["margin_spec", "other_classes", "normalize_spec", "trivial_bounds", "spec_interval", "best_bounds"]


def other_classes(labels, n_out: int) -> np.ndarray:
    """``[B, n_out - 1]``: the classes ``j != y`` in increasing order (the row order of ``margin_spec``)."""
    classes = np.arange(n_out)
    table = np.array([np.delete(classes, y) for y in range(n_out)])
    return table[np.asarray(labels)]


def margin_spec(labels, n_out: int) -> np.ndarray:
    """Specification ``C [B, n_out - 1, n_out]`` whose rows are ``e_y - e_j`` for every ``j != y``.

    ``C f`` holds the margins ``f_y - f_j``; a sample is certified when every lower bound is > 0.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} and dtype {labels.dtype}")
    if n_out < 2:
        raise ValueError("margins need at least two outputs")
    if labels.size and (labels.min() < 0 or labels.max() >= n_out):
        raise ValueError(f"labels must lie in [0, {n_out}), got range [{labels.min()}, {labels.max()}]")
    batch = labels.shape[0]
    others = other_classes(labels, n_out)  # [B, n_out - 1]
    C = np.zeros((batch, n_out - 1, n_out))
    rows = np.arange(n_out - 1)
    samples = np.arange(batch)[:, None]
    C[samples, rows[None, :], labels[:, None]] = 1.0
    C[samples, rows[None, :], others] = -1.0
    return C


def normalize_spec(C, batch: int, n_out: int, name: str = "C") -> np.ndarray:
    """``C`` as a writable float64 ``[B, n_spec, n_out]``: None -> identity; ``[n_spec, n_out]`` is broadcast."""
    if C is None:
        return np.broadcast_to(np.eye(n_out), (batch, n_out, n_out)).astype(np.float64)
    C = np.asarray(C)
    if not np.issubdtype(C.dtype, np.number) or np.iscomplexobj(C):
        raise TypeError(f"{name} must be a real numeric array, got dtype {C.dtype}")
    C = C.astype(np.float64)
    if C.ndim == 2:
        C = np.broadcast_to(C, (batch,) + C.shape)
    if C.ndim != 3 or C.shape[0] != batch or C.shape[2] != n_out or C.shape[1] < 1:
        raise ValueError(f"{name} must be [n_spec, n_out] or [B, n_spec, n_out] with B={batch}, n_out={n_out} "
                         f"(one row per linear function of the output rates), got shape {C.shape}")
    if not np.all(np.isfinite(C)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(C)


def trivial_bounds(C: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Range of ``C f`` over all rates ``f`` in ``[0, 1]^n``: ``(sum min(C, 0), sum max(C, 0))``."""
    return np.minimum(C, 0.0).sum(axis=-1), np.maximum(C, 0.0).sum(axis=-1)


def spec_interval(C: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Interval of ``C f`` for ``f`` in ``[lower, upper]``: ``C [B, S, n]``, bounds ``[B, n]`` -> ``[B, S]``."""
    c_pos, c_neg = np.maximum(C, 0.0), np.minimum(C, 0.0)
    out_lower = np.einsum("bsn,bn->bs", c_pos, lower) + np.einsum("bsn,bn->bs", c_neg, upper)
    out_upper = np.einsum("bsn,bn->bs", c_pos, upper) + np.einsum("bsn,bn->bs", c_neg, lower)
    return out_lower, out_upper


def best_bounds(C: np.ndarray, margin: np.ndarray, bounds: Sequence[Tuple[np.ndarray, np.ndarray]]
                ) -> Tuple[np.ndarray, np.ndarray]:
    """``method="best"``: the intersection of sound ``(lower, upper)`` pairs (each ``[B, S]``) with the
    trivial range of ``C f`` widened by the output rounding ``margin`` ``[B, S]``."""
    (lower, upper), rest = bounds[0], bounds[1:]
    for other_lower, other_upper in rest:
        lower = np.maximum(lower, other_lower)
        upper = np.minimum(upper, other_upper)
    trivial_lower, trivial_upper = trivial_bounds(C)
    return np.maximum(lower, trivial_lower - margin), np.minimum(upper, trivial_upper + margin)
