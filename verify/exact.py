"""Exact rational forward pass: the semantics against which ``verify.check`` decides claims.

The true value of a quantity (an output rate, ``c . f``, a membrane) for an input is the value
computed in exact rational arithmetic from the model's stored float weights, bias, threshold
and decay (every finite float is a rational number): ``m_t = ops(s_t) + alpha m_{t-1} (1 - s_{t-1})``
and ``s_t = 1[m_t >= th]`` (or ``> th``) with no rounding anywhere. A membrane exactly on the
threshold is therefore a real tie, decided by the model's firing rule, and a membrane whose
float sum rounds onto the threshold is not. A float forward pass (any dtype, any summation
order) can resolve such near-ties the other way; this one cannot.

Sums over 0/1 inputs use integers (each layer's weights scaled to one power of two), so a
witness replays in milliseconds even on the paper's FC network. Every comparison of a claim
with a true value goes through :func:`excess`, exact too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Sequence, Tuple, Union

import numpy as np

from refsnn.layers import AvgPool2d, Conv2d, Flatten, Linear
from refsnn.network import SNN
from refsnn.firing import fires, fires_at_threshold

from .encoding import require_lif

Number = Union[float, Fraction]


def _scaled_integers(values: np.ndarray):
    """``values`` (finite floats) as ``(ints, exponent)`` with ``values == ints * 2**exponent`` exactly."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    parts = [math.frexp(float(v)) for v in flat]  # v = mant * 2**exp, mant * 2**53 is an integer
    exponent = min((exp - 53 for mant, exp in parts if mant != 0.0), default=0)
    ints = np.empty(flat.size, dtype=object)
    for index, (mant, exp) in enumerate(parts):
        ints[index] = int(mant * 2.0 ** 53) << (exp - 53 - exponent) if mant != 0.0 else 0
    return ints.reshape(np.shape(values)), exponent


def _scale(value, exponent: int):
    return value * (1 << exponent) if exponent >= 0 else Fraction(value, 1 << -exponent)


class _ExactAffine:
    """A Linear or Conv2d layer with its weights and bias as exact integers times ``2**exponent``."""

    def __init__(self, layer):
        both = np.concatenate([np.asarray(layer.weight, np.float64).ravel(), np.asarray(layer.bias, np.float64)])
        ints, self.exponent = _scaled_integers(both)
        self.weight = ints[:layer.weight.size].reshape(layer.weight.shape)
        self.bias = ints[layer.weight.size:]
        self.layer = layer

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``x`` (object array of one sample, ``[*in]``) -> exact output ``[*out]``."""
        if isinstance(self.layer, Linear):
            if all(v == 0 or v == 1 for v in x):  # spikes: a sum of weight columns, integers only
                active = np.flatnonzero(np.array([v == 1 for v in x], dtype=bool))
                total = self.weight[:, active].sum(axis=1) if active.size else np.zeros(len(self.bias), object)
                out = self.bias + total
            else:
                out = self.bias + self.weight.dot(x)
        else:
            out = self._conv(x)
        return np.array([_scale(v, self.exponent) for v in out.ravel()], dtype=object).reshape(out.shape)

    def _conv(self, x: np.ndarray) -> np.ndarray:
        layer = self.layer
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
        channels, height, width = x.shape
        padded = np.zeros((channels, height + 2 * ph, width + 2 * pw), dtype=object)
        padded[:, ph:ph + height, pw:pw + width] = x
        out_h = (height + 2 * ph - kh) // sh + 1
        out_w = (width + 2 * pw - kw) // sw + 1
        cols = np.empty((channels, kh, kw, out_h, out_w), dtype=object)
        for i in range(kh):
            for j in range(kw):
                cols[:, i, j] = padded[:, i:i + sh * out_h:sh, j:j + sw * out_w:sw]
        weight = self.weight.reshape(self.weight.shape[0], -1)
        out = weight.dot(cols.reshape(weight.shape[1], -1)) + self.bias[:, None]
        return out.reshape(self.weight.shape[0], out_h, out_w)


def _avg_pool(layer: AvgPool2d, x: np.ndarray) -> np.ndarray:
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    channels, height, width = x.shape
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    out = np.empty((channels, out_h, out_w), dtype=object)
    for c in range(channels):
        for i in range(out_h):
            for j in range(out_w):
                out[c, i, j] = Fraction(sum(x[c, i * sh:i * sh + kh, j * sw:j * sw + kw].ravel()), kh * kw)
    return out


@dataclass
class ExactTrace:
    """Exact trajectory of one input: per stage ``membranes[k]`` (object ``[T', n_k]`` of Fraction)
    and ``spikes[k]`` (int ``[T', n_k]``); ``counts [n_out]`` output spikes over the ``steps``."""

    membranes: List[np.ndarray]
    spikes: List[np.ndarray]
    steps: int

    @property
    def counts(self) -> np.ndarray:
        return self.spikes[-1].sum(axis=0)

    @property
    def rates(self) -> List[Fraction]:
        """Mean output rates ``[n_out]`` as exact fractions ``count / T'``."""
        return [Fraction(int(c), self.steps) for c in self.counts]

    def margin(self, label: int) -> Tuple[Fraction, int]:
        """``(min_{j != label} f_label - f_j, that j)`` exactly (the smallest such ``j`` on a tie)."""
        rates = self.rates
        others = [j for j in range(len(rates)) if j != label]
        j = min(others, key=lambda c: rates[label] - rates[c])
        return rates[label] - rates[j], j

    def value(self, row: Sequence[float]) -> Fraction:
        """``row . f`` exactly (``row [n_out]`` of finite floats)."""
        return sum((Fraction(float(c)) * r for c, r in zip(row, self.rates) if c != 0), Fraction(0))

    def membrane(self, k: int, t: int, j: int) -> Fraction:
        return self.membranes[k][t, j]


class ExactNetwork:
    """``net`` evaluated in exact rational arithmetic (see the module docstring); weights converted once."""

    def __init__(self, net: SNN):
        require_lif(net)
        self.net = net
        self.threshold = Fraction(float(net.threshold))
        self.decay = Fraction(float(net.decay))
        self.fires_at_tie = fires_at_threshold(net.firing)
        self.stages = []
        for stage in net.stages:
            ops = []
            for op in stage.ops:
                if isinstance(op, (Linear, Conv2d)):
                    ops.append(_ExactAffine(op))
                elif isinstance(op, AvgPool2d):
                    ops.append(lambda x, op=op: _avg_pool(op, x))
                elif isinstance(op, Flatten):
                    ops.append(lambda x: x.reshape(-1))
                else:
                    raise TypeError(f"no exact forward for layer {type(op).__name__}")
            self.stages.append((ops, tuple(stage.input_shape)))

    def _fires(self, membrane: Fraction) -> bool:
        return fires(membrane, self.threshold, self.fires_at_tie)

    def run(self, x: np.ndarray) -> ExactTrace:
        """Exact trajectory of one input ``x [T', *input_shape]`` of 0/1."""
        x = np.asarray(x)
        expected = tuple(self.net.input_shape)
        if tuple(x.shape[1:]) != expected or x.ndim < 2:
            raise ValueError(f"x must be one spike train [T', *{expected}], got shape {x.shape}")
        steps = x.shape[0]
        layer_in = [np.array([int(v) for v in x[t].ravel()], dtype=object) for t in range(steps)]
        membranes, spikes = [], []
        for ops, input_shape in self.stages:
            currents = []
            for t in range(steps):
                value = layer_in[t].reshape(input_shape)
                for op in ops:
                    value = op(value)
                currents.append(value.ravel())
            n = currents[0].size
            mem = np.empty((steps, n), dtype=object)
            spk = np.zeros((steps, n), dtype=np.int64)
            carried = [Fraction(0)] * n
            for t in range(steps):
                for j in range(n):
                    m = currents[t][j] + self.decay * carried[j]
                    mem[t, j] = Fraction(m)
                    fired = self._fires(mem[t, j])
                    spk[t, j] = int(fired)
                    carried[j] = Fraction(0) if fired else mem[t, j]
            membranes.append(mem)
            spikes.append(spk)
            layer_in = [np.array([int(v) for v in spk[t]], dtype=object) for t in range(steps)]
        return ExactTrace(membranes, spikes, steps)


def excess(value: Fraction, claim: float, side: str) -> Number:
    """How far the exact ``value`` lies outside a claimed bound (> 0: outside; exact).

    ``side="lower"``: ``claim - value``; ``"upper"``: ``value - claim``. An infinite claim gives
    ``+-inf`` (a lower bound of ``-inf`` excludes nothing, one of ``+inf`` excludes everything).
    """
    claim = float(claim)
    if math.isinf(claim):
        return claim if side == "lower" else -claim
    difference = Fraction(claim) - value
    return difference if side == "lower" else -difference


def outside(value: Fraction, claim: float, side: str, atol: float) -> bool:
    """Does ``value`` violate the claim by more than ``atol``? (exact: ``excess > atol``)."""
    return excess(value, claim, side) > Fraction(float(atol))


def float_outward(value: Fraction, side: str) -> float:
    """The float closest to ``value`` on the sound side: the largest float ``<= value`` for a lower
    bound (``side="lower"``), the smallest ``>= value`` for an upper bound. ``float(value)`` rounds
    to nearest and may exclude the value (``float(2/3) < 2/3``): a claimed upper bound of it is unsound."""
    nearest = float(value)
    if side == "lower":
        return nearest if Fraction(nearest) <= value else math.nextafter(nearest, -math.inf)
    return nearest if Fraction(nearest) >= value else math.nextafter(nearest, math.inf)
