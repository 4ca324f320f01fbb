"""Compiles refsnn's Numba kernels before the first hypothesis example, so that the compile does not
count against hypothesis' deadline (a first example that takes seconds is reported as flaky).

``warm_kernels()`` runs the forward pass, the membrane trace and every bound method once on tiny
FC and CONV networks of both dtypes, on sparse and on dense spike boxes (the event-driven and the
dense kernels), with the signatures the strategies of ``refsnn.testing`` produce. The pytest
plugin calls it once per session when the collected tests use ``refsnn.testing``.
"""
from __future__ import annotations

import time

import numpy as np

# Rows of a batch from which the event-driven kernels are considered (refsnn.kernels._MIN_ROWS is 32).
_ROWS = 40

def _networks():
    from ..layers import AvgPool2d, Conv2d, Flatten, Linear
    from ..network import SNN

    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        for firing in (">=", ">"):
            fc = SNN([Linear(rng.normal(size=(3, 4)) / 2, np.zeros(3)), Linear(rng.normal(size=(2, 3)), np.zeros(2))],
                     threshold=0.25, decay=0.25, firing=firing, dtype=dtype)
            conv = SNN([Conv2d(rng.normal(size=(2, 1, 2, 2)) / 2, np.zeros(2), stride=1, padding=1),
                        AvgPool2d(2, 1), Flatten(), Linear(rng.normal(size=(2, 18)) / 2, np.zeros(2))],
                       threshold=0.25, decay=0.25, firing=firing, input_shape=(1, 3, 3), dtype=dtype)
            # One stage only: its backward pass starts from the read-only spec (another kernel signature).
            single = SNN([Linear(rng.normal(size=(2, 4)) / 2, np.zeros(2))], threshold=0.25, decay=0.25,
                         firing=firing, dtype=dtype)
            yield from (fc, conv, single)


def warm_kernels() -> float:
    """Calls every kernel path once; returns the seconds it took."""
    from ..bounds import METHODS, compute_bounds

    started = time.perf_counter()
    for net in _networks():
        shape = (2, _ROWS) + tuple(net.input_shape)
        for every in (7, 1):   # one free bit in 7 (event-driven kernels), every bit free (dense ones)
            x_lower = np.zeros(shape, dtype=np.uint8)
            x_upper = (np.arange(int(np.prod(shape))).reshape(shape) % every == 0).astype(np.uint8)
            net.forward(x_upper)
            net.run(x_upper)
            C = np.tile(np.array([[1.0, -1.0]]), (_ROWS, 1, 1))
            for method in METHODS:
                # T' = 1 gives read-only views where T' > 1 gives copies: another kernel signature.
                compute_bounds(net, x_lower[:1, :2], x_upper[:1, :2], method=method, C=C[:2])
                compute_bounds(net, x_lower[:, :2], x_upper[:, :2], method=method, C=C[:2])
                compute_bounds(net, x_lower, x_upper, method=method if method != "crown" else "ibp", C=C)
        _warm_assertions(net)
    return time.perf_counter() - started


def _warm_assertions(net) -> None:
    """One call of each assertion helper on a one-sample box: imports the verifier modules
    (PuLP included) and runs the enumeration and search paths."""
    from ..bounds import compute_bounds, interval_bounds
    from . import assertions

    def bounds(net, x_lower, x_upper, C):
        return compute_bounds(net, x_lower, x_upper, method="crown-ibp", C=C)

    def certify(net, x_lower, x_upper, labels):
        return np.zeros(len(labels), dtype=bool)

    shape = (2, 1) + tuple(net.input_shape)
    x_lower, x_upper = np.zeros(shape, dtype=np.uint8), np.ones(shape, dtype=np.uint8)
    x_upper.reshape(-1)[3:] = 0   # three free bits
    for method in ("enumerate", "sample"):
        assertions.assert_bounds_sound(bounds, net, x_lower, x_upper, method=method, samples=4)
        assertions.assert_membrane_bounds_sound(interval_bounds, net, x_lower, x_upper, method=method, samples=4)
    assertions.assert_certificates_sound(certify, net, x_lower, x_upper, [0])
    import verify.milp  # noqa: F401  (imports PuLP, as method="milp" does)
