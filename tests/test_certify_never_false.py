"""``certify`` never claims a sample that exhaustive enumeration refutes, on random networks that
the validator accepts, edge parameters included: decay 0 and 1, thresholds down to 1e-30, dyadic
weights (multiples of th/4, so membranes land exactly on the threshold), both firing conventions,
float32 and float64 networks. Ground truth: every member of the box through the network as
executed (its own dtype); certified means the label's rate is strictly above every other rate."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsnn import SNN, Linear
from refsnn.bounds import certify
from refsnn.validation import ModelValidationError

from test_bounds_helpers import box_members

METHODS = ("ibp", "crown-ibp", "crown-ibp-paper", "best")
EDGE_THRESHOLDS = (1e-30, 2.0 ** -20, 0.125, 0.25, 1.0)
EDGE_DECAYS = (0.0, 1.0, 0.25, 0.5)


def build(rng: np.random.Generator, threshold: float, decay: float, firing: str, dtype, style: str) -> SNN:
    """A small FC network ``n_in - [hidden] - n_out`` (n_out 2..3) with dyadic or Gaussian weights."""
    sizes = [int(rng.integers(2, 5))] + [int(rng.integers(1, 5)) for _ in range(rng.integers(0, 2))] \
        + [int(rng.integers(2, 4))]
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        if style == "dyadic":
            weight = rng.integers(-6, 7, size=(n_out, n_in)) * (threshold / 4.0)
            bias = rng.integers(-2, 3, size=n_out) * (threshold / 4.0)
        else:
            weight = rng.normal(0.0, 1.5 * threshold, size=(n_out, n_in))
            bias = rng.normal(0.0, 0.3 * threshold, size=n_out)
        layers.append(Linear(weight, bias))
    return SNN(layers, threshold=threshold, decay=decay, firing=firing, dtype=dtype)


def small_box(rng: np.random.Generator, net: SNN, steps: int, n_free: int):
    """One sample's box ``[T', 1, n_in]``: a random corner with ``n_free`` free bits."""
    size = steps * net.input_shape[0]
    lower = (rng.random(size) < 0.5).astype(np.uint8)
    upper = lower.copy()
    free = rng.choice(size, size=min(n_free, size), replace=False)
    lower[free], upper[free] = 0, 1
    shape = (steps, 1) + net.input_shape
    return lower.reshape(shape), upper.reshape(shape)


def refuted_claims(net: SNN, x_lower: np.ndarray, x_upper: np.ndarray) -> tuple:
    """``(claims, refuted)``: certificates issued for every label, and those a member refutes."""
    members = box_members(x_lower, x_upper, 0)
    rates = net.forward(members).astype(np.float64)  # [members, n_out], the network as executed
    claims, refuted = 0, []
    for label in range(net.n_outputs):
        others = np.delete(rates, label, axis=1)
        robust = bool(np.all(rates[:, label][:, None] > others))
        for method in METHODS:
            if certify(net, x_lower, x_upper, np.array([label]), method=method)[0]:
                claims += 1
                if not robust:
                    refuted.append((method, label))
    return claims, refuted


@st.composite
def cases(draw):
    threshold = draw(st.one_of(st.sampled_from(EDGE_THRESHOLDS), st.floats(1e-6, 2.0)))
    decay = draw(st.one_of(st.sampled_from(EDGE_DECAYS), st.floats(0.0, 1.0)))
    firing = draw(st.sampled_from([">=", ">"]))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    style = draw(st.sampled_from(["dyadic", "gaussian"]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    net = build(rng, threshold, decay, firing, dtype, style)
    steps = draw(st.integers(1, 4))
    n_free = draw(st.integers(0, 6))
    return net, small_box(rng, net, steps, n_free)


@settings(max_examples=50, deadline=None)
@given(case=cases())
def test_certify_never_claims_a_refuted_sample(case):
    net, (x_lower, x_upper) = case
    _, refuted = refuted_claims(net, x_lower, x_upper)
    assert not refuted, (f"certified but refuted by enumeration: {refuted}; threshold {net.threshold!r}, decay "
                         f"{net.decay!r}, firing {net.firing!r}, dtype {net.dtype}")


def test_the_generator_produces_certificates_at_the_edges():
    """The property is not vacuous: the same generator issues certificates (at decay 0 and 1, the
    smallest thresholds and with ties) that the enumeration then checks."""
    claims = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        net = build(rng, EDGE_THRESHOLDS[seed % 2], EDGE_DECAYS[seed % 2], (">=", ">")[seed % 4 // 2],
                    (np.float64, np.float32)[seed % 3 == 0], "dyadic")
        count, refuted = refuted_claims(net, *small_box(rng, net, 3, 3))
        assert not refuted
        claims += count
    assert claims > 0


def test_what_the_validator_refuses_does_give_false_certificates():
    """Why a threshold <= 0 is refused: forced past the validator, a negative threshold makes
    ``certify`` claim samples the enumeration refutes (eq. 9's reset interval misses 0)."""
    refuted_total = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        net = build(rng, 0.125, 0.5, (">=", ">")[seed % 2], np.float64, "dyadic")
        net.threshold = -0.125  # bypasses SNN's checks on purpose
        refuted_total += len(refuted_claims(net, *small_box(rng, net, 3, 3))[1])
    assert refuted_total > 0
    with pytest.raises(ModelValidationError, match="threshold must be a finite number > 0"):
        SNN(net.layers, threshold=-0.125, decay=0.5)
