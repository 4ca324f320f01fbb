"""Numba kernels that exploit binary spikes: event-driven fully connected and conv layers.

Event-driven ``Linear`` (the spatial term ``W s_t + b`` of eq. 1 when ``s_t`` is a spike vector):
``out[n] = sum_{i : x[n, i] = 1} W[:, i] + b`` visits only the active inputs, so it costs
``nnz(x) * out`` additions instead of the ``N * in * out`` multiply-adds of a dense GEMM. Its
weight gradient ``dW = g^T x`` likewise only adds ``g[n]`` into the columns of active inputs.
Whether that beats BLAS depends on the spike density; :func:`use_event_driven` decides per call
from the input's density and the crossover measured by ``benchmarks/bench_kernels.py``
(``results/perf/kernels.json``). The kernels are correct for any input (a non-zero entry other
than 1 is multiplied), so the choice only affects speed.

Numerics: the event-driven sums add the same products (``1 * w``) in the layer's dtype (float32
or float64), four weight columns at a time (``(w_a + w_b) + (w_c + w_d)`` into the accumulator,
in input order) and the bias last, so they differ from the BLAS result only by the summation order (``|error| <= gamma_n * sum |w|``), which the bounds already allow for (docs/BOUNDS.md,
"any summation order"); spikes are identical unless a membrane lies within that of the threshold.

``specialize`` compiles a function with extra compile-time globals (flags, or a neuron model's
compiled rules): the stage operator (``refsnn.operator``) and the fused LIF loops
(``refsnn.neurons.loops``) are built with it.
"""
from __future__ import annotations

import contextlib
import os
import threading
import types
from typing import Iterator

import numba
import numba.extending
import numpy as np


# Densities (fraction of non-zero entries of a layer input) below which the event-driven kernels
# are used, per output width of the layer: (smallest out_features, forward crossover, weight-
# gradient crossover). The event path pays per active input a pass over the ``out`` outputs, so it
# only wins for wide layers; the weight gradient loses to BLAS earlier than the forward. Measured
# by ``python benchmarks/bench_kernels.py`` on the project's 2-core VM with one BLAS thread
# (results/perf/kernels.json "crossovers": the smallest grid density at which BLAS was at least as
# fast, min over time x batch = 640 and 2560 rows, with the four-column forward kernel):
# 784x512 -> 0.125 / 0.075, 512x256 -> 0.10 / 0.05, 256x10 -> BLAS always. Noisy on a loaded VM:
# four runs gave 0.125-0.15 for the 784x512 forward; rerun the benchmark on the target machine.
# Override with REFSNN_EVENT_FORWARD / REFSNN_EVENT_WGRAD (one density for every layer; 0
# disables the path).
CROSSOVERS = ((512, 0.125, 0.075), (256, 0.10, 0.05), (0, 0.0, 0.0))
# Input density below which a Conv2d forward takes the event-driven kernel (the smaller crossover
# of the conv preset's two shapes at time x batch = 640, results/perf/kernels.json
# "conv_crossover": 1->64 on 28x28 at 0.4, 64->128 on 14x14 at 0.25; other runs gave 0.2-0.3).
# Override with REFSNN_EVENT_CONV (0 disables).
CONV_CROSSOVER = 0.25
# Density of a Conv2d's output-side coefficients below which its adjoint and weight gradient
# visit the non-zero entries only (``event_conv_transpose``, ``event_conv_weight_grad``), for
# layers with at least ``EVENT_ADJOINT_MIN_CHANNELS`` input channels (their inner loop runs over
# the channels). Measured at one thread, float32, the CONV preset's conv2 (64 -> 128 on 14 x 14,
# 1,728 rows): the event kernels win below 0.3 (0.2: 0.12 vs 0.17 s; 0.03: 0.04 vs 0.17 s), conv1
# (1 input channel) never. Override with REFSNN_EVENT_CONV_ADJOINT (0 disables).
CONV_ADJOINT_CROSSOVER = 0.25
EVENT_ADJOINT_MIN_CHANNELS = 8
# Density of a Linear's output-side coefficients ``[N, out]`` below which its adjoint ``coef @ W``
# and the weight gradient ``coef^T x`` of the training bound graph visit the non-zero coefficients
# only (``event_linear_transpose``, ``event_coef_weight_grad``): the coefficients of neurons stable
# at every remaining step vanish (eqs. 8, 10). Measured by ``benchmarks/bench_kernels.py --adjoint``
# (results/perf/linear_adjoint.json) at one thread, float32, 1,728 rows (T' = 3, batch 64, 9
# margins), on a machine loaded ~4x over its 2 cores (timings noisy): BLAS was at least as fast from density
# 0.15 on (the 6272 -> 256 stage's weight gradient,
# one run; its adjoint 0.25, the 512 -> 256 stage's 0.2-0.3). Layers with fewer than
# ``EVENT_ADJOINT_MIN_FEATURES`` outputs (coefficient width) stay on BLAS (microseconds either way).
# Override with REFSNN_EVENT_LINEAR_ADJOINT (0 disables).
LINEAR_ADJOINT_CROSSOVER = 0.15
EVENT_ADJOINT_MIN_FEATURES = 256
_ENV = {"forward": "REFSNN_EVENT_FORWARD", "wgrad": "REFSNN_EVENT_WGRAD", "conv": "REFSNN_EVENT_CONV",
        "conv_adjoint": "REFSNN_EVENT_CONV_ADJOINT", "linear_adjoint": "REFSNN_EVENT_LINEAR_ADJOINT"}

# Below this many input rows (time x batch) the density count is not worth it.
_MIN_ROWS = 32


def crossover(kind: str, out_features: int = 0) -> float:
    """The density crossover in force for ``kind`` ("forward", "wgrad", "conv", "conv_adjoint" or
    "linear_adjoint") and a layer width."""
    value = os.environ.get(_ENV[kind])
    if value is None and kind == "conv":
        return CONV_CROSSOVER
    if value is None and kind == "conv_adjoint":
        return CONV_ADJOINT_CROSSOVER
    if value is None and kind == "linear_adjoint":
        return LINEAR_ADJOINT_CROSSOVER
    if value is None:
        for min_out, forward, wgrad in CROSSOVERS:
            if out_features >= min_out:
                return forward if kind == "forward" else wgrad
        return 0.0
    try:
        parsed = float(value)
    except ValueError:
        raise ValueError(f"{_ENV[kind]} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= parsed <= 1.0:
        raise ValueError(f"{_ENV[kind]} must be a number in [0, 1], got {value!r}")
    return parsed


def density(x2d: np.ndarray) -> float:
    """Fraction of non-zero entries of ``x2d``."""
    return np.count_nonzero(x2d) / x2d.size if x2d.size else 0.0


# Above this many rows the density is estimated on an evenly strided subset of about this many
# rows (a speed heuristic only: either path gives the same result up to the summation order).
_DENSITY_SAMPLE_ROWS = 128


def use_event_driven(x2d: np.ndarray, kind: str, out_features: int = 0) -> bool:
    """True when ``x2d [N, in]`` is sparser than the measured crossover of ``kind`` for this width
    (``kind="conv"``: a Conv2d input flattened to ``[N, C*H*W]``; ``"conv_adjoint"``: its output-side
    coefficients ``[N, O*OH*OW]``; ``"linear_adjoint"``: a Linear's output-side coefficients ``[N, out]``)."""
    limit = crossover(kind, out_features)
    if limit <= 0.0 or x2d.ndim != 2 or x2d.shape[0] < _MIN_ROWS:
        return False
    step = max(1, x2d.shape[0] // _DENSITY_SAMPLE_ROWS)
    return density(x2d[::step]) < limit


# Rows of a parallel block (``prange`` iterations are blocks, so per-block scratch is allocated once).
_ROW_BLOCK = 16


@numba.njit(cache=True)
def _transpose_blocked(matrix, out):  # pragma: no cover - compiled
    """``out = matrix.T`` in 32 x 32 tiles (NumPy's strided copy is several times slower)."""
    rows, cols = matrix.shape
    for r0 in range(0, rows, 32):
        r1 = min(rows, r0 + 32)
        for c0 in range(0, cols, 32):
            c1 = min(cols, c0 + 32)
            for c in range(c0, c1):
                for r in range(r0, r1):
                    out[c, r] = matrix[r, c]


def transpose_into(matrix: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = matrix.T`` in cache-sized tiles (``[rows, cols] -> [cols, rows]``; ``out`` may be
    a strided view, e.g. one half of a wider array)."""
    _transpose_blocked(matrix, out)


def transpose_contiguous(matrix: np.ndarray) -> np.ndarray:
    """``matrix.T`` as a new C-contiguous array (``[rows, cols] -> [cols, rows]``)."""
    matrix = np.ascontiguousarray(matrix)
    out = np.empty((matrix.shape[1], matrix.shape[0]), dtype=matrix.dtype)
    _transpose_blocked(matrix, out)
    return out


def widen(value, acc):  # pragma: no cover - replaced by the compiled overload below
    """``value`` converted to the dtype of the array ``acc`` (compiled code only)."""
    raise NotImplementedError("widen is only available in compiled code")


@numba.extending.overload(widen)
def _widen(value, acc):
    target = acc.dtype

    def impl(value, acc):  # pragma: no cover - compiled
        return target(value)
    return impl


@numba.njit(cache=True)
def add_rows(acc, matrix, index, count):  # pragma: no cover - compiled
    """``acc += sum_q matrix[index[q]]`` for ``q < count``, four rows per pass over ``acc`` (loaded
    and stored a quarter as often); the summation order every caller shares. Each entry is first
    converted to ``acc``'s dtype: float32 weights summed into a float64 ``acc`` give the same
    float64 sums as their (exact) float64 copy, reading half the bytes."""
    q = 0
    while q + 4 <= count:
        r0 = matrix[index[q]]
        r1 = matrix[index[q + 1]]
        r2 = matrix[index[q + 2]]
        r3 = matrix[index[q + 3]]
        for o in range(acc.shape[0]):
            acc[o] += (widen(r0[o], acc) + widen(r1[o], acc)) + (widen(r2[o], acc) + widen(r3[o], acc))
        q += 4
    while q < count:
        r0 = matrix[index[q]]
        for o in range(acc.shape[0]):
            acc[o] += widen(r0[o], acc)
        q += 1


@numba.njit(cache=True, parallel=True)
def _event_linear_forward(x2d, weight_t, bias, out):  # pragma: no cover - compiled
    rows = x2d.shape[0]
    for block in numba.prange((rows + _ROW_BLOCK - 1) // _ROW_BLOCK):
        _event_linear_forward_rows(x2d, weight_t, bias, out, block * _ROW_BLOCK,
                                   min(rows, (block + 1) * _ROW_BLOCK))


@numba.njit(cache=True)
def _event_linear_forward_rows(x2d, weight_t, bias, out, first, last):  # pragma: no cover - compiled
    """Rows ``[first, last)`` of the event-driven ``Linear`` (each row on its own: any split of
    the rows over threads gives the same result)."""
    n_in = x2d.shape[1]
    n_out = weight_t.shape[1]
    acc = np.empty(n_out, dtype=out.dtype)
    active = np.empty(n_in, dtype=np.int64)
    for n in range(first, last):
        acc[:] = 0
        count = 0
        binary = True
        for i in range(n_in):
            value = x2d[n, i]
            if value != 0:
                active[count] = i
                count += 1
                if value != 1:
                    binary = False
        if binary:
            add_rows(acc, weight_t, active, count)   # spikes: each product 1 * w is exact
        else:
            for q in range(count):
                value = x2d[n, active[q]]
                column = weight_t[active[q]]
                for o in range(n_out):
                    acc[o] += value * column[o]
        for o in range(n_out):
            out[n, o] = acc[o] + bias[o]


_FROZEN = threading.local()


@contextlib.contextmanager
def frozen_weights() -> Iterator[None]:
    """Inside the block (in this Python thread) weights are not modified: the event-driven ``Linear``
    transposes each weight array once and reuses the copy (an attack's thousands of forward passes
    transposed the CONV net's 256 x 6272 weight every time). Nested blocks share the outer cache."""
    if getattr(_FROZEN, "transposed", None) is not None:
        yield
        return
    _FROZEN.transposed = {}
    try:
        yield
    finally:
        _FROZEN.transposed = None


def _weight_transposed(weight: np.ndarray) -> np.ndarray:
    cache = getattr(_FROZEN, "transposed", None)
    if cache is None:
        return transpose_contiguous(weight)
    hit = cache.get(id(weight))
    if hit is None or hit[0] is not weight:
        hit = cache[id(weight)] = (weight, transpose_contiguous(weight))  # holds the array: its id stays its own
    return hit[1]


def event_linear_forward(x2d: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``x2d @ weight.T + bias`` visiting only the non-zero inputs of each row.

    ``x2d [N, in]`` (spikes, or any values: non-binary entries are multiplied), ``weight [out, in]``,
    ``bias [out]``; returns ``[N, out]`` in ``weight``'s dtype.
    """
    weight_t = _weight_transposed(weight)
    x2d = np.ascontiguousarray(x2d, dtype=weight.dtype)
    out = np.empty((x2d.shape[0], weight.shape[0]), dtype=weight.dtype)
    _event_linear_forward(x2d, weight_t, bias, out)
    return out


@numba.njit(cache=True, parallel=True)
def _event_conv_forward(x, weight_t, bias, geometry, out):  # pragma: no cover - compiled
    """Convolution visiting the non-zero inputs only; per sample an ``[OH, OW, O]`` accumulator.

    ``x [N, C, H, W]``, ``weight_t [C, KH, KW, O]`` (``W`` with the output channel last),
    ``out [N, O, OH, OW]``. An input ``x[n, c, y, x']`` meets the kernel offset ``(ky, kx)`` at the
    output ``(oy, ox)`` with ``oy * sh + ky - ph = y`` (likewise for ``x'``).
    """
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w = geometry
    n_samples, channels, height, width = x.shape
    n_out = weight_t.shape[3]
    for n in numba.prange(n_samples):  # a sample's outputs depend on that sample only
        acc = np.zeros((out_h, out_w, n_out), dtype=out.dtype)
        for c in range(channels):
            for y in range(height):
                for xx in range(width):
                    value = x[n, c, y, xx]
                    if value == 0:
                        continue
                    for ky in range(kernel_h):
                        shifted_y = y + pad_h - ky
                        if shifted_y < 0 or shifted_y % stride_h != 0:
                            continue
                        oy = shifted_y // stride_h
                        if oy >= out_h:
                            continue
                        for kx in range(kernel_w):
                            shifted_x = xx + pad_w - kx
                            if shifted_x < 0 or shifted_x % stride_w != 0:
                                continue
                            ox = shifted_x // stride_w
                            if ox >= out_w:
                                continue
                            column = weight_t[c, ky, kx]
                            target = acc[oy, ox]
                            if value == 1:  # a spike: the product 1 * w is exact
                                for o in range(n_out):
                                    target[o] += column[o]
                            else:
                                for o in range(n_out):
                                    target[o] += value * column[o]
        for o in range(n_out):
            for oy in range(out_h):
                for ox in range(out_w):
                    out[n, o, oy, ox] = acc[oy, ox, o] + bias[o]


@numba.njit(cache=True, parallel=True)
def _event_conv_forward_windows(x, weight_t, bias, geometry, out):  # pragma: no cover - compiled
    """Output-stationary variant for many input channels: per output position, the weight
    columns of the active inputs under its window are gathered and summed four at a time into
    one ``[O]`` accumulator (as the event-driven Linear). Same arguments as ``_event_conv_forward``.
    """
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w = geometry
    n_samples, channels, height, width = x.shape
    n_out = weight_t.shape[3]
    for n in numba.prange(n_samples):  # a sample's outputs depend on that sample only
        active = np.empty((height, width, channels), np.int64)   # active channels per input pixel
        count = np.empty((height, width), np.int64)
        binary = np.empty((height, width), np.bool_)
        picked = np.empty((kernel_h * kernel_w * channels, 3), np.int64)  # (c, ky, kx) under a window
        acc = np.empty(n_out, dtype=out.dtype)
        count[:] = 0
        binary[:] = True
        for c in range(channels):
            for y in range(height):
                for xx in range(width):
                    value = x[n, c, y, xx]
                    if value != 0:
                        active[y, xx, count[y, xx]] = c
                        count[y, xx] += 1
                        if value != 1:
                            binary[y, xx] = False
        for oy in range(out_h):
            for ox in range(out_w):
                k = 0
                all_binary = True
                for ky in range(kernel_h):
                    y = oy * stride_h + ky - pad_h
                    if y < 0 or y >= height:
                        continue
                    for kx in range(kernel_w):
                        xx = ox * stride_w + kx - pad_w
                        if xx < 0 or xx >= width:
                            continue
                        if not binary[y, xx]:
                            all_binary = False
                        for q in range(count[y, xx]):
                            picked[k, 0] = active[y, xx, q]
                            picked[k, 1] = ky
                            picked[k, 2] = kx
                            k += 1
                acc[:] = 0
                if all_binary:
                    q = 0
                    while q + 4 <= k:
                        c0 = weight_t[picked[q, 0], picked[q, 1], picked[q, 2]]
                        c1 = weight_t[picked[q + 1, 0], picked[q + 1, 1], picked[q + 1, 2]]
                        c2 = weight_t[picked[q + 2, 0], picked[q + 2, 1], picked[q + 2, 2]]
                        c3 = weight_t[picked[q + 3, 0], picked[q + 3, 1], picked[q + 3, 2]]
                        for o in range(n_out):
                            acc[o] += (c0[o] + c1[o]) + (c2[o] + c3[o])
                        q += 4
                    while q < k:
                        c0 = weight_t[picked[q, 0], picked[q, 1], picked[q, 2]]
                        for o in range(n_out):
                            acc[o] += c0[o]
                        q += 1
                else:
                    for q in range(k):
                        c, ky, kx = picked[q, 0], picked[q, 1], picked[q, 2]
                        value = x[n, c, oy * stride_h + ky - pad_h, ox * stride_w + kx - pad_w]
                        c0 = weight_t[c, ky, kx]
                        for o in range(n_out):
                            acc[o] += value * c0[o]
                for o in range(n_out):
                    out[n, o, oy, ox] = acc[o] + bias[o]


# Input channels from which the output-stationary event convolution is used (measured on the
# conv preset: 64 channels -> windows, 1 channel -> scatter).
EVENT_CONV_WINDOW_CHANNELS = 8


def event_conv_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, geometry) -> np.ndarray:
    """Cross-correlation ``x (*) weight + bias`` visiting only the non-zero inputs.

    ``x [N, C, H, W]`` (spikes, or any values: non-binary entries are multiplied), ``weight
    [O, C, KH, KW]``, ``bias [O]``, ``geometry = (kh, kw, sh, sw, ph, pw, OH, OW)`` as
    ``refsnn.layers.Conv2d``; returns ``[N, O, OH, OW]`` in ``weight``'s dtype. Equal to the
    im2col/GEMM convolution up to the summation order.
    """
    weight_t = np.ascontiguousarray(weight.transpose(1, 2, 3, 0))
    x = np.ascontiguousarray(x, dtype=weight.dtype)
    geometry = tuple(int(g) for g in geometry)
    out = np.empty((x.shape[0], weight.shape[0], geometry[6], geometry[7]), dtype=weight.dtype)
    kernel = _event_conv_forward_windows if x.shape[1] >= EVENT_CONV_WINDOW_CHANNELS else _event_conv_forward
    kernel(x, weight_t, np.ascontiguousarray(bias, dtype=weight.dtype), geometry, out)
    return out


# --- the adjoint of a convolution and its weight gradient from sparse output-side coefficients ----
# Back-substitution coefficients after a spiking layer vanish on every stably silent or firing
# neuron (its spike is a constant, eq. 8), so the coefficient on a conv layer's output is mostly
# zero (MNIST CONV robust checkpoint, eps 0.12, T' = 3: 3 % of conv2's; an untrained net: 44 %).
# These kernels visit its non-zero entries only: an entry (o, oy, ox) meets the input pixel
# (oy * sh - ph + ky, ox * sw - pw + kx) through the weights W[o, :, ky, kx] (the geometry of
# ``_event_conv_forward``, read the other way). Per sample an ``[H, W, C]`` accumulator (channels
# contiguous); entries are added in the order (o, oy, ox, ky, kx), so a sample's result does not
# depend on the thread count.

@numba.njit(cache=True)
def _event_conv_scatter(coef, weight_r, geometry, acc):  # pragma: no cover - compiled
    """``acc [H, W, C] += sum_{o, oy, ox} coef[o, oy, ox] W[o, :, ky, kx]`` at the pixels each
    non-zero ``coef`` entry meets (``weight_r [O, KH, KW, C]``)."""
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w = geometry
    height, width, channels = acc.shape
    for o in range(coef.shape[0]):
        for oy in range(out_h):
            for ox in range(out_w):
                value = coef[o, oy, ox]
                if value == 0:
                    continue
                for ky in range(kernel_h):
                    y = oy * stride_h - pad_h + ky
                    if y < 0 or y >= height:
                        continue
                    for kx in range(kernel_w):
                        xx = ox * stride_w - pad_w + kx
                        if xx < 0 or xx >= width:
                            continue
                        column = weight_r[o, ky, kx]
                        target = acc[y, xx]
                        for c in range(channels):
                            target[c] += value * column[c]


@numba.njit(cache=True, parallel=True)
def _event_conv_transpose(coef, weight_r, geometry, image):  # pragma: no cover - compiled
    """``image [N, C, H, W] = transpose(coef [N, O, OH, OW])``, samples in parallel."""
    n_samples, channels, height, width = image.shape
    for n in numba.prange(n_samples):
        acc = np.zeros((height, width, channels), dtype=image.dtype)
        _event_conv_scatter(coef[n], weight_r, geometry, acc)
        for c in range(channels):
            for y in range(height):
                for xx in range(width):
                    image[n, c, y, xx] = acc[y, xx, c]


def event_conv_transpose(coef: np.ndarray, weight: np.ndarray, geometry, input_shape) -> np.ndarray:
    """The adjoint of ``refsnn.layers.Conv2d`` (``coef [N, O, OH, OW] -> [N, C, H, W]``, eq. 17's
    ``lam W``) visiting only the non-zero entries of ``coef``; in ``coef``'s and ``weight``'s common
    dtype, equal to the GEMM/col2im adjoint up to the summation order."""
    dtype = np.result_type(coef.dtype, weight.dtype)
    weight_r = np.ascontiguousarray(weight.transpose(0, 2, 3, 1), dtype=dtype)
    image = np.empty((coef.shape[0],) + tuple(input_shape), dtype=dtype)
    _event_conv_transpose(np.ascontiguousarray(coef, dtype=dtype), weight_r, tuple(int(g) for g in geometry), image)
    return image


# Partial sums of the event weight gradient: a fixed count of sample groups (the result does not
# depend on the thread count).
_EVENT_WGRAD_GROUPS = 16


@numba.njit(cache=True, parallel=True)
def _event_conv_weight_grad(x, grad, geometry, partial):  # pragma: no cover - compiled
    """``partial[g] [O, KH, KW, C] = sum`` over the samples of group ``g`` of ``grad[n, o, oy, ox]
    x[n, :, y, x']`` at the non-zero ``grad`` entries (``x [N, C, H, W]``, ``grad [N, O, OH, OW]``);
    each sample is copied once into an ``[H, W, C]`` scratch (channels contiguous)."""
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w = geometry
    n_samples, channels, height, width = x.shape
    n_out = grad.shape[1]
    groups = partial.shape[0]
    per_group = (n_samples + groups - 1) // groups
    for g in numba.prange(groups):
        acc = partial[g]
        sample = np.empty((height, width, channels), dtype=x.dtype)
        for n in range(g * per_group, min(n_samples, (g + 1) * per_group)):
            copied = False
            for o in range(n_out):
                for oy in range(out_h):
                    for ox in range(out_w):
                        value = grad[n, o, oy, ox]
                        if value == 0:
                            continue
                        if not copied:
                            for c in range(channels):
                                for y in range(height):
                                    for xx in range(width):
                                        sample[y, xx, c] = x[n, c, y, xx]
                            copied = True
                        for ky in range(kernel_h):
                            y = oy * stride_h - pad_h + ky
                            if y < 0 or y >= height:
                                continue
                            for kx in range(kernel_w):
                                xx = ox * stride_w - pad_w + kx
                                if xx < 0 or xx >= width:
                                    continue
                                source = sample[y, xx]
                                target = acc[o, ky, kx]
                                for c in range(channels):
                                    target[c] += value * source[c]


def event_conv_weight_grad(x: np.ndarray, grad_out: np.ndarray, weight_shape, geometry,
                           dtype=None) -> np.ndarray:
    """``dL/dW [O, C, KH, KW]`` of a convolution with input ``x [N, C, H, W]`` and ``dL/d output =
    grad_out [N, O, OH, OW]``, visiting only the non-zero entries of ``grad_out``; computed in
    ``dtype`` (default: the inputs' common type) and equal to the im2col/GEMM gradient up to the
    summation order (skipped zeros: not for non-finite inputs, where ``0 * inf`` would be NaN)."""
    dtype = np.result_type(x.dtype, grad_out.dtype) if dtype is None else np.dtype(dtype)
    n_out, channels, kernel_h, kernel_w = weight_shape
    groups = max(1, min(_EVENT_WGRAD_GROUPS, x.shape[0]))
    partial = np.zeros((groups, n_out, kernel_h, kernel_w, channels), dtype=dtype)
    _event_conv_weight_grad(np.ascontiguousarray(x, dtype=dtype), np.ascontiguousarray(grad_out, dtype=dtype),
                            tuple(int(g) for g in geometry), partial)
    return np.ascontiguousarray(partial.sum(axis=0).transpose(0, 3, 1, 2))


def event_linear_transpose(coef: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``coef @ weight`` (the adjoint of ``Linear``) visiting only the non-zero coefficients of each
    row: the event-driven forward with the rows of ``weight`` as its columns (no copy of ``weight``).

    ``coef [N, out]``, ``weight [out, in]``; returns ``[N, in]`` in ``weight``'s dtype.
    """
    weight = np.ascontiguousarray(weight)
    coef = np.ascontiguousarray(coef, dtype=weight.dtype)
    out = np.empty((coef.shape[0], weight.shape[1]), dtype=weight.dtype)
    _event_linear_forward(coef, weight, np.zeros(weight.shape[1], weight.dtype), out)
    return out


def event_coef_weight_grad(x2d: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    """``grad_out.T @ x2d`` (``[out, in]``) visiting only the non-zero entries of a sparse ``grad_out``
    (the event weight gradient with the roles of the two factors swapped: no transposes).
    ``x2d [N, in]``, ``grad_out [N, out]``."""
    grad_out = np.ascontiguousarray(grad_out)
    x2d = np.ascontiguousarray(x2d, dtype=grad_out.dtype)
    grad_weight = np.zeros((grad_out.shape[1], x2d.shape[1]), dtype=grad_out.dtype)
    _event_weight_grad(grad_out, x2d, grad_weight)
    return grad_weight


@numba.njit(cache=True, parallel=True)
def _event_weight_grad(x2d, grad_out, grad_weight_t):  # pragma: no cover - compiled
    """Parallel over blocks of inputs ``i``: each block owns its rows of ``grad_weight_t`` and adds
    the samples in order ``n = 0, 1, ...`` as the serial loop, whatever the thread count."""
    n_in = x2d.shape[1]
    for block in numba.prange((n_in + _ROW_BLOCK - 1) // _ROW_BLOCK):
        _event_weight_grad_inputs(x2d, grad_out, grad_weight_t, block * _ROW_BLOCK,
                                  min(n_in, (block + 1) * _ROW_BLOCK))


@numba.njit(cache=True)
def _event_weight_grad_inputs(x2d, grad_out, grad_weight_t, first, last):  # pragma: no cover - compiled
    rows = x2d.shape[0]
    n_out = grad_out.shape[1]
    for n in range(rows):
        g = grad_out[n]
        for i in range(first, last):
            value = x2d[n, i]
            if value != 0:
                target = grad_weight_t[i]
                if value == 1:
                    for o in range(n_out):
                        target[o] += g[o]
                else:
                    for o in range(n_out):
                        target[o] += value * g[o]


def event_weight_grad(x2d: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    """``grad_out.T @ x2d`` (``[out, in]``): adds ``grad_out[n]`` into the columns of the non-zero
    inputs of row ``n`` only. ``x2d [N, in]``, ``grad_out [N, out]``."""
    grad_out = np.ascontiguousarray(grad_out)
    x2d = np.ascontiguousarray(x2d, dtype=grad_out.dtype)
    grad_weight_t = np.zeros((x2d.shape[1], grad_out.shape[1]), dtype=grad_out.dtype)
    _event_weight_grad(x2d, grad_out, grad_weight_t)
    return transpose_contiguous(grad_weight_t)


# --- compiling a function with compile-time globals ----------------------------------------------

def specialize(func, constants: dict, tag: str, **options):
    """``func`` compiled by Numba with ``constants`` as extra globals (compile-time constants: flags,
    or the compiled rules of a neuron model), named ``<name>_<tag>`` (its own cache entry)."""
    specialized = types.FunctionType(func.__code__, {**func.__globals__, **constants}, func.__name__,
                                     func.__defaults__)
    specialized.__qualname__ = f"{func.__name__}_{tag}"
    return numba.njit(cache=True, **options)(specialized)
