"""A certificate over the Bernoulli encoder: Clopper-Pearson lower confidence bound on the probability
that a random rate encoding of ANY image in the l-inf ball is classified correctly.

For one image ``xhat`` with label ``y``, radius ``r`` and horizon ``T'``, let ``R`` be the rand maps
``[T', *shape]`` (i.i.d. uniform in [0, 1)) and

    E(R) = "for EVERY image x' with |x' - xhat|_inf <= r, the network predicts y on 1[x' > R]".

``p = P_R(E(R))``. The S-CROWN certificate of the digital box for one draw ``R_i`` (every margin
lower bound > 0, ``refsnn.bounds.certify``) implies ``E(R_i)`` (soundness), so the number ``c`` of
certified draws among ``n`` independent draws is at least Binomial(n, q) with ``q <= p`` the
probability that the certificate holds. The one-sided Clopper-Pearson bound ``p_low(c, n, alpha)``
satisfies ``P(q >= p_low) >= 1 - alpha`` over the draws, hence ``P(p >= p_low) >= 1 - alpha``.

Consequence (docs/CERTIFY.md): with confidence ``1 - alpha`` over our draws, for every ``x'`` in the
ball, ``P_R(predict(1[x' > R]) = y) >= p_low`` -- a statement about the network run with a FRESH
encoding at horizon ``T'``; nothing is said about one particular draw, and the prediction at
another horizon ``T`` is not covered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .input_sets import DEFAULT_ROBUST_T

DEFAULT_ALPHA = 0.001


def _log_binom_pmf(i: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p))


def binomial_upper_tail(successes: int, n: int, p: float) -> float:
    """``P(X >= successes)`` for ``X ~ Binomial(n, p)`` (log-sum-exp of the exact terms)."""
    if successes <= 0:
        return 1.0
    if successes > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    logs = [_log_binom_pmf(i, n, p) for i in range(successes, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def clopper_pearson_lower(successes: int, n: int, alpha: float = DEFAULT_ALPHA) -> float:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial proportion.

    The smallest ``p`` with ``P(X >= successes; n, p) >= alpha`` (0 when ``successes == 0``),
    found by bisection on the exact tail (to ~1e-15); equals ``beta.ppf(alpha, c, n - c + 1)``.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if int(successes) != successes or not 0 <= successes <= n:
        raise ValueError(f"successes must be an integer in [0, n={n}], got {successes!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    successes, n = int(successes), int(n)
    if successes == 0:
        return 0.0
    low, high = 0.0, 1.0   # tail(low) < alpha <= tail(high); the tail is increasing in p
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid <= low or mid >= high:
            break
        if binomial_upper_tail(successes, n, mid) >= alpha:
            high = mid
        else:
            low = mid
    return low  # rounded down: the bound stays a lower bound


@dataclass
class EncoderCertificate:
    """``n`` draws, ``certified`` of them certified; ``lower``: the Clopper-Pearson bound at ``alpha``."""

    n: int
    certified: int
    alpha: float
    lower: float
    clean_correct: int

    def as_dict(self) -> dict:
        return {"draws": self.n, "certified_draws": self.certified, "alpha": self.alpha,
                "probability_lower_bound": self.lower, "clean_correct_draws": self.clean_correct}


def certify_encoder(net, image, label: int, eps: float, draws: int, rng: np.random.Generator,
                    horizon: int = DEFAULT_ROBUST_T,
                    alpha: float = DEFAULT_ALPHA, method: str = "best", convention: str = "paper",
                    batch: int = 100) -> EncoderCertificate:
    """Draws ``draws`` independent rand maps for ``image [*shape]``, certifies the digital l-inf box of
    each (``method``), and returns the Clopper-Pearson lower bound on ``P(E(R))`` (module docstring)."""
    from .bounds import certify
    from .encoders import draw_rand_maps
    from .input_sets import digital_linf_set

    if int(draws) != draws or draws < 1:
        raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
    image = np.asarray(image, dtype=np.float64)
    certified = correct = 0
    for start in range(0, draws, batch):
        count = min(batch, draws - start)
        images = np.broadcast_to(image, (count,) + image.shape).copy()
        rand_maps = draw_rand_maps(rng, horizon, images.shape)
        box = digital_linf_set(images, eps, rand_maps, convention=convention)
        labels = np.full(count, int(label))
        certified += int(certify(net, box.x_lower, box.x_upper, labels, method=method).sum())
        correct += int((net.predict(box.x_clean) == label).sum())
    return EncoderCertificate(int(draws), certified, float(alpha), clopper_pearson_lower(certified, draws, alpha),
                              correct)


__all__ = ["clopper_pearson_lower", "binomial_upper_tail", "certify_encoder", "EncoderCertificate",
           "DEFAULT_ALPHA"]
