"""Soundness checker for another implementation's bounds and verdicts.

    python -m verify.check --model MODEL.h5 --cases CASES.h5 [--json report.json]
                           [--method auto|milp|search|complete] [--time-limit 30] [--atol 0]

MODEL: refsnn's HDF5 model format (docs/FORMAT.md). CASES: see ``verify.cases``.

What "sound" means. The true value of a quantity (``c . f``, a membrane, a margin) for an input is
the one computed in exact rational arithmetic from the model's stored float weights, threshold
and decay (``verify.exact``): no rounding, and a membrane exactly on the threshold fires under
``">="`` and not under ``">"``. A claimed bound ``[lo, hi]`` is sound iff for every member of the
box the true value ``v`` satisfies ``lo - atol <= v <= hi + atol``, evaluated exactly (claims and
``atol`` are the rationals their floats denote; ``atol = 0`` allows no slack). A claim off by one
ulp is unsound.

Per case and sample the checker:

1. compares the claimed bounds of ``C f`` with refsnn's own S-IBP and S-CROWN (``looser``,
   ``equal`` or ``tighter`` than the best of the two, a statistic); a claim that refsnn's
   outward-rounded bound implies in exact arithmetic is sound;
2. decides every other claim: on sets of at most ``max_exact_members`` members (``--method
   auto``) by running every member through the exact forward pass (complete and exact); on small
   networks by the MILP (``verify.milp``), whose witness is replayed exactly and whose bound counts
   as proof only as a rational bound (for integer rows the integer grid of ``T' c . f``); on large
   ones by sampling plus near-threshold local search (``verify.search``), which can refute but not
   prove. ``--method complete`` decides the output claims and verdicts of sets too large to
   enumerate by branch and bound (``verify.spec_bab`` / ``verify.robust_bab``: a lower claim ``lo``
   is the question "``c . f >= lo - atol`` for every member?", an upper one that of ``-c . f``;
   ``--time-limit`` seconds per claim), and its membrane claims by search. A refuted claim is
   UNSOUND, with a witness input whose exact output violates it;
3. checks claimed membrane bounds the same way (claims tighter than refsnn's S-IBP only);
4. refutes "certified" verdicts by finding a member whose exact margin ``f_label - f_j`` is <= 0
   for some ``j``: misclassified, or a tie (a margin of exactly 0 certifies nothing).

Status per case: UNSOUND (something refuted), SOUND (every claim proven: implied by refsnn's
bounds, by exact enumeration, by the MILP or by branch and bound), NOT_REFUTED (no counterexample found, some claim
unproven: search only, a solver time limit, or an unresolved tie gap).

Exit codes: 0 every case SOUND; 1 some case UNSOUND; 2 usage or input error (a one-line message
naming the file, case and field), nothing checked; 3 undecided: no case UNSOUND but some
NOT_REFUTED.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import List, Optional

import numpy as np

from refsnn import cli
from refsnn.network import SNN

from .cases import Case, CasesError, read_cases
from .encoding import VerifierError, float64_network
from .exact import ExactNetwork, ExactTrace, excess, outside
from .bab import BabConfig, robust_bab, spec_bab
from .milp import SampleVerifier, robust_query, sound_rate_bound
from .search import closest_to_threshold, search_extremes, search_membranes
from .sets import BoxSet
from .specs import margin_specs, normalize_specs

METHODS = ("auto", "milp", "search", "complete")
EXIT_SOUND, EXIT_UNSOUND, EXIT_USAGE, EXIT_UNDECIDED = 0, 1, 2, 3
EXIT_CODES_HELP = ("exit codes: 0 every case SOUND; 1 some claim refuted (UNSOUND, with a witness); "
                   "2 usage or input error (one-line message); 3 undecided (no claim refuted, some "
                   "not proven: search only, a time limit or a tie gap)")


class CheckConfigError(ValueError):
    """An option of the checker is out of range; the message names it and the allowed range."""


@dataclass
class CheckConfig:
    """Options of the checker (saved in the report); validated on construction (``CheckConfigError``).

    ``atol``: tolerated excess of a claim over a true value, finite and >= 0 (0: none).
    ``max_exact_members``: ``method="auto"`` decides sets of at most this many members by exact
    enumeration (and at most ``max_exact_work`` member-weights of exact arithmetic).
    """

    method: str = "auto"
    time_limit: float = 30.0
    atol: float = 0.0
    samples: int = 256
    max_milp_binaries: int = 400
    max_membrane_targets: int = 200
    seed: int = 0
    max_exact_members: int = 1024
    max_exact_work: int = 50_000_000

    def __post_init__(self):
        if self.method not in METHODS:
            raise CheckConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("atol", "time_limit"):
            value = getattr(self, name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise CheckConfigError(f"{name} must be a number, got {value!r}") from None
            setattr(self, name, value)
        if not math.isfinite(self.atol) or self.atol < 0:
            raise CheckConfigError(f"atol (--atol) must be a finite number >= 0 (the slack allowed between a "
                                   f"claim and a true value; 0 = none), got {self.atol!r}")
        if not math.isfinite(self.time_limit) or self.time_limit <= 0:
            raise CheckConfigError(f"time_limit (--time-limit) must be a finite number of seconds > 0, "
                                   f"got {self.time_limit!r}")
        for name, low in (("samples", 1), ("max_milp_binaries", 0), ("max_membrane_targets", 0), ("seed", 0),
                          ("max_exact_members", 0), ("max_exact_work", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise CheckConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _relation(claimed: float, reference: float, side: str, tol: float = 1e-9) -> str:
    """Statistic only (never a decision): ``equal`` within ``tol``, else tighter or looser."""
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


def _rational(value) -> dict:
    """A rational (or +-inf) for the report: the nearest float and the exact ``p/q`` text."""
    if isinstance(value, Fraction):
        return {"float": float(value), "exact": str(value)}
    return {"float": float(value), "exact": repr(float(value))}


class Checker:
    def __init__(self, net: SNN, config: CheckConfig):
        if not isinstance(config, CheckConfig):
            raise CheckConfigError(f"config must be a CheckConfig, got {type(config).__name__}")
        self.net = net
        self.net64 = float64_network(net)
        self.exact = ExactNetwork(net)
        self.config = config
        self.n_weights = sum(int(layer.weight.size) for layer in net.layers if hasattr(layer, "weight"))

    def _witness_record(self, x: np.ndarray, trace: Optional[ExactTrace] = None) -> dict:
        """The witness, its exact output (``rates``; ``rates_exact`` as fractions), the float64 and
        own-dtype outputs, and the membrane closest to the threshold on its float64 trajectory."""
        trace = trace if trace is not None else self.exact.run(x)
        rates = trace.rates
        float64 = self.net64.forward(x[:, None])[0]
        gap, where = closest_to_threshold(self.net64, x[:, None])
        record = {"input": x.astype(int).tolist(), "rates": [float(r) for r in rates],
                  "rates_exact": [str(r) for r in rates], "prediction": int(np.argmax(trace.counts)),
                  "rates_float64": float64.tolist(),
                  "float64_disagrees": bool(np.any(float64 != np.array([float(r) for r in rates]))),
                  "closest_membrane_to_threshold": {"gap": gap, "stage": where[0], "t": where[1], "neuron": where[3]}}
        if self.net.dtype != np.float64:
            own = self.net.forward(x[:, None])[0]
            record[f"rates_{self.net.dtype.name}"] = own.tolist()
            record["dtype_disagrees"] = bool(np.any(own != float64))
        return record

    def _choose(self, box: BoxSet) -> str:
        config = self.config
        if config.method in ("auto", "complete"):
            members = box.count()
            if members <= config.max_exact_members and members * max(self.n_weights, 1) <= config.max_exact_work:
                return "exact"
        if config.method == "complete":
            return "complete"
        if config.method == "milp" or (
                config.method == "auto" and _estimate_binaries(self.net, box) <= config.max_milp_binaries):
            return "milp"
        return "search"

    def _complete_claim(self, box: BoxSet, coefs: np.ndarray, claim: float, side: str,
                        rng: np.random.Generator) -> tuple:
        """``(witness, proof, how)`` of one finite output claim by branch and bound (``verify.spec_bab``):
        a lower claim ``lo`` holds iff every member has ``c . f >= lo - atol``, an upper claim ``hi``
        iff ``-c . f >= -(hi + atol)``. ``proof``: a rational bound of ``c . f`` on the claim's side
        (None unless proven), ``witness``: the member with the smallest margin reached."""
        atol = Fraction(self.config.atol)
        sign = 1.0 if side == "lower" else -1.0
        threshold = Fraction(claim) - atol if side == "lower" else -(Fraction(claim) + atol)
        result = spec_bab(self.net, box, sign * coefs[None], threshold, strict=False,
                          config=BabConfig(time_limit=self.config.time_limit), rng=rng)
        proof = None
        if result.status == "robust":  # margin_lower bounds sign * c . f - threshold from below
            proof = Fraction(result.margin_lower) + threshold
            proof = proof if side == "lower" else -proof
        return result.witness, proof, f"complete ({result.status}: {result.reason})"

    def check_case(self, case: Case) -> dict:
        from refsnn.bounds import compute_bounds, interval_bounds
        start = time.perf_counter()
        net, config = self.net, self.config
        atol = config.atol
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
            method = self._choose(box)
            report["methods_used"].append(method)
            verifier = SampleVerifier(net, box, "auto", config.time_limit) if method == "milp" else None
            # exact enumeration: every member's exact trajectory, shared by all claims of the sample
            members = ([(x, self.exact.run(x)) for batch in box.enumerate(256) for x in batch.swapaxes(0, 1)]
                       if method == "exact" else None)
            rng = np.random.default_rng(config.seed + b)
            # --- output claims -----------------------------------------------------------
            for side, claims, sense in (("lower", case.claimed_lower, "min"), ("upper", case.claimed_upper, "max")):
                if claims is None:
                    continue
                refs = {"ibp": ibp[0 if side == "lower" else 1], "crown-ibp": crown[0 if side == "lower" else 1],
                        "best": best[0 if side == "lower" else 1]}
                for i in range(specs.shape[1]):
                    claim = float(claims[b, i])
                    coefs = specs[b, i]
                    counts["claims"] += 1
                    for ref, values in refs.items():
                        comparison[side][ref][_relation(claim, float(values[b, i]), side)] += 1
                    reference = float(refs["best"][b, i])
                    if math.isfinite(reference) and not outside(Fraction(reference), claim, side, atol):
                        counts["implied"] += 1  # refsnn's bound contains every exact value
                        continue
                    witness, trace, proof, how = None, None, None, method
                    if method == "exact":
                        pick = min if sense == "min" else max
                        witness, trace = pick(members, key=lambda item: item[1].value(coefs))
                        proof = trace.value(coefs)  # the exact extreme over every member
                    elif method == "milp":
                        ext = verifier.rate_extreme(coefs, sense)
                        witness, how = ext.witness, f"milp ({ext.status})"
                        proof = sound_rate_bound(ext.bound, coefs, case.steps, sense)
                    elif method == "complete" and math.isfinite(claim):
                        witness, proof, how = self._complete_claim(box, coefs, claim, side, rng)
                    else:
                        searched = search_extremes(net, box, specs[b, i:i + 1], samples=config.samples, rng=rng,
                                                   senses=(sense,))
                        witness = searched.argmin[0] if sense == "min" else searched.argmax[0]
                    value = None
                    if witness is not None:
                        trace = trace if trace is not None else self.exact.run(witness)
                        value = trace.value(coefs)
                    if value is not None and outside(value, claim, side, atol):
                        counts["refuted"] += 1
                        report["violations"].append({
                            "sample": b, "spec": i, "C_row": coefs.tolist(), "side": side, "claimed": claim,
                            "true_value": float(value), "true_value_exact": str(value),
                            "excess": _rational(excess(value, claim, side)), "atol": atol, "found_by": how,
                            "witness": self._witness_record(witness, trace)})
                    elif proof is not None and (value is None or not (proof > value if sense == "min"
                                                                      else proof < value)) \
                            and not outside(proof, claim, side, atol):
                        counts["proven"] += 1  # a sound bound that no exact member value contradicts
                    else:
                        counts["unproven"] += 1
            # --- membrane claims ---------------------------------------------------------
            targets = []
            for side, stages, sense in (("lower", case.claimed_mem_lower, "min"), ("upper", case.claimed_mem_upper, "max")):
                for k, array in (stages or {}).items():
                    claim = array[:, b].reshape(case.steps, -1)
                    ref = (intervals.mem_lower if side == "lower" else intervals.mem_upper)[k][:, b].reshape(case.steps, -1)
                    mem_counts["claims"] += claim.size
                    for t, j in np.ndindex(*claim.shape):
                        if math.isfinite(ref[t, j]) and not outside(Fraction(float(ref[t, j])), claim[t, j], side, atol):
                            mem_counts["implied"] += 1
                        else:
                            margin = abs(claim[t, j] - ref[t, j]) if math.isfinite(claim[t, j]) else math.inf
                            targets.append((margin, k, int(t), int(j), sense, float(claim[t, j])))
            targets.sort(key=lambda item: -item[0])  # the most aggressive claims first
            if method != "exact":
                mem_counts["unproven"] += max(0, len(targets) - config.max_membrane_targets)
                targets = targets[:config.max_membrane_targets]
            if targets and method in ("search", "complete"):  # the complete method decides output claims only
                found = search_membranes(net, box, [(k, t, j, sense) for _, k, t, j, sense, _ in targets],
                                         samples=min(config.samples, 128), rng=rng)
            for index, (_, k, t, j, sense, claim) in enumerate(targets):
                side = "lower" if sense == "min" else "upper"
                witness, trace, proof = None, None, None
                if method == "exact":
                    pick = min if sense == "min" else max
                    witness, trace = pick(members, key=lambda item: item[1].membrane(k, t, j))
                    proof = trace.membrane(k, t, j)
                elif method == "milp":
                    ext = verifier.membrane_extreme(k, t, j, sense)
                    witness = ext.witness
                    proof = Fraction(ext.bound) if math.isfinite(ext.bound) else None
                else:
                    witness = found[index].x
                value = None
                if witness is not None:
                    trace = trace if trace is not None else self.exact.run(witness)
                    value = trace.membrane(k, t, j)
                if value is not None and outside(value, claim, side, atol):
                    mem_counts["refuted"] += 1
                    report["membrane_violations"].append({
                        "sample": b, "stage": k, "t": t, "neuron": j, "side": side, "claimed": claim,
                        "true_value": float(value), "true_value_exact": str(value),
                        "excess": _rational(excess(value, claim, side)), "atol": atol,
                        "witness": self._witness_record(witness, trace)})
                elif proof is not None and (value is None or not (proof > value if sense == "min" else proof < value)) \
                        and not outside(proof, claim, side, atol):
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
                witness, reason = None, ""
                if np.all(refsnn_lower > 0):
                    verdicts["confirmed"] += 1
                    detail["result"] = "confirmed by refsnn's bounds"
                elif method == "exact":
                    x, trace = min(members, key=lambda item: item[1].margin(label)[0])
                    if trace.margin(label)[0] <= 0:
                        witness = x
                    else:
                        verdicts["confirmed"] += 1
                        detail["result"] = "confirmed by exact enumeration"
                elif method == "milp":
                    result = robust_query(net, box, label, time_limit=config.time_limit, rng=rng)
                    if result.status == "robust":
                        verdicts["confirmed"] += 1
                        detail["result"] = "confirmed by the exact MILP"
                    elif result.status == "not_robust":
                        witness, reason = result.witness, "the MILP's witness does not replay exactly"
                    else:
                        reason = result.reason
                elif method == "complete":
                    result = robust_bab(net, box, label, BabConfig(time_limit=config.time_limit), rng=rng)
                    if result.status == "robust":
                        verdicts["confirmed"] += 1
                        detail["result"] = "confirmed by branch and bound"
                    else:
                        witness = result.witness
                        reason = (f"branch and bound: {result.reason}; margin in [{result.margin_lower}, "
                                  f"{result.attack_margin}]")
                else:
                    rows = margin_specs([label], net.n_outputs)[0]
                    ext = search_extremes(net, box, rows, samples=config.samples, rng=rng, senses=("min",))
                    j = int(np.argmin(ext.min))
                    witness, reason = ext.argmin[j], f"search: smallest margin found {ext.min[j]}"
                if "result" not in detail:
                    trace = self.exact.run(witness) if witness is not None else None
                    if trace is not None and trace.margin(label)[0] <= 0:
                        verdicts["refuted"] += 1
                        detail.update(result="refuted", margin_exact=str(trace.margin(label)[0]),
                                      witness=self._witness_record(witness, trace))
                    else:
                        verdicts["not_refuted"] += 1
                        detail["result"] = f"not refuted ({reason})"
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
        unsound = any(r["status"] == "UNSOUND" for r in reports)
        undecided = not unsound and any(r["status"] == "NOT_REFUTED" for r in reports)
        return {"config": asdict(self.config), "network": repr(self.net), "unsound": unsound,
                "undecided": undecided, "cases": reports}


def check_cases(net: SNN, cases: List[Case], config: Optional[CheckConfig] = None) -> dict:
    """Checks validated cases against ``net``; returns the report (a JSON-ready dict).

    ``report["unsound"]``: some case is UNSOUND; ``report["undecided"]``: none is, but some case
    is NOT_REFUTED. ``exit_code(report)`` maps it to the CLI's exit code.
    """
    return Checker(net, config if config is not None else CheckConfig()).check(cases)


def exit_code(report: dict) -> int:
    """0 every case SOUND, 1 some case UNSOUND, 3 some NOT_REFUTED and none UNSOUND."""
    if report["unsound"]:
        return EXIT_UNSOUND
    return EXIT_UNDECIDED if report.get("undecided") else EXIT_SOUND


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
                         f"{out['proven']} proven exactly, {out['refuted']} refuted, {out['unproven']} unproven")
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
                         f"claimed {violation['claimed']!r}, a witness input gives exactly {violation['true_value_exact']} "
                         f"(rates {np.round(w['rates'], 6).tolist()})")
        for violation in case["membrane_violations"][:5]:
            lines.append(f"    UNSOUND membrane sample {violation['sample']} stage {violation['stage']} "
                         f"t {violation['t']} neuron {violation['neuron']} {violation['side']}: claimed "
                         f"{violation['claimed']!r}, a witness input gives exactly {violation['true_value_exact']}")
        for detail in (case["verdicts"] or {}).get("details", [])[:5]:
            if detail["result"] == "refuted":
                lines.append(f"    WRONG CERTIFICATE sample {detail['sample']} (label {detail['label']}): a member "
                             f"has rates {np.round(detail['witness']['rates'], 6).tolist()}")
    lines.append("UNSOUND claims found" if report["unsound"] else
                 "no claim refuted, some not proven (undecided)" if report.get("undecided") else
                 "every claim proven sound")
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialize {type(value).__name__}")


PROG = "python -m verify.check"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m verify.check`` parser (shared vocabulary of ``refsnn.cli``)."""
    parser = cli.make_parser(PROG, __doc__.split("\n\n")[0])
    parser.epilog = EXIT_CODES_HELP
    cli.add_model(parser, nir=True)
    parser.add_argument("--cases", required=True, metavar="FILE",
                        help="cases file (format in verify/cases.py, verify/README.md)")
    parser.add_argument("--json", metavar="FILE", help="write the machine-readable report to this file")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="decision method: milp exact (small nets); search: sampling + near-threshold "
                             "search; auto: by size; complete: exact enumeration on small sets, else branch and "
                             "bound (output claims and certificates; membrane claims by search)")
    cli.add_time_limit(parser, 30.0)
    cli.add_atol(parser, 0.0, detail=": tolerated excess of a claim over a real value (0: exact)")
    parser.add_argument("--samples", type=cli.positive_int, default=256, help="random members per search")
    cli.add_seed(parser, detail=" (sampling and search)")
    return parser


@cli.run_main(PROG)
def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.check_out_file(args.json, "--json")
    try:
        config = CheckConfig(method=args.method, time_limit=args.time_limit, atol=args.atol, samples=args.samples,
                             seed=args.seed)
        from refsnn.interop.nir import load_any_model
        from refsnn.io import FormatError
        try:
            net = load_any_model(args.model, dt=args.dt)
        except (FormatError, OSError, ValueError) as error:
            raise CasesError(f"model {args.model}: {error}") from None
        cases = read_cases(args.cases, net)
        report = check_cases(net, cases, config)
    except (CasesError, CheckConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except VerifierError as error:
        print(f"error: the verifier could not give a trustworthy answer: {error}", file=sys.stderr)
        return EXIT_UNDECIDED
    except (ValueError, TypeError, KeyError) as error:  # anything else malformed in the inputs
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    report["model"], report["cases_file"] = str(args.model), str(args.cases)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1, default=_json_default)
    print(summary(report))
    return exit_code(report)


if __name__ == "__main__":
    sys.exit(main())
