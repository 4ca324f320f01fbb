"""Common attack API: ``attack = SomeAttack(net, eps=..., kind=...); result = attack(x, y, rand_maps=...)``.

Every attack is untargeted and white-box, stops per sample as soon as the sample is misclassified
(judged by ``net.predict``, ties to the lowest class index, on the *evaluation* spikes), and returns
an :class:`AttackResult`.

Digital inputs (``kind="digital"``): ``x`` are images ``[B, *input_shape]`` in [0, 1] and
``rand_maps [T, B, *input_shape]`` the evaluation rand maps (eq. 13: ``s_t = 1[x > r_t]``); the
clean error and the attack's success are judged on those very maps, the set that the bounds
certify. Attacks may take gradients on other draws (the paper's attack resamples each iteration,
EOT averages over draws), but success always refers to the evaluation maps;
:func:`refsnn.attacks.fresh_error` re-evaluates the adversarial images on fresh draws.

Spike inputs (``kind="spike"``): ``x`` are spikes ``[T, B, *input_shape]`` of 0/1 and
``rand_maps`` must be ``None``.

Samples that are misclassified before the attack are not attacked (their adversarial input is the
clean one), so at ``eps = 0`` the attack error equals the clean error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from ..encoders import check_images, draw_rand_maps
from ..network import SNN, validate_spikes
from ..kernels import frozen_weights
from ..threads import scoped_threads
from .constraints import DigitalBox, SpikeBudget, check_convention, check_eps, encode, l0_changes, linf_radius
from .gradients import GradientRule, LOSSES

KINDS = ("digital", "spike")
# Threads of OpenBLAS and Numba while an attack or its re-scoring runs (``Attack.threads``): the
# same count in a serial run and in single-threaded Dask workers, so both compute the same bits.
# Read when an attack runs (``resolve_threads``); ``None``: the process's own counts.
ATTACK_THREADS: Optional[int] = 1
# The value of ``Attack.threads`` and of ``fresh_error(threads=)`` that means ``ATTACK_THREADS``.
DEFAULT_THREADS = "default"
Seed = Union[int, Sequence[int], None]
Threads = Union[int, None, str]


def resolve_threads(threads: Threads) -> Optional[int]:
    """The thread count an attack computes at: ``ATTACK_THREADS`` as it is now for
    ``DEFAULT_THREADS``, else ``threads`` (``None``: the process's own counts, left unchanged)."""
    return ATTACK_THREADS if isinstance(threads, str) and threads == DEFAULT_THREADS else threads


@dataclass
class AttackResult:
    """Outcome of one attack on a batch.

    ``x_adv``: adversarial images ``[B, *shape]`` (digital) or spikes ``[T, B, *in]`` (spike);
    ``spikes_adv``: the adversarial spikes on the evaluation maps ``[T, B, *in]`` (uint8);
    ``rand_maps``: the evaluation maps (digital) or ``None``; ``labels``, ``clean_pred``,
    ``adv_pred`` ``[B]``; ``iterations [B]``: gradient iterations spent on each sample;
    ``config``: the attack's settings (name, eps, convention, radius or l0 budget, rule, ...).
    """

    kind: str
    x_adv: np.ndarray
    spikes_adv: np.ndarray
    rand_maps: Optional[np.ndarray]
    labels: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray
    iterations: np.ndarray
    config: dict = field(default_factory=dict)

    @property
    def clean_wrong(self) -> np.ndarray:
        return self.clean_pred != self.labels

    @property
    def adv_wrong(self) -> np.ndarray:
        return self.adv_pred != self.labels

    @property
    def success(self) -> np.ndarray:
        """Correct before the attack, misclassified after it ``[B]``."""
        return self.adv_wrong & ~self.clean_wrong

    @property
    def clean_error(self) -> float:
        return float(self.clean_wrong.mean())

    @property
    def error(self) -> float:
        """Attack error: fraction misclassified after the attack (clean errors included)."""
        return float(self.adv_wrong.mean())

    def summary(self) -> dict:
        return {"n": int(self.labels.size), "clean_error": self.clean_error, "attack_error": self.error,
                "success_rate_on_correct": float(self.success.sum() / max(1, (~self.clean_wrong).sum())),
                "mean_iterations": float(self.iterations.mean()) if self.iterations.size else 0.0,
                **{k: v for k, v in self.config.items() if k in ("attack", "eps", "convention", "radius")}}


class Attack:
    """Base class. Subclasses implement ``_digital`` and/or ``_spike``.

    Common parameters: ``eps`` (threat-model size, see :mod:`refsnn.attacks.constraints`),
    ``kind`` (``"digital"`` or ``"spike"``), ``convention`` (digital radius: ``"paper"`` eps/2,
    ``"authors"`` eps), ``steps`` (iterations per restart), ``gradient`` (a
    :class:`GradientRule`), ``loss`` (``"ce"`` or ``"margin"``) and ``loss_scale``, ``seed``
    (every call restarts from it, so a call is reproducible), ``T`` (time steps of rand maps drawn
    when ``rand_maps`` is not given).
    """

    name = "attack"
    # Threads of NumPy's OpenBLAS and Numba's parallel loops while the attack runs: DEFAULT_THREADS
    # (``ATTACK_THREADS`` read at the call), a count, or None (the process's own counts: the way to
    # keep a user's ``set_num_threads``; ``Attack.threads = None`` for every attack, components of
    # ``Strongest`` included). An attack makes thousands of small calls (GEMMs of at most time x batch =
    # 1000 rows, many of them [N, 256] x [256, 10]; LIF loops of one layer); at two threads each
    # call waits until both are scheduled, which on a shared machine cost far more than the second
    # core gave: MNIST FC `strongest` on 100 samples 63 s at 2 threads, 17 s at 1 (2 cores, load 7;
    # docs/ATTACKS.md, "Speed"). Both cores are used by attack tasks side by side
    # (``run_protocol(..., scheduler=...)``, one thread per worker: the same count, the same bits).
    threads: Threads = DEFAULT_THREADS

    def __init__(self, net: SNN, eps: float, kind: str = "digital", convention: str = "paper",
                 steps: int = 25, gradient: Optional[GradientRule] = None, loss: str = "ce",
                 loss_scale: float = 1.0, seed: Seed = 0, T: int = 10):
        if not isinstance(net, SNN):
            raise TypeError(f"net must be a refsnn SNN, got {type(net).__name__}")
        if kind not in KINDS:
            raise ValueError(f"kind must be 'digital' (images, rate coded) or 'spike' (event data), got {kind!r}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if int(steps) < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.net = net
        self.eps = check_eps(eps)
        self.kind = kind
        self.convention = check_convention(convention)
        self.steps = int(steps)
        self.gradient = gradient if gradient is not None else GradientRule()
        self.loss = loss
        self.loss_scale = float(loss_scale)
        self.seed = seed
        self.T = int(T)

    # --- public --------------------------------------------------------------------------------
    def config(self) -> dict:
        config = {"attack": self.name, "kind": self.kind, "eps": self.eps, "steps": self.steps,
                  "gradient": self.gradient.config(), "loss": self.loss, "loss_scale": self.loss_scale,
                  "seed": self.seed if not isinstance(self.seed, (tuple, list)) else list(self.seed),
                  "threads": resolve_threads(self.threads)}
        if self.kind == "digital":
            config.update(convention=self.convention, radius=linf_radius(self.eps, self.convention),
                          success_judged_on="evaluation rand maps")
        return config

    def __call__(self, x, y, rand_maps=None, allowed=None) -> AttackResult:
        """Attacks ``x`` (images or spikes, see the module docstring) with labels ``y [B]``.

        ``rand_maps``: evaluation maps ``[T, B, *in]`` of digital inputs (drawn from ``seed`` when
        omitted). ``allowed``: spike inputs only, bool ``[T, B, *in]`` of the bits that may flip.
        """
        with scoped_threads(resolve_threads(self.threads)), frozen_weights():  # an attack never changes the network
            return self._attack(x, y, rand_maps, allowed)

    def _attack(self, x, y, rand_maps, allowed) -> AttackResult:
        labels = self._check_labels(y)
        rng = np.random.default_rng(self.seed)
        if self.kind == "digital":
            if allowed is not None:
                raise ValueError("allowed masks apply to spike inputs; digital attacks are confined by eps")
            images, rand_maps = self._check_digital(x, labels, rand_maps, rng)
            clean_spikes = encode(images, rand_maps)
            clean_pred = self.net.predict(clean_spikes)
            box = DigitalBox.around(images, self.eps, self.convention)
            x_adv, iterations, config = self._digital(images, labels, rand_maps, box, clean_pred == labels, rng)
            if not box.contains(x_adv).all():
                raise AssertionError(f"{self.name}: adversarial image outside the l-inf box; this is a bug")
            spikes_adv = encode(x_adv, rand_maps)
        else:
            spikes = self._check_spikes(x, labels, rand_maps)
            clean_pred = self.net.predict(spikes)
            allowed = self._check_allowed(allowed, spikes)
            budget = SpikeBudget.for_network(self.net, spikes.shape[0], self.eps)
            x_adv, iterations, config = self._spike(spikes, labels, budget, clean_pred == labels, rng, allowed)
            if (l0_changes(x_adv, spikes) > budget.total).any():
                raise AssertionError(f"{self.name}: l0 budget exceeded; this is a bug")
            if allowed is not None and (x_adv != spikes)[~allowed].any():
                raise AssertionError(f"{self.name}: flipped a bit outside the allowed mask; this is a bug")
            spikes_adv = x_adv
        adv_pred = self.net.predict(spikes_adv)
        full_config = self.config()
        full_config.update(config or {})
        return AttackResult(self.kind, x_adv, spikes_adv, rand_maps if self.kind == "digital" else None,
                            labels, clean_pred, adv_pred, iterations, full_config)

    # --- subclass hooks ----------------------------------------------------------------------------
    def _digital(self, images, labels, rand_maps, box: DigitalBox, active, rng):
        """Returns ``(x_adv [B, *shape], iterations [B], extra config)``."""
        raise NotImplementedError(f"{self.name} does not support digital inputs")

    def _spike(self, spikes, labels, budget: SpikeBudget, active, rng, allowed=None):
        """Returns ``(spikes_adv [T, B, *in] uint8, iterations [B], extra config)``."""
        raise NotImplementedError(f"{self.name} does not support spike inputs")

    # --- helpers -----------------------------------------------------------------------------------
    def _check(self, spikes, labels):
        """``(misclassified [b], trace)``: ``net.predict`` of 0/1 ``spikes`` and the pass it read."""
        trace = self.net.run(spikes, validate=False)
        return np.argmax(trace.rates, axis=1) != labels, trace

    def _check_labels(self, y) -> np.ndarray:
        labels = np.asarray(y)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a 1-D integer array [B], got shape {labels.shape} dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.net.n_outputs):
            raise ValueError(f"labels must lie in 0..{self.net.n_outputs - 1}")
        return labels.astype(np.int64)

    def _check_digital(self, x, labels, rand_maps, rng):
        images = check_images(x)
        if tuple(images.shape[1:]) != tuple(self.net.input_shape):
            raise ValueError(f"images have per-sample shape {images.shape[1:]} but the network expects "
                             f"{self.net.input_shape}; digital attacks take images [B, *input_shape]")
        if images.shape[0] != labels.size:
            raise ValueError(f"{images.shape[0]} images but {labels.size} labels")
        if rand_maps is None:
            rand_maps = draw_rand_maps(rng, self.T, images.shape)
        rand_maps = np.asarray(rand_maps, dtype=np.float64)
        if rand_maps.ndim != images.ndim + 1 or rand_maps.shape[1:] != images.shape:
            raise ValueError(f"rand_maps must be [T, *images.shape] = [T, {', '.join(map(str, images.shape))}], "
                             f"got {rand_maps.shape}")
        return images, rand_maps

    def _check_allowed(self, allowed, spikes):
        if allowed is None:
            return None
        allowed = np.asarray(allowed)
        if allowed.shape != spikes.shape:
            raise ValueError(f"allowed must have the shape of the spikes {spikes.shape}, got {allowed.shape}")
        if allowed.dtype != bool:
            if not np.all((allowed == 0) | (allowed == 1)):
                raise ValueError("allowed must be a boolean (or 0/1) mask of the bits that may flip")
            allowed = allowed.astype(bool)
        return allowed

    def _check_spikes(self, x, labels, rand_maps):
        if rand_maps is not None:
            raise ValueError("rand_maps only apply to digital inputs; spike attacks take spikes [T, B, *in]")
        spikes = validate_spikes(x, self.net.input_shape, "spikes").astype(np.uint8)
        if spikes.shape[1] != labels.size:
            raise ValueError(f"{spikes.shape[1]} spike trains but {labels.size} labels")
        return spikes


def take(state: np.ndarray, index, batch_axis: int) -> np.ndarray:
    return state[index] if batch_axis == 0 else state[:, index]


def put(target: np.ndarray, index, values: np.ndarray, batch_axis: int) -> None:
    if batch_axis == 0:
        target[index] = values
    else:
        target[:, index] = values


def search_with_restarts(start: np.ndarray, batch_axis: int, active: np.ndarray, restarts: int, steps: int,
                         init, update, evaluate):
    """Iterative search with random restarts, per-sample early stop and best-iterate tracking.

    ``start``: the clean inputs (batch on ``batch_axis``); ``init(index, restart)`` -> first
    iterate of the samples ``index``; ``update(state, index, it)`` -> next iterate;
    ``evaluate(state, index)`` -> ``(loss [b], misclassified [b])`` on the evaluation input.
    Returns ``(best [same shape as start], iterations [B])``: a sample's first misclassified iterate,
    or its highest-loss iterate when none was found (the clean input if nothing beat it).
    """
    batch = start.shape[batch_axis]
    best = start.copy()
    best_loss = np.full(batch, -np.inf)
    broken = np.zeros(batch, dtype=bool)
    iterations = np.zeros(batch, dtype=np.int64)
    candidates = np.flatnonzero(active)

    def record(state, index):
        loss, wrong = evaluate(state, index)
        better = wrong | (loss > best_loss[index])
        put(best, index[better], take(state, better, batch_axis), batch_axis)
        best_loss[index] = np.where(better, loss, best_loss[index])
        broken[index] |= wrong
        return ~wrong

    for restart in range(restarts):
        todo = candidates[~broken[candidates]]
        if todo.size == 0:
            break
        state = init(todo, restart)
        keep = record(state, todo)
        todo, state = todo[keep], take(state, keep, batch_axis)
        for it in range(steps):
            if todo.size == 0:
                break
            state = update(state, todo, it)
            iterations[todo] += 1
            keep = record(state, todo)
            todo, state = todo[keep], take(state, keep, batch_axis)
    return best, iterations
