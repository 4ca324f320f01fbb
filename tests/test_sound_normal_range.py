"""The sound margins are relative: networks whose threshold or weights reach into the subnormal range
(where a product's absolute underflow error is not covered) are refused, not bounded wrongly."""
import numpy as np
import pytest

from refsnn import SNN, Linear
from refsnn.ibp import interval_bounds
from refsnn.validation import ModelValidationError

SUB32 = float(np.float32(2.0 ** -149))


def test_a_subnormal_threshold_is_refused_instead_of_a_wrong_rate_bound():
    # the network fires at step 1 (membrane 5 x 2**-149 = threshold); the relative margins put the
    # membrane bound below the threshold (rate bound [0, 0] against a true rate of 0.5)
    net = SNN([Linear(np.array([[3 * SUB32]], dtype=np.float32), np.zeros(1, np.float32))], threshold=5 * SUB32,
              decay=0.5, firing=">=", dtype=np.float32)
    x = np.ones((2, 1, 1))
    assert net.run(x).rates.ravel()[0] == 0.5
    with pytest.raises(ModelValidationError, match="threshold >= 2\\*\\*24"):
        interval_bounds(net, x, x)


def test_a_subnormal_weight_is_refused():
    tiny = float(np.finfo(np.float64).tiny)
    net = SNN([Linear(np.array([[0.5, tiny / 4]]), np.zeros(1))], threshold=0.25, decay=0.5, dtype=np.float64)
    x = np.ones((2, 1, 2))
    with pytest.raises(ModelValidationError, match="nonzero parameter"):
        interval_bounds(net, x, x)


def test_zero_weights_and_a_normal_threshold_are_bounded_and_contain_the_run():
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 1, (3, 4)).astype(np.float32)
    weight[0, :2] = 0.0
    net = SNN([Linear(weight, np.zeros(3, np.float32))], threshold=0.5, decay=0.25, dtype=np.float32)
    x = (rng.random((3, 5, 4)) < 0.5).astype(np.float64)
    bounds = interval_bounds(net, x, x)
    spikes = net.run(x).spikes[-1].astype(np.float64)   # [T, B, 3]: the output stage's spikes
    rates = spikes.mean(axis=0)
    assert np.all(bounds.rate_lower <= rates) and np.all(rates <= bounds.rate_upper)
