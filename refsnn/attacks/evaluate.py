"""Re-evaluation of adversarial images on fresh Bernoulli draws (the encoder is random).

The attacks judge success on the evaluation rand maps (the draw the clean error is measured on,
and the set the bounds certify). A rate-coded image is also scored on ``draws`` fresh rand maps:
the mean error over those draws says how often the adversarial *image* fools the network when the
encoder's randomness is not under the adversary's control.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..network import SNN
from ..kernels import frozen_weights
from ..threads import scoped_threads
from .base import DEFAULT_THREADS, Threads, resolve_threads
from .constraints import encode


def fresh_error(net: SNN, images: np.ndarray, labels: np.ndarray, T: int, draws: int = 10,
                seed=0, batch_size: int = 256, threads: Threads = DEFAULT_THREADS) -> Tuple[float, np.ndarray]:
    """Mean error of ``images [B, *shape]`` over ``draws`` fresh rand-map draws of ``T`` steps.

    ``threads``: the count the passes compute at, as ``Attack.threads`` (default
    ``refsnn.attacks.base.ATTACK_THREADS`` at the call; ``None``: the process's own counts).
    Returns ``(mean error, per-sample misclassification rate [B])``.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    images = np.asarray(images, dtype=np.float64)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    wrong = np.zeros(labels.size)
    with scoped_threads(resolve_threads(threads)), frozen_weights():
        for _ in range(draws):
            maps = rng.random((T,) + images.shape)
            for start in range(0, labels.size, batch_size):
                part = slice(start, start + batch_size)
                wrong[part] += net.predict(encode(images[part], maps[:, part])) != labels[part]
    rate = wrong / draws
    return float(rate.mean()), rate
