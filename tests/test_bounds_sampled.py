"""Soundness by sampling on the paper's FC and CONV architectures (random weights, PyTorch's init):
at least 10,000 perturbed trajectories per test, none outside the output bounds (S-IBP, S-CROWN,
best; identity, margin and random specifications) nor outside the intermediate S-IBP bounds.

Inputs are real digits (the MNIST subset embedded in the package). Digital sets mix members of the
box (each free bit a fair coin, the extremes ``x_lower``/``x_upper``) with spike trains encoded
from perturbed images in the l-inf ball (the exact set, with the same rand maps).
"""
from __future__ import annotations

import numpy as np
import pytest

from refsnn.architectures import build_network
from refsnn.bounds import compute_bounds, crown_bounds, interval_bounds, margin_spec
from refsnn.crown import normalize_spec
from refsnn.ibp import ibp_spec_bounds
from refsnn.data import load_dataset
from refsnn.encoders import bernoulli_encode, draw_rand_maps
from refsnn.input_sets import digital_linf_set, spike_l0_set

from test_bounds_helpers import check_intermediates, check_spec_values

TRAJECTORIES = 10_000


def _images(shape, count, seed):
    images, _ = load_dataset("mnist-subset", "test", limit=64)
    images = images[np.random.default_rng(seed).choice(len(images), count, replace=False)]
    if len(shape) == 3 and shape != images.shape[1:]:
        # Smaller CONV inputs (a CONV forward of 10,000 trajectories on 28x28 is slow): centre crop.
        height, width = shape[1:]
        top, left = (28 - height) // 2, (28 - width) // 2
        images = images[:, :, top:top + height, left:left + width]
    return images.reshape((count,) + shape)


def _box_samples(rng, x_lower, x_upper, b, count):
    """``count`` members of sample ``b``'s box: the two extremes and fair coins on every free bit."""
    lower, upper = x_lower[:, b], x_upper[:, b]
    coins = rng.random((count,) + lower.shape) < 0.5
    members = np.where(coins, upper, lower).astype(np.uint8)
    members[0], members[1] = lower, upper
    return np.moveaxis(members, 0, 1)  # [T', count, *in]


def _check_samples(net, x_lower, x_upper, members_per_sample, labels):
    batch = x_lower.shape[1]
    specs = [np.eye(net.n_outputs), margin_spec(labels, net.n_outputs),
             np.random.default_rng(0).normal(size=(3, net.n_outputs))]
    bounds = interval_bounds(net, x_lower, x_upper)
    computed = {}
    for i, C in enumerate(specs):
        # One S-IBP pass shared by every spec and method ("best" through compute_bounds once).
        C_full = normalize_spec(C, batch, net.n_outputs)
        computed[(i, "ibp")] = ibp_spec_bounds(bounds, C_full)
        crown = crown_bounds(net, x_lower, x_upper, C, intermediate=bounds, return_coefficients=False)
        computed[(i, "crown-ibp")] = crown.lower, crown.upper
        computed[(i, "best")] = compute_bounds(net, x_lower, x_upper, method="best", C=C) if i == 1 else (
            np.maximum(computed[(i, "ibp")][0], crown.lower), np.minimum(computed[(i, "ibp")][1], crown.upper))
    total = 0
    for b in range(batch):
        for members in members_per_sample(b):
            trace = net.run(members)
            check_intermediates(bounds, trace, b, label=f"sample {b}")
            rates = trace.rates.astype(np.float64)
            for i, C in enumerate(specs):
                C_b = C if C.ndim == 2 else C[b]
                for method in ("ibp", "crown-ibp", "best"):
                    lower, upper = computed[(i, method)]
                    check_spec_values(rates @ C_b.T, lower[b], upper[b], f"{method} spec {i} sample {b}")
            total += members.shape[1]
    assert total >= TRAJECTORIES
    return bounds


@pytest.mark.parametrize("arch, shape, batch, steps, eps, convention", [
    ("fc", (1, 28, 28), 4, 3, 0.05, "authors"),
    ("conv", (1, 8, 8), 4, 2, 0.12, "paper"),
])
def test_digital_linf_trajectories_stay_inside_bounds(arch, shape, batch, steps, eps, convention):
    rng = np.random.default_rng(11)
    net = build_network(arch, shape, seed=5)
    images = _images(shape, batch, seed=1)
    rand_maps = draw_rand_maps(rng, steps, images.shape)
    dset = digital_linf_set(images, eps, rand_maps, convention=convention)
    labels = net.predict(dset.x_clean)
    per_sample = TRAJECTORIES // batch

    def members(b):
        half = per_sample // 2
        yield _box_samples(rng, dset.x_lower, dset.x_upper, b, half)
        # The exact set: images in the clipped l-inf ball, encoded with the SAME rand maps.
        perturbed = np.clip(images[b] + rng.uniform(-dset.radius, dset.radius, (per_sample - half,) + shape), 0, 1)
        yield bernoulli_encode(perturbed, rand_maps[:, b:b + 1].repeat(per_sample - half, axis=1))

    bounds = _check_samples(net, dset.x_lower, dset.x_upper, members, labels)
    assert max(bounds.unstable_fraction()) > 0.0, "the test needs unstable neurons to mean anything"


@pytest.mark.parametrize("arch, shape, batch, steps, eps, mode", [
    ("fc", (784,), 4, 3, 0.01, "paper"),
    ("conv", (1, 8, 8), 4, 3, 0.05, "authors"),
])
def test_spike_l0_trajectories_stay_inside_bounds(arch, shape, batch, steps, eps, mode):
    rng = np.random.default_rng(12)
    net = build_network(arch, shape, seed=6)
    images = _images(shape, batch, seed=2)
    clean = bernoulli_encode(images, draw_rand_maps(rng, steps, images.shape))
    sset = spike_l0_set(clean, eps, rng, mode=mode)
    labels = net.predict(clean)
    per_sample = TRAJECTORIES // batch

    def members(b):
        yield _box_samples(rng, sset.x_lower, sset.x_upper, b, per_sample)

    bounds = _check_samples(net, sset.x_lower, sset.x_upper, members, labels)
    assert max(bounds.unstable_fraction()) > 0.0
