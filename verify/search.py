"""Adversarial search inside an input set: sampling, greedy local search, near-threshold moves.

Finds real inputs with extreme values of ``C f`` or of chosen membranes, for networks too large
for the MILP. Every value comes from the real float64 forward pass, so whatever the search finds
is definitive evidence (a witness); what it does not find proves nothing.

Near-threshold search: output rates are step functions of the input, flat almost everywhere, so
plain hill climbing stalls. Moves are ranked first by the objective and then by a smooth
surrogate, ``sum_j c_j sum_t clip((m_t[j] - th) / width + 1/2, 0, 1)`` over the output membranes,
which rewards pushing the membranes that matter toward and across the threshold. Inputs whose
membranes end up within a hair of the threshold are exactly where float32 bound arithmetic can
round a bound onto the wrong side; ``closest_to_threshold`` reports them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from refsnn.network import SNN

from .encoding import float64_network
from .enumerate import Extremes
from .sets import InputSet

SURROGATE_WIDTH = 0.5


def _scores(net64: SNN, x: np.ndarray, coefs: np.ndarray, sign: float) -> Tuple[np.ndarray, np.ndarray]:
    """Objective ``sign * T' c.f`` and the lexicographic score (objective + small surrogate) ``[b]``."""
    trace = net64.run(x)
    steps = x.shape[0]
    spikes = trace.spikes[-1].reshape(steps, x.shape[1], -1)
    membranes = trace.membranes[-1].reshape(steps, x.shape[1], -1)
    objective = sign * spikes.sum(axis=0) @ coefs
    soft = np.clip((membranes - net64.threshold) / SURROGATE_WIDTH + 0.5, 0.0, 1.0).sum(axis=0) @ coefs
    weight = 0.5 / (np.abs(coefs).sum() * steps + 1.0)
    return objective, objective + sign * weight * soft


MOVE_CHUNK = 4096  # moves evaluated per forward pass (and between two looks at the clock)


def local_search(net64: SNN, input_set: InputSet, start: np.ndarray, coefs: np.ndarray, sign: float,
                 max_steps: int = 30, deadline: Optional[float] = None, max_moves: Optional[int] = None,
                 rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, float]:
    """Greedy ascent of ``sign * c.f`` (with the surrogate tie-break) from member ``start [T', *in]``.

    Each step evaluates the moves (``input_set.moves``) in chunks of ``MOVE_CHUNK`` and takes the
    best; ``max_moves``: a step with more moves evaluates that many drawn by ``rng`` (stochastic
    ascent). ``deadline`` (a ``time.perf_counter()`` value): the search stops at the first chunk
    boundary past it, so it overruns it by at most one chunk's forward pass."""
    x = start
    objective, score = _scores(net64, x[:, None], coefs, sign)
    best_objective, best_score = float(objective[0]), float(score[0])
    for _ in range(max_steps):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        moves = input_set.moves(x)
        if len(moves) == 0:
            break
        index = np.arange(len(moves))
        if max_moves is not None and len(moves) > max_moves:
            rng = rng if rng is not None else np.random.default_rng(0)
            index = np.sort(rng.choice(len(moves), size=max_moves, replace=False))
        step_x, step_objective, step_score = None, None, best_score + 1e-15
        for begin in range(0, index.size, MOVE_CHUNK):
            if begin and deadline is not None and time.perf_counter() >= deadline:
                break
            chunk = moves.take(index[begin:begin + MOVE_CHUNK])
            objective, score = _scores(net64, chunk, coefs, sign)
            i = int(np.argmax(score))
            if score[i] > step_score:  # strictly better: the first of equal moves wins, as in one batch
                step_x, step_objective, step_score = chunk[:, i], float(objective[i]), float(score[i])
        if step_x is None:
            break
        x, best_objective, best_score = step_x, step_objective, step_score
    return x, best_objective


def search_extremes(net: SNN, input_set: InputSet, C_rows: Optional[np.ndarray] = None, samples: int = 256,
                    rng: Optional[np.random.Generator] = None, starts: int = 4, max_steps: int = 30,
                    senses: Sequence[str] = ("min", "max")) -> Extremes:
    """Smallest and largest ``C_rows @ f`` found by sampling and near-threshold local search.

    ``C_rows [n_spec, n_out]`` (identity if None). The values are reached by the returned inputs
    (real forward pass): lower bounds of the max and upper bounds of the min, not the extremes.
    ``senses``: search only the minimum or only the maximum (the other is left at NaN).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    net64 = float64_network(net)
    C_rows = np.eye(net.n_outputs) if C_rows is None else np.asarray(C_rows, dtype=np.float64)
    steps = input_set.steps
    pool = input_set.sample(rng, samples)
    pool_rates = net64.forward(pool)
    n_spec = C_rows.shape[0]
    shape = (n_spec, steps) + tuple(net.input_shape)
    out = {"min": np.full(n_spec, np.nan), "max": np.full(n_spec, np.nan),
           "argmin": np.zeros(shape, np.uint8), "argmax": np.zeros(shape, np.uint8)}
    for i, coefs in enumerate(C_rows):
        for sense, sign in (("min", -1.0), ("max", 1.0)):
            if sense not in senses:
                continue
            values = sign * (pool_rates @ coefs) * steps
            order = np.argsort(-values)[:starts]
            best_x, best_value = pool[:, order[0]], float(values[order[0]])
            for start in order:
                x, value = local_search(net64, input_set, pool[:, start], coefs, sign, max_steps)
                if value > best_value:
                    best_x, best_value = x, value
            out[sense][i] = sign * best_value / steps
            out["arg" + sense][i] = best_x
    return Extremes(out["min"], out["max"], out["argmin"], out["argmax"], samples)


@dataclass
class MembraneWitness:
    """A real input and the membrane it reaches: stage ``k``, time ``t``, flat neuron ``j``."""

    k: int
    t: int
    j: int
    value: float
    x: np.ndarray


def search_membranes(net: SNN, input_set: InputSet, targets: Sequence[Tuple[int, int, int, str]],
                     samples: int = 128, rng: Optional[np.random.Generator] = None,
                     max_steps: int = 30) -> List[MembraneWitness]:
    """For each target ``(k, t, j, "min"|"max")``, the most extreme membrane found (sampling + greedy)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    net64 = float64_network(net)
    pool = input_set.sample(rng, samples)
    trace = net64.run(pool)
    found = []
    for k, t, j, sense in targets:
        sign = 1.0 if sense == "max" else -1.0

        def value_of(x):
            mem = net64.run(x).membranes[k]
            return sign * mem.reshape(mem.shape[0], mem.shape[1], -1)[t, :, j]

        mem = trace.membranes[k]
        values = sign * mem.reshape(mem.shape[0], mem.shape[1], -1)[t, :, j]
        i = int(np.argmax(values))
        x, best = pool[:, i], float(values[i])
        for _ in range(max_steps):
            moves = input_set.neighbors(x)
            if moves.shape[1] == 0:
                break
            moved = value_of(moves)
            i = int(np.argmax(moved))
            if moved[i] <= best:
                break
            x, best = moves[:, i], float(moved[i])
        found.append(MembraneWitness(k, t, j, sign * best, x))
    return found


def closest_to_threshold(net: SNN, x: np.ndarray) -> Tuple[float, Tuple[int, int, int, int]]:
    """Smallest ``|m - th|`` over every membrane of inputs ``x [T', b, *in]`` and where (k, t, b, j)."""
    trace = float64_network(net).run(x)
    best, where = np.inf, (0, 0, 0, 0)
    for k, mem in enumerate(trace.membranes):
        gap = np.abs(mem.reshape(mem.shape[0], mem.shape[1], -1) - net.threshold)
        index = np.unravel_index(np.argmin(gap), gap.shape)
        if gap[index] < best:
            best, where = float(gap[index]), (k,) + tuple(int(v) for v in index)
    return best, where
