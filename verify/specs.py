"""Output specifications ``C f`` (f = mean output rate ``[n_out]``), the conventions of
``refsnn.bounds.compute_bounds``: ``C`` is None (identity: bounds of each rate), ``[n_spec, n_out]``
(shared by the batch) or ``[B, n_spec, n_out]`` (per sample). The helpers are defined once, in
``refsnn.spec``; these are the verifier's names for them."""
from __future__ import annotations

from typing import Optional

import numpy as np

from refsnn.spec import margin_spec, normalize_spec
from refsnn.spec import other_classes as _other_classes


def normalize_specs(C, batch: int, n_out: int, name: str = "C") -> np.ndarray:
    """Returns ``C`` as float64 ``[B, n_spec, n_out]``; clear errors for wrong shapes or NaN."""
    return normalize_spec(C, batch, n_out, name)


def margin_specs(labels, n_out: int) -> np.ndarray:
    """Margin rows ``e_label - e_j`` for every ``j != label``: ``[B, n_out - 1, n_out]``."""
    return margin_spec(np.asarray(labels, dtype=np.int64).reshape(-1), n_out)


def other_classes(label: int, n_out: int) -> list:
    return _other_classes([int(label)], n_out)[0].tolist()


def spec_grid(C_row: np.ndarray, steps: int) -> Optional[float]:
    """Spacing of the values ``C_row . f`` can take when ``C_row`` is integral (f in multiples of 1/T'), else None."""
    if np.all(C_row == np.round(C_row)):
        return 1.0 / steps
    return None
