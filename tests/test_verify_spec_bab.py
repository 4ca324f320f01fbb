"""``verify.spec_bab`` (branch and bound for "``C_i . f >= c_i`` / ``> c_i`` for every member")
against exhaustive enumeration in exact semantics: claims at the exact minimum (ties), one ulp
above it (unsound) and one ulp below it (sound), integral and float rows, both firing rules; and
``python -m verify.check --method complete`` with its exit codes."""
from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsnn import SNN, Linear
from refsnn.bounds import compute_bounds
from refsnn.io import save_model
from refsnn.testing import input_set_strategy, snn_strategy
from verify import BoxSet
from verify.bab import BOUND_METHODS, BabConfig, Question, spec_bab
from verify.cases import Case, write_cases
from verify.check import main as check_main
from verify.exact import ExactNetwork, float_outward

from exact_oracle import exact_counts


def _exact_min(row: np.ndarray, counts: set, steps: int) -> Fraction:
    return min(sum((Fraction(float(c)) * Fraction(k, steps) for c, k in zip(row, member)), Fraction(0))
               for member in counts)


def _next_float(value: Fraction, side: str) -> float:
    """The float nearest to ``value`` strictly above (``"upper"``) or strictly below it."""
    outward = float_outward(value, side)
    if Fraction(outward) == value:
        outward = math.nextafter(outward, math.inf if side == "upper" else -math.inf)
    return outward


@st.composite
def _problem(draw):
    arch = draw(st.sampled_from(["fc", "conv"]))
    net = draw(snn_strategy(arch, max_inputs=6, dyadic=draw(st.booleans())))
    input_set = draw(input_set_strategy(net, steps=(1, 3), kinds=("box", "digital", "l0"),
                                        max_members=draw(st.sampled_from([64, 1024]))))
    if draw(st.booleans()):
        row = np.array(draw(st.lists(st.integers(-2, 2), min_size=net.n_outputs, max_size=net.n_outputs)), float)
    else:  # off the 1/T' grid: rounding in C . f and in the claim matter
        row = np.array(draw(st.lists(st.floats(-2, 2, allow_nan=False, width=64), min_size=net.n_outputs,
                                     max_size=net.n_outputs)))
    config = BabConfig(method=draw(st.sampled_from(BOUND_METHODS)), enumerate_max=draw(st.sampled_from([1, 2, 16])),
                       milp_max_free=draw(st.sampled_from([0, 3])), attack_samples=draw(st.sampled_from([0, 8])),
                       search_starts=draw(st.sampled_from([0, 1])), batch=draw(st.sampled_from([1, 4])),
                       root_milp=draw(st.sampled_from([0.0, 0.5])), root_milp_after=draw(st.sampled_from([0, 8])),
                       time_limit=None)
    return net, input_set, row, config, draw(st.sampled_from(["tie", "above", "below"])), draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(problem=_problem())
def test_threshold_verdict_equals_enumeration(problem):
    net, input_set, row, config, where, strict = problem
    steps = input_set.steps
    minimum = _exact_min(row, exact_counts(net, input_set), steps)
    threshold = {"tie": minimum, "above": Fraction(_next_float(minimum, "upper")),
                 "below": Fraction(_next_float(minimum, "lower"))}[where]
    holds = minimum > threshold if strict else minimum >= threshold
    result = spec_bab(net, input_set, row[None], threshold, strict=strict, config=config)
    assert result.status == ("robust" if holds else "not_robust"), (result, minimum, threshold)
    # margin_lower <= exact min_i (C_i . f - c_i) <= attack_margin
    assert Fraction(result.margin_lower) <= minimum - threshold, (result, minimum, threshold)
    if result.attack_margin != math.inf:
        assert minimum - threshold <= Fraction(result.attack_margin), (result, minimum, threshold)
    if result.status == "not_robust":
        assert input_set.contains(result.witness)
        value = ExactNetwork(net).run(result.witness).value(row)
        assert (value <= threshold) if strict else (value < threshold)
    else:
        assert (result.margin_lower > 0) if strict else (result.margin_lower >= 0)


def test_question_rows_and_grid():
    margins = Question.margins(1, 3, 3)
    assert margins.rows.tolist() == [[1.0, -1.0, 0.0], [0.0, -1.0, 1.0]] or margins.rows.tolist() == \
        [[-1.0, 1.0, 0.0], [0.0, 1.0, -1.0]]
    assert margins.grid and margins.strict and margins.thresholds == (0, 0)
    assert not Question.make([[0.5, 0, 0]], 0, False, 3).grid
    assert not Question.make([[1, 0, 0]], Fraction(1, 2), False, 3).grid
    assert Question.make([[1, 0, 0]], Fraction(2, 3), False, 3).grid
    with pytest.raises(ValueError, match="rows"):
        Question.make([[np.nan, 0, 0]], 0, False, 3)


# --- python -m verify.check --method complete -----------------------------------------------------


@pytest.fixture
def large_box(tmp_path):
    """A 5-4-3 net and a box of 2^11 members: too many for the checker's enumeration (1,024)."""
    rng = np.random.default_rng(3)
    net = SNN([Linear(rng.integers(-4, 5, (4, 5)) / 8, rng.integers(-2, 3, 4) / 8),
               Linear(rng.integers(-4, 5, (3, 4)) / 8, rng.integers(-2, 3, 3) / 8)], firing=">=")
    model = save_model(tmp_path / "model.h5", net)
    steps = 3
    x_lower, x_upper = np.zeros((steps, 1, 5), np.uint8), np.ones((steps, 1, 5), np.uint8)
    x_lower[0, 0, :4] = x_upper[0, 0, :4] = 1  # 11 free bits
    return net, model, x_lower, x_upper, tmp_path


def _check(tmp_path, model, cases, *extra):
    path = write_cases(tmp_path / "cases.h5", cases, producer="tests")
    report_path = tmp_path / "report.json"
    code = check_main(["--model", str(model), "--cases", str(path), "--json", str(report_path), *extra])
    return code, json.loads(report_path.read_text()) if report_path.exists() else None


def test_check_complete_decides_claims_on_a_set_too_big_to_enumerate(large_box):
    net, model, x_lower, x_upper, tmp_path = large_box
    box = BoxSet(x_lower[:, 0], x_upper[:, 0])
    assert box.count() > 1024
    counts = exact_counts(net, box)
    C = np.array([[1.0, -1.0, 0.0], [0.0, 0.5, -1.0]])
    steps = x_lower.shape[0]
    minima = [_exact_min(row, counts, steps) for row in C]
    maxima = [-_exact_min(-row, counts, steps) for row in C]
    best_lower, best_upper = compute_bounds(net, x_lower, x_upper, method="crown-ibp", C=C[None])
    # the tight claims are not implied by refsnn's own bounds: the complete method must prove them
    assert any(float(best_lower[0, i]) < float(minima[i]) for i in range(2))
    tight_lower = np.array([[float_outward(m, "lower") for m in minima]])
    tight_upper = np.array([[float_outward(m, "upper") for m in maxima]])
    code, report = _check(tmp_path, model, [Case("tight", x_lower, x_upper, C=C[None], claimed_lower=tight_lower,
                                                 claimed_upper=tight_upper)], "--method", "complete")
    assert code == 0, report
    case = report["cases"][0]
    assert case["status"] == "SOUND" and case["methods_used"] == ["complete"]
    assert case["outputs"]["proven"] >= 1 and case["outputs"]["unproven"] == 0
    # one ulp above the exact minimum: UNSOUND with a witness reaching below it exactly
    above = tight_lower.copy()
    i = int(np.argmax([float(best_lower[0, k]) < float(minima[k]) for k in range(2)]))
    above[0, i] = _next_float(minima[i], "upper")
    code, report = _check(tmp_path, model, [Case("ulp", x_lower, x_upper, C=C[None], claimed_lower=above)],
                          "--method", "complete")
    assert code == 1
    violation = report["cases"][0]["violations"][0]
    assert violation["spec"] == i and Fraction(violation["true_value_exact"]) == minima[i]
    # the same tight claims with almost no time: not refuted, not proven (exit 3)
    code, report = _check(tmp_path, model, [Case("tight", x_lower, x_upper, C=C[None], claimed_lower=tight_lower)],
                          "--method", "complete", "--time-limit", "1e-9")
    assert code == 3 and report["cases"][0]["status"] == "NOT_REFUTED"


def test_check_complete_certificates_and_bad_method(large_box, capsys):
    net, model, x_lower, x_upper, tmp_path = large_box
    box = BoxSet(x_lower[:, 0], x_upper[:, 0])
    counts = exact_counts(net, box)
    robust_label = [j for j in range(3) if all(c[j] > max(c[k] for k in range(3) if k != j) for c in counts)]
    label = robust_label[0] if robust_label else 0
    code, report = _check(tmp_path, model, [Case("cert", x_lower, x_upper, labels=np.array([label]),
                                                 certified=np.array([True]))], "--method", "complete")
    verdicts = report["cases"][0]["verdicts"]
    if robust_label:
        assert code == 0 and verdicts["confirmed"] == 1
    else:  # a member breaks the certificate: refuted with an exact witness
        assert code == 1 and verdicts["refuted"] == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _check(tmp_path, model, [Case("cert", x_lower, x_upper, labels=np.array([label]),
                                      certified=np.array([True]))], "--method", "bab")
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
