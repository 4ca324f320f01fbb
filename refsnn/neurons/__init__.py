"""Leaky integrate-and-fire neurons: the recurrence over time, its manual BPTT, surrogate derivatives.

The paper's eqs. 1-3 for one layer, given the input current ``I_t = W (*) s_t[k-1] + b``::

    m_t = I_t + alpha * z_{t-1},   m_0 = s_0 = 0
    s_t = 1[m_t >= th]     (firing=">=", the paper's eq. 2, default)
    s_t = 1[m_t >  th]     (firing=">",  the authors' released code and snnTorch)

``z_t`` is the *reset term* (what survives the spike). Each neuron model is one file of this
package defining it and every rule that depends on it (docs/ARCHITECTURE.md, "Adding a new
neuron model"); ``NEURON_MODELS`` names them (``SNN(reset=...)``):

``"zero"``      ``refsnn/neurons/lif.py``, the paper's LIF: ``z_t = m_t (1 - s_t)`` (eqs. 1, 9-10);
``"subtract"``  ``refsnn/neurons/subtract.py``: ``z_t = m_t - th s_t`` (reset by subtraction, the leak
                acting on what the subtraction leaves).

Arrays are time-major: ``[T, N...]`` where the trailing axes hold batch and neurons. The loop
runs over time only; each step is vectorized over all neurons and samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..firing import fires, fires_at_threshold
from ..validation import FIRING_MODES, RESET_MODES, check_firing, check_reset  # noqa: F401
from . import lif, subtract  # noqa: F401
from .models import NEURON_MODELS, compiled_rules, neuron_model  # noqa: F401


def fire(membrane: np.ndarray, threshold: float, firing: str = ">=") -> np.ndarray:
    """Heaviside fire function of eq. 2: ``1[m >= th]`` (or ``1[m > th]``), same dtype as ``membrane``."""
    return fires(membrane, threshold, fires_at_threshold(firing)).astype(membrane.dtype)


# --- surrogate derivatives ---------------------------------------------------------------------
# Each surrogate gives d s / d m as a function of v = m - th, and a smooth function whose exact
# derivative is that surrogate: with ``smooth=True`` the network fires through it, which turns the
# manual gradient into the exact gradient of a smooth network (the finite-difference check).

@dataclass(frozen=True)
class Rectangular:
    """Rectangular window: derivative ``height`` where ``|v| < width / 2`` (authors' code: 1 on |v| < 0.5)."""

    width: float = 1.0
    height: float = 1.0
    name: str = "rectangular"

    def derivative(self, v: np.ndarray) -> np.ndarray:
        return np.where(np.abs(v) < self.width / 2, self.height, 0.0).astype(v.dtype)

    def smooth(self, v: np.ndarray) -> np.ndarray:
        return np.clip(self.height * (v + self.width / 2), 0.0, self.height * self.width).astype(v.dtype)


@dataclass(frozen=True)
class Sigmoid:
    """Sigmoid surrogate: ``s ~ sigmoid(slope * v)``, derivative ``slope * sig * (1 - sig)``."""

    slope: float = 5.0
    name: str = "sigmoid"

    def smooth(self, v):
        return 0.5 * (1.0 + np.tanh(0.5 * self.slope * v))

    def derivative(self, v):
        sig = self.smooth(v)
        return self.slope * sig * (1.0 - sig)


@dataclass(frozen=True)
class ATan:
    """Arctangent surrogate (snnTorch's default): ``s ~ 1/2 + atan(pi/2 * a * v) / pi``."""

    alpha: float = 2.0
    name: str = "atan"

    def smooth(self, v):
        return 0.5 + np.arctan(0.5 * math.pi * self.alpha * v) / math.pi

    def derivative(self, v):
        return 0.5 * self.alpha / (1.0 + (0.5 * math.pi * self.alpha * v) ** 2)


SURROGATES = {"rectangular": Rectangular, "sigmoid": Sigmoid, "atan": ATan}


def make_surrogate(name: str = "rectangular", **kwargs):
    """Surrogate by name (``rectangular``, ``sigmoid``, ``atan``) with its keyword parameters."""
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}")
    return SURROGATES[name](**kwargs)


def surrogate_config(surrogate) -> dict:
    config = {key: getattr(surrogate, key) for key in surrogate.__dataclass_fields__}
    return config


# --- the LIF recurrence and its reverse pass ----------------------------------------------------

def _python_scalars(*values) -> bool:
    """Python floats/ints take the array's dtype in NumPy arithmetic (the fused loops do the same);
    NumPy scalars would promote, so those keep the NumPy loop."""
    return all(type(value) in (float, int) for value in values)


def lif_forward(current: np.ndarray, threshold: float, decay: float, firing: str = ">=",
                surrogate=None, smooth: bool = False, reset: str = "zero") -> Tuple[np.ndarray, np.ndarray]:
    """Runs eqs. 1-2 of the neuron model ``reset`` over time. ``current [T, ...]`` ->
    ``(membrane [T, ...], spike [T, ...])``.

    ``smooth=True`` replaces the Heaviside by ``surrogate.smooth`` (gradient checks only).
    The Heaviside case of a float32/float64 array runs the fused Numba loop of
    ``refsnn.neurons.loops.lif_forward_fused`` (same operations, bit-for-bit the same result).
    """
    check_firing(firing)
    model = neuron_model(reset)
    if (not smooth and current.ndim >= 1 and current.dtype in (np.float32, np.float64) and current.size
            and _python_scalars(threshold, decay)):
        from .loops import lif_forward_fused

        return lif_forward_fused(current, threshold, decay, firing, reset)
    membrane = np.empty_like(current)
    spike = np.empty_like(current)
    carried = np.zeros_like(current[0])  # alpha z_{t-1}
    for t in range(current.shape[0]):
        membrane[t] = current[t] + carried
        if smooth:
            spike[t] = surrogate.smooth(membrane[t] - threshold)
        else:
            spike[t] = fire(membrane[t], threshold, firing)
        carried = model.carry(membrane[t], spike[t], threshold, decay, 1.0)
    return membrane, spike


def lif_backward(membrane: np.ndarray, spike: np.ndarray, grad_spike: np.ndarray, threshold: float,
                 decay: float, surrogate, reset_grad: bool = True, reset: str = "zero") -> np.ndarray:
    """Manual BPTT through eqs. 1-2 of the neuron model ``reset`` (STBP, Wu et al. 2018).

    ``grad_spike [T, ...]`` is dL/ds_t arriving from outside the layer (next layer, output).
    Returns dL/dI_t ``[T, ...]``. With ``reset_grad`` the reset path from ``s_t`` into
    ``m_{t+1}`` (``-alpha m_t`` for the LIF) is differentiated (the authors' code); otherwise it is
    detached (snnTorch). Arrays of one float dtype run the fused Numba loop of
    ``refsnn.neurons.loops.lif_backward_fused`` (bit-for-bit the same result).
    """
    model = neuron_model(reset)
    if (type(surrogate) is Rectangular and membrane.dtype in (np.float32, np.float64) and membrane.size
            and spike.dtype == membrane.dtype and _python_scalars(threshold, decay)
            and _python_scalars(surrogate.width, surrogate.height)
            and np.asarray(grad_spike).dtype == membrane.dtype):
        from .loops import lif_backward_rectangular_fused

        return lif_backward_rectangular_fused(membrane, spike, grad_spike, threshold, surrogate.width,
                                              surrogate.height, decay, reset_grad, reset)
    derivative = surrogate.derivative(membrane - threshold)
    if (membrane.dtype in (np.float32, np.float64) and membrane.size and spike.dtype == membrane.dtype
            and _python_scalars(threshold, decay)
            and np.asarray(grad_spike).dtype == membrane.dtype and derivative.dtype == membrane.dtype):
        from .loops import lif_backward_fused

        return lif_backward_fused(membrane, spike, grad_spike, derivative, decay, reset_grad, threshold, reset)
    grad_current = np.empty_like(membrane)
    grad_membrane_next = np.zeros_like(membrane[0])
    for t in range(membrane.shape[0] - 1, -1, -1):
        grad_m = model.grad_step(grad_spike[t], membrane[t], spike[t], derivative[t], grad_membrane_next,
                                 threshold, decay, reset_grad, 1.0)
        grad_current[t] = grad_m
        grad_membrane_next = grad_m
    return grad_current
