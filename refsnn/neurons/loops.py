"""The fused LIF loops: the recurrence of a neuron model over time and its BPTT, compiled.

:func:`lif_forward_fused` and :func:`lif_backward_fused` (and the rectangular-surrogate
:func:`lif_backward_rectangular_fused`) run the recurrence of ``refsnn.neurons`` with the same
operations in the same order per element, so they are bit-for-bit equal to the NumPy loops; they
avoid the NumPy temporaries of each time step. They are generic over the neuron model: its ``carry``
and ``grad_step`` (one source each, in the model's file) are compiled into them, and the two BPTT
loops are one source compiled with two sources of the surrogate derivative
(``refsnn.kernels.specialize``: one compiled variant per model). Parallel over blocks of neurons.
"""
from __future__ import annotations

import numba
import numpy as np

from ..firing import fires_at_threshold, fires_compiled
from ..kernels import specialize
from .models import compiled_rules


# The LIF loops run over blocks of neurons in parallel: each neuron's recurrence over time is its
# own (eqs. 1-2 couple a neuron only to its own past), so any split gives the same bits. A block
# is at least _NEURON_BLOCK neurons and about a quarter of a thread's share: a block's T rows are
# T separate runs of ``width`` floats, and 1024-float (one-page) runs lost the hardware prefetch
# (one thread, 3.2M neurons: 1.7x the time of whole rows; 16384 and more: within 10 %).
_NEURON_BLOCK = 1024


def _neuron_block(size: int) -> int:
    """Neurons per parallel block of the LIF loops for ``size`` neurons at the current thread count."""
    share = 4 * numba.get_num_threads()
    return max(_NEURON_BLOCK, -(-size // share))


# The generic loops below call the rules of a neuron model (``refsnn.neurons``: ``CARRY`` = its
# ``carry``, ``GRAD_STEP`` = its ``grad_step``, inlined); ``_lif_kernels`` compiles them per model.
CARRY = GRAD_STEP = None
_lif_forward_block = _lif_backward_block = None


def _lif_forward(current, threshold, decay, fire_at_threshold, membrane, spike, width):  # pragma: no cover
    steps, size = current.shape
    one = current.dtype.type(1.0)
    zero = current.dtype.type(0.0)
    for block in numba.prange((size + width - 1) // width):
        first = block * width
        last = min(size, first + width)
        _lif_forward_block(current, threshold, decay, fire_at_threshold, membrane, spike, first, last,
                           one, zero)


def _lif_forward_block_source(current, threshold, decay, fire_at_threshold, membrane, spike, first, last, one,
                              zero):  # pragma: no cover
    steps = current.shape[0]
    width = last - first
    carried = np.zeros(width, dtype=current.dtype)
    for t in range(steps):
        # contiguous row views indexed from 0: an index ``j - first`` (sign unknown to the compiler)
        # kept the wraparound check in the loop and stopped its vectorization (~3x slower)
        current_t = current[t, first:last]
        membrane_t = membrane[t, first:last]
        spike_t = spike[t, first:last]
        for j in range(width):
            m = current_t[j] + carried[j]
            membrane_t[j] = m
            s = one if fires_compiled(m, threshold, fire_at_threshold) else zero
            spike_t[j] = s
            carried[j] = CARRY(m, s, threshold, decay, one)


_LIF_KERNELS: dict = {}


def _lif_kernels(reset: str = "zero") -> dict:
    """The forward and BPTT loops compiled with the rules of the neuron model ``reset``."""
    if reset not in _LIF_KERNELS:
        rules = compiled_rules(reset)
        tag = rules["tag"]
        rule_globals = {"CARRY": rules["carry"], "GRAD_STEP": rules["grad_step"]}
        forward_block = specialize(_lif_forward_block_source, rule_globals, tag)
        kernels = {"forward": specialize(_lif_forward, {"_lif_forward_block": forward_block}, tag, parallel=True)}
        for name, kind in (("backward", "array"), ("rectangular", "rectangular")):
            block = specialize(_lif_backward_block_source, {**rule_globals, **_DERIVATIVES[kind]}, f"{tag}_{kind}")
            kernels[name] = specialize(_lif_backward, {"_lif_backward_block": block}, f"{tag}_{kind}", parallel=True)
        _LIF_KERNELS[reset] = kernels
    return _LIF_KERNELS[reset]


def lif_forward_fused(current: np.ndarray, threshold: float, decay: float, firing: str = ">=", reset: str = "zero"):
    """Eqs. 1-2 of the neuron model ``reset`` over time in one compiled loop: ``current [T, ...]`` ->
    ``(membrane, spike)``. Bit-for-bit equal to ``refsnn.neurons.lif_forward`` (Heaviside firing, same dtype).
    """
    flat = np.ascontiguousarray(current).reshape(current.shape[0], -1)
    membrane = np.empty_like(flat)
    spike = np.empty_like(flat)
    dtype = flat.dtype.type
    _lif_kernels(reset)["forward"](flat, dtype(threshold), dtype(decay), fires_at_threshold(firing), membrane, spike,
                                   _neuron_block(flat.shape[1]))
    return membrane.reshape(current.shape), spike.reshape(current.shape)


def _lif_backward(membrane, spike, grad_spike, derivative, threshold, decay, reset_grad, grad_current,
                  width):  # pragma: no cover - compiled
    size = membrane.shape[1]
    for block in numba.prange((size + width - 1) // width):
        first = block * width
        _lif_backward_block(membrane, spike, grad_spike, derivative, threshold, decay, reset_grad, grad_current,
                            first, min(size, first + width))


# The surrogate derivative of the BPTT loop (``DERIVATIVE_ROW`` once per step and block, ``DERIVATIVE``
# per neuron, inlined): an array ``[T, N]`` computed beforehand (any surrogate), or the rectangular
# surrogate evaluated inline from ``(half_width, height)`` without that array.
@numba.njit(cache=True, inline="always")
def _array_row(derivative, t, first, last):  # pragma: no cover - compiled
    return derivative[t, first:last]


@numba.njit(cache=True, inline="always")
def _array_entry(row, j, m, threshold, zero):  # pragma: no cover - compiled
    return row[j]


@numba.njit(cache=True, inline="always")
def _rectangular_row(parameters, t, first, last):  # pragma: no cover - compiled
    return parameters


@numba.njit(cache=True, inline="always")
def _rectangular_entry(parameters, j, m, threshold, zero):  # pragma: no cover - compiled
    """``height`` where ``|m - th| < half_width`` (all in the membrane dtype, as ``Rectangular.derivative``)."""
    return parameters[1] if abs(m - threshold) < parameters[0] else zero


_DERIVATIVES = {"array": {"DERIVATIVE_ROW": _array_row, "DERIVATIVE": _array_entry},
                "rectangular": {"DERIVATIVE_ROW": _rectangular_row, "DERIVATIVE": _rectangular_entry}}
DERIVATIVE_ROW = DERIVATIVE = None


def _lif_backward_block_source(membrane, spike, grad_spike, derivative, threshold, decay, reset_grad,
                               grad_current, first, last):  # pragma: no cover - compiled
    steps = membrane.shape[0]
    width = last - first
    grad_next = np.zeros(width, dtype=membrane.dtype)
    one = membrane.dtype.type(1.0)
    zero = membrane.dtype.type(0.0)
    for t in range(steps - 1, -1, -1):
        # row views indexed from 0, as in _lif_forward_block (vectorizable)
        membrane_t = membrane[t, first:last]
        spike_t = spike[t, first:last]
        grad_spike_t = grad_spike[t, first:last]
        derivative_t = DERIVATIVE_ROW(derivative, t, first, last)
        grad_current_t = grad_current[t, first:last]
        for j in range(width):
            m = membrane_t[j]
            grad_m = GRAD_STEP(grad_spike_t[j], m, spike_t[j], DERIVATIVE(derivative_t, j, m, threshold, zero),
                               grad_next[j], threshold, decay, reset_grad, one)
            grad_current_t[j] = grad_m
            grad_next[j] = grad_m


def lif_backward_rectangular_fused(membrane: np.ndarray, spike: np.ndarray, grad_spike: np.ndarray,
                                   threshold: float, width: float, height: float, decay: float,
                                   reset_grad: bool = True, reset: str = "zero") -> np.ndarray:
    """``lif_backward_fused`` for ``refsnn.neurons.Rectangular(width, height)`` without the
    ``[T, ...]`` derivative array (bit-for-bit the same result)."""
    shape = membrane.shape
    flat = (shape[0], -1)
    membrane2 = np.ascontiguousarray(membrane).reshape(flat)
    grad_current = np.empty_like(membrane2)
    dtype = membrane.dtype.type
    _lif_kernels(reset)["rectangular"](
        membrane2, np.ascontiguousarray(spike).reshape(flat),
        np.ascontiguousarray(grad_spike, dtype=membrane.dtype).reshape(flat), (dtype(width / 2), dtype(height)),
        dtype(threshold), dtype(decay), bool(reset_grad), grad_current, _neuron_block(membrane2.shape[1]))
    return grad_current.reshape(shape)


def lif_backward_fused(membrane: np.ndarray, spike: np.ndarray, grad_spike: np.ndarray,
                       surrogate_derivative: np.ndarray, decay: float, reset_grad: bool = True,
                       threshold: float = 0.0, reset: str = "zero") -> np.ndarray:
    """Manual BPTT of eqs. 1-2 of the neuron model ``reset`` in one compiled loop;
    ``surrogate_derivative [T, ...]`` is ``surrogate.derivative(membrane - th)`` computed beforehand
    (``threshold``: ``th``, which the reset-by-subtraction step needs). Returns dL/dI ``[T, ...]``,
    bit-for-bit equal to ``refsnn.neurons.lif_backward``."""
    shape = membrane.shape
    flat = (shape[0], -1)
    membrane2 = np.ascontiguousarray(membrane).reshape(flat)
    grad_current = np.empty_like(membrane2)
    dtype = membrane.dtype.type
    _lif_kernels(reset)["backward"](
        membrane2, np.ascontiguousarray(spike).reshape(flat),
        np.ascontiguousarray(grad_spike, dtype=membrane.dtype).reshape(flat),
        np.ascontiguousarray(surrogate_derivative, dtype=membrane.dtype).reshape(flat), dtype(threshold),
        dtype(decay), bool(reset_grad), grad_current, _neuron_block(membrane2.shape[1]))
    return grad_current.reshape(shape)
