"""Robust training with S-IBP / S-CROWN margin lower bounds: the recipe.

The loss of one batch (Zhang et al. 2020, CROWN-IBP, adapted to SNNs as the paper describes)::

    lb      = beta * LB_crown(C f) + (1 - beta) * LB_ibp(C f)       C rows: e_y - e_j, all j
    logits  = -temperature * lb           (0 for the true class, whose row of C is zero)
    loss    = kappa * CE(natural) + (1 - kappa) * CE(logits, y)

with kappa, beta and eps ramped over the epochs (``RobustOptions``, ``ramp_progress``,
``schedule_values``). The bounds and their gradients are the training bound graph
(``refsnn.bound_graph.BoundGraph``): the stage operator of the certified bounds run under the
``exact`` precision policy. Every certified number (``certified_errors``) is recomputed with
``refsnn.bounds.compute_bounds`` under the ``sound`` policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .bound_graph import BoundGraph, Choices
from .input_sets import DEFAULT_ROBUST_T
from .losses import softmax_cross_entropy
from .spec import margin_spec, other_classes


# --- the loss --------------------------------------------------------------------------------------

@dataclass
class RobustLoss:
    """Value and gradients of the robust loss of one batch (see the module docstring)."""

    loss: float
    natural_loss: float
    robust_loss: float
    grads: List[np.ndarray]
    rates: np.ndarray
    margin_lower: np.ndarray  # mixed lower bounds of f_y - f_j, [B, n_out - 1] (rows of margin_spec)
    robust_error: float       # fraction of the batch with some mixed margin bound <= 0 (j != y)
    graph: Optional["BoundGraph"] = None  # the bound computation (its choices freeze a re-run)


def robust_loss(net, spikes: np.ndarray, labels: np.ndarray, x_lower: np.ndarray, x_upper: np.ndarray,
                kappa: float, beta: float, temperature: float, natural_loss_fn=None,
                smooth: bool = False, choices: Optional[Choices] = None) -> RobustLoss:
    """``kappa * natural(spikes) + (1 - kappa) * CE(-temperature * (beta LB_crown + (1-beta) LB_ibp))``.

    ``spikes [T, B, *in]``: the clean sample (inference horizon T); ``x_lower/x_upper
    [T', B, *in]``: the bound set (training horizon T'). ``natural_loss_fn(rates, labels) ->
    (loss, grad)``; defaults to softmax cross-entropy on the rates.
    """
    if not 0.0 <= kappa <= 1.0 or not 0.0 <= beta <= 1.0:
        raise ValueError(f"kappa and beta must lie in [0, 1], got kappa={kappa}, beta={beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    labels = np.asarray(labels)
    natural_loss_fn = natural_loss_fn or softmax_cross_entropy
    trace = net.run(spikes, smooth=smooth, validate=False)
    rates = trace.rates
    natural_value, grad_rates = natural_loss_fn(rates, labels)
    grads = [np.zeros_like(p) for p in net.params()]
    if kappa > 0.0:
        natural_grads, _ = net.backward(trace, grad_rates, input_grad=False)
        grads = [g + kappa * ng for g, ng in zip(grads, natural_grads)]
    n_out = net.n_outputs
    C = margin_spec(labels, n_out).astype(net.dtype)  # rows e_y - e_j, j != y
    graph = BoundGraph(net, x_lower, x_upper, C, smooth=smooth, choices=choices, with_crown=beta > 0.0)
    lower = (1.0 - beta) * graph.ibp_lower
    if beta > 0.0:
        lower = lower + beta * graph.crown_lower
    rows = np.arange(len(labels))[:, None]
    others = other_classes(labels, n_out)
    logits = np.zeros((len(labels), n_out), dtype=lower.dtype)  # the true class's margin is 0
    logits[rows, others] = -temperature * lower
    robust_value, grad_logits = softmax_cross_entropy(logits, labels)
    robust_weight = 1.0 - kappa
    if robust_weight > 0.0:
        grad_lower = -temperature * robust_weight * grad_logits[rows, others]
        bound_grads = graph.backward(grad_ibp=(1.0 - beta) * grad_lower,
                                     grad_crown=beta * grad_lower if beta > 0.0 else None)
        grads = [g + bg for g, bg in zip(grads, bound_grads)]
    robust_error = float(np.mean(np.any(lower <= 0.0, axis=1)))
    total = kappa * natural_value + robust_weight * robust_value
    return RobustLoss(float(total), float(natural_value), float(robust_value), grads, rates, lower, robust_error,
                      graph)


# --- the training method: schedules, options, per-epoch certified error ------------------------------

# Final eps per (dataset, arch): the header of the paper's Table 2.
DEFAULT_EPS = {("mnist", "fc"): 0.12, ("mnist", "conv"): 0.12, ("fmnist", "fc"): 0.01,
               ("fmnist", "conv"): 0.005, ("nmnist", "fc"): 0.005, ("nmnist", "conv"): 0.005,
               ("mnist-subset", "fc"): 0.12, ("mnist-subset", "conv"): 0.12}
RECIPES = ("crown-ibp", "authors")


@dataclass
class RobustOptions:
    """Settings of ``--method robust`` (``TrainConfig.method_options``).

    ``recipe``: ``crown-ibp`` (kappa and beta ramped with eps, Zhang et al. 2020) or ``authors``
    (the released certify_snn script: fixed ``0.4 CE_natural + 0.6 CE(-lb)``, S-CROWN only, eps
    raised in 3 steps per epoch; pair it with ``--preset robust-authors`` for its optimizer).
    ``eps``: final radius (default: the paper's Table 2 value for the dataset and arch).
    ``ramp_epochs``: epochs over which eps grows linearly from 0 (default: 250/300 of the run,
    the paper's schedule); afterwards eps stays final. ``robust_T``: horizon T' of the bound set
    (the first T' rand maps / frames of the batch). ``temperature``: robust logits are
    ``-temperature * lb`` (rates live in [0, 1], so margins are small). ``input_set``:
    ``digital`` (l-inf through the rand maps, ``convention`` paper: +-eps/2, authors: +-eps) or
    ``spike`` (l0, ``l0_mode`` paper: round(size*eps) positions per step, authors: each bit with
    probability eps); default digital for images, spike for N-MNIST. ``eval_n``: test samples
    whose certified error is computed after every epoch (sound float64 bounds), ``eval_T``:
    their horizon (default ``robust_T``).
    """

    recipe: str = "crown-ibp"
    eps: Optional[float] = None
    ramp_epochs: Optional[float] = None
    robust_T: int = DEFAULT_ROBUST_T
    kappa_start: float = 1.0
    kappa_end: float = 0.0
    beta_start: float = 1.0
    beta_end: float = 0.0
    temperature: float = 1.0
    input_set: Optional[str] = None
    convention: str = "paper"
    l0_mode: str = "paper"
    eval_n: int = 500
    eval_T: Optional[int] = None
    eval_seed: int = 1234


def robust_options(values: Dict[str, Any], dataset: str = "mnist", arch: str = "fc", epochs: int = 300
                   ) -> RobustOptions:
    """Validates ``method_options`` and fills the dataset/arch/recipe defaults."""
    known = set(RobustOptions.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown robust training options {unknown}; valid: {sorted(known)}")
    recipe = values.get("recipe", "crown-ibp")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    defaults: Dict[str, Any] = {}
    if recipe == "authors":
        defaults = dict(kappa_start=0.4, kappa_end=0.4, beta_start=1.0, beta_end=1.0, temperature=1.0,
                        convention="authors", l0_mode="authors", eval_T=10)
    options = RobustOptions(**{**defaults, **values})
    if options.eps is None:
        options.eps = DEFAULT_EPS.get((dataset, arch), 0.12)
    if options.ramp_epochs is None:
        options.ramp_epochs = max(1.0, epochs * 250.0 / 300.0)
    if options.input_set is None:
        options.input_set = "spike" if dataset == "nmnist" else "digital"
    if options.eval_T is None:
        options.eval_T = options.robust_T
    checks = [(options.eps >= 0, "eps must be >= 0"), (options.ramp_epochs > 0, "ramp_epochs must be > 0"),
              (isinstance(options.robust_T, int) and options.robust_T >= 1, "robust_T must be an integer >= 1"),
              (options.temperature > 0, "temperature must be > 0"),
              (options.input_set in ("digital", "spike"), "input_set must be 'digital' or 'spike'"),
              (options.input_set == "spike" or dataset != "nmnist", "N-MNIST inputs are spikes: input_set='spike'"),
              (options.eval_n >= 0, "eval_n must be >= 0")]
    for name in ("kappa_start", "kappa_end", "beta_start", "beta_end"):
        checks.append((0.0 <= getattr(options, name) <= 1.0, f"{name} must lie in [0, 1]"))
    for ok, message in checks:
        if not ok:
            raise ValueError(f"robust training: {message} (got {options})")
    return options


def ramp_progress(options: RobustOptions, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Fraction of the eps ramp done at this step, in [0, 1].

    crown-ibp: linear per step. authors: eps rises in 3 equal steps per epoch (the first one at
    the start of epoch 0), as the released script.
    """
    if options.recipe == "authors":
        stage = epoch * 3 + (3 * step) // steps_per_epoch + 1
        return min(1.0, stage / (3.0 * options.ramp_epochs))
    return min(1.0, (epoch + step / steps_per_epoch) / options.ramp_epochs)


def schedule_values(options: RobustOptions, progress: float) -> Tuple[float, float, float]:
    """``(eps, kappa, beta)`` at a ramp progress in [0, 1]."""
    eps = options.eps * progress
    kappa = options.kappa_start + (options.kappa_end - options.kappa_start) * progress
    beta = options.beta_start + (options.beta_end - options.beta_start) * progress
    return eps, kappa, beta


def bound_set(net, options: RobustOptions, eps: float, spikes: np.ndarray, images: Optional[np.ndarray],
              rand_maps: Optional[np.ndarray], rng: np.random.Generator, steps: int):
    """The training/evaluation box ``(x_lower, x_upper)`` ``[T', B, *in]`` for one batch."""
    from .input_sets import digital_linf_set, spike_l0_set
    if options.input_set == "digital":
        if images is None or rand_maps is None:
            raise ValueError("digital bound sets need the images and their rand maps")
        if rand_maps.shape[0] < steps:
            raise ValueError(f"the batch has {rand_maps.shape[0]} rand maps, the bound set needs T' = {steps}")
        box = digital_linf_set(images, eps, rand_maps[:steps], convention=options.convention)
    else:
        if spikes.shape[0] < steps:
            raise ValueError(f"the batch has {spikes.shape[0]} frames, the bound set needs T' = {steps}")
        box = spike_l0_set(spikes[:steps], eps, rng, mode=options.l0_mode)
    return box.x_lower, box.x_upper


def robust_step(net, batch, ctx) -> Tuple[float, List[np.ndarray], np.ndarray, Dict[str, float]]:
    """One robust-training batch (``--method robust`` of ``refsnn.train``): ``(loss, grads, rates, metrics)``."""
    from .losses import make_loss
    options: RobustOptions = ctx.options
    progress = ramp_progress(options, ctx.epoch, ctx.step, ctx.steps_per_epoch)
    eps, kappa, beta = schedule_values(options, progress)
    x_lower, x_upper = bound_set(net, options, eps, batch.spikes, batch.images, batch.rand_maps, ctx.rng,
                                 options.robust_T)
    result = robust_loss(net, batch.spikes, batch.labels, x_lower, x_upper, kappa, beta, options.temperature,
                         natural_loss_fn=make_loss(ctx.config.loss, ctx.config.loss_scale))
    metrics = {"natural_loss": result.natural_loss, "robust_loss": result.robust_loss,
               "bound_robust_error": result.robust_error, "eps": eps, "kappa": kappa, "beta": beta}
    return result.loss, result.grads, result.rates, metrics


def certified_errors(net, x, labels, options: RobustOptions, eps: float, T: int) -> Dict[str, float]:
    """Sound certified robust errors (S-IBP, S-CROWN, best) of ``net`` on test data at ``eps``.

    ``x``: images ``[N, *in]`` (digital) or frames ``[N, T, *in]`` (spikes). A sample counts as an
    error when some margin lower bound is ``<= 0`` (a bound of 0 is a tie, not robust). The rand
    maps / l0 positions come from ``options.eval_seed``, the same for every epoch.
    """
    from .bounds import compute_bounds
    from .encoders import rate_encode
    rng = np.random.default_rng(options.eval_seed)
    labels = np.asarray(labels)
    if options.input_set == "digital":
        spikes, rand_maps = rate_encode(x, max(T, options.eval_T), rng)
        images = x
    else:
        spikes, rand_maps, images = np.ascontiguousarray(np.swapaxes(x, 0, 1)), None, None
    x_lower, x_upper = bound_set(net, options, eps, spikes, images, rand_maps, rng, options.eval_T)
    C = margin_spec(labels, net.n_outputs)
    errors = {}
    for method in ("ibp", "crown-ibp", "best"):
        lower, _ = compute_bounds(net, x_lower, x_upper, method=method, C=C)
        errors[method] = float(np.mean(np.any(lower <= 0.0, axis=1)))
    return errors


def robust_epoch_metrics(trainer) -> Dict[str, float]:
    """Certified errors on the first ``eval_n`` test samples at the current and the final eps."""
    options: RobustOptions = trainer.options
    if options.eval_n == 0:
        return {}
    steps_per_epoch = trainer.steps_per_epoch
    progress = ramp_progress(options, trainer.epoch, steps_per_epoch, steps_per_epoch)
    eps_now, kappa, beta = schedule_values(options, progress)
    n = min(options.eval_n, len(trainer.y_test))
    x, y = trainer.x_test[:n], trainer.y_test[:n]
    metrics: Dict[str, float] = {"eps": eps_now, "kappa": kappa, "beta": beta, "cert_n": n}
    for label, eps in (("now", eps_now), ("final", options.eps)):
        for method, error in certified_errors(trainer.net, x, y, options, eps, trainer.config.T).items():
            metrics[f"cert_error_{method}_{label}"] = error
    return metrics
