"""Hypothesis strategies: small random SNNs, spike boxes, input sets and output specifications.

Made to property-test a bound implementation against refsnn's forward pass and exact verifier:
nets are small enough for exhaustive enumeration or the MILP, and by default their weights are
dyadic (multiples of 1/8), so membranes land EXACTLY on the threshold often, the case where
firing-rule and rounding bugs hide::

    from hypothesis import given
    from refsnn.testing import snn_strategy, box_strategy, assert_bounds_sound

    @given(data=st.data())
    def test_my_bounds(data):
        net = data.draw(snn_strategy("fc"))
        x_lower, x_upper = data.draw(box_strategy(net, max_free_bits=8))
        assert_bounds_sound(my_bound_fn, net, x_lower, x_upper)
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from hypothesis import strategies as st

from ..layers import AvgPool2d, Conv2d, Flatten, Linear
from ..network import SNN

FIRING_MODES = (">=", ">")
_SMALLEST_WEIGHT = 2.0 ** -100   # far above float32's smallest normal (2**-126)


def _weights(draw, shape, dyadic: bool, scale: float) -> np.ndarray:
    size = int(np.prod(shape))
    if dyadic:
        # Multiples of 1/8 in [-scale, scale]: exact arithmetic, frequent ties at th = 0.25.
        top = max(1, int(round(scale * 8)))
        values = draw(st.lists(st.integers(-top, top), min_size=size, max_size=size))
        return np.array(values, dtype=np.float64).reshape(shape) / 8.0
    values = draw(st.lists(st.floats(-scale, scale, allow_nan=False, allow_infinity=False, width=64),
                           min_size=size, max_size=size))
    values = np.array(values, dtype=np.float64).reshape(shape)
    # Sound bounds refuse subnormal-scale weights (refsnn.relaxations.check_normal_range); values that
    # small (also in float32) stand for 0 here.
    values[np.abs(values) < _SMALLEST_WEIGHT] = 0.0
    return values


@st.composite
def snn_strategy(draw, arch: str = "fc", max_inputs: int = 4, max_hidden: int = 4, max_layers: int = 2,
                 n_outputs: Sequence[int] = (2, 3), firing: Optional[str] = None, dyadic: bool = True,
                 weight_scale: float = 0.625, threshold: float = 0.25, decay: float = 0.25,
                 dtype=np.float64) -> SNN:
    """A small random ``SNN``.

    ``arch="fc"``: ``n_in`` in ``[1, max_inputs]``, ``1..max_layers`` Linear layers (hidden widths
    ``1..max_hidden``). ``arch="conv"``: input ``(1|2, H, W)`` with ``H, W in {2, 3}``, one
    Conv2d (kernel 2, padding 0 or 1, stride 1 or 2), optionally AvgPool2d(2, 1), Flatten, Linear.
    ``firing`` None draws ``">="`` or ``">"``. ``dyadic`` weights are multiples of 1/8.
    """
    if arch not in ("fc", "conv"):
        raise ValueError(f"arch must be 'fc' or 'conv', got {arch!r}")
    firing = draw(st.sampled_from(FIRING_MODES)) if firing is None else firing
    n_out = draw(st.sampled_from(list(n_outputs)))
    if arch == "fc":
        n_in = draw(st.integers(1, max_inputs))
        n_layers = draw(st.integers(1, max_layers))
        widths = [n_in] + [draw(st.integers(1, max_hidden)) for _ in range(n_layers - 1)] + [n_out]
        layers = [Linear(_weights(draw, (widths[i + 1], widths[i]), dyadic, weight_scale),
                         _weights(draw, (widths[i + 1],), dyadic, weight_scale / 2))
                  for i in range(n_layers)]
        return SNN(layers, threshold=threshold, decay=decay, firing=firing, dtype=dtype)
    channels = draw(st.integers(1, 2))
    height, width = draw(st.integers(2, 3)), draw(st.integers(2, 3))
    out_channels = draw(st.integers(1, 2))
    padding = draw(st.integers(0, 1))
    stride = draw(st.integers(1, 2))
    conv = Conv2d(_weights(draw, (out_channels, channels, 2, 2), dyadic, weight_scale),
                  _weights(draw, (out_channels,), dyadic, weight_scale / 2), stride=stride, padding=padding)
    layers = [conv]
    out_h = (height + 2 * padding - 2) // stride + 1
    out_w = (width + 2 * padding - 2) // stride + 1
    if out_h >= 2 and out_w >= 2 and draw(st.booleans()):
        layers.append(AvgPool2d(2, 1))
        out_h, out_w = out_h - 1, out_w - 1
    layers += [Flatten(), Linear(_weights(draw, (n_out, out_channels * out_h * out_w), dyadic, weight_scale),
                                 _weights(draw, (n_out,), dyadic, weight_scale / 2))]
    return SNN(layers, threshold=threshold, decay=decay, firing=firing, input_shape=(channels, height, width),
               dtype=dtype)


@st.composite
def box_strategy(draw, net: SNN, steps: Tuple[int, int] = (1, 4), batch: int = 1,
                 max_free_bits: int = 8) -> Tuple[np.ndarray, np.ndarray]:
    """Spike boxes ``(x_lower, x_upper)``, uint8 ``[T', B, *input_shape]``, ``T'`` in ``steps``,
    each sample with at most ``max_free_bits`` bits free (``2^max_free_bits`` members)."""
    n_steps = draw(st.integers(*steps))
    shape = (n_steps,) + tuple(net.input_shape)
    size = int(np.prod(shape))
    lowers, uppers = [], []
    for _ in range(batch):
        center = np.array(draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)), dtype=np.uint8)
        n_free = draw(st.integers(0, min(max_free_bits, size)))
        free = draw(st.lists(st.integers(0, size - 1), min_size=n_free, max_size=n_free, unique=True))
        lower, upper = center.copy(), center.copy()
        lower[free], upper[free] = 0, 1
        lowers.append(lower.reshape(shape))
        uppers.append(upper.reshape(shape))
    return np.stack(lowers, axis=1), np.stack(uppers, axis=1)


@st.composite
def spec_strategy(draw, net: SNN, batch: int = 1, max_specs: int = 3, kind: Optional[str] = None) -> np.ndarray:
    """Specifications ``C [B, n_spec, n_out]``: ``"unit"`` rows (single rates), ``"margin"`` rows
    ``e_y - e_j`` (robustness margins), or ``"integer"`` rows with entries in ``{-1, 0, 1}``."""
    n_out = net.n_outputs
    kind = draw(st.sampled_from(["unit", "margin", "integer"])) if kind is None else kind
    n_spec = draw(st.integers(1, max_specs))
    rows = []
    for _ in range(batch):
        spec = np.zeros((n_spec, n_out))
        for i in range(n_spec):
            if kind == "unit":
                spec[i, draw(st.integers(0, n_out - 1))] = 1.0
            elif kind == "margin":
                y = draw(st.integers(0, n_out - 1))
                j = draw(st.integers(0, n_out - 2))
                spec[i, y] = 1.0
                spec[i, j if j < y else j + 1] = -1.0
            else:
                spec[i] = draw(st.lists(st.integers(-1, 1), min_size=n_out, max_size=n_out))
        rows.append(spec)
    return np.stack(rows)


@st.composite
def input_set_strategy(draw, net: SNN, steps: Tuple[int, int] = (1, 4), kinds: Sequence[str] = ("box", "l0", "digital"),
                       max_members: int = 512):
    """One ``verify`` input set (``BoxSet``, ``SpikeL0Set`` or ``DigitalLinfSet``) of at most
    ``max_members`` members, for the MILP and enumeration cross-checks."""
    from verify.sets import BoxSet, DigitalLinfSet, SpikeL0Set
    kind = draw(st.sampled_from(list(kinds)))
    n_steps = draw(st.integers(*steps))
    shape = (n_steps,) + tuple(net.input_shape)
    size = int(np.prod(shape))
    center = np.array(draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)), dtype=np.uint8).reshape(shape)
    if kind == "box":
        max_free = max(0, int(np.log2(max_members)))
        n_free = draw(st.integers(0, min(max_free, size)))
        free = draw(st.lists(st.integers(0, size - 1), min_size=n_free, max_size=n_free, unique=True))
        lower, upper = center.reshape(-1).copy(), center.reshape(-1).copy()
        lower[free], upper[free] = 0, 1
        return BoxSet(lower.reshape(shape), upper.reshape(shape))
    if kind == "l0":
        per_step = draw(st.booleans())
        candidate = SpikeL0Set(center, 1, per_step=per_step)
        if candidate.count() > max_members:
            candidate = SpikeL0Set(center, 1, per_step=False)
        return candidate
    pixels = int(np.prod(net.input_shape))
    image = np.array(draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=pixels, max_size=pixels)))
    rand = np.array(draw(st.lists(st.sampled_from([0.125, 0.375, 0.5, 0.625, 0.875]),
                                  min_size=size, max_size=size))).reshape(shape)
    eps = draw(st.sampled_from([0.0, 0.25, 0.5]))
    digital = DigitalLinfSet(image.reshape(net.input_shape), eps, rand, convention="paper")
    if digital.count() > max_members:
        digital = DigitalLinfSet(image.reshape(net.input_shape), 0.0, rand, convention="paper")
    return digital
