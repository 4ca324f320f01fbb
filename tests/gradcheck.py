"""Central finite differences for the gradient tests (shared by the BPTT and robust-loss checks)."""
from typing import Callable

import numpy as np


def numeric_gradient(loss: Callable[[], float], array: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """``d loss / d array`` by central differences, perturbing ``array`` in place (restored after)."""
    numeric = np.empty_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + step
        plus = loss()
        array[index] = original - step
        minus = loss()
        array[index] = original
        numeric[index] = (plus - minus) / (2 * step)
    return numeric
