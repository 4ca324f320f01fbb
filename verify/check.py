"""Soundness checker for another implementation's bounds and verdicts.

    python -m verify.check --model MODEL.h5 --cases CASES.h5 [--json report.json]
                           [--method auto|milp|search] [--time-limit 30] [--atol 0]

MODEL: refsnn's HDF5 model format (docs/FORMAT.md). CASES: see ``verify.cases``.

Per case and sample the checker:

1. compares the claimed bounds of ``C f`` with refsnn's own S-IBP and S-CROWN (``looser``,
   ``equal`` or ``tighter`` than the best of the two; tighter on the same relaxation is suspicious);
   a claim at least as loose as refsnn's bound is implied sound by it;
2. tries to refute every other claim with a real input: the exact MILP (``verify.milp``) on small
   networks (``--method auto`` picks it when the model has few binaries), or sampling plus
   near-threshold local search (``verify.search``) on large ones. A refuted claim is UNSOUND, with
   the witness input and the output that the real forward pass gives for it;
3. checks claimed membrane bounds the same way (claims tighter than refsnn's S-IBP only);
4. refutes "certified" verdicts by finding a member whose margin ``f_label - f_j`` is <= 0 for
   some ``j``: misclassified, or a tie (spike-rate outputs are multiples of 1/T', and a margin of
   exactly 0 certifies nothing).

Status per case: UNSOUND (something refuted), SOUND (every claim proven: implied by refsnn's
bounds or by an exact MILP), NOT_REFUTED (no counterexample found, some claim unproven).
Exit code 1 if anything is UNSOUND, 2 for bad input (one-line message), else 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy as np

from refsnn.network import SNN

from .cases import Case, CasesError, read_cases
from .encoding import VerifierError, float64_network
from .milp import SampleVerifier, robust_query
from .search import closest_to_threshold, search_extremes, search_membranes
from .sets import BoxSet
from .specs import margin_specs, normalize_specs

METHODS = ("auto", "milp", "search")


@dataclass
class CheckConfig:
    """Options of the checker (saved in the report)."""

    method: str = "auto"
    time_limit: float = 30.0
    atol: float = 0.0
    samples: int = 256
    max_milp_binaries: int = 400
    max_membrane_targets: int = 200
    seed: int = 0


def _relation(claimed: float, reference: float, side: str, tol: float = 1e-9) -> str:
    if abs(claimed - reference) <= tol * (1 + abs(reference)):
        return "equal"
    tighter = claimed > reference if side == "lower" else claimed < reference
    return "tighter" if tighter else "looser"


def _estimate_binaries(net: SNN, box: BoxSet) -> int:
    from .encoding import membrane_bounds
    bounds = membrane_bounds(net, box, "auto")
    th = net.threshold
    unstable = sum(int(np.count_nonzero((lo < th) & (up >= th))) for lo, up in zip(bounds.lower, bounds.upper))
    return box.n_free + unstable


def _witness_record(net64: SNN, x: np.ndarray, net: Optional[SNN] = None) -> dict:
    """The witness, its float64 output, and the membrane closest to the threshold on its trajectory
    (a tiny gap there is where single-precision arithmetic can flip a spike)."""
    rates = net64.forward(x[:, None])[0]
    gap, where = closest_to_threshold(net64, x[:, None])
    record = {"input": x.astype(int).tolist(), "rates": rates.tolist(), "prediction": int(np.argmax(rates)),
              "closest_membrane_to_threshold": {"gap": gap, "stage": where[0], "t": where[1], "neuron": where[3]}}
    if net is not None and net.dtype != np.float64:
        own = net.forward(x[:, None])[0]
        record[f"rates_{net.dtype.name}"] = own.tolist()
        record["dtype_disagrees"] = bool(np.any(own != rates))
    return record


class Checker:
    def __init__(self, net: SNN, config: CheckConfig):
        if config.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {config.method!r}")
        self.net = net
        self.net64 = float64_network(net)
        self.config = config

    def check_case(self, case: Case) -> dict:
        from refsnn.bounds import compute_bounds, interval_bounds
        start = time.perf_counter()
        net, config = self.net, self.config
        specs = normalize_specs(case.C, case.batch, net.n_outputs)
        ibp = compute_bounds(net, case.x_lower, case.x_upper, method="ibp", C=specs)
        crown = compute_bounds(net, case.x_lower, case.x_upper, method="crown-ibp", C=specs)
        best = (np.maximum(ibp[0], crown[0]), np.minimum(ibp[1], crown[1]))
        intervals = interval_bounds(net, case.x_lower, case.x_upper)
        report = {"name": case.name, "samples": case.batch, "steps": case.steps, "n_spec": int(specs.shape[1]),
                  "claimed_method": case.method, "claimed_dtype": case.dtype, "eps": case.eps,
                  "violations": [], "membrane_violations": [], "verdicts": None, "methods_used": []}
        comparison = {side: {ref: {"tighter": 0, "equal": 0, "looser": 0} for ref in ("ibp", "crown-ibp", "best")}
                      for side in ("lower", "upper")}
        counts = {"claims": 0, "implied": 0, "proven": 0, "refuted": 0, "unproven": 0}
        mem_counts = {"claims": 0, "implied": 0, "proven": 0, "refuted": 0, "unproven": 0}
        verdicts = {"certified": 0, "refuted": 0, "confirmed": 0, "not_refuted": 0, "details": []}

        for b in range(case.batch):
            box = BoxSet(case.x_lower[:, b], case.x_upper[:, b])
            use_milp = config.method == "milp" or (
                config.method == "auto" and _estimate_binaries(net, box) <= config.max_milp_binaries)
            report["methods_used"].append("milp" if use_milp else "search")
            verifier = SampleVerifier(net, box, "auto", config.time_limit) if use_milp else None
            rng = np.random.default_rng(config.seed + b)
            # --- output claims -----------------------------------------------------------
            for side, claims, sense in (("lower", case.claimed_lower, "min"), ("upper", case.claimed_upper, "max")):
                if claims is None:
                    continue
                refs = {"ibp": ibp[0 if side == "lower" else 1], "crown-ibp": crown[0 if side == "lower" else 1],
                        "best": best[0 if side == "lower" else 1]}
                for i in range(specs.shape[1]):
                    claim = float(claims[b, i])
                    counts["claims"] += 1
                    for ref, values in refs.items():
                        comparison[side][ref][_relation(claim, float(values[b, i]), side)] += 1
                    if _relation(claim, float(refs["best"][b, i]), side) != "tighter":
                        counts["implied"] += 1
                        continue
                    if use_milp:
                        ext = verifier.rate_extreme(specs[b, i], sense)
                        reached, witness, proven_bound = ext.attained, ext.witness, ext.bound
                        how = f"milp ({ext.status})"
                    else:
                        searched = search_extremes(net, box, specs[b, i:i + 1], samples=config.samples, rng=rng,
                                                   senses=(sense,))
                        reached = float(searched.min[0] if sense == "min" else searched.max[0])
                        witness = searched.argmin[0] if sense == "min" else searched.argmax[0]
                        proven_bound, how = None, "search"
                    excess = (claim - reached) if side == "lower" else (reached - claim)
                    if reached is not None and excess > config.atol:
                        counts["refuted"] += 1
                        report["violations"].append({
                            "sample": b, "spec": i, "C_row": specs[b, i].tolist(), "side": side, "claimed": claim,
                            "true_value": reached, "excess": excess, "found_by": how,
                            "witness": _witness_record(self.net64, witness, self.net)})
                    elif proven_bound is not None and (
                            claim <= proven_bound + config.atol if side == "lower" else claim >= proven_bound - config.atol):
                        counts["proven"] += 1
                    else:
                        counts["unproven"] += 1
            # --- membrane claims ---------------------------------------------------------
            targets = []
            for side, stages, sense in (("lower", case.claimed_mem_lower, "min"), ("upper", case.claimed_mem_upper, "max")):
                for k, array in (stages or {}).items():
                    claim = array[:, b].reshape(case.steps, -1)
                    ref = (intervals.mem_lower if side == "lower" else intervals.mem_upper)[k][:, b].reshape(case.steps, -1)
                    tighter = claim > ref if side == "lower" else claim < ref
                    mem_counts["claims"] += claim.size
                    mem_counts["implied"] += int(claim.size - np.count_nonzero(tighter))
                    for t, j in np.argwhere(tighter):
                        margin = abs(claim[t, j] - ref[t, j])
                        targets.append((margin, k, int(t), int(j), sense, float(claim[t, j])))
            targets.sort(key=lambda item: -item[0])  # the most aggressive claims first
            mem_counts["unproven"] += max(0, len(targets) - config.max_membrane_targets)
            targets = targets[:config.max_membrane_targets]
            if targets and not use_milp:
                found = search_membranes(net, box, [(k, t, j, sense) for _, k, t, j, sense, _ in targets],
                                         samples=min(config.samples, 128), rng=rng)
            for index, (_, k, t, j, sense, claim) in enumerate(targets):
                if use_milp:
                    ext = verifier.membrane_extreme(k, t, j, sense)
                    reached, witness, bound = ext.attained, ext.witness, ext.bound
                else:
                    reached, witness, bound = found[index].value, found[index].x, None
                excess = (claim - reached) if sense == "min" else (reached - claim)
                if reached is not None and excess > config.atol:
                    mem_counts["refuted"] += 1
                    report["membrane_violations"].append({
                        "sample": b, "stage": k, "t": t, "neuron": j, "side": "lower" if sense == "min" else "upper",
                        "claimed": claim, "true_value": reached, "excess": excess,
                        "witness": _witness_record(self.net64, witness, self.net)})
                elif bound is not None and (claim <= bound if sense == "min" else claim >= bound):
                    mem_counts["proven"] += 1
                else:
                    mem_counts["unproven"] += 1
            # --- verdicts ----------------------------------------------------------------
            if case.certified is not None and case.certified[b]:
                verdicts["certified"] += 1
                label = int(case.labels[b])
                detail = {"sample": b, "label": label}
                refsnn_lower, _ = compute_bounds(net, case.x_lower[:, b:b + 1], case.x_upper[:, b:b + 1],
                                                 method="best", C=margin_specs([label], net.n_outputs))
                if np.all(refsnn_lower > 0):
                    verdicts["confirmed"] += 1
                    detail["result"] = "confirmed by refsnn's bounds"
                elif use_milp:
                    result = robust_query(net, box, label, time_limit=config.time_limit, rng=rng)
                    if result.status == "not_robust":
                        verdicts["refuted"] += 1
                        detail.update(result="refuted", witness=_witness_record(self.net64, result.witness, self.net))
                    elif result.status == "robust":
                        verdicts["confirmed"] += 1
                        detail["result"] = "confirmed by the exact MILP"
                    else:
                        verdicts["not_refuted"] += 1
                        detail["result"] = f"not refuted ({result.reason})"
                else:
                    rows = margin_specs([label], net.n_outputs)[0]
                    ext = search_extremes(net, box, rows, samples=config.samples, rng=rng, senses=("min",))
                    j = int(np.argmin(ext.min))
                    if ext.min[j] <= 0:
                        verdicts["refuted"] += 1
                        detail.update(result="refuted", witness=_witness_record(self.net64, ext.argmin[j], self.net))
                    else:
                        verdicts["not_refuted"] += 1
                        detail["result"] = f"not refuted by search (smallest margin found {ext.min[j]})"
                if detail["result"] != "confirmed by refsnn's bounds":
                    verdicts["details"].append(detail)
        if case.certified is not None:
            report["verdicts"] = verdicts
        report["outputs"] = counts
        report["membranes"] = mem_counts
        report["comparison"] = comparison
        refuted = counts["refuted"] + mem_counts["refuted"] + verdicts["refuted"]
        unproven = counts["unproven"] + mem_counts["unproven"] + verdicts["not_refuted"]
        report["status"] = "UNSOUND" if refuted else ("NOT_REFUTED" if unproven else "SOUND")
        report["seconds"] = time.perf_counter() - start
        return report

    def check(self, cases: List[Case]) -> dict:
        reports = [self.check_case(case) for case in cases]
        return {"config": asdict(self.config), "network": repr(self.net),
                "unsound": any(r["status"] == "UNSOUND" for r in reports), "cases": reports}


def check_cases(net: SNN, cases: List[Case], config: Optional[CheckConfig] = None) -> dict:
    """Checks validated cases against ``net``; returns the report (a JSON-ready dict)."""
    return Checker(net, config or CheckConfig()).check(cases)


def summary(report: dict) -> str:
    """A readable summary of a report."""
    lines = [f"network: {report['network']}"]
    for case in report["cases"]:
        out, mem = case["outputs"], case["membranes"]
        lines.append(f"[{case['status']}] case {case['name']!r}: {case['samples']} sample(s), "
                     f"{case['n_spec']} spec(s), {case['seconds']:.1f}s, "
                     f"method {'/'.join(sorted(set(case['methods_used'])))}")
        if out["claims"]:
            cmp = case["comparison"]
            lines.append(f"    output bounds: {out['claims']} claims, {out['implied']} implied by refsnn's bounds, "
                         f"{out['proven']} proven by MILP, {out['refuted']} refuted, {out['unproven']} unproven")
            for side in ("lower", "upper"):
                c = cmp[side]["best"]
                if sum(c.values()):
                    lines.append(f"    {side} vs refsnn best(S-IBP, S-CROWN): {c['tighter']} tighter, "
                                 f"{c['equal']} equal, {c['looser']} looser")
        if mem["claims"]:
            lines.append(f"    membrane bounds: {mem['claims']} claims, {mem['implied']} implied by refsnn's S-IBP, "
                         f"{mem['proven']} proven, {mem['refuted']} refuted, {mem['unproven']} unproven")
        if case["verdicts"]:
            v = case["verdicts"]
            lines.append(f"    verdicts: {v['certified']} certified, {v['confirmed']} confirmed, "
                         f"{v['refuted']} refuted, {v['not_refuted']} not refuted")
        for violation in case["violations"][:5]:
            w = violation["witness"]
            lines.append(f"    UNSOUND sample {violation['sample']} spec {violation['spec']} {violation['side']}: "
                         f"claimed {violation['claimed']!r}, a real input gives {violation['true_value']!r} "
                         f"(rates {np.round(w['rates'], 6).tolist()})")
        for violation in case["membrane_violations"][:5]:
            lines.append(f"    UNSOUND membrane sample {violation['sample']} stage {violation['stage']} "
                         f"t {violation['t']} neuron {violation['neuron']} {violation['side']}: claimed "
                         f"{violation['claimed']!r}, real {violation['true_value']!r}")
        for detail in (case["verdicts"] or {}).get("details", [])[:5]:
            if detail["result"] == "refuted":
                lines.append(f"    WRONG CERTIFICATE sample {detail['sample']} (label {detail['label']}): a member "
                             f"has rates {np.round(detail['witness']['rates'], 6).tolist()}")
    lines.append("UNSOUND claims found" if report["unsound"] else "no unsound claim found")
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verify.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model file (refsnn HDF5 format, docs/FORMAT.md)")
    parser.add_argument("--cases", required=True, help="cases file (format in verify/cases.py, verify/README.md)")
    parser.add_argument("--json", help="write the machine-readable report here")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="milp: exact (small nets); search: sampling + near-threshold search; auto: by size")
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds per MILP (default 30)")
    parser.add_argument("--atol", type=float, default=0.0,
                        help="tolerated excess of a claim over a real value (default 0: exact)")
    parser.add_argument("--samples", type=int, default=256, help="random members per search (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        from refsnn.io import FormatError, load_model
        try:
            net = load_model(args.model)
        except (FormatError, OSError, ValueError) as error:
            raise CasesError(f"model {args.model}: {error}") from None
        cases = read_cases(args.cases, net)
        config = CheckConfig(method=args.method, time_limit=args.time_limit, atol=args.atol, samples=args.samples,
                             seed=args.seed)
        report = check_cases(net, cases, config)
    except (CasesError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except VerifierError as error:
        print(f"error: the verifier could not give a trustworthy answer: {error}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, KeyError) as error:  # anything else malformed in the inputs
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    report["model"], report["cases_file"] = str(args.model), str(args.cases)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1, default=_json_default)
    print(summary(report))
    return 1 if report["unsound"] else 0


if __name__ == "__main__":
    sys.exit(main())
