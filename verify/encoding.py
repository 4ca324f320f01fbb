"""Exact mixed-integer encoding of a LIF SNN over an input set (PuLP).

Per stage ``k``, time step ``t`` and neuron ``j`` (the paper's eqs. 1-3)::

    I_t  = A_k s_t[k-1] + c_k                   affine map of the stage's ops, linear in the spikes
    m_t  = I_t + alpha * z_{t-1},  z_0 = 0      membrane: continuous, bounds [L, U] (big-M)
    s_t  in {0, 1}:   s = 1  =>  m >= th        fire, big-M form  m >= L + (th - L) s
                      s = 0  =>  m <= th                            m <= th + (U - th) s
    z_t  = m_t (1 - s_t)                        reset term, exact product with a binary:
           L0 (1 - s) <= z <= U0 (1 - s),   -U1 s <= z - m <= -L1 s
           with [L0, U0] = [L, min(U, th)] (branch s = 0) and [L1, U1] = [max(L, th), U] (s = 1)

``A_k, c_k`` are read off the network by applying the stage's ops (Linear/Conv2d/AvgPool2d/
Flatten) to the basis vectors, so every layer kind is encoded by the very code that runs it.
Neurons whose interval bounds decide the spike (``L >= th`` or ``U < th`` for ``">="``) get a
constant spike and no binary; neurons whose whole input is fixed are computed exactly.

Ties at the threshold. With ``strict_margin = 0`` the point ``m = th`` satisfies both branches,
for either firing mode (``">="`` or ``">"``). The feasible set therefore holds every true
trajectory (nothing is cut off: the encoding is sound for both modes) plus trajectories in which
a membrane sitting exactly at ``th`` takes the other spike value. For inputs with real-valued
noise that is a measure-zero set, but spike inputs are discrete and dyadic weights put membranes
exactly on the threshold often, so the optimum of this *relaxed* model can exceed the true
optimum. ``strict_margin = delta > 0`` encodes the strict side of the comparison as a margin
(``">="``: ``s = 0 => m <= th - delta``; ``">"``: ``s = 1 => m >= th + delta``): every feasible
point is then a true trajectory, and the model is exact when no reachable membrane lies within
``delta`` of the threshold on the strict side. The relaxed model is further widened by a tiny margin
(``m in [th - 1e-6, th + 1e-6]`` allowed on both branches) so that no solver tolerance can cut a
real tie. ``dyadic_margin`` finds networks on a coarse dyadic grid (every membrane a multiple of a
known step, as with dyadic test weights); with half that step as margin the strict model holds
exactly the real trajectories and its optimum is exact. Otherwise ``verify.milp`` solves the
relaxed model (a sound bound), re-runs the real forward pass on the solver's input and, only when
the two disagree, solves the strict model for an attained value; it reports exact only when
the attained value meets the sound bound.

Numerics. Every real trajectory must stay feasible under the solver's floating-point
tolerances, so the encoding avoids tiny coefficients: big-M gaps are at least ``MIN_BIGM_GAP``
(widening a bound is always sound) and weights below ``TINY_COEF`` (denormals included) enter
as a range of their possible contribution instead of as coefficients: tiny coefficients and a
real point lying exactly on a constraint were seen to make CBC 2.10 report a wrong "optimal"
value. HiGHS (``highspy``) is the default solver when installed, and every answer is checked
against real inputs (its witness, a pool of sampled members) before it is returned; a failed
check is retried with other solver settings, then raised. ``SNNMilp.violations(x)`` checks that the
real trajectory of an input satisfies every constraint (a self-test used by the tests).

Big-M bounds ``[L, U]`` come from refsnn's S-IBP (``refsnn.bounds.interval_bounds``) intersected
with the naive bounds below, or from the naive bounds alone (``bigm="naive"``): inputs of every
stage after the first range over ``{0, 1}`` independently, so ``I`` ranges over ``c + sum(A^-)``
to ``c + sum(A^+)``, and the reset term over ``[min(L, 0), max(min(U, th), 0)]``. The model is
only as sound as these bounds; ``check_bounds_on_samples`` runs the forward pass on members of
the set and refuses bounds that a real trajectory violates.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from refsnn.network import SNN
from refsnn.firing import fires, fires_at_threshold
from refsnn.operator import NeuronModelError

from .sets import InputSet

BIGM_CHOICES = ("ibp", "naive", "auto")
MIN_BIGM_GAP = 1e-4
TINY_COEF = 1e-7  # terms below this enter as a range, not as coefficients (LP presolve trouble)
FIXED_TIE_BAND = 1e-9  # relative: a fixed membrane this close to th is not decided by its float value


class VerifierError(RuntimeError):
    """The verifier cannot give a trustworthy answer (message says why)."""


def float64_network(net: SNN) -> SNN:
    """The same network evaluated in float64 (the reference arithmetic of the verifier)."""
    if net.dtype == np.float64:
        return net
    return SNN(net.layers, threshold=net.threshold, decay=net.decay, firing=net.firing,
               surrogate=net.surrogate, reset_grad=net.reset_grad, input_shape=net.input_shape,
               dtype=np.float64, reset=net.reset)


def require_lif(net: SNN) -> None:
    """The MILP encoding and the exact checker model the paper's LIF (``reset="zero"``) only."""
    if net.reset != "zero":
        raise NeuronModelError(f"reset={net.reset!r}: the MILP verifier and the exact checker encode the paper's "
                               "LIF (reset='zero') only; bound this model with refsnn.bounds (ibp, crown-ibp, best)")


def stage_affine_maps(net: SNN) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Per stage: ``(A [n_out, n_in], c [n_out])`` with ``I = A s + c`` in float64 (LIF networks only)."""
    require_lif(net)
    maps = []
    for stage in net.stages:
        n_in = int(np.prod(stage.input_shape))
        ops = [op.astype(np.float64) for op in stage.ops]
        basis = np.concatenate([np.zeros((1, n_in)), np.eye(n_in)]).reshape((n_in + 1,) + tuple(stage.input_shape))
        out = basis
        for op in ops:
            out = op.forward(out)
        out = out.reshape(n_in + 1, -1)
        bias = out[0]
        maps.append(((out[1:] - bias).T.copy(), bias.copy()))
    return maps


def _dyadic_exponent(values: np.ndarray, max_exponent: int = 40) -> Optional[int]:
    """Smallest ``p`` with every value an integer multiple of ``2^-p`` (None if above ``max_exponent``)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    for p in range(max_exponent + 1):
        scaled = np.ldexp(values, p)
        if np.all(scaled == np.round(scaled)):
            return p
    return None


def dyadic_margin(net: SNN, steps: int, maps: Optional[Sequence] = None,
                  min_margin: float = 2.0 ** -16) -> Optional[float]:
    """Exact strict margin of a network on a coarse dyadic grid, or None.

    If every weight and bias of the stage maps is a multiple of ``2^-pA``, the decay of
    ``2^-pa`` and the threshold of ``2^-pt``, every membrane at step ``t`` is a multiple of
    ``2^-(pA + (t-1) pa)`` (inputs are 0/1), so a membrane below the threshold is at least
    ``2^-max(pA + (T'-1) pa, pt)`` below it. With half that step as ``delta`` the strict encoding
    is exact, and float64 evaluates these values without rounding. Returns None when the grid is
    finer than ``min_margin`` (well above the solver's tolerances) or values are too large for
    float64 to hold them exactly.
    """
    maps = maps if maps is not None else stage_affine_maps(net)
    p_alpha = _dyadic_exponent([net.decay])
    p_th = _dyadic_exponent([net.threshold])
    if p_alpha is None or p_th is None:
        return None
    worst = p_th
    for A, c in maps:
        p_map = _dyadic_exponent(np.concatenate([A.ravel(), c.ravel()]))
        if p_map is None:
            return None
        exponent = max(p_map + (steps - 1) * p_alpha, p_th)
        magnitude = np.abs(A).sum(axis=1).max(initial=0.0) + np.abs(c).max(initial=0.0) + abs(net.threshold)
        if magnitude * 2.0 ** exponent * 4 >= 2.0 ** 52:
            return None
        worst = max(worst, exponent)
    # Half the grid step: real membranes below the threshold sit a full step below it, so no
    # real point lies on the margin constraint itself (where solver tolerances decide).
    margin = 2.0 ** -(worst + 1)
    return margin if margin >= min_margin else None


@dataclass
class MembraneBounds:
    """Sound membrane bounds per stage, ``lower[k], upper[k]`` of shape ``[T', n_k]`` (float64)."""

    lower: List[np.ndarray]
    upper: List[np.ndarray]
    source: str


def naive_membrane_bounds(net: SNN, input_set: InputSet,
                          maps: Optional[Sequence] = None) -> MembraneBounds:
    """Bounds from weight sums only (see module docstring): never uses stability of spikes."""
    maps = maps if maps is not None else stage_affine_maps(net)
    box_lower, box_upper = input_set.box()
    steps = input_set.steps
    spike_lower = box_lower.reshape(steps, -1).astype(np.float64)
    spike_upper = box_upper.reshape(steps, -1).astype(np.float64)
    lowers, uppers = [], []
    th, alpha = net.threshold, net.decay
    for k, (A, c) in enumerate(maps):
        A_pos, A_neg = np.maximum(A, 0), np.minimum(A, 0)
        if k > 0:
            spike_lower = np.zeros((steps, A.shape[1]))
            spike_upper = np.ones((steps, A.shape[1]))
        current_lower = spike_lower @ A_pos.T + spike_upper @ A_neg.T + c
        current_upper = spike_upper @ A_pos.T + spike_lower @ A_neg.T + c
        mem_lower = np.empty_like(current_lower)
        mem_upper = np.empty_like(current_upper)
        reset_lower = np.zeros(A.shape[0])
        reset_upper = np.zeros(A.shape[0])
        for t in range(steps):
            mem_lower[t] = current_lower[t] + alpha * reset_lower
            mem_upper[t] = current_upper[t] + alpha * reset_upper
            reset_lower = np.minimum(mem_lower[t], 0.0)
            reset_upper = np.maximum(np.minimum(mem_upper[t], th), 0.0)
        lowers.append(mem_lower)
        uppers.append(mem_upper)
    return MembraneBounds(lowers, uppers, "naive")


def ibp_membrane_bounds(net: SNN, input_set: InputSet) -> MembraneBounds:
    """refsnn's S-IBP membrane bounds over the set's enclosing box, ``[T', n_k]`` per stage."""
    from refsnn.bounds import interval_bounds  # the bounds module of refsnn; not reimplemented here
    box_lower, box_upper = input_set.box()
    result = interval_bounds(net, box_lower[:, None], box_upper[:, None])
    steps = input_set.steps
    lowers = [np.asarray(m, dtype=np.float64)[:, 0].reshape(steps, -1) for m in result.mem_lower]
    uppers = [np.asarray(m, dtype=np.float64)[:, 0].reshape(steps, -1) for m in result.mem_upper]
    ball = _l0_ball_intervals(net, input_set)
    if ball is not None:
        # both hold every member: their intersection does too
        lowers = [np.maximum(a, np.asarray(b, np.float64)[:, 0].reshape(steps, -1)) for a, b in zip(lowers, ball.mem_lower)]
        uppers = [np.minimum(a, np.asarray(b, np.float64)[:, 0].reshape(steps, -1)) for a, b in zip(uppers, ball.mem_upper)]
    return MembraneBounds(lowers, uppers, "ibp")


def _l0_ball_intervals(net: SNN, input_set: InputSet):
    """S-IBP intervals of a ``SpikeL0Set`` from its first stage's exact current range over the whole
    ``k``-flip ball of its mask (``refsnn.l0.anyk_intermediate``), or None for other sets. Its enclosing box frees every maskable bit, so
    the box's intervals leave most first-stage neurons unstable (N-MNIST FC at k = 12 per step:
    all 512 per step over the box, 43-120 over the ball)."""
    from .sets import SpikeL0Set

    if not isinstance(input_set, SpikeL0Set) or input_set.k == 0:
        return None
    from refsnn.l0 import anyk_intermediate

    return anyk_intermediate(net, input_set.center[:, None], input_set.k, input_set.per_step,
                             mask=input_set.mask[:, None])[0]


def ibp_available() -> bool:
    try:
        from refsnn.bounds import interval_bounds  # noqa: F401
    except ImportError:
        return False
    return True


def membrane_bounds(net: SNN, input_set: InputSet, bigm: str = "auto",
                    maps: Optional[Sequence] = None) -> MembraneBounds:
    """Big-M bounds: ``"ibp"`` (S-IBP intersected with naive), ``"naive"``, or ``"auto"`` (ibp if present)."""
    if bigm not in BIGM_CHOICES:
        raise ValueError(f"bigm must be one of {BIGM_CHOICES}, got {bigm!r}")
    naive = naive_membrane_bounds(net, input_set, maps)
    if bigm == "naive" or (bigm == "auto" and not ibp_available()):
        return naive
    ibp = ibp_membrane_bounds(net, input_set)
    for k, (lo, up) in enumerate(zip(ibp.lower, ibp.upper)):
        if lo.shape != naive.lower[k].shape:
            raise VerifierError(f"refsnn.bounds returned membrane bounds of shape {lo.shape} for stage {k}, "
                                f"expected {naive.lower[k].shape}")
    lower = [np.maximum(a, b) for a, b in zip(ibp.lower, naive.lower)]
    upper = [np.minimum(a, b) for a, b in zip(ibp.upper, naive.upper)]
    return MembraneBounds(lower, upper, "ibp")


def pad_bounds(bounds: MembraneBounds, rel: float = 1e-7) -> MembraneBounds:
    """Widens each bound by ``rel * (1 + |value|)`` so that float rounding never cuts off a trajectory."""
    lower = [lo - rel * (1 + np.abs(lo)) for lo in bounds.lower]
    upper = [up + rel * (1 + np.abs(up)) for up in bounds.upper]
    return MembraneBounds(lower, upper, bounds.source)


def check_bounds_on_samples(net: SNN, input_set: InputSet, bounds: MembraneBounds,
                            rng: Optional[np.random.Generator] = None, n: int = 32) -> None:
    """Raises ``VerifierError`` if a member of the set has a membrane outside ``bounds``."""
    rng = rng if rng is not None else np.random.default_rng(0)
    x = input_set.sample(rng, n)
    trace = float64_network(net).run(x)
    for k, mem in enumerate(trace.membranes):
        mem = mem.reshape(mem.shape[0], mem.shape[1], -1)
        low = mem < bounds.lower[k][:, None, :]
        high = mem > bounds.upper[k][:, None, :]
        if low.any() or high.any():
            t, b, j = np.argwhere(low | high)[0]
            raise VerifierError(
                f"the {bounds.source} membrane bounds are unsound at stage {k}, time {t}, neuron {j}: "
                f"bounds [{bounds.lower[k][t, j]!r}, {bounds.upper[k][t, j]!r}] but a member of the input "
                f"set reaches {mem[t, b, j]!r}; use bigm='naive' and report the bound bug")


def _new_problem(name: str):
    import pulp
    return pulp.LpProblem(name, pulp.LpMinimize)


def _add_var(prob, name, low=None, up=None, cat="Continuous"):
    import pulp
    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, low, up, cat=cat)
    return pulp.LpVariable(name, low, up, cat=cat)


def _snap_lower(value: float) -> float:
    """A lower bound moved outward off the band ``0 < |v| < MIN_BIGM_GAP`` (no tiny coefficients)."""
    if 0 < abs(value) < MIN_BIGM_GAP:
        return -MIN_BIGM_GAP if value < 0 else 0.0
    return value


def _snap_upper(value: float) -> float:
    if 0 < abs(value) < MIN_BIGM_GAP:
        return MIN_BIGM_GAP if value > 0 else 0.0
    return value


def _is_const(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating))


_warned_cbc = False


def highs_available() -> bool:
    try:
        import highspy  # noqa: F401
    except ImportError:
        return False
    return True


def make_solver(time_limit: Optional[float] = None, solver: Optional[str] = None, safe: bool = False):
    """PuLP solver: ``"highs"`` (needs ``highspy``), ``"cbc"`` (bundled with PuLP) or None (the
    environment variable ``VERIFY_SOLVER`` if set, else HiGHS if importable, else CBC).

    Gaps are zero: "optimal" must mean optimal. ``safe`` is the retry after an answer failed a
    consistency check, with the other setting of the solver's presolve (HiGHS) or preprocessing
    (CBC): each was seen to return a wrong "optimal" value on some model with one setting.
    """
    import pulp
    if solver is None:
        solver = os.environ.get("VERIFY_SOLVER") or ("highs" if highs_available() else "cbc")
        if solver == "cbc" and not _warned_cbc:
            import warnings
            warnings.warn("verify: highspy is not installed, falling back to CBC 2.10, which returned wrong "
                          "'optimal' values on some of refsnn's cross-check models (most are caught by the "
                          "verifier's consistency checks, not all); pip install highspy", RuntimeWarning)
            globals()["_warned_cbc"] = True
    if solver == "highs":
        # HiGHS 1.16's presolve was seen to return a wrong "optimal" value on a ranged row of
        # width 1e-9: presolve stays off, and is the alternative setting of the retry.
        return pulp.HiGHS(msg=False, timeLimit=time_limit, gapRel=0.0, gapAbs=1e-9, threads=1,
                          presolve="on" if safe else "off")
    if solver == "cbc":
        path = getattr(pulp.PULP_CBC_CMD, "pulp_cbc_path", None)
        options = ["preprocess off"] if safe else []
        if path is None:
            return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=0.0, options=options)
        return pulp.COIN_CMD(path=path, msg=False, timeLimit=time_limit, gapRel=0.0, options=options)
    raise ValueError(f"solver must be 'cbc', 'highs' or None, got {solver!r}")


class _quiet_stdout:
    """Silences file descriptor 1 (C-level output) for the duration of a block."""

    def __enter__(self):
        import sys
        sys.stdout.flush()
        self.saved = os.dup(1)
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 1)

    def __exit__(self, *exc):
        os.dup2(self.saved, 1)
        os.close(self.saved)
        os.close(self.null)
        return False


class BuildDeadline(Exception):
    """``SNNMilp`` stopped building at its deadline (the caller treats it as a solver timeout)."""


@dataclass
class Solution:
    """Outcome of one MILP solve: ``status`` is optimal / feasible (time limit, incumbent) /
    timeout (no incumbent) / infeasible; ``value`` the objective of the incumbent as the solver
    reports it; ``x`` the incumbent input ``[T', *in]``."""

    status: str
    value: Optional[float]
    x: Optional[np.ndarray]
    seconds: float


class SNNMilp:
    """The MILP of ``net`` over ``input_set`` (see the module docstring for the constraints).

    ``strict_margin``: > 0 gives the strict model; <= 0 the relaxed model, with both fire
    branches widened by ``-strict_margin`` (a sound superset that no rounding can cut a tie from).
    ``objective_rates(c)``: ``sum_j c_j * sum_t s_t[last, j]`` (T' times ``c . f``, integral for
    integer ``c``); ``membrane(k, t, j)``: the membrane of stage ``k``; ``solve(expr, sense)``.
    """

    def __init__(self, net: SNN, input_set: InputSet, bounds: MembraneBounds, strict_margin: float = 0.0,
                 maps: Optional[Sequence] = None, name: str = "snn", deadline: Optional[float] = None):
        """``deadline``: a ``time.perf_counter()`` value; the build raises ``BuildDeadline`` at the
        first stage and step that starts past it (a model over an N-MNIST l0 ball takes 6-15 s)."""
        import pulp
        self._pulp = pulp
        if tuple(input_set.input_shape) != tuple(net.input_shape):
            raise ValueError(f"the input set holds inputs of shape {input_set.input_shape}, the network "
                             f"expects {net.input_shape}")
        self.net, self.input_set, self.bounds = net, input_set, bounds
        self.strict_margin = float(strict_margin)
        self.steps = input_set.steps
        self.prob = _new_problem(name)
        self.inputs = input_set.build(self.prob, "in")
        maps = maps if maps is not None else stage_affine_maps(net)
        th, alpha, firing, delta = net.threshold, net.decay, net.firing, self.strict_margin
        at_threshold = fires_at_threshold(firing)
        self.spikes, self.membranes = [], []
        self.n_binaries = sum(1 for v in self.inputs.ravel() if not _is_const(v))
        previous = self.inputs
        prob = self.prob
        for k, (A, c) in enumerate(maps):
            n_out = A.shape[0]
            lower, upper = bounds.lower[k], bounds.upper[k]
            rows = [(np.flatnonzero(A[j]), A[j][A[j] != 0]) for j in range(n_out)]
            spikes = np.empty((self.steps, n_out), dtype=object)
            membranes = np.empty((self.steps, n_out), dtype=object)
            carried = [0.0] * n_out  # z_{t-1}: a number or an LpVariable
            for t in range(self.steps):
                if deadline is not None and time.perf_counter() >= deadline:
                    raise BuildDeadline(f"the MILP build passed its deadline at stage {k}, step {t}")
                prev_t = previous[t]
                for j in range(n_out):
                    constant = float(c[j])
                    magnitude = abs(constant)  # sum of |terms| of the constant: scale of its rounding error
                    terms: Dict = {}
                    slack_lo = slack_hi = 0.0  # range of the tiny terms left out (see TINY_COEF)
                    index, coefs = rows[j]
                    for i, a in zip(index, coefs):
                        v = prev_t[i]
                        if _is_const(v):
                            constant += a * float(v)
                            magnitude += abs(a * float(v))
                        elif abs(a) < TINY_COEF:
                            slack_lo, slack_hi = slack_lo + min(a, 0.0), slack_hi + max(a, 0.0)
                        else:
                            terms[v] = terms.get(v, 0.0) + float(a)
                    z = carried[j]
                    if _is_const(z):
                        constant += alpha * float(z)
                        magnitude += abs(alpha * float(z))
                    elif alpha != 0:
                        terms[z] = terms.get(z, 0.0) + alpha
                    near_tie = abs(constant - th) <= FIXED_TIE_BAND * (1.0 + magnitude + abs(th))
                    if not terms and slack_lo == slack_hi == 0.0 and not near_tie:
                        # Fixed input, far from the threshold: the float value decides the spike as the
                        # exact one does. Near a tie the float sum (rounded, and A itself is read off
                        # a float forward) can lie on the other side of th than the exact rational
                        # membrane: such a neuron keeps a binary below, so both spikes stay feasible.
                        fired = fires(constant, th, at_threshold)
                        membranes[t, j] = constant
                        spikes[t, j] = int(fired)
                        carried[j] = 0.0 if fired else constant
                        continue
                    L, U = float(lower[t, j]), float(upper[t, j])
                    m = _add_var(prob, f"m_{k}_{t}_{j}", L, U)
                    if 0 < abs(constant) < TINY_COEF:
                        slack_lo, slack_hi = slack_lo + min(constant, 0.0), slack_hi + max(constant, 0.0)
                        constant = 0.0
                    # Widen a tiny nonzero range to TINY_COEF: ranges far below the solvers' feasibility
                    # tolerance (1e-224 was seen) upset their presolve.
                    slack_lo = -TINY_COEF if -TINY_COEF < slack_lo < 0 else slack_lo
                    slack_hi = TINY_COEF if 0 < slack_hi < TINY_COEF else slack_hi
                    residual = pulp.LpAffineExpression(list(terms.items()) + [(m, -1.0)], constant=constant)
                    if slack_lo == slack_hi == 0.0:
                        prob += residual == 0, f"mem_{k}_{t}_{j}"
                    else:  # m - (kept terms) lies in the range of the terms left out
                        prob += residual >= -slack_hi, f"memlo_{k}_{t}_{j}"
                        prob += residual <= -slack_lo, f"memup_{k}_{t}_{j}"
                    membranes[t, j] = m
                    always = fires(L, th, at_threshold)
                    never = not fires(U, th, at_threshold)
                    if always:
                        spikes[t, j] = 1
                        carried[j] = 0.0
                        continue
                    if never:
                        spikes[t, j] = 0
                        carried[j] = m
                        continue
                    if delta > 0:   # strict model: the strict side of the comparison keeps a margin
                        on_level = th if at_threshold else th + delta      # s = 1  =>  m >= on_level
                        off_level = th - delta if at_threshold else th     # s = 0  =>  m <= off_level
                    else:           # relaxed model, widened by -delta so no solver tolerance cuts a tie
                        on_level, off_level = th + delta, th - delta
                    # Keep every big-M coefficient >= MIN_BIGM_GAP: widening a bound is sound, while
                    # coefficients near 1e-9 (a bound a hair from th) made CBC's cuts drop real points.
                    L, U = min(L, on_level - MIN_BIGM_GAP), max(U, off_level + MIN_BIGM_GAP)
                    m.lowBound, m.upBound = L, U
                    s = _add_var(prob, f"s_{k}_{t}_{j}", 0, 1, cat="Binary")
                    self.n_binaries += 1
                    spikes[t, j] = s
                    prob += m - (on_level - L) * s >= L, f"on_{k}_{t}_{j}"
                    prob += m - (U - off_level) * s <= off_level, f"off_{k}_{t}_{j}"
                    if t == self.steps - 1 and k == len(maps) - 1:
                        continue  # the last reset term of the output stage feeds nothing
                    L0, U0 = _snap_lower(L), _snap_upper(min(U, off_level))
                    L1, U1 = _snap_lower(max(L, on_level)), _snap_upper(U)
                    z = _add_var(prob, f"z_{k}_{t}_{j}", min(L0, 0.0), max(U0, 0.0))
                    prob += z + L0 * s >= L0, f"zlo_{k}_{t}_{j}"
                    prob += z + U0 * s <= U0, f"zup_{k}_{t}_{j}"
                    prob += z - m + U1 * s >= 0, f"zmlo_{k}_{t}_{j}"
                    prob += z - m + L1 * s <= 0, f"zmup_{k}_{t}_{j}"
                    carried[j] = z
            self.spikes.append(spikes)
            self.membranes.append(membranes)
            previous = spikes

    # --- objectives ---------------------------------------------------------------------------
    def objective_rates(self, coefs: np.ndarray):
        """``sum_j coefs[j] * sum_t s_t[last, j]`` as an affine expression (T' times ``coefs . f``)."""
        pulp = self._pulp
        constant, terms = 0.0, {}
        last = self.spikes[-1]
        for j, a in enumerate(np.asarray(coefs, dtype=np.float64)):
            if a == 0:
                continue
            for t in range(self.steps):
                v = last[t, j]
                if _is_const(v):
                    constant += a * float(v)
                else:
                    terms[v] = terms.get(v, 0.0) + float(a)
        return pulp.LpAffineExpression(list(terms.items()), constant=constant)

    def membrane(self, k: int, t: int, j: int):
        pulp = self._pulp
        v = self.membranes[k][t, j]
        if _is_const(v):
            return pulp.LpAffineExpression([], constant=float(v))
        return pulp.LpAffineExpression([(v, 1.0)])

    def violations(self, x: np.ndarray, tol: float = 1e-9) -> List[str]:
        """Constraints and bounds that the real trajectory of member ``x [T', *in]`` violates.

        Empty for a sound model: every real trajectory must be feasible (a self-test). Sets the
        variables to the trajectory's values (a later ``solve`` overwrites them).
        """
        trace = float64_network(self.net).run(np.asarray(x)[:, None])
        problems = []

        def assign(var, value, what):
            if _is_const(var):
                if abs(float(var) - float(value)) > tol:
                    problems.append(f"{what}: constant {var} but the forward pass gives {value}")
            else:
                var.varValue = float(value)

        for (t, i), var in np.ndenumerate(self.inputs):
            assign(var, np.asarray(x).reshape(self.steps, -1)[t, i], f"input[{t}, {i}]")
        names = {v.name: v for v in self.prob.variables()}
        for k in range(len(self.spikes)):
            mem = trace.membranes[k][:, 0].reshape(self.steps, -1)
            spk = trace.spikes[k][:, 0].reshape(self.steps, -1)
            reset = trace.resets[k][:, 0].reshape(self.steps, -1)
            for (t, j), var in np.ndenumerate(self.membranes[k]):
                assign(var, mem[t, j], f"membrane[{k}][{t}, {j}]")
            for (t, j), var in np.ndenumerate(self.spikes[k]):
                assign(var, spk[t, j], f"spike[{k}][{t}, {j}]")
            for t in range(self.steps):
                for j in range(mem.shape[1]):
                    z = names.get(f"z_{k}_{t}_{j}")
                    if z is not None:
                        z.varValue = float(reset[t, j])
        for var in self.prob.variables():
            if var.varValue is None:
                continue
            if (var.lowBound is not None and var.varValue < var.lowBound - tol) or \
                    (var.upBound is not None and var.varValue > var.upBound + tol):
                problems.append(f"bound of {var.name}: {var.varValue} not in [{var.lowBound}, {var.upBound}]")
        constraints = self.prob.constraints
        constraints = constraints() if callable(constraints) else constraints.values()  # PuLP >= 3.3 / older
        for constraint in constraints:
            if not constraint.valid(tol):
                problems.append(f"{constraint.name}: {constraint} (residual {constraint.value()})")
        return problems

    # --- solving ------------------------------------------------------------------------------
    def input_value(self) -> np.ndarray:
        """The incumbent's input spikes ``[T', *in]`` (uint8)."""
        flat = np.empty(self.inputs.shape, dtype=np.uint8)
        for index, v in np.ndenumerate(self.inputs):
            if _is_const(v):
                flat[index] = int(v)
            else:
                value = v.varValue
                flat[index] = 0 if value is None else int(round(value))
        return flat.reshape((self.steps,) + tuple(self.input_set.input_shape))

    def solve(self, expr, sense: str, time_limit: Optional[float] = None, solver: Optional[str] = None,
              safe: bool = False) -> Solution:
        """Minimizes (``sense="min"``) or maximizes ``expr`` over the model."""
        pulp = self._pulp
        if sense not in ("min", "max"):
            raise ValueError("sense must be 'min' or 'max'")
        start = time.perf_counter()
        if len(expr) == 0:
            # Constant objective: any member is optimal; no solve needed.
            x = self.input_set.sample(np.random.default_rng(0), 1)[:, 0]
            return Solution("optimal", float(expr.constant), x, time.perf_counter() - start)
        self.prob.sense = pulp.LpMinimize if sense == "min" else pulp.LpMaximize
        self.prob.setObjective(expr)
        backend = make_solver(time_limit, solver, safe)
        if isinstance(backend, pulp.COIN_CMD):
            # LP files, not MPS + "-max": CBC 2.10 was seen to call a feasible maximization read
            # from MPS "infeasible" and still report "Optimal" with a wrong value.
            self.prob.solve(backend, use_mps=False)
        else:
            with _quiet_stdout():  # HiGHS prints a banner on its first run even with msg=False
                self.prob.solve(backend)
        seconds = time.perf_counter() - start
        status, sol_status = self.prob.status, getattr(self.prob, "sol_status", None)
        if status == pulp.LpStatusInfeasible:
            return Solution("infeasible", None, None, seconds)
        if status == pulp.LpStatusOptimal and sol_status in (None, pulp.LpSolutionOptimal):
            return Solution("optimal", float(pulp.value(expr)), self.input_value(), seconds)
        if sol_status == pulp.LpSolutionIntegerFeasible:
            return Solution("feasible", float(pulp.value(expr)), self.input_value(), seconds)
        return Solution("timeout", None, None, seconds)
