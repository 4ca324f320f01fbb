"""Exact bounds and robustness by MILP: ``exact_bounds`` and ``verify_robust``.

Each query solves the relaxed model of ``verify.encoding`` (its optimum is a sound bound), then
runs the real float64 forward pass on the solver's input. If the forward value equals the MILP
value the answer is exact and witnessed. If not, the solver used the tie freedom at ``m = th``;
the strict model (margin ``strict_margin``) is solved for an attained value, and the answer is
exact only if that meets the relaxed bound. Otherwise the result says ``"tie-gap"`` and carries
both the sound bound and the best attained value. A solver time limit gives ``"timeout"``, with
the interval (big-M) bound as the sound bound and the best input seen as the attained value.

Values are compared on the grid of the objective: ``T' * c . f`` is an integer for integer ``c``
(f holds multiples of 1/T'); "equal" means within ``1e-6 * (1 + |value|)``, far below the grid
spacing, so for integer specifications exact means exact.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, List, Optional, Sequence

import numpy as np

from refsnn.network import SNN
from refsnn.firing import fires, fires_at_threshold

from .encoding import (BuildDeadline, MembraneBounds, SNNMilp, Solution, VerifierError, check_bounds_on_samples,
                       dyadic_margin, float64_network, membrane_bounds, pad_bounds, stage_affine_maps)
from .sets import InputSet, sets_from_boxes
from .specs import normalize_specs, other_classes, spec_grid

STATUSES = ("exact", "tie-gap", "timeout")
RELAX_MARGIN = 1e-6  # the relaxed model admits m in [th - 1e-6, th + 1e-6] on both fire branches


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * (1.0 + abs(b))


@dataclass
class Extreme:
    """Min or max of one objective over a set.

    ``bound``: sound (a lower bound of the min / an upper bound of the max); equal to ``attained``
    when ``status == "exact"`` and the objective is integral (rates with integer coefficients);
    for other objectives (membranes) "exact" means within ``1e-6 (1 + |value|)``, and ``bound``
    stays that far outside ``attained``. ``attained``: the objective at ``witness`` by the real forward
    pass (None if the solver returned no input). ``milp_value``: what the relaxed MILP reported.
    """

    sense: str
    status: str
    bound: float
    attained: Optional[float]
    witness: Optional[np.ndarray]
    milp_value: Optional[float]
    seconds: float

    @property
    def exact(self) -> bool:
        return self.status == "exact"


def sound_rate_bound(bound: Optional[float], coefs: np.ndarray, steps: int, sense: str) -> Optional[Fraction]:
    """A MILP bound of ``coefs . f`` (``Extreme.bound``) as a rational (None when it is missing or
    infinite). For integer ``coefs``, ``T' coefs . f`` is an integer for every input, so the bound
    rounds inward to the ``1/T'`` grid only past the solver's tolerance (1e-6)."""
    if bound is None or not math.isfinite(bound):
        return None
    if spec_grid(np.asarray(coefs), steps) is not None:
        scaled = bound * steps
        return Fraction(math.ceil(scaled - 1e-6) if sense == "min" else math.floor(scaled + 1e-6), steps)
    return Fraction(bound)


class SampleVerifier:
    """Models of one network over one input set, reused across objectives.

    ``bigm``: "auto" (S-IBP from ``refsnn.bounds`` when present, else naive), "ibp" or "naive".
    """

    def __init__(self, net: SNN, input_set: InputSet, bigm: str = "auto", time_limit: Optional[float] = 60.0,
                 solver: Optional[str] = None, strict_margin: float = 1e-5, check_samples: int = 32):
        if strict_margin <= 0:
            raise ValueError("strict_margin must be > 0 (it separates the strict side of the firing comparison)")
        self.net = net
        self.net64 = float64_network(net)
        self.input_set = input_set
        self.time_limit, self.solver, self.strict_margin = time_limit, solver, strict_margin
        # a time.perf_counter() value no solve may pass (None: only time_limit per solve); an
        # objective needs up to three solves, each gets what is left of it
        self.deadline: Optional[float] = None
        start = time.perf_counter()
        self.maps = stage_affine_maps(net)
        self.bounds: MembraneBounds = pad_bounds(membrane_bounds(net, input_set, bigm, self.maps))
        check_bounds_on_samples(net, input_set, self.bounds, n=check_samples)
        # On a coarse dyadic grid the strict model with the grid margin is exact (see dyadic_margin).
        self.grid_margin = dyadic_margin(net, input_set.steps, self.maps)
        # A pool of real members: every exact answer must agree with all of them (a cheap guard
        # against solver trouble).
        self.pool = input_set.sample(np.random.default_rng(1), check_samples)
        self.pool_trace = self.net64.run(self.pool)
        self._relaxed: Optional[SNNMilp] = None
        self._strict: Optional[SNNMilp] = None
        self.build_seconds = time.perf_counter() - start

    @property
    def relaxed(self) -> SNNMilp:
        return self._model(False)

    @property
    def strict(self) -> SNNMilp:
        return self._model(True)

    def _model(self, strict: bool) -> SNNMilp:
        """The strict or relaxed model, built once (raises ``BuildDeadline`` past ``deadline``)."""
        if strict and self._strict is None:
            margin = self.grid_margin if self.grid_margin is not None else self.strict_margin
            self._strict = SNNMilp(self.net, self.input_set, self.bounds, margin, self.maps, name="strict",
                                   deadline=self.deadline)
        if not strict and self._relaxed is None:
            self._relaxed = SNNMilp(self.net, self.input_set, self.bounds, 0.0, self.maps, name="relaxed",
                                    deadline=self.deadline)
        return self._strict if strict else self._relaxed

    # --- real values ---------------------------------------------------------------------------
    def rates(self, x: np.ndarray) -> np.ndarray:
        return self.net64.forward(x[:, None])[0]

    def membrane_value(self, x: np.ndarray, k: int, t: int, j: int) -> float:
        return float(self.net64.run(x[:, None]).membranes[k][t, 0].reshape(-1)[j])

    # --- interval fallbacks --------------------------------------------------------------------
    def interval_rate_bound(self, coefs: np.ndarray, sense: str) -> float:
        """Sound bound of ``sum_j coefs_j sum_t s_t[j]`` from the big-M bounds alone."""
        th, firing = self.net.threshold, self.net.firing
        lower, upper = self.bounds.lower[-1], self.bounds.upper[-1]
        at_threshold = fires_at_threshold(firing)
        spike_lower = fires(lower, th, at_threshold).astype(float).sum(axis=0)
        spike_upper = fires(upper, th, at_threshold).astype(float).sum(axis=0)
        pos, neg = np.maximum(coefs, 0), np.minimum(coefs, 0)
        if sense == "min":
            return float(pos @ spike_lower + neg @ spike_upper)
        return float(pos @ spike_upper + neg @ spike_lower)

    # --- the exact optimum ----------------------------------------------------------------------
    def optimize(self, build: Callable[[SNNMilp], object], realize: Callable[[np.ndarray], float], sense: str,
                 fallback: float, pool_values: Optional[np.ndarray] = None, integral: bool = False) -> Extreme:
        """Exact min/max of an objective: ``build(model)`` gives its expression, ``realize(x)`` its real value.

        An answer that fails a consistency check (a real input beats it, or the model turns out
        infeasible) is solved once more with the solver's presolve off; if it fails again the
        verifier raises ``VerifierError`` rather than return a wrong answer.
        """
        for safe in (False, True):
            try:
                ext = self._optimize(build, realize, sense, fallback, safe)
                if pool_values is not None:
                    self._check_pool(ext, pool_values)
                break
            except VerifierError:
                if safe:
                    raise
        if ext.status == "exact" and not integral:
            # Off the integer grid "exact" means within the solver's tolerance: keep the sound
            # bound a hair outside the attained value.
            slack = 1e-6 * (1.0 + abs(ext.bound))
            ext.bound = ext.bound - slack if sense == "min" else ext.bound + slack
        return ext

    def _solve(self, strict: bool, build, sense: str, safe: bool):
        """One solve of the strict or relaxed model with ``time_limit``, cut to what is left before
        ``deadline`` (none left: a timeout without building or solving; building the model of a
        large set takes seconds)."""
        limit = self.time_limit
        if self.deadline is not None:
            left = self.deadline - time.perf_counter()
            if left <= 0:
                return Solution("timeout", None, None, 0.0)
        try:
            model = self._model(strict)
        except BuildDeadline:
            return Solution("timeout", None, None, 0.0)
        expr = build(model)
        if self.deadline is not None:
            left = self.deadline - time.perf_counter()
            if left <= 0:
                return Solution("timeout", None, None, 0.0)
            limit = left if limit is None else min(limit, left)
        return model.solve(expr, sense, limit, self.solver, safe)

    def _optimize(self, build, realize, sense: str, fallback: float, safe: bool) -> Extreme:
        start = time.perf_counter()
        better = (lambda a, b: a < b) if sense == "min" else (lambda a, b: a > b)
        best_value, best_x = None, None

        def consider(x):
            nonlocal best_value, best_x
            if x is None:
                return
            if not self.input_set.contains(x):
                raise VerifierError("the solver returned an input outside the input set; the encoding is broken")
            value = realize(x)
            if best_value is None or better(value, best_value):
                best_value, best_x = value, x

        if self.grid_margin is not None:
            # The strict model holds exactly the real trajectories: its optimum is exact and sound.
            exact = self._solve(True, build, sense, safe)
            self._check_feasible(exact)
            consider(exact.x)
            if exact.status == "optimal":
                self._check_not_beaten(best_value, exact.value, better, sense)
                if _close(best_value, exact.value):
                    return Extreme(sense, "exact", best_value, best_value, best_x, exact.value,
                                   time.perf_counter() - start)
        relaxed = self._solve(False, build, sense, safe)
        self._check_feasible(relaxed)
        consider(relaxed.x)
        if relaxed.status != "optimal":
            return Extreme(sense, "timeout", fallback, best_value, best_x, relaxed.value,
                           time.perf_counter() - start)
        if not _close(best_value, relaxed.value):
            self._check_not_beaten(best_value, relaxed.value, better, sense)
            if self.grid_margin is None:
                strict = self._solve(True, build, sense, safe)
                consider(strict.x)
        seconds = time.perf_counter() - start
        if _close(best_value, relaxed.value):
            return Extreme(sense, "exact", best_value, best_value, best_x, relaxed.value, seconds)
        slack = 1e-6 * (1.0 + abs(relaxed.value))
        bound = relaxed.value - slack if sense == "min" else relaxed.value + slack
        return Extreme(sense, "tie-gap", bound, best_value, best_x, relaxed.value, seconds)

    def _check_feasible(self, solution) -> None:
        if solution.status == "infeasible":
            raise VerifierError("the MILP is infeasible although the input set is not empty: the big-M membrane "
                                f"bounds ({self.bounds.source}) exclude every real trajectory; retry with bigm='naive'")

    @staticmethod
    def _check_not_beaten(best_value, milp_value, better, sense) -> None:
        if best_value is not None and better(best_value, milp_value) and not _close(best_value, milp_value):
            raise VerifierError(
                f"a real input reaches {best_value} but the MILP {sense} is {milp_value}; the encoding "
                "or its big-M bounds cut off real trajectories")

    def _check_pool(self, ext: Extreme, pool_values: np.ndarray) -> None:
        """Raises if a pooled real member beats a sound bound (the solver or the encoding failed)."""
        worst = pool_values.min() if ext.sense == "min" else pool_values.max()
        beaten = worst < ext.bound if ext.sense == "min" else worst > ext.bound
        if beaten and not _close(float(worst), ext.bound):
            raise VerifierError(f"a sampled member of the set reaches {worst} beyond the MILP's sound {ext.sense} "
                                f"bound {ext.bound}: the solver returned a wrong optimum")

    def rate_extreme(self, coefs: np.ndarray, sense: str) -> Extreme:
        """Exact min/max of ``coefs . f`` (f = mean output rates)."""
        coefs = np.asarray(coefs, dtype=np.float64)
        steps = self.input_set.steps
        ext = self.optimize(lambda model: model.objective_rates(coefs),
                            lambda x: float(coefs @ self.rates(x)) * steps, sense,
                            self.interval_rate_bound(coefs, sense), self.pool_trace.rates @ coefs * steps,
                            integral=bool(np.all(coefs == np.round(coefs))))
        # The models optimize T' * c . f (integral for integer c); report c . f.
        ext.bound /= steps
        ext.attained = None if ext.attained is None else ext.attained / steps
        ext.milp_value = None if ext.milp_value is None else ext.milp_value / steps
        return ext

    def membrane_extreme(self, k: int, t: int, j: int, sense: str) -> Extreme:
        """Exact min/max of the membrane ``m_t`` of neuron ``j`` (flat index) in stage ``k``."""
        fallback = self.bounds.lower[k][t, j] if sense == "min" else self.bounds.upper[k][t, j]
        mem = self.pool_trace.membranes[k]
        return self.optimize(lambda model: model.membrane(k, t, j),
                             lambda x: self.membrane_value(x, k, t, j), sense, float(fallback),
                             mem.reshape(mem.shape[0], mem.shape[1], -1)[t, :, j])


@dataclass
class ExactBounds:
    """Result of ``exact_bounds``; unpacks as ``lower, upper = exact_bounds(...)``.

    ``lower, upper [B, n_spec]``: sound bounds of ``C f``, the exact extremes where
    ``lower_status``/``upper_status`` say "exact". ``*_attained``: values reached by the witness
    inputs ``*_witness [B, n_spec, T', *in]`` (checked by the real forward pass).
    """

    lower: np.ndarray
    upper: np.ndarray
    lower_status: np.ndarray
    upper_status: np.ndarray
    lower_attained: np.ndarray
    upper_attained: np.ndarray
    lower_witness: np.ndarray
    upper_witness: np.ndarray
    seconds: np.ndarray
    bigm: str

    def __iter__(self):
        return iter((self.lower, self.upper))

    @property
    def exact(self) -> bool:
        return bool(np.all(self.lower_status == "exact") and np.all(self.upper_status == "exact"))


def _sets(net: SNN, x_lower, x_upper, input_sets) -> List[InputSet]:
    if input_sets is not None:
        if x_lower is not None or x_upper is not None:
            raise ValueError("pass either x_lower/x_upper or input_sets, not both")
        sets = list(input_sets)
        if not sets:
            raise ValueError("input_sets is empty")
    else:
        if x_lower is None or x_upper is None:
            raise ValueError("pass x_lower and x_upper ([T', B, *input_shape] of 0/1) or input_sets")
        sets = sets_from_boxes(x_lower, x_upper)
    for b, input_set in enumerate(sets):
        if tuple(input_set.input_shape) != tuple(net.input_shape):
            raise ValueError(f"sample {b}: inputs have per-sample shape {tuple(input_set.input_shape)} but the "
                             f"network expects {tuple(net.input_shape)}; arrays are [T', B, *input_shape]")
        if input_set.steps != sets[0].steps:
            raise ValueError(f"sample {b} has {input_set.steps} time steps, sample 0 has {sets[0].steps}")
    return sets


def exact_bounds(net: SNN, x_lower=None, x_upper=None, C=None, *, input_sets: Optional[Sequence[InputSet]] = None,
                 time_limit: Optional[float] = 60.0, bigm: str = "auto", solver: Optional[str] = None,
                 strict_margin: float = 1e-5) -> ExactBounds:
    """Exact min and max of ``C f`` over each sample's input set.

    Same conventions as ``refsnn.bounds.compute_bounds``: boxes ``x_lower, x_upper [T', B, *in]``
    of 0/1 (or ``input_sets``, one per sample: ``BoxSet``, ``SpikeL0Set``, ``DigitalLinfSet``);
    ``C`` None / ``[n_spec, n_out]`` / ``[B, n_spec, n_out]``. ``time_limit`` seconds per MILP.
    """
    sets = _sets(net, x_lower, x_upper, input_sets)
    specs = normalize_specs(C, len(sets), net.n_outputs)
    batch, n_spec = specs.shape[:2]
    shape = (batch, n_spec)
    x_shape = shape + (sets[0].steps,) + tuple(net.input_shape)
    out = {name: np.empty(shape) for name in ("lower", "upper", "lower_attained", "upper_attained")}
    status = {name: np.empty(shape, dtype=object) for name in ("lower_status", "upper_status")}
    witness = {name: np.zeros(x_shape, dtype=np.uint8) for name in ("lower_witness", "upper_witness")}
    seconds = np.zeros(batch)
    source = ""
    for b, input_set in enumerate(sets):
        start = time.perf_counter()
        verifier = SampleVerifier(net, input_set, bigm, time_limit, solver, strict_margin)
        source = verifier.bounds.source
        for i in range(n_spec):
            for side, sense in (("lower", "min"), ("upper", "max")):
                ext = verifier.rate_extreme(specs[b, i], sense)
                out[side][b, i] = ext.bound
                out[f"{side}_attained"][b, i] = np.nan if ext.attained is None else ext.attained
                status[f"{side}_status"][b, i] = ext.status
                if ext.witness is not None:
                    witness[f"{side}_witness"][b, i] = ext.witness
        seconds[b] = time.perf_counter() - start
    return ExactBounds(out["lower"], out["upper"], status["lower_status"], status["upper_status"],
                       out["lower_attained"], out["upper_attained"], witness["lower_witness"],
                       witness["upper_witness"], seconds, source)


@dataclass
class RobustResult:
    """Result of one robustness query.

    ``status``: "robust" (every member has ``f_label - f_j > 0`` for all ``j != label``),
    "not_robust" (``witness`` reaches a margin <= 0: misclassified, or a tie, which certifies
    nothing even when ``SNN.predict`` would break it in favour of the label), or "unknown"
    (``reason``: solver time limit, or an unresolved tie gap). ``margins [n_out]``: exact minimum
    of ``f_label - f_j`` per class where solved (NaN for the label and classes not solved).
    """

    status: str
    label: int
    margins: np.ndarray
    witness: Optional[np.ndarray] = None
    witness_rates: Optional[np.ndarray] = None
    witness_prediction: Optional[int] = None
    seconds: float = 0.0
    reason: str = ""
    details: dict = field(default_factory=dict)

    @property
    def robust(self) -> bool:
        return self.status == "robust"


def robust_query(net: SNN, input_set: InputSet, label: int, *, time_limit: Optional[float] = 60.0,
                 bigm: str = "auto", solver: Optional[str] = None, strict_margin: float = 1e-5,
                 attack_samples: int = 64, early_stop: bool = True,
                 rng: Optional[np.random.Generator] = None, classes: Optional[Sequence[int]] = None,
                 deadline: Optional[float] = None) -> RobustResult:
    """Robustness of one sample's set (see ``verify_robust``); ``classes``: only the margins to these
    classes (default: every class but the label), e.g. those a bound has not already proven;
    ``deadline`` (a ``time.perf_counter()`` value): each MILP gets at most the time left, and the
    query says "unknown" at the first class it cannot decide."""
    start = time.perf_counter()
    n_out = net.n_outputs
    label = int(label)
    if not 0 <= label < n_out:
        raise ValueError(f"label {label} is out of range for {n_out} outputs")
    rng = rng if rng is not None else np.random.default_rng(0)
    net64 = float64_network(net)
    margins = np.full(n_out, np.nan)
    others = other_classes(label, n_out)
    if classes is not None:
        wanted = sorted({int(j) for j in classes})
        if not wanted or any(j not in others for j in wanted):
            raise ValueError(f"classes must be a non-empty subset of {others} (the label {label} excluded), "
                             f"got {list(classes)}")
        others = wanted

    def result(status, x=None, reason="", **details):
        rates = None if x is None else net64.forward(x[:, None])[0]
        prediction = None if rates is None else int(np.argmax(rates))
        return RobustResult(status, label, margins, x, rates, prediction, time.perf_counter() - start, reason, details)

    # Cheap first: random members often refute robustness without any MILP.
    if attack_samples > 0:
        xs = input_set.sample(rng, attack_samples)
        rates = net64.forward(xs)
        margin = rates[:, label][:, None] - rates[:, others]
        worst = np.unravel_index(np.argmin(margin), margin.shape)
        if margin[worst] <= 0 and early_stop:
            return result("not_robust", xs[:, worst[0]], "found by sampling")
        order = np.argsort(margin.min(axis=0))
        others = [others[i] for i in order]
    verifier = SampleVerifier(net, input_set, bigm, time_limit, solver, strict_margin)
    unknown = []
    witness = None
    for j in others:
        if deadline is not None:
            left = deadline - time.perf_counter()
            if left <= 0:
                return result("unknown", None, f"class {j}: deadline")
            verifier.time_limit = left if time_limit is None else min(time_limit, left)
        coefs = np.zeros(n_out)
        coefs[label], coefs[j] = 1.0, -1.0
        ext = verifier.rate_extreme(coefs, "min")
        if ext.status == "exact":
            margins[j] = ext.bound
            if ext.bound <= 0:
                witness = ext.witness
                if early_stop:
                    return result("not_robust", witness, f"margin to class {j} reaches {ext.bound}")
        elif ext.attained is not None and ext.attained <= 0:
            witness = ext.witness
            if early_stop:
                return result("not_robust", witness, f"margin to class {j} reaches {ext.attained}")
        elif ext.bound > 0:
            margins[j] = np.nan  # proven positive, value not exact
        else:
            unknown.append((j, ext.status))
            if deadline is not None and witness is None:
                return result("unknown", None, f"class {j}: {ext.status}")
    if witness is not None:
        return result("not_robust", witness, "some margin <= 0")
    if unknown:
        return result("unknown", None, "; ".join(f"class {j}: {status}" for j, status in unknown))
    return result("robust")


def verify_robust(net: SNN, x_lower=None, x_upper=None, labels=None, *,
                  input_sets: Optional[Sequence[InputSet]] = None, time_limit: Optional[float] = 60.0,
                  bigm: str = "auto", solver: Optional[str] = None, strict_margin: float = 1e-5,
                  attack_samples: int = 64, early_stop: bool = True) -> List[RobustResult]:
    """Is every input of each sample's set classified as ``labels[b]`` with a strictly positive margin?

    Boxes ``x_lower, x_upper [T', B, *in]`` (or ``input_sets``), ``labels [B]``. A tie (margin
    exactly 0) is NOT robust: spike counts are integers, ties are common, and a margin lower bound
    of 0 certifies nothing. Every witness is checked by the real forward pass. Returns one
    ``RobustResult`` per sample.
    """
    sets = _sets(net, x_lower, x_upper, input_sets)
    if labels is None:
        raise ValueError("labels [B] are required")
    labels = np.asarray(labels).reshape(-1)
    if labels.size != len(sets):
        raise ValueError(f"got {labels.size} labels for {len(sets)} samples")
    return [robust_query(net, s, int(label), time_limit=time_limit, bigm=bigm, solver=solver,
                         strict_margin=strict_margin, attack_samples=attack_samples, early_stop=early_stop)
            for s, label in zip(sets, labels)]
