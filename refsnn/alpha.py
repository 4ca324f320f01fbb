"""Optimized S-CROWN (``method="alpha"``): per-neuron, per-time-step relaxation parameters chosen by
projected gradient ascent on the bound, in the spirit of alpha-CROWN.

Sound families (every member is sound for every parameter value in its range):

``Fire`` (eq. 8 is one endpoint of each range). An unstable neuron (``m_l < th <= m_u``) obeys
    lower line  ``s >= lam (m - th_hi)``        for every ``lam`` in ``[0, 1 / (m_u - th_hi)]``;
    upper line  ``s <= 1 + mu (m - th_lo)``     for every ``mu``  in ``[0, 1 / (th_lo - m_l)]``.
    (Silent means ``m <= th_hi``, so the lower line is ``<= 0``; it is ``<= 1`` up to ``m_u``. Firing
    means ``m >= th_lo``, so the upper line is ``>= 1``; it is ``>= 0`` down to ``m_l``.) The paper's
    chords are ``lam = 1/(m_u - th)`` with ``mu = 0`` (``m_u - th >= th - m_l``) or ``lam = 0`` with
    ``mu = 1/(th - m_l)``. Parameters are stored as fractions ``f_lower, f_upper`` in ``[0, 1]``
    of the largest slope (times ``1 - 16 u`` so that the float slope never exceeds the real one).
``Reset`` ``z = m (1 - s)`` of an unstable neuron: convex combinations of two sound lines each,
    lower  ``z >= b (m - m_u s) + (1 - b) (1 - s) m_l``,
    upper  ``z <= b (m - th_lo s) + (1 - b) (1 - s) th_hi``,   ``b`` in ``[0, 1]``.
    (``s = 0``: ``z = m`` in ``[m_l, th_hi]``; ``s = 1``: ``z = 0`` and ``th_lo <= m <= m_u``.)
    ``b = 0`` is the paper's eq. 10.

The back-substitution (Alg. 2, eqs. 15-18) is the one of ``refsnn.crown``: the same stage driver
(``refsnn.crown.backsub_stages``) and the same step (``refsnn.operator.backsub_step``) with its
``PARAMS`` flag, which reads per-row parameters ``[T', B, R, n]`` (R = specification rows; both
bounds of ``C f`` run as ``2 S`` rows) instead of the paper's fixed lines. Its reverse pass (the
gradient of the lower bound w.r.t. every parameter) is the operator's one reverse
(``backsub_reverse``, the one robust training runs); ``tests/test_alpha.py`` checks it against
central finite differences.

Rounding: as in ``refsnn.crown``, every step accumulates ``gamma * sum |terms|`` of its products
and sums (here also of the rounded reset-line coefficients and the ``beta m`` term) plus ``|lam_m|``
times the network-vs-exact margins of S-IBP, and the sum is subtracted from the lower bound; the output margin of ``refsnn.ibp.output_rounding_margin`` is applied last.
Every iterate of the optimization is such a sound bound; the result is the best one per row,
intersected with S-IBP, the paper's S-CROWN and the trivial range (so ``alpha`` is never looser
than ``best``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .crown import backsub_stages, crown_bounds_of_box, stage_magnitudes
from .ibp import IntervalBounds, PreparedStage, ibp_spec_bounds, interval_bounds_of_box, prepare_stages
from .input_sets import BinaryBox, binary_box
from .operator import NeuronModelError, SplitTerms, StepTables, backsub_stage_reverse
from .relaxations import UNIT_ROUNDOFF_FLOAT64, UNSTABLE, Fire, Reset, gamma, output_rounding_margin
from .spec import best_bounds, normalize_spec

U64 = UNIT_ROUNDOFF_FLOAT64
SLOPE_SAFETY = 1.0 - 16.0 * U64
PARAM_NAMES = ("fire_lower", "fire_upper", "reset_lower", "reset_upper")


# --- per-stage tables ------------------------------------------------------------------------------

@dataclass
class StageTables(StepTables):
    """``refsnn.operator.StepTables`` of one stage in the optimized-slope form, flat ``[T', B, n]``:
    ``slope_lo``/``slope_up`` are the largest sound fire slopes ``lam_max``/``mu_max`` (0 where the
    neuron is stable or the denominator is not positive), ``reset_far_lo`` is ``m_u``;
    ``default_lower/upper``: the paper's choice as fractions (0/1); ``mem_lower``: ``m_l``."""

    default_lower: Optional[np.ndarray] = None
    default_upper: Optional[np.ndarray] = None
    mem_lower: Optional[np.ndarray] = None

    def select_sample(self, b: int) -> "StageTables":
        """The tables of sample ``b`` alone (``[T', 1, n]``)."""
        pick = lambda value: np.ascontiguousarray(value[:, b:b + 1])  # noqa: E731
        rounding = tuple(pick(v) for v in self.rounding[:3]) + (self.rounding[3],)
        return StageTables(pick(self.state), pick(self.slope_lo), pick(self.icpt_lo), pick(self.slope_up),
                           pick(self.icpt_up), pick(self.reset_lo), pick(self.reset_hi), self.alpha, self.bias,
                           rounding, pick(self.reset_far_lo), self.th_lo, self.th_hi, pick(self.default_lower),
                           pick(self.default_upper), pick(self.mem_lower))


def stage_tables(bounds: IntervalBounds, k: int, stage: PreparedStage, steps: Optional[int] = None) -> StageTables:
    """Tables of stage ``k`` from (possibly refined) intermediate bounds, first ``steps`` steps.
    The line families are the paper's LIF's (``reset="zero"``); other neuron models are refused."""
    if bounds.reset != "zero":
        raise NeuronModelError(f"reset={bounds.reset!r}: optimized slopes, full S-CROWN and any-k S-CROWN are "
                               "defined for the paper's LIF (reset='zero') only; use method 'ibp', 'crown-ibp', "
                               "'crown-ibp-paper' or 'best'")
    steps = bounds.steps if steps is None else steps
    n = stage.n_neurons
    rule = bounds.rule
    flat = (bounds.steps, bounds.batch, n)
    c = np.ascontiguousarray
    mem_lower = c(bounds.mem_lower[k].reshape(flat)[:steps])
    mem_upper = c(bounds.mem_upper[k].reshape(flat)[:steps])
    state = c(bounds.state[k].reshape(flat)[:steps])
    slope_lo, _, slope_up, _ = Fire.relaxation(mem_lower, mem_upper, state, bounds.threshold, rule)
    reset_lo, reset_hi = Reset.relaxation(mem_lower, state, rule)
    unstable = state == UNSTABLE
    lower_denom = mem_upper - rule.th_hi
    upper_denom = rule.th_lo - mem_lower
    ok_lower = unstable & (lower_denom > 0.0)
    ok_upper = unstable & (upper_denom > 0.0)
    lam_max = np.where(ok_lower, SLOPE_SAFETY / np.where(ok_lower, lower_denom, 1.0), 0.0)
    mu_max = np.where(ok_upper, SLOPE_SAFETY / np.where(ok_upper, upper_denom, 1.0), 0.0)
    mem_mag, carry_mag, fwd_scale = stage_magnitudes(bounds, k, stage, steps)
    unused = np.zeros(state.shape)
    rounding = (c(mem_mag), c(carry_mag), c(fwd_scale), gamma(4 * n * steps + 32, U64))
    return StageTables(state, c(lam_max), unused, c(mu_max), unused, c(reset_lo), c(reset_hi), float(bounds.decay),
                       c(stage.bias), rounding, mem_upper, rule.th_lo, rule.th_hi,
                       default_lower=(slope_lo > 0.0).astype(np.float64),
                       default_upper=(slope_up > 0.0).astype(np.float64), mem_lower=mem_lower)


def linear_chain(stage: PreparedStage, x: np.ndarray) -> np.ndarray:
    """The stage's linear part without bias: ``[N, *stage.input_shape] -> [N, n]`` (adjoint of ``transpose``)."""
    value = x
    for op in stage.ops:
        value = op.linear(value)
    return value.reshape(value.shape[0], -1)


# --- concretization at the input ---------------------------------------------------------------------

class BoxConcretizer:
    """``min`` of ``sum_t lam_t . x_t`` over the box ``[x_lower, x_upper]`` (``[T', B, n_in]`` float64)."""

    def __init__(self, x_lower: np.ndarray, x_upper: np.ndarray):
        steps, batch = x_lower.shape[:2]
        self.mid = ((x_lower + x_upper) * 0.5).reshape(steps, batch, -1).astype(np.float64)
        self.rad = ((x_upper - x_lower) * 0.5).reshape(steps, batch, -1).astype(np.float64)

    @classmethod
    def of_box(cls, box: BinaryBox) -> "BoxConcretizer":
        """The concretizer of a binary input box's ``[x_lower, x_upper]``."""
        return cls(box.x_lower.astype(np.float64), box.x_upper.astype(np.float64))

    def truncated(self, steps: int) -> "BoxConcretizer":
        other = BoxConcretizer.__new__(BoxConcretizer)
        other.mid, other.rad = self.mid[:steps], self.rad[:steps]
        return other

    def select(self, index) -> "BoxConcretizer":
        other = BoxConcretizer.__new__(BoxConcretizer)
        other.mid, other.rad = self.mid[:, index], self.rad[:, index]
        return other

    def value(self, lam: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``lam [T', B, R, n_in]`` -> ``(min value [B, R], rounding bound [B, R])``."""
        lam_abs = np.abs(lam)
        at_mid = np.einsum("tbrj,tbj->br", lam, self.mid)
        at_rad = np.einsum("tbrj,tbj->br", lam_abs, self.rad)
        abs_mid = np.einsum("tbrj,tbj->br", lam_abs, self.mid)
        n_terms = lam.shape[0] * lam.shape[-1]
        return at_mid - at_rad, gamma(n_terms + 8, U64) * (abs_mid + at_rad)

    def gradient(self, lam: np.ndarray) -> np.ndarray:
        """d value / d lam ``[T', B, R, n_in]`` (a subgradient where ``lam = 0``)."""
        return self.mid[:, :, None, :] - np.sign(lam) * self.rad[:, :, None, :]


# --- spike splits as Lagrangian terms (beta-CROWN's split constraints) ------------------------------------

@dataclass
class SpikeSplits:
    """The spike splits of each sample (a branch-and-bound node), to enter the bound as Lagrangian terms.

    ``index [E, 4]``: entry ``e`` is spike ``s_t`` of neuron ``j`` of stage ``k`` in sample ``b``
    (``(b, k, t, j)``); ``side [E]``: 1 when every member of the sample's set has ``m >= threshold``
    there (spike on), 0 when every member has ``m <= threshold`` (spike off; the closed side, sound
    under both firing rules). With multipliers ``beta [E, R] >= 0`` (per spec row) the bound is of
    ``spec f - sum_e beta[e] (m - th)`` (on) or ``+ beta[e] (m - th)`` (off): the added terms are
    ``<= 0`` on the members, so a lower bound of it is one of ``spec f`` over them, for every ``beta``.
    """

    index: np.ndarray
    side: np.ndarray
    threshold: float

    @classmethod
    def from_fixed(cls, fixed: Sequence[Sequence[tuple]], threshold: float) -> "SpikeSplits":
        """From each sample's tuple of splits ``(stage, t, neuron, value)`` (``verify.bab``'s ``fixed``)."""
        rows = [(b, k, t, j, v) for b, decisions in enumerate(fixed) for k, t, j, v in decisions]
        table = np.array(rows, dtype=np.int64).reshape(-1, 5)
        if not np.isin(table[:, 4], (0, 1)).all():
            raise ValueError("a spike split's value must be 0 or 1")
        return cls(np.ascontiguousarray(table[:, :4]), table[:, 4].astype(np.int8), float(threshold))

    @property
    def count(self) -> int:
        return int(self.index.shape[0])

    def sign(self) -> np.ndarray:
        """``[E]``: the coefficient on ``m`` per unit of ``beta`` (-1 spike on, +1 spike off)."""
        return np.where(self.side == 1, -1.0, 1.0)

    def terms(self, beta: np.ndarray, tables: Sequence[StepTables]) -> List[Optional[SplitTerms]]:
        """Per stage the ``SplitTerms`` of ``beta [E, R]`` (None where the stage has no split)."""
        if beta.shape[0] != self.count or beta.ndim != 2:
            raise ValueError(f"beta must be [E={self.count}, R], got shape {beta.shape}")
        if not (np.isfinite(beta).all() and (beta >= 0.0).all()):
            raise ValueError("split multipliers beta must be finite and >= 0 (a negative one is unsound)")
        b, k, t, j = self.index.T
        values = self.sign()[:, None] * beta
        out: List[Optional[SplitTerms]] = []
        for stage, tab in enumerate(tables):
            here = k == stage
            if not here.any():
                out.append(None)
                continue
            steps, batch, n = tab.state.shape
            coef = np.zeros((steps, batch, beta.shape[1], n))
            np.add.at(coef, (t[here], b[here], slice(None), j[here]), values[here])
            out.append(SplitTerms(coef, self.threshold))
        return out

    def beta_gradient(self, coef_grads: Sequence[Optional[np.ndarray]], rows: int) -> np.ndarray:
        """``[E, R]``: d/d beta from each stage's gradient w.r.t. its ``SplitTerms.coef`` (None: no split)."""
        grad = np.zeros((self.count, rows))
        b, k, t, j = self.index.T
        for stage, g_coef in enumerate(coef_grads):
            here = k == stage
            if here.any():
                grad[here] = g_coef[t[here], b[here], :, j[here]]
        return self.sign()[:, None] * grad


# --- the parametrized back-substitution ----------------------------------------------------------------

def default_params(tables: Sequence[StageTables], rows: int) -> List[Dict[str, np.ndarray]]:
    """The paper's relaxation (eqs. 8, 10) as parameters ``[T', B, R, n]`` per stage."""
    params = []
    for tab in tables:
        shape = tab.state.shape[:2] + (rows,) + tab.state.shape[2:]
        params.append({"fire_lower": np.broadcast_to(tab.default_lower[:, :, None, :], shape).copy(),
                       "fire_upper": np.broadcast_to(tab.default_upper[:, :, None, :], shape).copy(),
                       "reset_lower": np.zeros(shape), "reset_upper": np.zeros(shape)})
    return params


def random_params(tables: Sequence[StageTables], rows: int, rng: np.random.Generator) -> List[Dict[str, np.ndarray]]:
    """Uniform random parameters in their sound ranges, with endpoints (0 and 1) drawn often."""
    params = []
    for tab in tables:
        shape = tab.state.shape[:2] + (rows,) + tab.state.shape[2:]
        entry = {}
        for name in PARAM_NAMES:
            value = rng.random(shape)
            pick = rng.random(shape)
            value = np.where(pick < 0.2, 0.0, np.where(pick > 0.8, 1.0, value))
            entry[name] = value
        params.append(entry)
    return params


@dataclass
class BacksubResult:
    """``value [B, R]``: the float lower bound before rounding terms; ``err [B, R]`` everything to
    subtract for rounding (back-substitution and concretization, not the output margin);
    ``lam_x [T', B, R, *in]`` the coefficients at the input; ``bias [B, R]``; ``params`` the
    parameters used; ``tape`` the ``refsnn.crown.StageRecord`` of every stage (``record=True``)."""

    value: np.ndarray
    err: np.ndarray
    lam_x: np.ndarray
    bias: np.ndarray
    params: List[Dict[str, np.ndarray]] = field(default_factory=list, repr=False)
    tape: Optional[list] = field(default=None, repr=False)
    split_terms: Optional[List[Optional[SplitTerms]]] = field(default=None, repr=False)

    @property
    def sound(self) -> np.ndarray:
        return self.value - self.err


def _row_params(prm: Dict[str, np.ndarray]) -> Tuple[np.ndarray, ...]:
    return tuple(np.ascontiguousarray(prm[name], dtype=np.float64) for name in PARAM_NAMES)


def backsub(stages: Sequence[PreparedStage], tables: Sequence[StageTables], spec: Optional[np.ndarray],
            concretizer, params: Optional[List[Dict[str, np.ndarray]]] = None, record: bool = False,
            inject: Optional[np.ndarray] = None, splits: Optional[SpikeSplits] = None,
            beta: Optional[np.ndarray] = None) -> BacksubResult:
    """Lower bounds of ``spec f`` (``spec [B, R, n_out]``; the output rates over ``T'`` steps), or,
    with ``inject [B, R, n_K]`` and ``spec=None``, of ``inject . m_{T'-1}[K]`` where ``K`` is the last
    stage in ``stages`` (membrane queries of full S-CROWN; ``tables`` truncated to ``T'`` steps).
    ``params``: per stage a dict of ``[T', B, R, n]`` fractions (None: ``default_params``).
    ``splits`` with ``beta [E, R] >= 0``: the splits' Lagrangian terms (``SpikeSplits``); the bound
    then holds for the members whose spikes obey the splits (``tables`` must come from their
    intermediate bounds). Runs the one stage driver ``refsnn.crown.backsub_stages`` with the
    optimized-slope step.
    """
    steps = tables[-1].state.shape[0]
    if inject is None:
        rows = spec.shape[1]
        lam_s = np.ascontiguousarray(np.broadcast_to(spec[None] / steps, (steps,) + spec.shape))
    else:
        rows = inject.shape[1]
        lam_s = np.zeros((steps,) + inject.shape)
        inject = np.ascontiguousarray(inject, dtype=np.float64)
    if params is None:
        params = default_params(tables, rows)
    terms = None
    if splits is not None:
        if beta is None or beta.shape != (splits.count, rows):
            raise ValueError(f"beta must be [E={splits.count}, R={rows}] with splits, got "
                             f"{None if beta is None else beta.shape}")
        terms = splits.terms(beta, tables)
    lam_x, bias, err, tape = backsub_stages(stages, tables, lam_s, record=record,
                                            params=[_row_params(prm) for prm in params], query=inject, splits=terms)
    value, concretization_err = concretizer.value(lam_x)
    err = err * (1.0 + 8.0 * U64) + concretization_err + gamma(8, U64) * np.abs(bias)
    return BacksubResult(value + bias, err, lam_x, bias, params, tape, terms)


def backsub_gradient(stages: Sequence[PreparedStage], tables: Sequence[StageTables], result: BacksubResult,
                     concretizer, weights: Optional[np.ndarray] = None) -> List[Dict[str, np.ndarray]]:
    """Gradient of ``sum weights * result.value`` w.r.t. every parameter (reverse of ``backsub``).

    ``result`` must come from ``backsub(..., record=True)`` with parameters (not an injection).
    The relaxation choices (signs of the coefficients) are held fixed: the gradient of the
    piecewise-smooth bound on the piece of the current parameters. Runs the one reverse,
    ``refsnn.operator.backsub_stage_reverse``, stage by stage from the input. With splits, a stage
    that has some gets ``"split_coef"``: the gradient w.r.t. its ``SplitTerms.coef``
    (``SpikeSplits.beta_gradient`` turns them into the gradient w.r.t. ``beta``).
    """
    steps, batch, rows = result.lam_x.shape[:3]
    scale = np.ones((batch, rows)) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    g_lam = concretizer.gradient(result.lam_x) * scale[None, :, :, None]   # d / d lam on the stage's input
    grads = []
    for k, (stage, tab) in enumerate(zip(stages, tables)):
        n = stage.n_neurons
        g_cur = linear_chain(stage, g_lam.reshape((steps * batch * rows,) + stage.input_shape))
        g_cur = np.ascontiguousarray(g_cur.reshape(steps, batch, rows, n))
        split = None if result.split_terms is None else result.split_terms[k]
        g_lam, row_grads = backsub_stage_reverse(g_cur, result.tape[k].step, tab, tab.mem_lower, scale,
                                                 tab.th_hi, params=_row_params(result.params[k]), split=split)
        grad = dict(zip(PARAM_NAMES, row_grads))
        if split is not None:
            grad["split_coef"] = row_grads[len(PARAM_NAMES)]
        grads.append(grad)
    return grads


# --- optimization ------------------------------------------------------------------------------------

@dataclass
class AlphaResult:
    """``lower/upper [B, S]``: sound bounds of ``C f`` (best iterate, intersected with S-IBP, the
    paper's S-CROWN and the trivial range); ``alpha_lower/alpha_upper``: the optimized S-CROWN bounds
    alone; ``history [iterations + 1]``: mean sound lower bound over all rows per iteration."""

    method: str
    lower: np.ndarray
    upper: np.ndarray
    alpha_lower: np.ndarray
    alpha_upper: np.ndarray
    history: List[float]
    intermediate: IntervalBounds


def _adam_step(value: np.ndarray, grad: np.ndarray, moments: list, it: int, lr: float, low: float,
               high: float) -> np.ndarray:
    """One projected Adam ascent step on ``value`` (``moments``: its first and second moments, updated)."""
    beta1, beta2 = 0.9, 0.999
    m1, m2 = moments
    m1 *= beta1
    m1 += (1 - beta1) * grad
    m2 *= beta2
    m2 += (1 - beta2) * grad ** 2
    step = lr * (m1 / (1 - beta1 ** (it + 1))) / (np.sqrt(m2 / (1 - beta2 ** (it + 1))) + 1e-12)
    return np.clip(value + step, low, high)


def optimize_rows(stages, tables, spec, concretizer, iterations: int = 20, lr: float = 0.25,
                  rng: Optional[np.random.Generator] = None, splits: Optional[SpikeSplits] = None,
                  optimize_params: bool = True, beta_lr: float = 0.05) -> Tuple[np.ndarray, List[float]]:
    """Best sound lower bound ``[B, R]`` of ``spec f`` over ``iterations`` steps of projected Adam
    ascent on the fractions (start: the paper's relaxation; ``optimize_params=False``: held there)
    and, with ``splits``, jointly on their multipliers ``beta >= 0`` (start 0, step ``beta_lr``).
    Each row has its own parameters. With splits the bound holds for the members whose spikes
    obey them (``tables`` from their intermediate bounds)."""
    batch, rows = spec.shape[:2]
    params = default_params(tables, rows)
    moments = [{name: [np.zeros_like(v), np.zeros_like(v)] for name, v in prm.items()} for prm in params]
    beta = None if splits is None else np.zeros((splits.count, rows))
    beta_moments = None if splits is None else [np.zeros_like(beta), np.zeros_like(beta)]
    best = None
    history = []
    for it in range(iterations + 1):
        result = backsub(stages, tables, spec, concretizer, params, record=it < iterations, splits=splits, beta=beta)
        sound = result.sound
        # fmax: a non-finite iterate (never observed) must not replace a sound bound by NaN
        best = sound if best is None else np.fmax(best, sound)
        history.append(float(best.mean()))
        if it == iterations:
            break
        grads = backsub_gradient(stages, tables, result, concretizer)
        if optimize_params:
            for prm, grad, mom in zip(params, grads, moments):
                for name in PARAM_NAMES:
                    prm[name] = _adam_step(prm[name], grad[name], mom[name], it, lr, 0.0, 1.0)
        if splits is not None:
            g_beta = splits.beta_gradient([grad.get("split_coef") for grad in grads], rows)
            if not np.isfinite(g_beta).all():  # keep the best sound iterate rather than step to NaN multipliers
                break
            beta = _adam_step(beta, g_beta, beta_moments, it, beta_lr, 0.0, np.inf)
    return best, history


def split_lower_bounds(stages: Sequence[PreparedStage], bounds: IntervalBounds, C: np.ndarray, concretizer,
                       splits: SpikeSplits, iterations: int = 10, optimize_params: bool = False,
                       lr: float = 0.25, beta_lr: float = 0.05) -> np.ndarray:
    """Sound lower bounds ``[B, S]`` of ``C f`` (``C [B, S, n_out]``) over the members of each sample's
    set (``concretizer``) whose spikes obey ``splits``, with the splits as Lagrangian terms
    (beta-CROWN): ``bounds`` are those members' intermediate bounds (the splits clipped in), the
    multipliers are optimized by ``optimize_rows`` (jointly with the slopes when ``optimize_params``),
    and the result is the best iterate minus the output rounding margin. Lower rows only."""
    tables = [stage_tables(bounds, k, stage) for k, stage in enumerate(stages)]
    best, _ = optimize_rows(stages, tables, C, concretizer, iterations, lr, splits=splits,
                            optimize_params=optimize_params, beta_lr=beta_lr)
    return best - output_rounding_margin(C, bounds.rule, bounds.steps)


def alpha_bounds(net, x_lower, x_upper, C=None, iterations: int = 20, lr: float = 0.25,
                 intermediate: Optional[IntervalBounds] = None, concretizer=None,
                 chunk: int = 32) -> AlphaResult:
    """``method="alpha"``: optimized S-CROWN bounds ``(lower, upper) [B, S]`` of ``C f`` over the box.

    ``x_lower/x_upper [T', B, *in]`` of 0/1; ``C`` ``[B, S, n_out]``, ``[S, n_out]`` or None.
    ``intermediate``: the intermediate bounds to relax around (S-IBP by default; full S-CROWN's
    refined bounds from ``refsnn.crown_full`` work too). ``concretizer``: how the linear form is
    minimized at the input (default: the box; ``refsnn.l0`` passes the any-k-flips ball).
    ``iterations`` Adam steps of size ``lr`` on the fractions; samples in chunks of ``chunk``.
    """
    box = binary_box(x_lower, x_upper, net)
    C = normalize_spec(C, box.x_lower.shape[1], net.n_outputs)
    return alpha_bounds_of_box(net, box, C, prepare_stages(net), iterations, lr, intermediate, concretizer, chunk)


def alpha_bounds_of_box(net, box: BinaryBox, C: np.ndarray, stages: Sequence[PreparedStage], iterations: int = 20,
                        lr: float = 0.25, intermediate: Optional[IntervalBounds] = None, concretizer=None,
                        chunk: int = 32) -> AlphaResult:
    """``alpha_bounds`` of an already validated box, normalized ``C [B, S, n_out]`` and prepared stages."""
    steps, batch = box.x_lower.shape[:2]
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if intermediate is None:
        intermediate = interval_bounds_of_box(net, box, stages)
    n_spec = C.shape[1]
    spec = np.concatenate([C, -C], axis=1)
    if concretizer is None:
        concretizer = BoxConcretizer.of_box(box)
    lowers, history = [], np.zeros(iterations + 1)
    for start in range(0, batch, chunk):
        part = slice(start, min(batch, start + chunk))
        sub = intermediate if (start == 0 and chunk >= batch) else intermediate.select(part)
        tables = [stage_tables(sub, k, stage) for k, stage in enumerate(stages)]
        best, hist = optimize_rows(stages, tables, spec[part], concretizer.select(part), iterations, lr)
        lowers.append(best)
        history += np.asarray(hist) * (part.stop - part.start) / batch
    rows = np.concatenate(lowers)
    margin = output_rounding_margin(C, intermediate.rule, steps)
    alpha_lower = rows[:, :n_spec] - margin
    alpha_upper = -rows[:, n_spec:] + margin
    candidates = [ibp_spec_bounds(intermediate, C), (alpha_lower, alpha_upper)]
    if isinstance(concretizer, BoxConcretizer):
        crown = crown_bounds_of_box(net, box, C, stages, intermediate=intermediate, return_coefficients=False)
        candidates.append((crown.lower, crown.upper))
    lower, upper = best_bounds(C, margin, candidates)
    return AlphaResult("alpha", lower, upper, alpha_lower, alpha_upper, history.tolist(), intermediate)


__all__ = ["alpha_bounds", "AlphaResult", "backsub", "backsub_gradient", "BacksubResult", "BoxConcretizer",
           "StageTables", "stage_tables", "default_params", "random_params", "optimize_rows", "linear_chain",
           "PARAM_NAMES", "SpikeSplits", "split_lower_bounds"]
