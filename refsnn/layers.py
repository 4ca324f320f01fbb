"""Spatial layers of a spiking network: fully connected, 2-D convolution, average pooling, flatten.

Every layer is a *linear* (affine) map applied independently at each time step; the weights are
shared over time (the paper's eq. 1, the ``W[k] (*) s_t[k-1] + b[k]`` term). Each class keeps its
rules side by side:

- ``forward(x)``: the affine map, ``x`` of shape ``[N, *in_shape]`` (``N`` = time x batch, or any
  leading count) to ``[N, *out_shape]``;
- ``backward(x, grad_out)``: gradient w.r.t. the input and the parameters (manual BPTT);
- ``transpose(coef)``: the adjoint of the linear part, ``coef @ W`` (back-substitution in S-CROWN,
  eqs. 17-18), ``[N, *out_shape] -> [N, *in_shape]``; ``transpose_at`` reads it at a few input
  positions only (``Linear``, ``Conv2d``: the free bits of a box at the first stage) and
  ``transpose_at_backward`` is its reverse;
- ``interval(lower, upper)``: interval arithmetic with ``W+`` and ``W-`` (S-IBP, eq. 11).

Conventions follow PyTorch so weights port 1:1: ``Linear.weight`` is ``[out, in]``,
``Conv2d.weight`` is ``[out, in, kh, kw]``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numba
import numpy as np

from . import kernels
from .validation import ModelValidationError, check_int_pair, check_parameter_array

Shape = Tuple[int, ...]


class Layer:
    """Base class of the spatial layers. ``has_neuron``: a LIF neuron follows this layer."""

    has_neuron: bool = False
    kind: str = "layer"
    input_shape: Optional[Shape] = None  # set by ``output_shape`` (the network resolves shapes once)

    def params(self) -> Dict[str, np.ndarray]:
        return {}

    def output_shape(self, input_shape: Shape) -> Shape:
        """Checks ``input_shape`` (without batch axis), records it, returns the output shape."""
        raise NotImplementedError

    def _require_input_shape(self) -> Shape:
        if self.input_shape is None:
            raise RuntimeError(f"{type(self).__name__}: input shape unknown; build the SNN with input_shape=...")
        return self.input_shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, x: np.ndarray, grad_out: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """Gradients w.r.t. the input ``[N, *in]`` and the parameters (dict, same keys as ``params``)."""
        return self.transpose(grad_out), {}

    def param_grads(self, x: np.ndarray, grad_out: np.ndarray) -> Dict[str, np.ndarray]:
        """The parameter part of ``backward`` alone (no input gradient), the same values."""
        return self.backward(x, grad_out)[1]

    def transpose(self, coef: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def adjoint_columns(self, index: np.ndarray):
        """What ``transpose_at`` needs to read ``transpose(coef)`` only at the flat input positions
        ``index [N, F]`` (per leading row ``n``; the free input bits of a box): an opaque value."""
        raise NotImplementedError

    def transpose_at(self, coef: np.ndarray, columns) -> np.ndarray:
        """``transpose(coef)`` at the positions of ``columns``: ``coef [N, R, n_out] -> [N, R, F]``
        (``R`` coefficient rows per input row ``n``; eq. 17 at the input, where only few bits are free)."""
        raise NotImplementedError

    def transpose_at_backward(self, coef: np.ndarray, columns, grad: np.ndarray,
                              grad_coef: np.ndarray) -> np.ndarray:
        """Reverse of ``transpose_at`` for ``dL/d out = grad [N, R, F]``: adds ``dL/d coef`` into
        ``grad_coef [N, R, n_out]`` and returns ``dL/d weight`` (the weight's shape)."""
        raise NotImplementedError

    @staticmethod
    def _sparse_coefficients(coef: np.ndarray, kind: str, ndim: int, width: int, min_width: int) -> bool:
        """The one gate of the event adjoints (``Linear``/``Conv2d._events``): ``coef`` of the kernels'
        rank ``ndim``, non-empty, on a layer at least ``min_width`` wide, sparser than ``kind``'s crossover.
        The crossover (and its environment override) is read first, so a bad override is refused on the
        first call, whatever the layer."""
        limit = kernels.crossover(kind)
        return (limit > 0.0 and width >= min_width and coef.ndim == ndim and coef.shape[0] > 0
                and kernels.use_event_driven(coef.reshape(coef.shape[0], -1), kind))

    def interval(self, lower: np.ndarray, upper: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def astype(self, dtype) -> "Layer":
        return self

    def config(self) -> dict:
        """Hyper-parameters (not weights) that define the layer, for checkpoints."""
        return {}


def _cast_checked(array: np.ndarray, dtype) -> np.ndarray:
    """``array`` in ``dtype``; a value that overflows becomes inf, which the caller's check refuses
    by name (so the cast itself stays quiet)."""
    with np.errstate(over="ignore"):
        return array.astype(dtype)


class Linear(Layer):
    """Fully connected layer ``y = x W^T + b``; ``weight [out, in]``, ``bias [out]``."""

    has_neuron = True
    kind = "linear"

    def __init__(self, weight, bias=None):
        self.weight = check_parameter_array(weight, "Linear weight", 2)
        if min(self.weight.shape) < 1:
            raise ModelValidationError(f"Linear weight must be [out >= 1, in >= 1], got shape {self.weight.shape}")
        out_features = self.weight.shape[0]
        if bias is None:
            bias = np.zeros(out_features, dtype=self.weight.dtype)
        # the bias takes the weight's dtype; re-checked there (1e39 is finite in float64, not in float32)
        bias = _cast_checked(check_parameter_array(bias, "Linear bias", 1), self.weight.dtype)
        self.bias = check_parameter_array(bias, f"Linear bias as {self.weight.dtype}", 1)
        if self.bias.shape != (out_features,):
            raise ModelValidationError(f"Linear bias must have shape ({out_features},), got {self.bias.shape}")

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def params(self) -> Dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    def output_shape(self, input_shape: Shape) -> Shape:
        self.input_shape = tuple(input_shape)
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(
                f"Linear layer expects inputs of shape ({self.in_features},), got {tuple(input_shape)}; "
                "add a Flatten layer before it or fix the weight shape")
        return (self.out_features,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x [N, in] -> [N, out]``. Sparse inputs (spikes below the measured density crossover,
        ``refsnn.kernels``) take the event-driven kernel: only active inputs' weight columns are summed."""
        if x.dtype == self.weight.dtype and kernels.use_event_driven(x, "forward", self.out_features):
            return kernels.event_linear_forward(x, self.weight, self.bias)
        return x @ self.weight.T + self.bias

    def _events(self, coef: np.ndarray) -> bool:
        """Whether the adjoint and the weight gradient of output-side coefficients ``coef [N, out]``
        take the event kernels (``refsnn.kernels.LINEAR_ADJOINT_CROSSOVER``)."""
        return (coef.dtype == self.weight.dtype
                and self._sparse_coefficients(coef, "linear_adjoint", 2, self.out_features,
                                              kernels.EVENT_ADJOINT_MIN_FEATURES))

    def weight_grad(self, x: np.ndarray, grad_out: np.ndarray, events: bool = False) -> np.ndarray:
        """``dL/dW [out, in] = grad_out.T @ x`` for ``x [N, in]``, ``grad_out [N, out]``. ``events`` (the
        bound graph's coefficients): a sparse ``grad_out`` (below ``LINEAR_ADJOINT_CROSSOVER``) visits its
        non-zero entries only (``kernels.event_coef_weight_grad``); without, a sparse spike input ``x``
        (BPTT) takes the event kernel; otherwise BLAS."""
        if x.dtype == grad_out.dtype:
            if events:
                if self._events(grad_out):
                    return kernels.event_coef_weight_grad(x, grad_out)
            elif kernels.use_event_driven(x, "wgrad", self.out_features):
                return kernels.event_weight_grad(x, grad_out)
        return grad_out.T @ x

    def param_grads(self, x, grad_out, events: bool = False):
        """Weight (``weight_grad``) and bias gradients."""
        return {"weight": self.weight_grad(x, grad_out, events), "bias": grad_out.sum(axis=0)}

    def backward(self, x, grad_out):
        return grad_out @ self.weight, self.param_grads(x, grad_out)

    def transpose(self, coef: np.ndarray, events: bool = False) -> np.ndarray:
        """Adjoint ``[N, out] -> [N, in]``. ``events``: sparse ``coef`` (below the measured density
        crossover) visits its non-zero entries only (``kernels.event_linear_transpose``: the same
        sums in another order); off, the BLAS product bit for bit (the sound bounds' adjoint)."""
        if events and self._events(coef):
            return kernels.event_linear_transpose(coef, self.weight)
        return coef @ self.weight

    def adjoint_columns(self, index):
        """The positions and their weight columns ``[N, F, out]`` (one BLAS product per row reads them)."""
        return index, kernels.transpose_contiguous(self.weight)[index]

    def transpose_at(self, coef, columns):
        return coef @ columns[1].transpose(0, 2, 1)

    def transpose_at_backward(self, coef, columns, grad, grad_coef):
        index, weight_cols = columns
        out = coef.shape[2]
        grad_coef += (grad @ weight_cols).reshape(grad_coef.shape)
        # one [F, R] x [R, out] product per row n, added into the weight columns of its positions
        # (the dense [N R, in] GEMM would multiply zeros everywhere else)
        per_position = grad.transpose(0, 2, 1) @ coef  # [N, F, out]
        grad_weight_t = np.zeros((self.in_features, out), grad.dtype)
        _add_rows_at(grad_weight_t, index.reshape(-1), per_position.reshape(-1, out))
        return grad_weight_t.T

    def interval(self, lower, upper):
        weight_pos = np.maximum(self.weight, 0.0)
        weight_neg = np.minimum(self.weight, 0.0)
        out_lower = lower @ weight_pos.T + upper @ weight_neg.T + self.bias
        out_upper = upper @ weight_pos.T + lower @ weight_neg.T + self.bias
        return out_lower, out_upper

    def astype(self, dtype):
        layer = Linear(self.weight.astype(dtype), self.bias.astype(dtype))
        layer.input_shape = self.input_shape
        return layer


def _conv_windows(x: np.ndarray, kernel: Tuple[int, int], stride: Tuple[int, int],
                  padding: Tuple[int, int]) -> np.ndarray:
    """Strided view of the padded input: ``[N, C, H, W] -> [N, C, OH, OW, kh, kw]`` (no copy)."""
    pad_h, pad_w = padding
    if pad_h or pad_w:
        x = np.pad(x, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))
    return windows[:, :, ::stride[0], ::stride[1]]


def _conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# --- im2col / col2im kernels (Numba) ------------------------------------------------------------
# Layout: ``cols[(c * kh + i) * kw + j, (n * OH + a) * OW + b] = x_padded[n, c, a * sh + i, b * sw + j]``,
# one row per (channel, kernel offset), one column per (sample, output position). The convolution
# is then ONE GEMM ``W[O, C*kh*kw] @ cols`` (BLAS, over all time steps and samples at once); its
# weight gradient is ``grad @ cols.T`` over blocks of samples whose im2col fits the cache
# (``_conv_weight_grad_fused``: the whole ``cols`` of T'BR back-substitution rows would not), and
# its adjoint is ``W.T @ grad`` followed by col2im, per sample (``_conv_transpose_fused``).
# Padding is handled by index ranges: no padded copy.
# The drivers run in parallel (``prange``; ``refsnn.threads`` sets the count): im2col one row of
# ``cols`` per iteration, col2im one sample per iteration (a sample writes only its own image, so
# no two threads add into the same pixel), and every input pixel receives
# its kernel offsets' contributions in the serial order (channel, kernel row, kernel column), so
# the result does not depend on the thread count.

@numba.njit(cache=True)
def _valid_range(offset, pad, stride, size, out_size):  # pragma: no cover
    """Output indices ``b`` whose input index ``b * stride - pad + offset`` lies in ``[0, size)``."""
    low = 0
    if offset < pad:
        low = (pad - offset + stride - 1) // stride
    high = (size + pad - offset + stride - 1) // stride
    return min(low, out_size), max(min(high, out_size), 0)


@numba.njit(cache=True)
def _im2col_row(x, cols, row, geometry):  # pragma: no cover
    """Fills row ``row = (c * kh + i) * kw + j`` of ``cols`` from ``x [N, C, H, W]``, sample by sample
    (contiguous writes along the row). The copy's indices are unsigned, so Numba drops its
    negative-index test from the strided read (conv2 of the CONV net: 0.094 -> 0.057 s per im2col in one
    profile on the loaded 2-core machine; not a committed benchmark)."""
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w = geometry
    height, width = x.shape[2], x.shape[3]
    c = row // (kernel_h * kernel_w)
    i = (row // kernel_w) % kernel_h
    j = row % kernel_w
    a_low, a_high = _valid_range(i, pad_h, stride_h, height, out_h)
    b_low, b_high = _valid_range(j, pad_w, stride_w, width, out_w)
    a_high, b_high = max(a_high, a_low), max(b_high, b_low)
    dst = cols[row]
    positions = out_h * out_w
    step = numba.uint64(stride_w)
    for sample in range(x.shape[0]):
        src = x[sample, c]
        base = sample * positions
        dst[base:base + a_low * out_w] = 0
        for a in range(a_low, a_high):
            start = base + a * out_w
            for b in range(b_low):
                dst[start + b] = 0
            line = src[a * stride_h - pad_h + i]
            first = numba.uint64(b_low * stride_w - pad_w + j)  # >= 0: b_low is the first valid b
            into = numba.uint64(start + b_low)
            for q in range(numba.uint64(b_high - b_low)):
                dst[into + q] = line[first + q * step]
            for b in range(b_high, out_w):
                dst[start + b] = 0
        dst[base + a_high * out_w:base + positions] = 0


@numba.njit(cache=True)
def _col2im_sample(cols, start_column, dst_sample, geometry):  # pragma: no cover
    """Adds the columns ``start_column + [0, OH*OW)`` of ``cols`` into one image ``[C, H, W]``:
    the col2im rule, shared by the batched adjoint and the per-sample fused adjoint."""
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w = geometry
    channels, height, width = dst_sample.shape
    for c in range(channels):
        dst = dst_sample[c]
        for i in range(kernel_h):
            a_low, a_high = _valid_range(i, pad_h, stride_h, height, out_h)
            for j in range(kernel_w):
                src = cols[(c * kernel_h + i) * kernel_w + j]
                b_low, b_high = _valid_range(j, pad_w, stride_w, width, out_w)
                for a in range(a_low, a_high):
                    y = a * stride_h - pad_h + i
                    start = start_column + a * out_w
                    for b in range(b_low, b_high):
                        dst[y, b * stride_w - pad_w + j] += src[start + b]


@numba.njit(cache=True, parallel=True)
def _im2col_parallel(x, cols, geometry):  # pragma: no cover
    for row in numba.prange(cols.shape[0]):
        _im2col_row(x, cols, row, geometry)


@numba.njit(cache=True)
def _im2col_block(x, first, count, geometry):  # pragma: no cover - compiled
    """im2col of the block ``x[first:first + count]`` into fresh scratch ``[C*kh*kw, count*OH*OW]`` of
    ``x``'s dtype: the blocked gather of the fused forward and weight gradient (serial; their blocks
    run in parallel)."""
    kernel_h, kernel_w, out_h, out_w = geometry[0], geometry[1], geometry[6], geometry[7]
    cols = np.empty((x.shape[1] * kernel_h * kernel_w, count * out_h * out_w), dtype=x.dtype)
    samples = x[first:first + count]
    for row in range(cols.shape[0]):
        _im2col_row(samples, cols, row, geometry)
    return cols


# Samples per parallel block of the fused adjoint (one ``cols`` scratch per block).
_TRANSPOSE_BLOCK = 8


@numba.njit(cache=True, parallel=True)
def _conv_transpose_fused(grad3, weight_t, image, geometry):  # pragma: no cover
    """Adjoint of a convolution, one sample at a time: ``cols = W.T @ grad[n]`` (``[C*kh*kw, OH*OW]``,
    cache-sized) then col2im into ``image[n]`` (zeroed by the caller).

    ``grad3 [N, O, OH*OW]``, ``weight_t [C*kh*kw, O]`` (both contiguous), ``image [N, C, H, W]``.
    Blocks of samples run in parallel (a sample writes only its own image); each ``np.dot`` is
    SciPy's single-threaded OpenBLAS (``refsnn.threads``), so a sample's values do not depend on the
    thread count. No ``[C*kh*kw, N*OH*OW]`` temporary: the training backward and back-substitution
    share this one adjoint.
    """
    n = image.shape[0]
    for block in numba.prange((n + _TRANSPOSE_BLOCK - 1) // _TRANSPOSE_BLOCK):
        cols = np.empty((weight_t.shape[0], geometry[6] * geometry[7]), dtype=image.dtype)
        for sample in range(block * _TRANSPOSE_BLOCK, min(n, (block + 1) * _TRANSPOSE_BLOCK)):
            np.dot(weight_t, grad3[sample], cols)
            _col2im_sample(cols, 0, image[sample], geometry)


@numba.njit(cache=True)
def _add_rows_at(target, index, rows):  # pragma: no cover - compiled
    """``target[index[q]] += rows[q]`` for every ``q`` in order (repeated indices accumulate)."""
    for q in range(index.shape[0]):
        dst = target[index[q]]
        src = rows[q]
        for o in range(dst.shape[0]):
            dst[o] += src[o]


# --- the adjoint of a convolution read at a few input positions ---------------------------------
# Input position q = (c, y, x) receives, in ``transpose``, the output positions (o, a, b) with
# y = a * sh - ph + i and x = b * sw - pw + j for a kernel offset (i, j): at most
# O * ceil(kh / sh) * ceil(kw / sw) of them. ``_conv_column_tables`` lists them once per geometry
# (flat output index and flat weight index); the gather and its reverse read the tables, so the
# index arithmetic of the adjoint at a position is written in this one place.

@numba.njit(cache=True)
def _conv_column_tables(channels, height, width, out_channels, geometry):  # pragma: no cover - compiled
    """``(out_index, weight_index [C*H*W, K], count [C*H*W])``: the output positions and weight
    entries of every input position, in the order (i, j, o); ``count[q]`` of the ``K`` are used."""
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w = geometry
    width_k = out_channels * ((kernel_h + stride_h - 1) // stride_h) * ((kernel_w + stride_w - 1) // stride_w)
    n_in = channels * height * width
    out_index = np.zeros((n_in, width_k), np.int64)
    weight_index = np.zeros((n_in, width_k), np.int64)
    count = np.zeros(n_in, np.int64)
    for c in range(channels):
        for y in range(height):
            for x in range(width):
                q = (c * height + y) * width + x
                k = 0
                for i in range(kernel_h):
                    a_num = y + pad_h - i
                    if a_num < 0 or a_num % stride_h != 0 or a_num // stride_h >= out_h:
                        continue
                    a = a_num // stride_h
                    for j in range(kernel_w):
                        b_num = x + pad_w - j
                        if b_num < 0 or b_num % stride_w != 0 or b_num // stride_w >= out_w:
                            continue
                        b = b_num // stride_w
                        for o in range(out_channels):
                            out_index[q, k] = (o * out_h + a) * out_w + b
                            weight_index[q, k] = ((o * channels + c) * kernel_h + i) * kernel_w + j
                            k += 1
                count[q] = k
    return out_index, weight_index, count


@numba.njit(cache=True, parallel=True)
def _conv_gather_adjoint(coef, index, out_index, weight_values, count, out):  # pragma: no cover - compiled
    """``out[n, r, f] = sum_k coef[n, r, out_index[q, k]] * weight_values[q, k]`` with ``q = index[n, f]``
    (float64 sums in table order); rows ``n`` in parallel."""
    for n in numba.prange(coef.shape[0]):
        for r in range(coef.shape[1]):
            row = coef[n, r]
            for f in range(index.shape[1]):
                q = index[n, f]
                acc = 0.0
                for k in range(count[q]):
                    acc += row[out_index[q, k]] * weight_values[q, k]
                out[n, r, f] = acc


@numba.njit(cache=True, parallel=True)
def _conv_gather_adjoint_reverse(coef, index, out_index, weight_index, weight_values, count, grad, grad_coef,
                                 grad_weight_rows):  # pragma: no cover - compiled
    """Reverse of ``_conv_gather_adjoint``: ``grad_coef[n, r, out_index] += grad * weight`` and
    ``grad_weight_rows[n, weight_index] += grad * coef`` (float64, one row of partial sums per ``n``,
    so rows run in parallel without races). Zero entries of ``grad`` (padded positions) are skipped."""
    for n in numba.prange(coef.shape[0]):
        acc = grad_weight_rows[n]
        for r in range(coef.shape[1]):
            row = coef[n, r]
            grow = grad_coef[n, r]
            for f in range(index.shape[1]):
                g = grad[n, r, f]
                if g == 0.0:
                    continue
                q = index[n, f]
                for k in range(count[q]):
                    o = out_index[q, k]
                    grow[o] += g * weight_values[q, k]
                    acc[weight_index[q, k]] += g * row[o]


@numba.njit(cache=True, parallel=True)
def _conv_forward_at(x, weight2d, reads, rows, geometry, out):  # pragma: no cover - compiled
    """``out[g R + r, o, oy, ox] = sum W[o] . window(x[g R + r], oy, ox)`` where ``reads[g, (o, oy, ox)]``
    (``Conv2d.forward_at``); ``out`` zeroed by the caller. Per row and read position the non-zero
    inputs under the window are gathered once, then every read channel sums them in (c, ky, kx) order."""
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w = geometry
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    n_out = weight2d.shape[0]
    positions = out_h * out_w
    zero = np.zeros(1, dtype=out.dtype)[0]
    for g in numba.prange(reads.shape[0]):
        offsets = np.empty(channels * kernel_h * kernel_w, np.int64)
        values = np.empty(channels * kernel_h * kernel_w, dtype=x.dtype)
        read_channels = np.empty(n_out, np.int64)
        for p in range(positions):
            n_read = 0
            for o in range(n_out):
                if reads[g, o * positions + p]:
                    read_channels[n_read] = o
                    n_read += 1
            if n_read == 0:
                continue
            oy = p // out_w
            ox = p - oy * out_w
            for r in range(rows):
                row = g * rows + r
                k = 0
                for c in range(channels):
                    for ky in range(kernel_h):
                        y = oy * stride_h + ky - pad_h
                        if y < 0 or y >= height:
                            continue
                        for kx in range(kernel_w):
                            xx = ox * stride_w + kx - pad_w
                            if xx < 0 or xx >= width:
                                continue
                            value = x[row, c, y, xx]
                            if value != 0:
                                offsets[k] = (c * kernel_h + ky) * kernel_w + kx
                                values[k] = value
                                k += 1
                for q in range(n_read):
                    o = read_channels[q]
                    acc = zero
                    for i in range(k):
                        acc += values[i] * weight2d[o, offsets[i]]
                    out[row, o, oy, ox] = acc


# Samples per im2col scratch of the fused weight gradient, and the most partial sums it keeps
# (a fixed count: the result does not depend on the thread count).
_WGRAD_BLOCK = 8
_WGRAD_GROUPS = 16


@numba.njit(cache=True, parallel=True)
def _conv_weight_grad_fused(x, grad3, geometry, partial):  # pragma: no cover - compiled
    """Weight gradient of a convolution without the ``[C*kh*kw, N*OH*OW]`` im2col matrix:
    ``partial[g] = sum grad[n] @ cols(x[n]).T`` over the blocks of ``_WGRAD_BLOCK`` samples of group ``g``.

    ``x [N, C, H, W]``, ``grad3 [N, O, OH*OW]`` (both contiguous), ``partial [G, O, C*kh*kw]``
    zeroed by the caller, groups of consecutive blocks in parallel; each block is one im2col into a
    cache-sized scratch and one single-threaded GEMM (as ``_conv_transpose_fused``).
    """
    n, channels_out, positions = grad3.shape
    groups = partial.shape[0]
    n_blocks = (n + _WGRAD_BLOCK - 1) // _WGRAD_BLOCK
    per_group = (n_blocks + groups - 1) // groups
    for g in numba.prange(groups):
        product = np.empty((channels_out, partial.shape[2]), dtype=partial.dtype)
        acc = partial[g]
        for block in range(g * per_group, min(n_blocks, (g + 1) * per_group)):
            first = block * _WGRAD_BLOCK
            count = min(n, first + _WGRAD_BLOCK) - first
            cols = _im2col_block(x, first, count, geometry)
            rows = np.empty((channels_out, count * positions), dtype=x.dtype)
            for s in range(count):
                rows[:, s * positions:(s + 1) * positions] = grad3[first + s]
            np.dot(rows, cols.T, product)
            acc += product


# Bytes of one block's im2col scratch plus its GEMM result in the forward (``_conv_forward_fused``):
# about a core's L2 (1 MiB on the project's VM), so neither is written to memory and read back, as
# the whole ``[C*kh*kw, N*OH*OW]`` matrix was (1.2 GB on conv2 of the CONV net at T = 10, batch 256).
_FORWARD_BLOCK_BYTES = 1024 * 1024


def _forward_block(k: int, channels_out: int, positions: int, itemsize: int) -> int:
    """Samples per block of ``_conv_forward_fused``: as many as ``_FORWARD_BLOCK_BYTES`` hold, at least one
    (a function of the layer's shapes only, not of the batch)."""
    return max(1, _FORWARD_BLOCK_BYTES // max(1, (k + channels_out) * positions * itemsize))


@numba.njit(cache=True, parallel=True)
def _conv_forward_fused(x, weight2d, bias, geometry, block, out):  # pragma: no cover - compiled
    """Convolution ``out [N, O, OH*OW] = W @ cols(x[n]) + b`` without the ``[C*kh*kw, N*OH*OW]`` im2col
    matrix: blocks of ``block`` samples are im2col'ed into cache-sized scratch, multiplied by
    ``weight2d [O, C*kh*kw]`` in one single-threaded GEMM (``refsnn.threads``) and copied into their
    samples' outputs with the bias. ``x [N, C, H, W]`` contiguous. Blocks run in parallel and each
    writes only its own samples, so the result does not depend on the thread count; it equals the
    whole-batch GEMM up to the float32 summation order inside BLAS (float64: to the last bits).
    """
    n = x.shape[0]
    channels_out = weight2d.shape[0]
    positions = geometry[6] * geometry[7]
    for b in numba.prange((n + block - 1) // block):
        first = b * block
        count = min(n, first + block) - first
        cols = _im2col_block(x, first, count, geometry)
        rows = np.empty((channels_out, count * positions), dtype=out.dtype)
        np.dot(weight2d, cols, rows)
        for s in range(count):
            dst = out[first + s]
            for o in range(channels_out):
                value = bias[o]
                src = rows[o, s * positions:(s + 1) * positions]
                target = dst[o]
                for p in range(positions):
                    target[p] = src[p] + value


def _im2col(x: np.ndarray, *geometry) -> np.ndarray:
    """``x [N, C, H, W]`` -> ``cols [C*kh*kw, N*OH*OW]``; ``geometry = (kh, kw, sh, sw, ph, pw, OH, OW)``."""
    kernel_h, kernel_w, out_h, out_w = geometry[0], geometry[1], geometry[6], geometry[7]
    cols = np.empty((x.shape[1] * kernel_h * kernel_w, x.shape[0] * out_h * out_w), dtype=x.dtype)
    _im2col_parallel(np.ascontiguousarray(x), cols, tuple(int(g) for g in geometry))
    return cols


def _scatter_windows(cols: np.ndarray, input_shape: Shape, kernel, stride, padding) -> np.ndarray:
    """Adjoint of ``_conv_windows``: sum ``[N, C, OH, OW, kh, kw]`` window values back into ``[N, C, H, W]``."""
    n, channels, out_h, out_w, kernel_h, kernel_w = cols.shape
    height, width = input_shape[-2:]
    padded = np.zeros((n, channels, height + 2 * padding[0], width + 2 * padding[1]), dtype=cols.dtype)
    for i in range(kernel_h):
        for j in range(kernel_w):
            padded[:, :, i:i + stride[0] * out_h:stride[0], j:j + stride[1] * out_w:stride[1]] += cols[..., i, j]
    return padded[:, :, padding[0]:padding[0] + height, padding[1]:padding[1] + width]


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as PyTorch); ``weight [out, in, kh, kw]``, ``bias [out]``."""

    has_neuron = True
    kind = "conv2d"

    def __init__(self, weight, bias=None, stride=1, padding=0):
        self.weight = check_parameter_array(weight, "Conv2d weight", 4)
        out_channels = self.weight.shape[0]
        if bias is None:
            bias = np.zeros(out_channels, dtype=self.weight.dtype)
        bias = _cast_checked(check_parameter_array(bias, "Conv2d bias", 1), self.weight.dtype)
        self.bias = check_parameter_array(bias, f"Conv2d bias as {self.weight.dtype}", 1)
        if self.bias.shape != (out_channels,):
            raise ModelValidationError(f"Conv2d bias must have shape ({out_channels},), got {self.bias.shape}")
        if min(self.weight.shape) < 1:
            raise ModelValidationError(f"Conv2d weight must have every axis >= 1, got shape {self.weight.shape}")
        self.stride = check_int_pair(stride, "Conv2d stride", 1)
        self.padding = check_int_pair(padding, "Conv2d padding", 0)

    @property
    def kernel_size(self) -> Tuple[int, int]:
        return self.weight.shape[2], self.weight.shape[3]

    def params(self):
        return {"weight": self.weight, "bias": self.bias}

    def config(self):
        return {"stride": list(self.stride), "padding": list(self.padding)}

    def output_shape(self, input_shape: Shape) -> Shape:
        self.input_shape = tuple(input_shape)
        if len(input_shape) != 3 or input_shape[0] != self.weight.shape[1]:
            raise ValueError(
                f"Conv2d expects inputs of shape ({self.weight.shape[1]}, H, W), got {tuple(input_shape)}")
        out_h = _conv_output_size(input_shape[1], self.kernel_size[0], self.stride[0], self.padding[0])
        out_w = _conv_output_size(input_shape[2], self.kernel_size[1], self.stride[1], self.padding[1])
        if out_h < 1 or out_w < 1:
            raise ValueError(f"Conv2d kernel {self.kernel_size} does not fit input {tuple(input_shape)}")
        return (self.weight.shape[0], out_h, out_w)

    def output_shape_of(self, input_shape: Shape) -> Shape:
        """Output shape ``(O, OH, OW)`` for ``input_shape`` ``(C, H, W)`` (no checks, no recording)."""
        return (self.weight.shape[0], *self._geometry(input_shape)[-2:])

    def _geometry(self, input_shape: Shape):
        out_h = _conv_output_size(input_shape[-2], self.kernel_size[0], self.stride[0], self.padding[0])
        out_w = _conv_output_size(input_shape[-1], self.kernel_size[1], self.stride[1], self.padding[1])
        return (*self.kernel_size, *self.stride, *self.padding, out_h, out_w)

    def _cols(self, x: np.ndarray, dtype) -> np.ndarray:
        """im2col matrix ``[C*kh*kw, N*OH*OW]`` of ``x [N, C, H, W]``."""
        if x.ndim != 4 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"Conv2d expects inputs [N, {self.weight.shape[1]}, H, W], got shape {x.shape}")
        return _im2col(np.ascontiguousarray(x, dtype=dtype), *self._geometry(x.shape))

    def _nchw(self, out_rows: np.ndarray, n: int, out_h: int, out_w: int, bias=None) -> np.ndarray:
        """``[O, N*OH*OW]`` GEMM result -> ``[N, O, OH, OW]`` (one copy, bias added on the way)."""
        channels = out_rows.shape[0]
        result = np.empty((n, channels, out_h, out_w), dtype=out_rows.dtype)
        result[...] = out_rows.reshape(channels, n, out_h, out_w).transpose(1, 0, 2, 3)
        if bias is not None:  # in place on the contiguous result: faster than a fused strided add
            result += bias.astype(out_rows.dtype, copy=False)[None, :, None, None]
        return result

    def _linear(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """Dense convolution ``x [N, C, H, W] -> [N, O, OH, OW]`` by blocks of im2col + GEMM
        (``_conv_forward_fused``), in the common dtype of ``x`` and ``weight``."""
        if x.ndim != 4 or x.shape[1] != weight.shape[1]:
            raise ValueError(f"Conv2d expects inputs [N, {weight.shape[1]}, H, W], got shape {x.shape}")
        dtype = np.result_type(x.dtype, weight.dtype)
        geometry = tuple(int(g) for g in self._geometry(x.shape))
        weight2d = np.ascontiguousarray(weight.reshape(weight.shape[0], -1), dtype=dtype)
        n, positions = x.shape[0], geometry[6] * geometry[7]
        out = np.empty((n, weight.shape[0], geometry[6], geometry[7]), dtype=dtype)
        block = _forward_block(weight2d.shape[1], weight.shape[0], positions, np.dtype(dtype).itemsize)
        _conv_forward_fused(np.ascontiguousarray(x, dtype=dtype), weight2d,
                            np.ascontiguousarray(bias, dtype=dtype), geometry, block,
                            out.reshape(n, weight.shape[0], positions))
        return out

    def forward(self, x):
        """``x [N, C, H, W] -> [N, O, OH, OW]``. Sparse inputs (below the measured density crossover,
        ``refsnn.kernels``) take the event-driven kernel: only active inputs' weight columns are summed."""
        if (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype == self.weight.dtype
                and x.shape[1] == self.weight.shape[1]
                and kernels.use_event_driven(x.reshape(x.shape[0], -1), "conv")):
            return kernels.event_conv_forward(x, self.weight, self.bias, self._geometry(x.shape))
        return self._linear(x, self.weight, self.bias)

    def forward_at(self, x: np.ndarray, reads: np.ndarray, rows: int) -> np.ndarray:
        """The linear part ``W (*) x`` (no bias) at the output entries a caller reads, zero elsewhere:
        ``x [G*rows, C, H, W]``, ``reads`` bool ``[G, O*OH*OW]`` (the entries of the ``rows`` rows
        ``g*rows ..`` that are read) -> ``[G*rows, O, OH, OW]``. Equal to ``forward`` minus the bias at
        the read entries up to the summation order; its cost grows with the read entries and the
        non-zero inputs under their windows (the training bound graph's reverse, where a trained
        net's stable neurons leave few entries read)."""
        input_shape = self._require_input_shape()
        expected = self.output_shape_of(input_shape)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(input_shape) or rows < 1 or x.shape[0] % rows:
            raise ValueError(f"Conv2d.forward_at expects x [G*{rows}, *{tuple(input_shape)}], got shape {x.shape}")
        groups = x.shape[0] // rows
        if reads.shape != (groups, int(np.prod(expected))):
            raise ValueError(f"Conv2d.forward_at expects reads [{groups}, {int(np.prod(expected))}], "
                             f"got shape {reads.shape}")
        dtype = np.result_type(x.dtype, self.weight.dtype)
        out = np.zeros((x.shape[0],) + tuple(expected), dtype=dtype)
        weight2d = np.ascontiguousarray(self.weight.reshape(self.weight.shape[0], -1), dtype=dtype)
        _conv_forward_at(np.ascontiguousarray(x, dtype=dtype), weight2d, np.ascontiguousarray(reads, dtype=np.bool_),
                         int(rows), tuple(int(g) for g in self._geometry(input_shape)), out)
        return out

    def _events(self, coef: np.ndarray) -> bool:
        """Whether the adjoint and the weight gradient of ``coef [N, O, OH, OW]`` take the event
        kernels (sparse output-side coefficients, ``refsnn.kernels.CONV_ADJOINT_CROSSOVER``)."""
        return self._sparse_coefficients(coef, "conv_adjoint", 4, self.weight.shape[1],
                                         kernels.EVENT_ADJOINT_MIN_CHANNELS)

    def transpose(self, coef, events: bool = False):
        """Adjoint ``[N, O, OH, OW] -> [N, C, H, W]`` of the linear part (per-sample GEMM + col2im).
        ``events``: sparse ``coef`` (below the measured density crossover) visits its non-zero entries
        only (``refsnn.kernels.event_conv_transpose``: the same sums in another order); off, the
        result is the GEMM's bit for bit (the sound bounds' adjoint)."""
        coef = np.asarray(coef)
        dtype = np.result_type(coef.dtype, self.weight.dtype)
        input_shape = self._require_input_shape()
        expected = self.output_shape_of(input_shape)
        if coef.ndim != 4 or tuple(coef.shape[1:]) != expected:
            raise ValueError(f"Conv2d expects output-side arrays [N, *{expected}], got shape {coef.shape}")
        if events and self._events(coef):
            return kernels.event_conv_transpose(coef, self.weight, self._geometry(input_shape), input_shape)
        n = coef.shape[0]
        grad3 = np.ascontiguousarray(coef.reshape(n, expected[0], -1), dtype=dtype)
        weight_t = np.ascontiguousarray(self.weight.reshape(self.weight.shape[0], -1).T, dtype=dtype)
        image = np.zeros((n,) + tuple(input_shape), dtype=dtype)
        if n:
            _conv_transpose_fused(grad3, weight_t, image, tuple(int(g) for g in self._geometry(input_shape)))
        return image

    def adjoint_columns(self, index):
        """The positions and the tables of ``_conv_column_tables`` with the weight values read from them."""
        input_shape = self._require_input_shape()
        out_index, weight_index, count = _conv_column_tables(
            int(input_shape[0]), int(input_shape[1]), int(input_shape[2]), int(self.weight.shape[0]),
            tuple(int(g) for g in self._geometry(input_shape)))
        weight_values = self.weight.reshape(-1)[weight_index]
        return np.ascontiguousarray(index, dtype=np.int64), out_index, weight_index, weight_values, count

    def transpose_at(self, coef, columns):
        index, out_index, _, weight_values, count = columns
        coef = np.ascontiguousarray(coef)
        dtype = np.result_type(coef.dtype, self.weight.dtype)
        out = np.empty(coef.shape[:2] + (index.shape[1],), dtype)
        _conv_gather_adjoint(coef, index, out_index, weight_values, count, out)
        return out

    def transpose_at_backward(self, coef, columns, grad, grad_coef):
        index, out_index, weight_index, weight_values, count = columns
        grad_weight_rows = np.zeros((coef.shape[0], self.weight.size))
        _conv_gather_adjoint_reverse(np.ascontiguousarray(coef), index, out_index, weight_index, weight_values,
                                     count, np.ascontiguousarray(grad), grad_coef, grad_weight_rows)
        return grad_weight_rows.sum(axis=0).astype(grad_coef.dtype).reshape(self.weight.shape)

    def param_grads(self, x, grad_out, events: bool = False):
        """Weight (``weight_grad``) and bias gradients."""
        grad3, weight = self._grad3_and_weight_grad(x, grad_out, events)
        return {"weight": weight, "bias": grad3.sum(axis=(0, 2))}

    def weight_grad(self, x: np.ndarray, grad_out: np.ndarray, events: bool = False) -> np.ndarray:
        """``dL/dW [O, C, kh, kw]`` for input ``x [N, C, H, W]`` and ``dL/d output [N, O, OH, OW]``:
        blocks of samples im2col'ed into cache-sized scratch, one GEMM each (``_conv_weight_grad_fused``);
        ``events``: a sparse ``grad_out`` visits its non-zero entries only, as ``transpose``."""
        return self._grad3_and_weight_grad(x, grad_out, events)[1]

    def _grad3_and_weight_grad(self, x, grad_out, events):
        """``grad_out`` as ``[N, O, OH*OW]`` in the common dtype (the bias gradient sums it) and ``weight_grad``."""
        dtype = np.result_type(x.dtype, grad_out.dtype, self.weight.dtype)
        if x.ndim != 4 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"Conv2d expects inputs [N, {self.weight.shape[1]}, H, W], got shape {x.shape}")
        expected = self.output_shape_of(self._require_input_shape())
        if grad_out.ndim != 4 or tuple(grad_out.shape[1:]) != expected or grad_out.shape[0] != x.shape[0]:
            raise ValueError(f"Conv2d expects output-side arrays [{x.shape[0]}, *{expected}], "
                             f"got shape {grad_out.shape}")
        n, channels_out = grad_out.shape[:2]
        grad3 = np.ascontiguousarray(grad_out.reshape(n, channels_out, -1), dtype=dtype)
        if events and self._events(grad_out):
            weight = kernels.event_conv_weight_grad(x, grad_out, self.weight.shape, self._geometry(x.shape),
                                                   dtype=dtype)
            return grad3, weight.astype(dtype, copy=False)
        groups = max(1, min(_WGRAD_GROUPS, (n + _WGRAD_BLOCK - 1) // _WGRAD_BLOCK))
        partial = np.zeros((groups, channels_out, self.weight[0].size), dtype)
        if n:
            _conv_weight_grad_fused(np.ascontiguousarray(x, dtype=dtype), grad3,
                                    tuple(int(g) for g in self._geometry(x.shape)), partial)
        return grad3, partial.sum(axis=0).reshape(self.weight.shape)

    def backward(self, x, grad_out):
        dtype = np.result_type(x.dtype, grad_out.dtype, self.weight.dtype)
        # BPTT's gradient on a conv output is the surrogate derivative times the spike gradient: zero
        # away from the threshold (0.6 % non-zero at conv2 of the MNIST CONV robust checkpoint), so
        # sparse ones take the event kernels; otherwise the fused per-sample adjoint (cache-sized
        # GEMM + col2im, in parallel) and the blocked weight gradient
        grads = self.param_grads(x, grad_out, events=True)
        return self.transpose(np.asarray(grad_out, dtype=dtype), events=True), grads

    def interval(self, lower, upper):
        lower, upper = np.asarray(lower), np.asarray(upper)
        dtype = np.result_type(lower.dtype, upper.dtype, self.weight.dtype)
        cols_lower, cols_upper = self._cols(lower, dtype), self._cols(upper, dtype)
        weight = self.weight.reshape(self.weight.shape[0], -1).astype(dtype, copy=False)
        weight_pos = np.maximum(weight, 0.0)
        weight_neg = np.minimum(weight, 0.0)
        out_h, out_w = self._geometry(lower.shape)[-2:]
        rows_lower = weight_pos @ cols_lower + weight_neg @ cols_upper
        rows_upper = weight_pos @ cols_upper + weight_neg @ cols_lower
        return (self._nchw(rows_lower, lower.shape[0], out_h, out_w, self.bias),
                self._nchw(rows_upper, lower.shape[0], out_h, out_w, self.bias))

    def astype(self, dtype):
        layer = Conv2d(self.weight.astype(dtype), self.bias.astype(dtype), self.stride, self.padding)
        layer.input_shape = self.input_shape
        return layer


class AvgPool2d(Layer):
    """Average pooling over ``kernel_size`` windows (no padding), stride defaults to the kernel size."""

    kind = "avgpool2d"

    def __init__(self, kernel_size, stride: Optional[int] = None):
        self.kernel_size = check_int_pair(kernel_size, "AvgPool2d kernel_size", 1)
        self.stride = check_int_pair(stride if stride is not None else kernel_size, "AvgPool2d stride", 1)

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride)}

    def output_shape(self, input_shape: Shape) -> Shape:
        self.input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"AvgPool2d expects inputs of shape (C, H, W), got {tuple(input_shape)}")
        out_h = _conv_output_size(input_shape[1], self.kernel_size[0], self.stride[0], 0)
        out_w = _conv_output_size(input_shape[2], self.kernel_size[1], self.stride[1], 0)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"AvgPool2d kernel {self.kernel_size} does not fit input {tuple(input_shape)}")
        return (input_shape[0], out_h, out_w)

    def forward(self, x):
        windows = _conv_windows(x, self.kernel_size, self.stride, (0, 0))
        return windows.mean(axis=(4, 5))

    def transpose(self, coef):
        kernel_h, kernel_w = self.kernel_size
        cols = np.broadcast_to(coef[..., None, None] / (kernel_h * kernel_w), coef.shape + (kernel_h, kernel_w))
        return _scatter_windows(cols, self._require_input_shape(), self.kernel_size, self.stride, (0, 0))

    def interval(self, lower, upper):
        # Non-negative weights: the map is monotone.
        return self.forward(lower), self.forward(upper)


class Flatten(Layer):
    """Flattens ``[N, C, H, W]`` (or any shape) to ``[N, C*H*W]`` in C order, as ``torch.flatten(x, 1)``."""

    kind = "flatten"

    def output_shape(self, input_shape: Shape) -> Shape:
        self.input_shape = tuple(input_shape)
        return (int(np.prod(input_shape)),)

    def forward(self, x):
        return x.reshape(x.shape[0], -1)

    def transpose(self, coef):
        return coef.reshape((coef.shape[0],) + self._require_input_shape())

    def backward(self, x, grad_out):
        return grad_out.reshape(x.shape), {}

    def interval(self, lower, upper):
        return self.forward(lower), self.forward(upper)


LAYER_KINDS = {cls.kind: cls for cls in (Linear, Conv2d, AvgPool2d, Flatten)}
