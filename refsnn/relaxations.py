"""Interval rule and linear relaxation of the fire function, shared by every neuron model; the precision policy.

The fire function keeps its two rules side by side (the paper, section 3); the reset rules of a
neuron model (the LIF's eqs. 9-10 below, ``Reset``) live in that model's file of ``refsnn.neurons``
(``refsnn/neurons/lif.py``; ``Reset`` is re-exported here):

``Fire``  ``s = 1[m >= th]`` (or ``1[m > th]``)
    interval (eq. 7): ``s in [fire(m_l - th), fire(m_u - th)]``;
    relaxation (eq. 8): stable neurons are exact; an unstable neuron gets the chord lines
    ``0 <= s <= (m - m_l) / (th - m_l)`` when ``m_u - th < th - m_l``, otherwise
    ``(m - th) / (m_u - th) <= s <= 1``.
``Reset``  ``z = m (1 - s)`` (what survives the reset and is carried to ``t + 1`` times alpha)
    interval (eq. 9): stable non-firing ``[m_l, m_u]``, stable firing ``0``, unstable
    ``[min(0, m_l), th]``;
    relaxation (eq. 10): stable non-firing ``z = m``, stable firing ``z = 0``, unstable
    ``(1 - s) m_l <= z <= (1 - s) th`` (linear in ``s``).

The fire interval rule is one scalar function (``fire_state``), compiled into the kernels of
``refsnn.operator`` and vectorized for the array callers (``Fire.classify``); the relaxation
(``Fire.chords``, ``Fire.relaxation``) is an array rule shared by S-CROWN, alpha and training.
The reset rules follow the same pattern in the neuron's file (``reset_lower_bound``,
``reset_upper_bound``, ``reset_interval``, ``reset_relaxation``).

Precision policy (``Precision``; the rounding rule, see docs/BOUNDS.md)
----------------------------------------------------------------------
``Precision.exact(net)``: plain arithmetic in the network's dtype, no margins, one threshold, the
chord case decided in that dtype (robust training's loss). ``Precision.plain(net)``: float64
without margins at the paper's threshold, only to take the paper's chord choices (never a bound).
``Precision.sound(net)``: the bounds must contain what the network *as executed* computes:
its own dtype (float32 or float64), any summation order. Three measures make that hold:

1. Every current and membrane interval is widened outward by ``2 * gamma(n, u) * magnitude``
   where ``gamma(n, u) = n u / (1 - n u)`` is the classic bound on the rounding error of an
   ``n``-term sum in any order, ``u = u_net + u_float64`` (unit roundoffs of the network's dtype
   and of the float64 bound arithmetic), ``n`` the summation length (fan-in plus a few) and
   ``magnitude`` an upper bound on the sum of absolute values of the terms (``|W| s_u + |b|`` for
   a current; ``|I| + alpha |z|`` for a membrane). A membrane that some summation order puts
   exactly on the threshold is therefore never decided stable by a coin flip of rounding.
2. The threshold the network compares against is ``th`` in float64 and may be ``float32(th)``
   in a float32 network; both are kept: ``th_lo = min`` and ``th_hi = max`` of them. A neuron is
   stable firing when ``m_l >= th_hi`` (``>=`` firing) or ``m_l > th_hi`` (``>`` firing), stable
   non-firing when ``m_u < th_lo`` (``>=``) or ``m_u <= th_lo`` (``>``). Lines that must lie below
   ``s = 0`` up to the threshold use ``th_hi``, lines that must reach ``1`` from the threshold on
   use ``th_lo``; for float64 networks ``th_lo == th_hi == th`` and the lines are the paper's.
3. S-CROWN's back-substitution tracks a running bound on its own rounding error (and on the
   mismatch between the network's float relations and the exact ones) and subtracts it from the
   final lower bound (see ``refsnn.crown``), so huge chord slopes near the threshold stay sound.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Tuple

import numba
import numpy as np

from .firing import STABLE_OFF, STABLE_ON, UNSTABLE, fires_at_threshold, fires_compiled
from .neurons.lif import Reset  # noqa: F401  (the LIF's reset rules, eqs. 9-10, live with the neuron)

UNIT_ROUNDOFF_FLOAT64 = float(np.finfo(np.float64).eps) / 2.0


def unit_roundoff(dtype) -> float:
    """Unit roundoff ``u`` of a float dtype (half the machine epsilon)."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2.0


def gamma(n: float, u: float) -> float:
    """``gamma_n = n u / (1 - n u)``: bound on the relative rounding error of an ``n``-term sum."""
    nu = float(n) * u
    if nu >= 0.5:
        raise ValueError(f"summation length {n} too long for unit roundoff {u}; the rounding bound breaks down")
    return nu / (1.0 - nu)


@dataclass(frozen=True)
class Precision:
    """The precision policy of a bound computation (see the module docstring).

    ``u``: unit roundoff used for the network's float relations (``u_net + u_float64``; 0 under
    the exact policy); ``th_lo``/``th_hi``: the two thresholds the network may effectively compare
    against; ``net_dtype``: the network's dtype; ``name``: ``"sound"`` (float64 bound arithmetic,
    outward rounding, the chord case decided exactly: certification and the checker) or
    ``"exact"`` (plain arithmetic in the network's dtype, no margins: robust training's loss);
    ``"plain"`` (float64, no margins: only to take the paper's chord choices, ``Precision.plain``).
    """

    u: float
    th_lo: float
    th_hi: float
    net_dtype: str
    name: str = "sound"

    @classmethod
    def sound(cls, net) -> "Precision":
        """Float64 bounds rounded outward so that they contain what ``net`` computes in its dtype."""
        dtype = np.dtype(net.dtype)
        check_normal_range(net, dtype)
        threshold_as_run = float(dtype.type(net.threshold))
        return cls(u=unit_roundoff(dtype) + UNIT_ROUNDOFF_FLOAT64,
                   th_lo=min(net.threshold, threshold_as_run),
                   th_hi=max(net.threshold, threshold_as_run),
                   net_dtype=dtype.name)

    @classmethod
    def plain(cls, net) -> "Precision":
        """The paper's formulas evaluated in float64 without margins, at the paper's threshold ``th``.
        Never a bound of the network as executed: only where S-CROWN takes the paper's chord choices
        (``method="crown-ibp-paper"``, ``Fire.chords(decide=...)``)."""
        threshold = float(net.threshold)
        return cls(u=0.0, th_lo=threshold, th_hi=threshold, net_dtype="float64", name="plain")

    @classmethod
    def exact(cls, net) -> "Precision":
        """Plain arithmetic in ``net``'s dtype: no margins, one threshold, the float chord case."""
        threshold = float(net.threshold)
        return cls(u=0.0, th_lo=threshold, th_hi=threshold, net_dtype=np.dtype(net.dtype).name, name="exact")

    @property
    def track_rounding(self) -> bool:
        """Whether bounds carry rounding margins and S-CROWN its rounding bound (the sound policy)."""
        return self.name == "sound"

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the bound arithmetic: float64 (sound) or the network's (exact)."""
        return np.dtype(np.float64) if self.track_rounding else np.dtype(self.net_dtype)

    def current_margin(self, magnitude: np.ndarray, n_terms: int) -> np.ndarray:
        """Outward margin of a current whose terms have absolute sum ``<= magnitude``."""
        return self.current_margin_coef(n_terms) * magnitude

    def current_margin_coef(self, n_terms: int) -> float:
        """The factor of ``current_margin`` for ``n_terms`` summed terms: ``2 gamma(n_terms + 4, u)``."""
        return 2.0 * gamma(n_terms + 4, self.u)

    def membrane_margin(self, magnitude: np.ndarray) -> np.ndarray:
        """Outward margin of ``m = I + alpha z`` (rounded product and sum, alpha cast to the dtype)."""
        return self.membrane_margin_coef() * magnitude

    def membrane_margin_coef(self) -> float:
        """The factor of ``membrane_margin``: ``2 gamma(6, u)``."""
        return 2.0 * gamma(6, self.u)


# The margins above are relative (``gamma(n, u) * magnitude``): they do not cover the absolute error of
# a product that underflows into the subnormal range. Near the threshold every magnitude is at least
# the threshold, so a threshold far above the subnormal range (2**24 smallest normals) and normal or
# zero weights keep those errors (<= one subnormal step each) far below the margins.
_NORMAL_RANGE_FACTOR = 2.0 ** 24


def check_normal_range(net, dtype: np.dtype) -> None:
    """Refuses (``ModelValidationError``, one line) a network the sound margins do not cover: a
    threshold below ``2**24`` times the smallest normal number of its dtype, or a nonzero weight or
    bias in the subnormal range."""
    from .validation import ModelValidationError
    tiny = float(np.finfo(dtype).tiny)
    if 0.0 < float(net.threshold) < _NORMAL_RANGE_FACTOR * tiny:   # <= 0: the model validator's refusal
        raise ModelValidationError(
            f"sound bounds need a threshold >= 2**24 x the smallest normal {dtype.name} ({_NORMAL_RANGE_FACTOR * tiny:.3g}), "
            f"got {float(net.threshold)!r}: rounding below the normal range is not covered by the margins")
    params = getattr(net, "params", None)   # Precision.sound also takes a bare (dtype, threshold) record
    for array in (params() if callable(params) else ()):
        values = np.abs(array)   # in the parameter's own dtype: one pass, no float64 copy
        small = values < tiny
        if small.any() and np.any(values[small] > 0):
            raise ModelValidationError(
                f"sound bounds need weights and biases that are 0 or at least the smallest normal {dtype.name} "
                f"({tiny:.3g}); the network has a nonzero parameter of magnitude {float(values[small].max())!r}")


def output_rounding_margin(C: np.ndarray, rule: Precision, steps: int) -> np.ndarray:
    """Outward margin for a bound of ``C f`` (``[B, S]``): the network's own rounding of the rate
    ``f = sum_t s_t / T'`` (an exact integer count divided once: relative error ``<= u_net``) and
    the float64 rounding of ``C f``, both ``<= (u_net + gamma) * sum |C|`` since rates lie in [0, 1]."""
    n_out = C.shape[-1]
    u_net = rule.u - UNIT_ROUNDOFF_FLOAT64
    return (2.0 * (u_net + gamma(n_out + steps + 8, UNIT_ROUNDOFF_FLOAT64))) * np.abs(C).sum(axis=-1)


def _exact_less(above: np.ndarray, below: np.ndarray, mem_upper: np.ndarray, mem_lower: np.ndarray,
                threshold: float, mask: np.ndarray) -> np.ndarray:
    """``(m_u - th) < (th - m_l)`` decided in exact arithmetic, as the paper's real-number rule.

    The float64 differences decide every clear case; the few near-ties (within a few ulps, where
    rounding could flip the choice; typical with dyadic weights) are re-decided with exact
    rationals. Either chord is sound, so this only makes the choice reproducible.
    """
    result = above < below
    scale = np.maximum(np.abs(above), np.abs(below))
    near = mask & (np.abs(above - below) <= 8.0 * np.finfo(np.float64).eps * scale)
    if near.any():
        th = Fraction(float(threshold))
        for index in zip(*np.nonzero(near)):
            result[index] = Fraction(float(mem_upper[index])) - th < th - Fraction(float(mem_lower[index]))
    return result


# --- the fire interval rule (eq. 7): one scalar source, compiled for the kernels of
# ``refsnn.operator`` and vectorized (the same compiled rule) for array callers --------------------

def fire_state(mem_lower, mem_upper, th_on, th_off, at_threshold):
    """Eq. 7 for one neuron: ``STABLE_OFF`` if it cannot fire anywhere on ``[m_l, m_u]`` (tested
    against ``th_off``), ``STABLE_ON`` if it fires everywhere (against ``th_on``), else ``UNSTABLE``.
    The spike interval is ``[state == STABLE_ON, state != STABLE_OFF]``."""
    if not fires_compiled(mem_upper, th_off, at_threshold):
        return STABLE_OFF
    if fires_compiled(mem_lower, th_on, at_threshold):
        return STABLE_ON
    return UNSTABLE


fire_state_compiled = numba.njit(cache=True)(fire_state)
_fire_state_array = numba.vectorize(cache=True)(fire_state)


class Fire:
    """``s = fire(m - th)``: interval rule (eq. 7) and chord relaxation (eq. 8), for both firing modes."""

    @staticmethod
    def classify(mem_lower: np.ndarray, mem_upper: np.ndarray, rule: Precision, firing: str) -> np.ndarray:
        """Stability of each neuron (``fire_state``): ``STABLE_OFF``, ``STABLE_ON`` or ``UNSTABLE`` (int8).

        ``mem_lower/upper`` must already be widened by the rounding margin (sound policy).
        """
        mem_lower = np.asarray(mem_lower)
        if mem_lower.size == 0:
            return np.full(mem_lower.shape, UNSTABLE, dtype=np.int8)
        # thresholds in the membranes' dtype, as NumPy compares an array with a Python float
        as_dtype = mem_lower.dtype.type
        state = _fire_state_array(mem_lower, mem_upper, as_dtype(rule.th_hi), as_dtype(rule.th_lo),
                                  fires_at_threshold(firing))
        return np.asarray(state).astype(np.int8)

    @staticmethod
    def interval(state: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Eq. 7: ``(spike_lower, spike_upper)`` as float64 0/1."""
        return (state == STABLE_ON).astype(np.float64), (state != STABLE_OFF).astype(np.float64)

    @staticmethod
    def chords(mem_lower: np.ndarray, mem_upper: np.ndarray, state: np.ndarray, threshold: float,
               rule: Precision, decide: Optional[Tuple[np.ndarray, np.ndarray]] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
        """Eq. 8's case per unstable neuron: ``(upper_chord, lower_chord)`` masks.

        The upper chord where ``m_u - th < th - m_l`` (decided exactly under the sound policy,
        ``_exact_less``; in the network's dtype under the exact policy), the lower chord
        otherwise; a chord whose denominator is not positive falls back to the constant line.
        ``decide``: the interval ``(m_l, m_u)`` the case is decided on, if not the relaxed one (the
        paper's choice: S-IBP's interval without rounding margins, ``Precision.plain``). Either
        chord is sound on the relaxed interval, so only the choice moves; which neurons are
        unstable is always decided on the relaxed (outward-rounded) interval.
        """
        unstable = state == UNSTABLE
        if decide is not None:
            low, high = decide
            upper_case = unstable & _exact_less(high - threshold, threshold - low, high, low, threshold, unstable)
        elif rule.track_rounding:
            upper_case = unstable & _exact_less(mem_upper - threshold, threshold - mem_lower,
                                                mem_upper, mem_lower, threshold, unstable)
        else:
            upper_case = unstable & ((mem_upper - threshold) < (threshold - mem_lower))
        upper_chord = upper_case & (rule.th_lo - mem_lower > 0.0)
        lower_chord = unstable & ~upper_case & (mem_upper - rule.th_hi > 0.0)
        return upper_chord, lower_chord

    @staticmethod
    def relaxation(mem_lower: np.ndarray, mem_upper: np.ndarray, state: np.ndarray, threshold: float,
                   rule: Precision, chords: Optional[Tuple[np.ndarray, np.ndarray]] = None
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Eq. 8: lines ``slope_lower m + icpt_lower <= s <= slope_upper m + icpt_upper`` on ``[m_l, m_u]``.

        Stable neurons: constant lines (0 or 1). Unstable, case ``m_u - th < th - m_l``
        (``chords``, or ``Fire.chords``): ``0 <= s <= (m - m_l)/(th_lo - m_l)``; otherwise
        ``(m - th_hi)/(m_u - th_hi) <= s <= 1``. In the dtype of ``mem_lower``.
        Soundness on the whole interval (both firing modes, including ``m = th``): the upper
        chord is ``>= 1`` wherever ``m >= th_lo`` (where the neuron may fire) and ``>= 0`` for
        ``m >= m_l``; the lower chord is ``<= 0`` wherever ``m <= th_hi`` (where it may stay
        silent) and ``<= 1`` for ``m <= m_u``. A non-positive denominator (impossible after the
        rounding margin, guarded anyway) falls back to the constant line, which is always sound.
        """
        unstable = state == UNSTABLE
        upper_chord, lower_chord = Fire.chords(mem_lower, mem_upper, state, threshold, rule) \
            if chords is None else chords
        on = (state == STABLE_ON).astype(mem_lower.dtype)
        icpt_lower = on  # constant lines: 1 for firing neurons, 0 otherwise ...
        icpt_upper = on + unstable  # ... and 1 above unstable neurons
        denom_upper = rule.th_lo - mem_lower
        lower_denom = mem_upper - rule.th_hi
        # Divide only where the chord applies (elsewhere by 1), so no division by zero happens.
        slope_upper = np.where(upper_chord, 1.0 / np.where(upper_chord, denom_upper, 1.0), 0.0)
        icpt_upper = np.where(upper_chord, -mem_lower * slope_upper, icpt_upper)
        slope_lower = np.where(lower_chord, 1.0 / np.where(lower_chord, lower_denom, 1.0), 0.0)
        icpt_lower = np.where(lower_chord, -rule.th_hi * slope_lower, icpt_lower)
        return slope_lower, icpt_lower, slope_upper, icpt_upper
