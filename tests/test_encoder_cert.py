"""Clopper-Pearson encoder certificate (refsnn.encoder_cert), checked against scipy.stats."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from refsnn.architectures import build_network
from refsnn.encoder_cert import binomial_upper_tail, certify_encoder, clopper_pearson_lower


@pytest.mark.parametrize("successes,n", [(1, 1), (3, 7), (5, 10), (50, 100), (99, 100), (100, 100), (500, 1000),
                                         (1000, 1000), (1, 2000)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_lower_bound_equals_scipy(successes, n, alpha):
    ours = clopper_pearson_lower(successes, n, alpha)
    assert ours == pytest.approx(stats.beta.ppf(alpha, successes, n - successes + 1), abs=1e-12)
    # binomtest's two-sided exact interval at level 1 - 2 alpha has the same lower end
    assert ours == pytest.approx(stats.binomtest(successes, n).proportion_ci(confidence_level=1 - 2 * alpha).low,
                                 abs=1e-9)
    # a lower bound: the tail at it is below alpha (rounded down, never up)
    assert binomial_upper_tail(successes, n, ours) <= alpha + 1e-12


def test_edges_and_tail():
    assert clopper_pearson_lower(0, 10) == 0.0
    assert binomial_upper_tail(3, 10, 0.4) == pytest.approx(stats.binom.sf(2, 10, 0.4), rel=1e-12)
    for bad in ((11, 10), (-1, 10), (2.5, 10)):
        with pytest.raises(ValueError):
            clopper_pearson_lower(*bad)
    with pytest.raises(ValueError):
        clopper_pearson_lower(1, 0)
    with pytest.raises(ValueError):
        clopper_pearson_lower(1, 10, alpha=1.5)


def test_certificate_counts_and_coverage():
    net = build_network("fc", (1, 6, 6), seed=3)
    rng = np.random.default_rng(0)
    image = rng.random((1, 6, 6))
    label = int(net.predict((image[None, None] > rng.random((3, 1, 1, 6, 6))).astype(np.uint8))[0])
    zero = certify_encoder(net, image, label, 0.0, 40, np.random.default_rng(1), alpha=0.01, batch=16)
    wide = certify_encoder(net, image, label, 0.5, 40, np.random.default_rng(1), alpha=0.01, batch=16)
    assert 0 <= wide.certified <= 40 and 0 <= zero.certified <= zero.clean_correct <= 40
    assert zero.lower == clopper_pearson_lower(zero.certified, 40, 0.01)
    assert wide.lower == clopper_pearson_lower(wide.certified, 40, 0.01)
    with pytest.raises(ValueError):
        certify_encoder(net, image, label, 0.1, 0, np.random.default_rng(1))
