"""Helpers shared by the bound test suites (enumeration of boxes, containment checks), and their own tests."""
from __future__ import annotations

import itertools

import numpy as np
from hypothesis import strategies as st

from refsnn import SNN, AvgPool2d, Conv2d, Flatten, Linear
from refsnn.bounds import compute_bounds, crown_bounds, interval_bounds, margin_spec

METHODS = ("ibp", "crown-ibp", "crown-ibp-paper", "best")


def box_members(x_lower: np.ndarray, x_upper: np.ndarray, b: int) -> np.ndarray:
    """Every spike train of sample ``b``'s box: ``[T', 2**n_free, *in]`` uint8."""
    lower = x_lower[:, b].astype(np.uint8)
    free = np.flatnonzero((x_upper[:, b] != x_lower[:, b]).ravel())
    count = 2 ** free.size
    members = np.broadcast_to(lower.ravel(), (count, lower.size)).copy()
    if free.size:
        bits = (np.arange(count)[:, None] >> np.arange(free.size)[None, :]) & 1
        members[:, free] = bits
    return members.reshape((count,) + lower.shape).swapaxes(0, 1)


def check_intermediates(bounds, trace, b: int, label: str = "") -> None:
    """Every enumerated/sampled intermediate of sample ``b`` lies in the S-IBP bounds."""
    for k in range(len(trace.membranes)):
        pairs = [("current", trace.currents[k], bounds.current_lower[k], bounds.current_upper[k]),
                 ("membrane", trace.membranes[k], bounds.mem_lower[k], bounds.mem_upper[k]),
                 ("spike", trace.spikes[k], bounds.spike_lower[k], bounds.spike_upper[k]),
                 ("reset", trace.resets[k], bounds.reset_lower[k], bounds.reset_upper[k])]
        for name, value, lower, upper in pairs:
            value = value.astype(np.float64)
            lo, hi = lower[:, b:b + 1], upper[:, b:b + 1]
            below = value < lo
            above = value > hi
            assert not below.any(), f"{label} stage {k} {name} below its lower bound: " \
                f"{value[below][:3]} < {np.broadcast_to(lo, value.shape)[below][:3]}"
            assert not above.any(), f"{label} stage {k} {name} above its upper bound: " \
                f"{value[above][:3]} > {np.broadcast_to(hi, value.shape)[above][:3]}"


def check_spec_values(values: np.ndarray, lower: np.ndarray, upper: np.ndarray, label: str) -> None:
    """``values [N, S]`` of ``C f`` for one sample against its bounds ``[S]``."""
    exact_min, exact_max = values.min(axis=0), values.max(axis=0)
    assert np.all(lower <= exact_min), f"{label}: lower bound {lower} above the exact minimum {exact_min}"
    assert np.all(exact_max <= upper), f"{label}: upper bound {upper} below the exact maximum {exact_max}"


def exhaustive_check(net, x_lower, x_upper, specs, methods=METHODS, intermediates: bool = True) -> dict:
    """Enumerates every input of every sample's box, runs the real forward and checks all bounds.

    ``specs``: list of ``C`` arrays (``[S, n_out]`` or ``[B, S, n_out]``). Returns the bounds computed.
    """
    batch = x_lower.shape[1]
    ib = interval_bounds(net, x_lower, x_upper)
    computed = {}
    for index, C in enumerate(specs):
        for method in methods:
            computed[(index, method)] = compute_bounds(net, x_lower, x_upper, method=method, C=C)
        crown = crown_bounds(net, x_lower, x_upper, C=C)
        computed[(index, "crown-result")] = crown
    for b in range(batch):
        members = box_members(x_lower, x_upper, b)
        trace = net.run(members)
        if intermediates:
            check_intermediates(ib, trace, b, label=f"sample {b}")
        rates = trace.rates.astype(np.float64)
        for index, C in enumerate(specs):
            C_b = C if C.ndim == 2 else C[b]
            values = rates @ C_b.T
            for method in methods:
                lower, upper = computed[(index, method)]
                check_spec_values(values, lower[b], upper[b], f"{method} spec {index} sample {b}")
            # The linear form itself bounds every member (not only its box minimum).
            crown = computed[(index, "crown-result")]
            flat = members.reshape(members.shape[0], members.shape[1], -1).astype(np.float64)
            lin_lower = np.einsum("tsj,tnj->ns", crown.A_lower[:, b].reshape(flat.shape[0], C_b.shape[0], -1),
                                  flat) + crown.bias_lower[b]
            lin_upper = np.einsum("tsj,tnj->ns", crown.A_upper[:, b].reshape(flat.shape[0], C_b.shape[0], -1),
                                  flat) + crown.bias_upper[b]
            tol = 1e-9 * (1.0 + np.abs(lin_lower).max() + np.abs(lin_upper).max())
            assert np.all(lin_lower <= values + tol), "S-CROWN linear lower form above a member's value"
            assert np.all(values <= lin_upper + tol), "S-CROWN linear upper form below a member's value"
    return computed


# --- hypothesis strategies: small networks and boxes ------------------------------------------

def _weights(rng, shape, fan_in, threshold, style, scale):
    if style == "dyadic":
        return rng.integers(-6, 7, size=shape) * (threshold / 4.0)
    return rng.normal(0.0, scale * threshold * np.sqrt(2.0 / max(fan_in, 1)), size=shape)


@st.composite
def small_networks(draw):
    kind = draw(st.sampled_from(["fc", "conv"]))
    style = draw(st.sampled_from(["gaussian", "dyadic"]))
    if style == "dyadic":
        threshold = draw(st.sampled_from([0.125, 0.25, 0.5, 1.0]))
        decay = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    else:
        threshold = draw(st.floats(0.05, 1.0))
        decay = draw(st.one_of(st.sampled_from([0.0, 0.25, 1.0]), st.floats(0.0, 1.0)))
    firing = draw(st.sampled_from([">=", ">"]))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    scale = draw(st.floats(0.3, 3.0))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))

    def bias(size):
        if style == "dyadic":
            return rng.integers(-3, 4, size=size) * (threshold / 4.0)
        return rng.normal(0.0, 0.5 * threshold, size=size)

    layers = []
    if kind == "fc":
        sizes = [draw(st.integers(1, 6))] + draw(st.lists(st.integers(1, 5), min_size=0, max_size=2)) \
            + [draw(st.integers(1, 3))]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers.append(Linear(_weights(rng, (n_out, n_in), n_in, threshold, style, scale), bias(n_out)))
        input_shape = (sizes[0],)
    else:
        input_shape = draw(st.sampled_from([(1, 4, 4), (2, 5, 5)]))
        channels = draw(st.integers(1, 3))
        kernel = draw(st.integers(2, 3))
        stride = draw(st.integers(1, 2))
        padding = draw(st.integers(0, 1))
        fan_in = input_shape[0] * kernel * kernel
        layers.append(Conv2d(_weights(rng, (channels, input_shape[0], kernel, kernel), fan_in, threshold, style,
                                      scale), bias(channels), stride=stride, padding=padding))
        size = (input_shape[1] + 2 * padding - kernel) // stride + 1
        if size >= 2 and draw(st.booleans()):
            layers.append(AvgPool2d(2))
            size //= 2
        layers.append(Flatten())
        n_flat = channels * size * size
        n_out = draw(st.integers(1, 3))
        layers.append(Linear(_weights(rng, (n_out, n_flat), n_flat, threshold, style, scale), bias(n_out)))
    net = SNN(layers, threshold=threshold, decay=decay, firing=firing, input_shape=input_shape, dtype=dtype)
    return net


@st.composite
def small_boxes(draw, net):
    steps = draw(st.integers(1, 5))
    batch = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    size = steps * int(np.prod(net.input_shape))
    density = draw(st.floats(0.0, 1.0))
    x_lower = np.zeros((steps, batch) + net.input_shape, dtype=np.uint8)
    x_upper = np.zeros_like(x_lower)
    for b in range(batch):
        clean = (rng.random(size) < density).astype(np.uint8)
        n_free = draw(st.integers(0, min(14, size)))
        free = rng.choice(size, size=n_free, replace=False)
        lower, upper = clean.copy(), clean.copy()
        lower[free], upper[free] = 0, 1
        x_lower[:, b] = lower.reshape((steps,) + net.input_shape)
        x_upper[:, b] = upper.reshape((steps,) + net.input_shape)
    return x_lower, x_upper


def spec_list(net, batch, rng):
    n_out = net.n_outputs
    specs = [np.eye(n_out), rng.normal(size=(2, n_out))]
    if n_out >= 2:
        specs.append(margin_spec(rng.integers(0, n_out, size=batch), n_out))
    return specs



def _member_values(trace, k, t):
    flat = lambda a: a[t].reshape(a.shape[1], -1).astype(np.float64)
    return flat(trace.membranes[k]), flat(trace.spikes[k]), flat(trace.resets[k]), flat(trace.currents[k])


def assert_each_step_sound(net, x_lower, x_upper, spec, stages, record, adjoint: bool = True):
    """On every member of the box, each recorded time step of the back-substitution replaces
    ``lam_s . s_t + lam_z . z_t`` by ``lam_m . m_t + bias_step`` exceeding it by at most ``err_step``,
    and (``adjoint``) each stage's adjoint step through the spatial ops is an identity."""
    for b in range(x_lower.shape[1]):
        members = box_members(x_lower, x_upper, b)
        trace = net.run(members)
        for stage_record in record:
            k, lam_cur, lam_prev = stage_record.k, stage_record.step.lam_cur, stage_record.lam_prev
            step, alpha = stage_record.step, stage_record.tables.alpha
            for t in range(x_lower.shape[0]):
                lam_s = stage_record_lam_s(record, k, spec, x_lower.shape[0])[t]
                lam_z = alpha * lam_cur[t + 1] if t + 1 < x_lower.shape[0] else np.zeros_like(lam_cur[t])
                lam_m, bias_step, err_step = lam_cur[t], step.step_bias[t], step.step_err[t]
                m, s, z, _ = _member_values(trace, k, t)
                before = s @ lam_s[b].T + z @ lam_z[b].T
                after = m @ lam_m[b].T + bias_step[b]
                # Allowed: the step's own rounding bound (what S-CROWN subtracts for it) plus the
                # rounding of this test's evaluation; a wrong rule breaks it by far more.
                evaluation = 1e-13 * (np.abs(s) @ np.abs(lam_s[b]).T + np.abs(z) @ np.abs(lam_z[b]).T
                                      + np.abs(m) @ np.abs(lam_m[b]).T + np.abs(bias_step[b]))
                excess = after - before - err_step[b] - evaluation
                assert np.all(excess <= 0.0), \
                    f"stage {k} t={t}: a relaxation step raised the bound by {excess.max()} beyond its rounding bound"
            if not adjoint:
                continue
            # Adjoint step: sum_t lam_I . I_t == sum_t lam_prev . s_prev_t + sum_t lam_I . b (exact algebra).
            prev = trace.inputs if k == 0 else trace.spikes[k - 1]
            lhs = np.zeros((members.shape[1], spec.shape[1]))
            rhs = np.zeros_like(lhs)
            scale = np.zeros_like(lhs)
            for t in range(x_lower.shape[0]):
                _, _, _, current = _member_values(trace, k, t)
                s_prev = prev[t].reshape(prev.shape[1], -1).astype(np.float64)
                lhs += current @ lam_cur[t, b].T
                rhs += s_prev @ lam_prev[t, b].reshape(spec.shape[1], -1).T + lam_cur[t, b] @ stages[k].bias
                scale += np.abs(current) @ np.abs(lam_cur[t, b]).T
            tol = (1e-10 if net.dtype == np.float64 else 1e-5) * (1.0 + scale)
            assert np.all(np.abs(lhs - rhs) <= tol), f"stage {k}: adjoint step is not an identity"


def stage_record_lam_s(record, k, spec, steps):
    """The coefficients on stage ``k``'s spikes: the spec's for the last stage, else the next stage's ``lam_prev``."""
    if k == len(record) - 1:
        return np.broadcast_to(spec[None] / steps, (steps,) + spec.shape)
    lam_prev = record[k + 1].lam_prev
    return lam_prev.reshape(lam_prev.shape[:3] + (-1,))


# --- tests of the helpers themselves -------------------------------------------------------------

def test_box_members_enumerates_every_member_once():
    x_lower = np.zeros((2, 1, 3), dtype=np.uint8)
    x_upper = x_lower.copy()
    x_upper[0, 0, 1] = 1
    x_upper[1, 0, 2] = 1
    x_lower[1, 0, 0] = x_upper[1, 0, 0] = 1
    members = box_members(x_lower, x_upper, 0)
    assert members.shape == (2, 4, 3)
    seen = {members[:, i].tobytes() for i in range(4)}
    expected = set()
    for a, c in itertools.product((0, 1), repeat=2):
        x = np.array([[0, a, 0], [1, 0, c]], dtype=np.uint8)
        expected.add(x.tobytes())
    assert seen == expected
