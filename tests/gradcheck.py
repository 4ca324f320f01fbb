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


def assert_robust_loss_gradients(net, x_lower, labels, x_upper, reference, **args) -> None:
    """Every parameter gradient of ``reference = refsnn.robust.robust_loss(net, x_lower, labels,
    x_lower, x_upper, **args)`` matches central differences of the loss with its relaxation choices
    frozen, within 1e-5 of the largest numeric entry."""
    from refsnn.robust import robust_loss

    choices = reference.graph.choices

    def loss():
        return robust_loss(net, x_lower, labels, x_lower, x_upper, choices=choices, **args).loss

    for name, param, grad in zip(net.param_names(), net.params(), reference.grads):
        numeric = numeric_gradient(loss, param)
        scale = max(np.abs(numeric).max(), 1e-8)
        assert np.abs(grad - numeric).max() / scale < 1e-5, name
