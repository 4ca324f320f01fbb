"""Central finite differences for the gradient tests (shared by the BPTT, robust-loss, alpha and
split-term checks), and the two small networks the bound-gradient checks run on."""
from typing import Callable

import numpy as np


def small_fc_net(rng: np.random.Generator, dtype=np.float64):
    """A 5-6-4-3 FC SNN with normal weights (threshold 0.25, decay 0.5)."""
    from refsnn import SNN, Linear

    return SNN([Linear(rng.normal(0, 0.5, (6, 5)), rng.normal(0, 0.1, 6)),
                Linear(rng.normal(0, 0.5, (4, 6)), rng.normal(0, 0.1, 4)),
                Linear(rng.normal(0, 0.5, (3, 4)), rng.normal(0, 0.1, 3))],
               threshold=0.25, decay=0.5, input_shape=(5,), dtype=dtype)


def random_binary_box(rng: np.random.Generator, net, steps: int = 3, batch: int = 2):
    """``(x_lower, x_upper)`` ``[steps, batch, *input_shape]`` uint8 with x_lower <= x_upper, ~30 % / ~65 % ones."""
    x_lower = (rng.random((steps, batch) + tuple(net.input_shape)) < 0.3).astype(np.uint8)
    return x_lower, np.maximum(x_lower, (rng.random(x_lower.shape) < 0.5).astype(np.uint8))


def small_conv_net(rng: np.random.Generator):
    """A 1x4x4 -> conv 2x3x3 (padding 1) -> 3 SNN with normal weights (threshold 0.25, decay 0.25)."""
    from refsnn import SNN, Conv2d, Flatten, Linear

    return SNN([Conv2d(rng.normal(0, 0.4, (2, 1, 3, 3)), rng.normal(0, 0.1, 2), stride=1, padding=1),
                Flatten(), Linear(rng.normal(0, 0.4, (3, 32)), rng.normal(0, 0.1, 3))],
               threshold=0.25, decay=0.25, input_shape=(1, 4, 4))


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
