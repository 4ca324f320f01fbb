"""S-IBP (the paper's Alg. 1): interval bounds of every intermediate of an SNN over a box of spike trains.

Per stage ``k`` and time step ``t`` (eqs. 7, 9, 11)::

    [I_l, I_u]_t = W+ s_l + W- s_u + b  (and the reverse)     eq. 11 (spatial ops, any linear chain)
    m_l_t = I_l_t + alpha z_l_{t-1},  m_u_t = I_u_t + alpha z_u_{t-1}
    s_t  in [fire(m_l - th), fire(m_u - th)]                  eq. 7
    z_t  in  [m_l, m_u] (stable silent) | [0, 0] (stable firing) | [min(0, m_l), th] (unstable)   eq. 9

All arithmetic is float64. Current and membrane intervals are widened by the outward rounding
margin of ``refsnn.relaxations`` so that they contain the values the network computes in its own
dtype and summation order. Every intermediate bound is kept (S-CROWN, the MILP verifier and
robust training use them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import numba
from numba import njit, prange

from .input_sets import BinaryBox, binary_box
from .firing import STABLE_OFF, STABLE_ON, fires_at_threshold
from .kernels import _MIN_ROWS, add_rows, specialize, transpose_into
from .layers import AvgPool2d, Conv2d, Flatten, Linear
from .operator import PARALLEL_MIN_WORK, interval_kernel
from .neurons import neuron_model
from .relaxations import UNSTABLE, Fire, Precision, output_rounding_margin
from .spec import spec_interval


# --- spatial ops in float64 (eq. 11 and the adjoint used by S-CROWN) ----------------------------

# --- Numba kernel: the S-IBP time recurrence of one stage ----------------------------------------

def _ibp_time_kernel(cur_lower, cur_upper, alpha, membrane_coef, th_lo, th_hi, fire_ge, mem_lower, mem_upper,
                     mem_margin, reset_lower, reset_upper, state, spike_lower=None, spike_upper=None,
                     neuron: str = "zero", parallel: bool = False) -> None:
    """The S-IBP recurrence of one stage under the sound policy (eqs. 7, 9 with the membrane margin),
    ``[T', B, n]`` float64 arrays: ``refsnn.operator.interval_step`` with rounding tracked and the
    reset bounds recorded, for the neuron model ``neuron``, parallel over samples or not
    (the same bits). ``spike_lower``/``spike_upper``, if given, receive eq. 7's spike bounds of
    ``state`` (``IntervalBounds`` makes them from ``state`` when asked for)."""
    negative = np.empty(cur_lower.shape, dtype=np.bool_)
    interval_kernel(track_rounding=True, record=True, frozen=False, neuron=neuron, parallel=parallel)(
        cur_lower, cur_upper, alpha, alpha, membrane_coef, th_hi, th_lo, th_hi, 0.0, fire_ge, mem_lower, mem_upper,
        mem_margin, reset_lower, reset_upper, state, negative)
    if spike_lower is not None:
        spike_lower[...], spike_upper[...] = Fire.interval(state)


@njit(cache=True)
def _binary_current(sums_fixed, sums_free, bias, bias_abs, margin_vec, tight, margin_coef, row, cur_lower, cur_upper,
                    center, magnitude):  # pragma: no cover - compiled
    """Eq. 11 with its rounding margin on 0/1 bounds, from the weight-row sums of the set bits.

    ``sums_fixed[p] = [sum_F W | sum_F |W|]`` and ``sums_free[p] = [sum_V W | sum_V |W|]``
    (``[P, 2 n]``) over the fixed ones (both bounds 1, ``F``) and the free bits (``V``) of output
    position ``p`` (``P = 1`` for a Linear layer). Per output ``j = o P + p`` of the flat row
    ``row``: ``center = sum_F W + (1/2) sum_V W + b``, ``radius = (1/2) sum_V |W|``,
    ``magnitude = sum_F |W| + sum_V |W| + |b|`` (``tight``; else ``margin_vec[j]`` is the margin),
    ``margin = margin_coef magnitude`` (not stored: ``IntervalBounds.current_margin`` recomputes it),
    ``I = center -+ radius -+ margin``. Every product is exact
    (0/1 times a weight in the network's dtype, widened to float64); the sums differ from a GEMM's
    only in their order, which the margin covers.
    """
    n = bias.shape[0]
    positions = sums_fixed.shape[0]
    for o in range(n):
        for p in range(positions):
            j = o * positions + p
            c = (sums_fixed[p, o] + 0.5 * sums_free[p, o]) + bias[o]
            r = 0.5 * sums_free[p, n + o]
            if tight:
                size = (sums_fixed[p, n + o] + sums_free[p, n + o]) + bias_abs[o]
                widen_by = margin_coef * size
                magnitude[row, j] = size
            else:
                widen_by = margin_vec[j]
            center[row, j] = c
            cur_lower[row, j] = (c - r) - widen_by
            cur_upper[row, j] = (c + r) + widen_by


# Rows of a parallel block of the binary interval kernels (per-block scratch is allocated once).
_ROW_BLOCK = 8


def _binary_interval_rows(lower, upper, weight_both, bias, bias_abs, margin_vec, tight, margin_coef, cur_lower,
                         cur_upper, center, magnitude):  # pragma: no cover - compiled
    """``_binary_current`` of a Linear layer on 0/1 bounds ``lower <= upper`` (``[N, in]``) with the
    weight rows (``weight_both = [W.T | |W|.T]``, ``[in, 2 n]``) of every set input; rows in
    parallel (each on its own: the same bits at any thread count)."""
    rows, n_in = upper.shape
    n = bias.shape[0]
    for block in prange((rows + _ROW_BLOCK - 1) // _ROW_BLOCK):
        fixed = np.empty(n_in, np.int64)
        free = np.empty(n_in, np.int64)
        sums_fixed = np.empty((1, 2 * n))
        sums_free = np.empty((1, 2 * n))
        for r in range(block * _ROW_BLOCK, min(rows, (block + 1) * _ROW_BLOCK)):
            n_fixed = 0
            n_free = 0
            for i in range(n_in):
                if upper[r, i] != 0.0:
                    if lower[r, i] != 0.0:
                        fixed[n_fixed] = i
                        n_fixed += 1
                    else:
                        free[n_free] = i
                        n_free += 1
            sums_fixed[:] = 0.0
            sums_free[:] = 0.0
            add_rows(sums_fixed[0], weight_both, fixed, n_fixed)
            add_rows(sums_free[0], weight_both, free, n_free)
            _binary_current(sums_fixed, sums_free, bias, bias_abs, margin_vec, tight, margin_coef, r, cur_lower,
                            cur_upper, center, magnitude)


def _binary_conv_interval_rows(lower, upper, weight_both, geometry, bias, bias_abs, margin_vec, tight, margin_coef,
                              cur_lower, cur_upper, center, magnitude):  # pragma: no cover - compiled
    """``_binary_current`` of a Conv2d layer on 0/1 bounds ``[N, C, H, W]``: per output position
    ``(oy, ox)``, the weight rows ``(c, ky, kx)`` of ``weight_both`` (``[C * kh * kw, 2 O]``) of the
    set inputs under its window (``geometry = (kh, kw, sh, sw, ph, pw, OH, OW)``; outputs flat
    ``[N, O * OH * OW]``); rows in parallel."""
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w = geometry
    rows, channels, height, width = upper.shape
    n = bias.shape[0]
    taps = kernel_h * kernel_w
    for block in prange((rows + _ROW_BLOCK - 1) // _ROW_BLOCK):
        fixed_at = np.empty((height, width, channels), np.int64)   # per input pixel: its set channels
        free_at = np.empty((height, width, channels), np.int64)
        n_fixed_at = np.empty((height, width), np.int64)
        n_free_at = np.empty((height, width), np.int64)
        fixed = np.empty(taps * channels, np.int64)
        free = np.empty(taps * channels, np.int64)
        sums_fixed = np.empty((out_h * out_w, 2 * n))
        sums_free = np.empty((out_h * out_w, 2 * n))
        for r in range(block * _ROW_BLOCK, min(rows, (block + 1) * _ROW_BLOCK)):
            n_fixed_at[:] = 0
            n_free_at[:] = 0
            for c in range(channels):
                for y in range(height):
                    for x in range(width):
                        if upper[r, c, y, x] != 0.0:
                            if lower[r, c, y, x] != 0.0:
                                fixed_at[y, x, n_fixed_at[y, x]] = c
                                n_fixed_at[y, x] += 1
                            else:
                                free_at[y, x, n_free_at[y, x]] = c
                                n_free_at[y, x] += 1
            sums_fixed[:] = 0.0
            sums_free[:] = 0.0
            for oy in range(out_h):
                for ox in range(out_w):
                    n_fixed = 0
                    n_free = 0
                    for ky in range(kernel_h):
                        y = oy * stride_h + ky - pad_h
                        if y < 0 or y >= height:
                            continue
                        for kx in range(kernel_w):
                            x = ox * stride_w + kx - pad_w
                            if x < 0 or x >= width:
                                continue
                            tap = ky * kernel_w + kx
                            for q in range(n_fixed_at[y, x]):
                                fixed[n_fixed] = fixed_at[y, x, q] * taps + tap
                                n_fixed += 1
                            for q in range(n_free_at[y, x]):
                                free[n_free] = free_at[y, x, q] * taps + tap
                                n_free += 1
                    add_rows(sums_fixed[oy * out_w + ox], weight_both, fixed, n_fixed)
                    add_rows(sums_free[oy * out_w + ox], weight_both, free, n_free)
            _binary_current(sums_fixed, sums_free, bias, bias_abs, margin_vec, tight, margin_coef, r, cur_lower,
                            cur_upper, center, magnitude)


def _fixed_abs_sums_rows(lower, weight_abs_t, magnitude):  # pragma: no cover - compiled
    """``magnitude[r] += sum_F |W[:, i]|`` over the set inputs ``F`` of each row of ``lower`` (``[N, in]``
    0/1; ``weight_abs_t = |W|.T`` ``[in, n]``); rows in parallel."""
    rows, n_in = lower.shape
    n = weight_abs_t.shape[1]
    for block in prange((rows + _ROW_BLOCK - 1) // _ROW_BLOCK):
        fixed = np.empty(n_in, np.int64)
        sums = np.empty(n)
        for r in range(block * _ROW_BLOCK, min(rows, (block + 1) * _ROW_BLOCK)):
            n_fixed = 0
            for i in range(n_in):
                if lower[r, i] != 0.0:
                    fixed[n_fixed] = i
                    n_fixed += 1
            if n_fixed:
                sums[:] = 0.0
                add_rows(sums, weight_abs_t, fixed, n_fixed)
                for o in range(n):
                    magnitude[r, o] += sums[o]


def _matmul_blocks(x, weight, out, block_rows):  # pragma: no cover - compiled
    rows = x.shape[0]
    for block in prange((rows + block_rows - 1) // block_rows):
        first = block * block_rows
        last = min(rows, first + block_rows)
        out[first:last] = np.dot(x[first:last], weight.T)


# Work (weight-row additions or multiply-adds, plus 16 per output written) from which the kernels
# below run in parallel: a parallel region waits until every worker is scheduled, which cost
# milliseconds per region when other jobs kept both cores busy, more than the FC preset's
# first-stage kernel takes on one core (about 2.5 ms for ~29e6 units); the CONV preset's
# stages (4.6e7 units and up) are worth it. Serial and parallel variants give the same bits.
PARALLEL_MIN_IBP_WORK = 1 << 25
_VARIANTS = {}


def _variant(func, parallel: bool):
    """``func`` compiled serial or parallel (``prange`` runs as ``range`` in the serial one)."""
    parallel = bool(parallel)
    key = (func.__name__, parallel)
    if key not in _VARIANTS:
        _VARIANTS[key] = specialize(func, {}, "parallel" if parallel else "serial", parallel=parallel)
    return _VARIANTS[key]


def _binary_interval_kernel(*args, work: float = 0.0) -> None:
    """``_binary_interval_rows``, parallel over rows from ``PARALLEL_MIN_IBP_WORK``."""
    _variant(_binary_interval_rows, work >= PARALLEL_MIN_IBP_WORK)(*args)


def _binary_conv_interval_kernel(*args, work: float = 0.0) -> None:
    """``_binary_conv_interval_rows``, parallel over rows from ``PARALLEL_MIN_IBP_WORK``."""
    _variant(_binary_conv_interval_rows, work >= PARALLEL_MIN_IBP_WORK)(*args)


def _fixed_abs_sums(lower: np.ndarray, weight_abs_t: np.ndarray, magnitude: np.ndarray) -> None:
    """``_fixed_abs_sums_rows``, parallel over rows from ``PARALLEL_MIN_IBP_WORK``."""
    work = np.count_nonzero(lower) * weight_abs_t.shape[1] + lower.size
    _variant(_fixed_abs_sums_rows, work >= PARALLEL_MIN_IBP_WORK)(lower, weight_abs_t, magnitude)


def _matmul_rows(x: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
    """``out = x @ weight.T`` (``[N, in] x [n, in] -> [N, n]``, float64) as one single-threaded GEMM
    per Numba thread over its block of rows: Numba's ``np.dot`` calls SciPy's OpenBLAS, kept on one
    thread (``refsnn.threads``), and idle workers wait passively (NumPy's threaded OpenBLAS spun
    its threads: a 192 x 6272 x 256 product took 530 ms instead of 65 ms at 2 threads on the
    busy 2-core machine). Each output is one dot product whose order the row split does not change."""
    parallel = x.shape[0] * (x.shape[1] + 16) * weight.shape[0] >= PARALLEL_MIN_IBP_WORK
    block_rows = max(1, -(-x.shape[0] // numba.get_num_threads())) if parallel else max(1, x.shape[0])
    _variant(_matmul_blocks, parallel)(x, weight, out, block_rows)


# Upper-bound density (set bits / inputs) of a [Flatten ->] Linear stage below which the
# event-driven eq. 11 is used instead of the GEMMs: the smallest grid density at which the GEMMs
# were at least as fast for the FC preset's 784x512 stage at T' x B = 192 with half the set bits
# free (benchmarks/bench_kernels.py, results/perf/kernels.json "interval_crossover"; digital
# sets at eps 0.05-0.3 have upper densities 0.14-0.26, with fewer free bits, where the kernel
# is cheaper). Dense hidden spike bounds keep the GEMMs.
EVENT_INTERVAL_DENSITY = 0.2
# The same for a Conv2d stage (from ``_MIN_ROWS`` rows): below this upper density the binary
# kernel gathers the weight rows under each window instead of the float64 im2col GEMMs. Set from
# an operation count, not a measured crossover: at density d a window position sums about
# d K rows of 2 O values (K = C kh kw), the dense path does up to three GEMMs of K O
# multiply-adds (centre, radius, |W| lower), so at d = 0.5 the gather does a third of the
# arithmetic. The conv preset's spike bounds (upper densities 0.17 and 0.24 at eps 0.12) are
# far below it.
EVENT_CONV_INTERVAL_DENSITY = 0.5


class _PreparedOp:
    """One spatial op in float64 with ``|W|`` (per call: weights may change in place). The float64
    copies, ``|W|`` and the transposed rows are made when a path first needs them."""

    def __init__(self, layer):
        self.kind = layer.kind
        self.input_shape = tuple(layer._require_input_shape())
        self.native_weight = getattr(layer, "weight", None)  # the network's dtype: exact in float64
        self._cache: dict = {}
        if isinstance(layer, Linear):
            self.bias = np.asarray(layer.bias, dtype=np.float64)
            self.n_terms = layer.in_features
            self.n_transpose_terms = layer.out_features
        elif isinstance(layer, Conv2d):
            self.bias = np.asarray(layer.bias, dtype=np.float64)
            self.stride, self.padding = layer.stride, layer.padding
            out_channels, in_channels, kernel_h, kernel_w = layer.weight.shape
            self.n_terms = in_channels * kernel_h * kernel_w
            self.n_transpose_terms = out_channels * kernel_h * kernel_w
            out_h, out_w = layer.output_shape_of(self.input_shape)[1:]
            self.scratch_per_row = out_h * out_w * in_channels * kernel_h * kernel_w  # im2col columns
            self.geometry = tuple(int(g) for g in layer._geometry(self.input_shape))
        elif isinstance(layer, (AvgPool2d, Flatten)):
            self._layer = layer
            self.bias = None
            self.n_terms = int(np.prod(layer.kernel_size)) + 1 if isinstance(layer, AvgPool2d) else 0
            self.n_transpose_terms = int(np.prod(layer.kernel_size)) + 1 if isinstance(layer, AvgPool2d) else 0
        else:
            raise TypeError(f"bounds support Linear, Conv2d, AvgPool2d and Flatten layers, got {type(layer).__name__}")

    def _made(self, name: str, make: Callable):
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def weight(self) -> np.ndarray:
        """``W`` in float64 (``[out, in]`` or ``[O, C, kh, kw]``)."""
        return self._made("weight", lambda: np.asarray(self.native_weight, dtype=np.float64))

    @property
    def weight_abs(self) -> np.ndarray:
        """``|W|`` in float64."""
        return self._made("weight_abs", lambda: np.abs(self.weight))

    def _conv(self, name: str) -> Conv2d:
        def make():
            layer = Conv2d(self.weight if name == "signed" else self.weight_abs, np.zeros_like(self.bias),
                           self.stride, self.padding)
            layer.input_shape = self.input_shape
            return layer
        return self._made(name, make)

    @property
    def _signed(self) -> Conv2d:
        return self._conv("signed")

    @property
    def _abs(self) -> Conv2d:
        return self._conv("abs")

    def linear(self, x: np.ndarray) -> np.ndarray:
        """The linear part (no bias) on ``[N, *in]``."""
        if self.kind == "linear":
            return x @ self.weight.T
        if self.kind == "conv2d":
            return self._signed.forward(x)
        return self._layer.forward(x)

    def abs_linear(self, x: np.ndarray) -> np.ndarray:
        """The linear part with ``|W|`` (pooling and flatten are already non-negative)."""
        if self.kind == "linear":
            return x @ self.weight_abs.T
        if self.kind == "conv2d":
            return self._abs.forward(x)
        return self._layer.forward(x)

    @property
    def weight_both(self) -> np.ndarray:
        """``[W.T | |W|.T]``: ``[in, 2 out]`` contiguous in the network's dtype (a Conv2d's rows are
        ``(c, ky, kx)``), the rows that the binary interval kernels gather."""
        def make():
            weight = np.ascontiguousarray(self.native_weight.reshape(self.native_weight.shape[0], -1))
            rows = weight.shape[0]
            both = np.empty((weight.shape[1], 2 * rows), dtype=weight.dtype)
            transpose_into(weight, both[:, :rows])
            transpose_into(np.abs(weight), both[:, rows:])
            return both
        return self._made("weight_both", make)

    @property
    def weight_abs_t(self) -> np.ndarray:
        """``|W|.T`` ``[in, out]`` contiguous in the network's dtype."""
        return self._made("weight_abs_t", lambda: np.ascontiguousarray(self.weight_both[:, self.native_weight.shape[0]:]))

    def transpose(self, coef: np.ndarray) -> np.ndarray:
        """Adjoint ``coef @ W`` of the linear part: ``[N, *out] -> [N, *in]``."""
        if self.kind == "linear":
            return coef @ self.weight
        if self.kind == "conv2d":
            return self._signed.transpose(coef)
        return self._layer.transpose(coef)


class PreparedStage:
    """A spiking stage's ops chain in float64, with its bias and rounding constants."""

    def __init__(self, stage):
        self.ops = [_PreparedOp(op) for op in stage.ops]
        self.input_shape = tuple(stage.input_shape)
        self.neuron_shape = tuple(stage.neuron_shape)
        self.n_neurons = int(np.prod(self.neuron_shape))
        bias = self.ops[-1].bias
        self.bias = np.broadcast_to(
            bias.reshape((-1,) + (1,) * (len(self.neuron_shape) - 1)), self.neuron_shape
        ).reshape(-1).astype(np.float64)
        # Summation lengths of the forward chain and of its adjoint (rounding bounds).
        self.n_terms = sum(op.n_terms + 2 for op in self.ops)
        self.n_transpose_terms = sum(op.n_transpose_terms + 2 for op in self.ops)

    def interval(self, lower: np.ndarray, upper: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eq. 11 in centre-radius form: ``[N, *in]`` bounds -> ``(I_l, I_u, center)`` flat ``[N, n]``.

        ``W mid +- |W| rad`` equals ``W+ l + W- u`` / ``W+ u + W- l`` exactly in real arithmetic
        (three products instead of four); its float64 rounding is inside the outward margin.
        """
        center = (lower + upper) * 0.5
        radius = (upper - lower) * 0.5
        for op in self.ops:
            center = op.linear(center)
            radius = op.abs_linear(radius)
        count = center.shape[0]
        center = center.reshape(count, -1) + self.bias
        radius = radius.reshape(count, -1)
        return center - radius, center + radius, center

    @property
    def linear_op(self) -> Optional["_PreparedOp"]:
        """The Linear op of a ``[Flatten ->] Linear`` chain, else None."""
        if self.ops[-1].kind == "linear" and all(op.kind == "flatten" for op in self.ops[:-1]):
            return self.ops[-1]
        return None

    @property
    def conv_op(self) -> Optional["_PreparedOp"]:
        """The Conv2d op of a chain that is one Conv2d, else None."""
        if len(self.ops) == 1 and self.ops[0].kind == "conv2d":
            return self.ops[0]
        return None

    def current_bounds(self, lower: np.ndarray, upper: np.ndarray, rule: Precision, tight_magnitude: bool
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Eq. 11 on 0/1 bounds ``[N, *in]`` (float64 or bool) widened by the current margin:
        ``(I_l, I_u, center, magnitude)``, flat ``[N, n]``, with ``I_l = center - radius - margin``
        (likewise ``I_u``) and ``margin = rule.current_margin(magnitude, n_terms)``.

        ``magnitude`` is ``|W| upper + |b|`` if ``tight_magnitude``, else the input-free
        ``magnitude(None)`` (``[1, n]``). Sparse bounds of a ``[Flatten ->] Linear`` chain (upper
        density up to ``EVENT_INTERVAL_DENSITY``) or of a Conv2d (from ``_MIN_ROWS`` rows, below
        ``EVENT_CONV_INTERVAL_DENSITY``) sum only the weight rows of their set bits
        (``_binary_current``); otherwise the float64 products of ``interval_with_magnitude``. Equal
        up to the summation order.
        """
        linear, conv = self.linear_op, self.conv_op
        count = lower.shape[0]
        flat_upper = upper.reshape(count, -1)
        set_bits = np.count_nonzero(flat_upper) if (linear is not None or conv is not None) and count else 0
        coef = rule.current_margin_coef(self.n_terms)
        n = self.n_neurons
        if linear is not None and count and set_bits <= EVENT_INTERVAL_DENSITY * flat_upper.size:
            kernel, op, extra = _binary_interval_kernel, linear, ()
            work = set_bits * 2 * n + 16 * count * n
        elif conv is not None and count >= _MIN_ROWS and set_bits < EVENT_CONV_INTERVAL_DENSITY * flat_upper.size:
            kernel, op = _binary_conv_interval_kernel, conv
            extra = (conv.geometry,)
            kernel_h, kernel_w, stride_h, stride_w = conv.geometry[:4]
            # each set input lies under about kh kw / (sh sw) windows, each adding 2 O values
            work = set_bits * kernel_h * kernel_w / (stride_h * stride_w) * 2 * op.bias.shape[0] + 16 * count * n
            flat_upper = upper
        else:
            lower = np.asarray(lower, dtype=np.float64)
            upper = np.asarray(upper, dtype=np.float64)
            if tight_magnitude:
                cur_lower, cur_upper, center, magnitude = self.interval_with_magnitude(lower, upper)
            else:
                cur_lower, cur_upper, center = self.interval(lower, upper)
                magnitude = self.magnitude(None)
            margin = coef * magnitude
            return cur_lower - margin, cur_upper + margin, center, magnitude
        cur_lower, cur_upper, center = np.empty((count, n)), np.empty((count, n)), np.empty((count, n))
        if tight_magnitude:
            magnitude = np.empty((count, n))
            margin_vec = np.empty(1)  # not read
        else:
            magnitude = self.magnitude(None)
            margin_vec = (coef * magnitude).reshape(-1)
        kernel(np.ascontiguousarray(lower.reshape(flat_upper.shape)), np.ascontiguousarray(flat_upper),
               op.weight_both, *extra, op.bias, np.abs(op.bias), margin_vec, tight_magnitude, coef, cur_lower,
               cur_upper, center, magnitude if tight_magnitude else cur_lower, work=work)  # (magnitude not written then)
        return cur_lower, cur_upper, center, magnitude

    def interval_with_magnitude(self, lower: np.ndarray, upper: np.ndarray
                                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``interval(lower, upper)`` and ``magnitude(upper)`` with two products instead of three.

        The chain with ``|W|`` is linear, so ``|W| u = 2 |W| rad + |W| l``: the radius product is
        reused and ``|W| l`` is only formed for the rows whose lower bound has a set entry (spike
        lower bounds of hidden stages are mostly all zero; a ``[Flatten ->] Linear`` chain from
        ``_MIN_ROWS`` rows sums the columns of the set bits instead, ``_fixed_abs_sums``, and runs its
        two products as ``_matmul_rows``). Returns ``(I_l, I_u, center,
        magnitude)``, flat ``[N, n]``; the magnitude equals ``magnitude(upper)`` up to float64
        rounding of the same exact value, which the margin's ``n + 4`` terms allow for.
        """
        count = lower.shape[0]
        center = (lower + upper) * 0.5
        radius = (upper - lower) * 0.5
        op = self.linear_op
        if op is not None and count >= _MIN_ROWS:
            product = np.empty((count, self.n_neurons))
            _matmul_rows(np.ascontiguousarray(center.reshape(count, -1)), op.weight, product)
            center = product
            product = np.empty((count, self.n_neurons))
            _matmul_rows(np.ascontiguousarray(radius.reshape(count, -1)), op.weight_abs, product)
            radius = product
        else:
            for op_k in self.ops:
                center = op_k.linear(center)
                radius = op_k.abs_linear(radius)
        center = center.reshape(count, -1) + self.bias
        radius = radius.reshape(count, -1)
        magnitude = 2.0 * radius + np.abs(self.bias)
        if op is not None and count >= _MIN_ROWS:
            # spike lower bounds are sparse: the columns of their set bits instead of a third GEMM
            _fixed_abs_sums(np.ascontiguousarray(lower.reshape(count, -1), dtype=np.float64), op.weight_abs_t,
                            magnitude)
            return center - radius, center + radius, center, magnitude
        rows = np.flatnonzero(lower.reshape(count, -1).any(axis=1))
        if rows.size:
            value = lower[rows]
            for op in self.ops:
                value = op.abs_linear(value)
            magnitude[rows] += value.reshape(rows.size, -1)
        return center - radius, center + radius, center, magnitude

    def magnitude(self, upper: Optional[np.ndarray]) -> np.ndarray:
        """Bound on ``sum |terms|`` of the current: ``|W| s_u + |b|`` (flat ``[N, n]``).

        With ``upper=None``: the input-independent bound ``|W| 1 + |b|`` (``[1, n]``), enough for
        float64 networks whose rounding is far below any meaningful bound width.
        """
        value = np.ones((1,) + self.input_shape) if upper is None else upper
        for op in self.ops:
            value = op.abs_linear(value)
        return value.reshape(value.shape[0], -1) + np.abs(self.bias)

    def transpose(self, coef: np.ndarray) -> np.ndarray:
        """Adjoint of the chain: ``[N, n]`` coefficients on the current -> ``[N, *input_shape]``."""
        coef = coef.reshape((coef.shape[0],) + self.neuron_shape)
        for op in reversed(self.ops):
            coef = op.transpose(coef)
        return coef


def prepare_stages(net) -> List[PreparedStage]:
    """Float64 copies of every stage of ``net`` (cheap; done per call since weights change in place)."""
    return [PreparedStage(stage) for stage in net.stages]


# --- results ------------------------------------------------------------------------------------

@dataclass
class IntervalBounds:
    """S-IBP bounds of every intermediate; per stage ``k`` lists hold ``[T', B, *neuron_shape_k]`` float64.

    ``state[k]`` (int8): 0 stable silent, 1 stable firing, 2 unstable; ``spike_lower[k]`` and
    ``spike_upper[k]`` (eq. 7, float64 0/1) are read from it when first asked for. ``current_margin[k]``
    (``margin_coef[k] * current_magnitude[k]``, likewise made when asked for) and
    ``mem_margin[k]`` are the outward rounding widths already applied (flat ``[T', B, n]`` or
    broadcastable); ``current_magnitude[k]`` bounds ``sum |terms|`` of each current;
    ``current_center[k]`` (flat ``[T', B, n]``) is ``W mid + b`` for the centre ``mid`` of the
    previous spike bounds (before widening).
    ``rate_lower/upper [B, n_out]``: bounds of the output rates (mean over the ``T'`` steps).
    ``reset``: the network's neuron model (``refsnn.neurons``), whose reset rules these bounds used.
    """

    method: str
    firing: str
    threshold: float
    decay: float
    rule: Precision
    steps: int
    batch: int
    current_lower: List[np.ndarray] = field(default_factory=list)
    current_upper: List[np.ndarray] = field(default_factory=list)
    mem_lower: List[np.ndarray] = field(default_factory=list)
    mem_upper: List[np.ndarray] = field(default_factory=list)
    reset_lower: List[np.ndarray] = field(default_factory=list)
    reset_upper: List[np.ndarray] = field(default_factory=list)
    state: List[np.ndarray] = field(default_factory=list)
    current_magnitude: List[np.ndarray] = field(default_factory=list)
    current_center: List[np.ndarray] = field(default_factory=list)
    mem_margin: List[np.ndarray] = field(default_factory=list)
    rate_lower: Optional[np.ndarray] = None
    rate_upper: Optional[np.ndarray] = None
    reset: str = "zero"
    margin_coef: List[float] = field(default_factory=list)
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_stages(self) -> int:
        return len(self.mem_lower)

    def _spikes(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        if ("spikes", k) not in self._derived:
            self._derived[("spikes", k)] = Fire.interval(self.state[k])
        return self._derived[("spikes", k)]

    @property
    def spike_lower(self) -> List[np.ndarray]:
        """Eq. 7 from ``state``: ``[T', B, *neuron_shape_k]`` float64, 1 where stable firing."""
        return [self._spikes(k)[0] for k in range(len(self.state))]

    @property
    def spike_upper(self) -> List[np.ndarray]:
        """Eq. 7 from ``state``: ``[T', B, *neuron_shape_k]`` float64, 0 where stable silent."""
        return [self._spikes(k)[1] for k in range(len(self.state))]

    @property
    def current_margin(self) -> List[np.ndarray]:
        """The current margins applied, ``margin_coef[k] * current_magnitude[k]`` (``Precision.current_margin``)."""
        for k in range(len(self.current_magnitude)):
            if ("margin", k) not in self._derived:
                self._derived[("margin", k)] = self.margin_coef[k] * self.current_magnitude[k]
        return [self._derived[("margin", k)] for k in range(len(self.current_magnitude))]

    def unstable(self, k: int) -> np.ndarray:
        """Boolean mask ``[T', B, *neuron_shape_k]`` of neurons that may or may not fire."""
        return self.state[k] == UNSTABLE

    def unstable_fraction(self) -> List[float]:
        return [float(np.mean(s == UNSTABLE)) for s in self.state]

    def select(self, index) -> "IntervalBounds":
        """The bounds of a subset of the batch (``index``: slice or integer array over ``B``)."""
        def pick(arrays):
            return [a if a.shape[1] == 1 and self.batch != 1 else a[:, index] for a in arrays]
        picked = IntervalBounds(self.method, self.firing, self.threshold, self.decay, self.rule, self.steps, 0,
                                reset=self.reset, margin_coef=list(self.margin_coef))
        for name in ("current_lower", "current_upper", "mem_lower", "mem_upper", "reset_lower", "reset_upper",
                     "state", "current_magnitude", "mem_margin", "current_center"):
            setattr(picked, name, pick(getattr(self, name)))
        picked.rate_lower = self.rate_lower[index]
        picked.rate_upper = self.rate_upper[index]
        picked.batch = picked.rate_lower.shape[0]
        return picked


def _stepwise_time_loop(result: IntervalBounds, k: int, rule: Precision, firing: str, alpha: float,
                        refine: Callable, cur_lower, cur_upper, mem_lower, mem_upper, mem_margin, reset_lower,
                        reset_upper, state) -> None:
    """``_ibp_time_kernel`` step by step in NumPy (the same rules, bit for bit), calling
    ``refine(result, k, t) -> (m_l, m_u)`` (``[B, n]``) after each membrane interval; the returned
    interval is intersected with it. ``result``'s stage ``k`` arrays are filled up to step ``t``."""
    carried_lower = np.zeros(cur_lower.shape[1:])
    carried_upper = np.zeros(cur_lower.shape[1:])
    for t in range(cur_lower.shape[0]):
        size = np.maximum(np.abs(cur_lower[t]), np.abs(cur_upper[t])) \
            + np.maximum(np.abs(carried_lower), np.abs(carried_upper))
        mem_margin[t] = rule.membrane_margin(size)
        mem_lower[t] = cur_lower[t] + carried_lower - mem_margin[t]
        mem_upper[t] = cur_upper[t] + carried_upper + mem_margin[t]
        refined = refine(result, k, t)
        mem_lower[t] = np.maximum(mem_lower[t], refined[0])
        mem_upper[t] = np.minimum(mem_upper[t], refined[1])
        state[t] = Fire.classify(mem_lower[t], mem_upper[t], rule, firing)
        if len(refined) > 2:  # spike states fixed by the caller (a branch-and-bound split); -1: not fixed
            state[t] = np.where(refined[2] >= 0, refined[2], state[t])
        reset_lower[t], reset_upper[t] = neuron_model(result.reset).reset_interval(mem_lower[t], mem_upper[t],
                                                                                   state[t], rule)
        carried_lower = alpha * reset_lower[t]
        carried_upper = alpha * reset_upper[t]


def interval_bounds(net, x_lower, x_upper, stages: Optional[Sequence[PreparedStage]] = None, *,
                    first_current: Optional[Callable] = None, refine: Optional[Callable] = None) -> IntervalBounds:
    """S-IBP over the box ``x_lower <= x <= x_upper`` (``[T', B, *input_shape]`` of 0/1).

    Returns every intermediate bound (``IntervalBounds``); the horizon is the box's ``T'``.
    Two optional hooks (full S-CROWN and the any-k-flip set, ``refsnn.crown_full``, ``refsnn.l0``):
    ``first_current(stage, spike_lower, spike_upper) -> (I_l, I_u)`` (flat ``[T' * B, n]``, before
    the rounding margin) replaces eq. 11 at the first stage; ``refine(bounds, k, t) -> (m_l, m_u)``
    (``[B, n]``) may tighten the widened membrane interval of stage ``k``, step ``t`` (during the
    call, ``bounds`` holds every earlier stage and stage ``k`` up to step ``t``), which then feeds
    eqs. 7 and 9. It may return a third array ``fixed`` (``[B, n]`` int8): where ``fixed >= 0`` it
    replaces eq. 7's state (``STABLE_OFF``/``STABLE_ON``: a spike fixed by a split of
    ``verify.bab``, which also clips the membrane interval to that side of the threshold), so the
    bounds hold for the inputs whose spike there is that value.
    """
    box = binary_box(x_lower, x_upper, net)
    stages = prepare_stages(net) if stages is None else stages
    return interval_bounds_of_box(net, box, stages, first_current=first_current, refine=refine)


def interval_bounds_of_box(net, box: BinaryBox, stages: Sequence[PreparedStage], *,
                           first_current: Optional[Callable] = None, refine: Optional[Callable] = None,
                           rule: Optional[Precision] = None) -> IntervalBounds:
    """``interval_bounds`` of an already validated box with the stages already prepared (drivers that
    validate once per call use this). ``rule``: the precision policy (default ``Precision.sound``;
    ``Precision.plain`` gives the paper's intervals without margins, never a bound)."""
    rule = Precision.sound(net) if rule is None else rule
    steps, batch = box.x_lower.shape[:2]
    alpha = net.decay
    tight_magnitude = rule.net_dtype != "float64"
    result = IntervalBounds("ibp", net.firing, net.threshold, alpha, rule, steps, batch, reset=net.reset)

    spike_lower = box.x_lower.reshape((steps * batch,) + box.x_lower.shape[2:]).astype(np.float64)
    spike_upper = box.x_upper.reshape(spike_lower.shape).astype(np.float64)
    for k, stage in enumerate(stages):
        n = stage.n_neurons
        cur_lower, cur_upper, center, magnitude = stage.current_bounds(spike_lower, spike_upper, rule, tight_magnitude)
        margin_coef = rule.current_margin_coef(stage.n_terms)
        if k == 0 and first_current is not None:
            margin = margin_coef * magnitude
            cur_lower, cur_upper = first_current(stage, spike_lower, spike_upper)
            center = (cur_lower + cur_upper) * 0.5
            cur_lower = cur_lower - margin
            cur_upper = cur_upper + margin
        cur_lower = cur_lower.reshape(steps, batch, n)
        cur_upper = cur_upper.reshape(steps, batch, n)
        magnitude = magnitude.reshape((steps, batch, n) if tight_magnitude else (1, 1, n))

        mem_lower = np.empty_like(cur_lower)
        mem_upper = np.empty_like(cur_upper)
        mem_margin = np.empty_like(cur_lower)
        reset_lower = np.empty_like(cur_lower)
        reset_upper = np.empty_like(cur_upper)
        state = np.empty(cur_lower.shape, dtype=np.int8)
        # Recorded before the recurrence fills them (views of the flat buffers): a refine hook reads
        # this stage's bounds up to the current step.
        shape = (steps, batch) + stage.neuron_shape
        result.current_lower.append(cur_lower.reshape(shape))
        result.current_upper.append(cur_upper.reshape(shape))
        result.mem_lower.append(mem_lower.reshape(shape))
        result.mem_upper.append(mem_upper.reshape(shape))
        result.reset_lower.append(reset_lower.reshape(shape))
        result.reset_upper.append(reset_upper.reshape(shape))
        result.state.append(state.reshape(shape))
        result.margin_coef.append(margin_coef)
        result.current_magnitude.append(magnitude)
        result.current_center.append(center.reshape(steps, batch, n))
        result.mem_margin.append(mem_margin)
        if refine is None:
            # eqs. 7, 9 per time step with the membrane margin (Precision.membrane_margin,
            # Fire.classify, the model's reset_interval fused; bit-for-bit the same values).
            _ibp_time_kernel(cur_lower, cur_upper, float(alpha), rule.membrane_margin_coef(), float(rule.th_lo),
                             float(rule.th_hi), fires_at_threshold(net.firing), mem_lower, mem_upper, mem_margin, reset_lower,
                             reset_upper, state, neuron=net.reset, parallel=cur_lower.size >= PARALLEL_MIN_WORK)
        else:
            _stepwise_time_loop(result, k, rule, net.firing, alpha, refine, cur_lower, cur_upper, mem_lower,
                                mem_upper, mem_margin, reset_lower, reset_upper, state)
        result._derived.clear()  # made from this stage's state before it was complete (a refine hook)
        # eq. 7: the next stage's 0/1 input bounds, as bool (the kernels read set bits; the float64
        # spike_lower/spike_upper fields are made from state only when asked for)
        spike_lower = (state == STABLE_ON).reshape((steps * batch,) + stage.neuron_shape)
        spike_upper = (state != STABLE_OFF).reshape(spike_lower.shape)

    last_lower, last_upper = (spikes.reshape(steps, batch, -1) for spikes in result._spikes(len(stages) - 1))
    # Spike counts are exact integers; one rounding in the division.
    result.rate_lower = last_lower.sum(axis=0) / steps
    result.rate_upper = last_upper.sum(axis=0) / steps
    return result


def ibp_spec_bounds(bounds: IntervalBounds, C: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """S-IBP bounds of ``C f`` (``C [B, S, n_out]``), outward rounded: ``(lower, upper)`` ``[B, S]``."""
    lower, upper = spec_interval(C, bounds.rate_lower, bounds.rate_upper)
    margin = output_rounding_margin(C, bounds.rule, bounds.steps)
    return lower - margin, upper + margin
