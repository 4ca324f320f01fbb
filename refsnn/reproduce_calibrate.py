"""Calibrated attack eps: the eps at which a plain model's paper-attack error reaches 20/30/40/50 %.

The paper chose its Table 2 eps so that the ORIGINAL model's attack error is about 20, 30, 40 and
50 % (../shared/docs/paper-tables.md, "attack protocol"). :func:`calibrate_eps` applies that rule to
our own plain model: for each target it bisects eps on a fixed subset of the test split (the
protocol's seeded selection of ``n`` samples, scored on the attack's own evaluation draw, the
paper's scoring), and the reproduction then runs the Table 2 protocol on the full selection at
those eps (``python -m refsnn.reproduce --calibrate``, folder ``attack_calibrated/``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

TARGETS = (0.2, 0.3, 0.4, 0.5)


class CalibrationError(ValueError):
    """Bad calibration settings (targets, iterations, eps range)."""


def bisect_targets(error_at: Callable[[float], float], targets: Sequence[float], upper: float,
                   iterations: int = 5, significant: int = 3, tolerance: float = 0.02,
                   limit: float = float("inf")) -> Dict[str, object]:
    """For each target error ``t`` the eps in ``(0, upper]`` whose measured error is closest to ``t``.

    ``error_at(eps) -> error in [0, 1]`` (a noisy, roughly increasing function: one attack run);
    eps are rounded to ``significant`` digits before they are measured, and each eps is measured once
    (shared by all targets). Bisection keeps ``lo`` (error < t) and ``hi`` (error >= t) and stops at the
    first eps whose error lies within ``tolerance`` of ``t`` (100 samples have a sampling error of about
    4 points, so a finer search only fits noise); ``upper`` is
    doubled (up to 8 times, never past ``limit``, e.g. 1 for digital inputs) until its error reaches
    the largest target. Returns ``{"eps": [per target], "errors": [measured error at it], "reached":
    [whether that error is within ``tolerance`` of the target or above it], "evaluations": {eps: error}}``.
    """
    targets = [float(t) for t in targets]
    if not targets or any(not 0.0 < t < 1.0 for t in targets) or targets != sorted(targets):
        raise CalibrationError(f"targets must be increasing error rates in (0, 1), got {targets}")
    if int(iterations) < 1 or not 0 < upper <= limit:
        raise CalibrationError(f"iterations must be >= 1 and 0 < upper <= limit, got {iterations}, {upper}, {limit}")
    measured: Dict[float, float] = {}

    def at(eps: float) -> float:
        eps = float(f"{eps:.{significant}g}")
        if eps not in measured:
            measured[eps] = float(error_at(eps))
        return measured[eps]

    for _ in range(8):
        if at(upper) >= targets[-1] or upper >= limit:
            break
        upper = min(2.0 * upper, limit)
    chosen, errors = [], []
    for target in targets:
        below = [e for e, v in measured.items() if v < target]
        above = [e for e, v in measured.items() if v >= target]
        close = [e for e, v in measured.items() if abs(v - target) <= tolerance]
        if close:
            best = min(close, key=lambda e: (abs(measured[e] - target), e))
            chosen.append(best)
            errors.append(measured[best])
            continue
        lo = max(below, default=0.0)
        hi = min([e for e in above if e > lo], default=float(f"{upper:.{significant}g}"))
        for _ in range(int(iterations)):
            mid = float(f"{0.5 * (lo + hi):.{significant}g}")
            if mid <= lo or mid >= hi:
                break
            error = at(mid)
            if abs(error - target) <= tolerance:
                lo = hi = mid
                break
            if error < target:
                lo = mid
            else:
                hi = mid
        candidates = [e for e in dict.fromkeys((lo, hi)) if e in measured]
        best = min(candidates, key=lambda e: (abs(measured[e] - target), e)) if candidates else hi
        chosen.append(best)
        errors.append(measured.get(best))
    reached = [error is not None and error >= target - tolerance for error, target in zip(errors, targets)]
    return {"eps": chosen, "errors": errors, "reached": reached, "evaluations": {f"{e:g}": v for e, v in sorted(measured.items())}}


def calibrate_eps(model: Path, dataset: str, n: int, seed: int = 0, data_dir: Optional[str] = None,
                  targets: Sequence[float] = TARGETS, start: float = 0.1, iterations: int = 5,
                  log: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Bisects the paper attack's error on ``model`` over eps (:func:`bisect_targets`).

    ``n`` samples: the protocol's selection ``select_samples(N_test, n, seed)`` (all of a smaller test
    split); evaluation maps and attack seeds as ``python -m refsnn.attack`` with ``--seed seed``.
    ``start``: the first upper eps tried (e.g. the paper's largest eps of the setting).
    """
    from .attack import EVENT_DATASETS
    from .attacks.protocol import ProtocolConfig, run_protocol, select_samples
    from .data import load_dataset, to_time_major
    from .io import load_model, read_metadata

    net = load_model(str(model))
    T = (read_metadata(str(model)).get("config") or {}).get("T", 10)
    kind = "spike" if dataset in EVENT_DATASETS else "digital"
    x_all, y_all = load_dataset(dataset, "test", data_dir=data_dir, T=T)
    n = min(int(n), len(y_all))
    indices = select_samples(len(y_all), n, seed)
    labels = np.asarray(y_all[indices], dtype=np.int64)
    x = np.asarray(x_all[indices], dtype=np.float64) if kind == "digital" else to_time_major(x_all[indices])
    upper = 1.0 if kind == "digital" else float("inf")
    runs: List[Dict[str, float]] = []

    def error_at(eps: float) -> float:
        config = ProtocolConfig(attacks=["paper"], eps=[eps], kind=kind, T=T, seed=seed, fresh_draws=0)
        started = time.perf_counter()
        row = run_protocol({"plain": net}, x, labels, config)[0]
        runs.append({"eps": eps, "attack_error": row.attack_error, "seconds": time.perf_counter() - started})
        if log is not None:
            log(f"calibrate {dataset}: eps {eps:g} -> paper-attack error {100 * row.attack_error:.1f}% on {n}")
        return row.attack_error

    found = bisect_targets(error_at, targets, min(start, upper), iterations, limit=upper)
    return {"model": str(model), "dataset": dataset, "n": n, "seed": seed, "T": T, "targets": list(targets),
            "scoring": "attack-draw (the evaluation rand maps the attack judged success on; the paper's)",
            "selection": f"select_samples({len(y_all)}, {n}, {seed})", "iterations": iterations,
            **found, "runs": runs}


def read_calibration(path: Path) -> Optional[List[float]]:
    """The calibrated eps stored in ``path`` (``calibration.json``), or None when absent."""
    if not Path(path).exists():
        return None
    return [float(e) for e in json.loads(Path(path).read_text())["eps"]]
