"""``python -m verify.check`` cannot be fooled: a table of bad options, bad CASES files and claims that
are wrong by one ulp or at a tie.

The truth is the exact rational forward pass of the model's stored floats (verify/README.md). Each
row runs the CLI on a tiny network and asserts the exit code (0 sound, 1 unsound, 2 bad input), the
message or report, that an UNSOUND witness replays exactly, and that no input file changed.
"""
from __future__ import annotations

import hashlib
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from refsnn import SNN, Linear
from refsnn.io import save_model
from verify import enumerate_bounds, enumerate_membrane_extremes
from verify.cases import Case, write_cases
from verify.check import CheckConfig, CheckConfigError, check_cases, main
from verify.exact import ExactNetwork
from verify.sets import BoxSet

from test_verify_check import _raw_cases  # the raw CASES-file writer (tests/ is on sys.path)

STEPS = 4  # rates are multiples of 1/4: exact in float64, so "tight" claims are representable


def dyadic_net(firing=">="):
    return SNN([Linear(np.array([[0.5, 0.25, -0.25], [0.25, 0.5, 0.125]]), np.array([0.0, 0.125]))],
               firing=firing)


def dyadic_box():
    center = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], np.uint8)[:, None]
    free = np.zeros_like(center, bool)
    free[0, 0, 2] = free[2, 0, 1] = free[3, 0, 0] = True
    return np.where(free, 0, center).astype(np.uint8), np.where(free, 1, center).astype(np.uint8)


def true_bounds(net, x_lower, x_upper):
    """Extremes by the float64 forward over every member (exact here: dyadic weights, T' = 4)."""
    return enumerate_bounds(net, x_lower, x_upper)


def one_ulp(kind):
    """Claims equal to the true extremes except one output bound moved inward by one ulp, where
    refsnn's own bound is tight (so only an exact comparison tells them apart): the upper bound
    0.75 of output 0 over the box; its lower bound 0.5 at the box's lower corner."""
    def build():
        net = dyadic_net()
        x_lower, x_upper = dyadic_box()
        if kind == "lower":
            x_upper = x_lower
        lower, upper = true_bounds(net, x_lower, x_upper)
        lower, upper = lower.copy(), upper.copy()
        if kind == "lower":
            lower[0, 0] = np.nextafter(lower[0, 0], np.inf)
        else:
            upper[0, 0] = np.nextafter(upper[0, 0], -np.inf)
        return net, [Case("c1", x_lower, x_upper, claimed_lower=lower, claimed_upper=upper)]
    return build


def nearest_float_upper():
    """T' = 3, rates 1/3 or 2/3: float(1/3) < 1/3 is a sound lower bound, but the upper bound
    float(2/3) < 2/3 excludes the true maximum (the nearest float is not a sound claim)."""
    net = SNN([Linear(np.array([[0.5, 0.5]]), np.zeros(1))])
    x_lower = np.array([[1, 0], [0, 0], [0, 0]], np.uint8)[:, None]
    x_upper = np.array([[1, 0], [0, 1], [0, 0]], np.uint8)[:, None]
    return net, [Case("c1", x_lower, x_upper, claimed_lower=np.array([[1 / 3]]), claimed_upper=np.array([[2 / 3]]))]


def tight_dyadic():
    """Every output and membrane claim exactly equal to its true extreme: sound, and proven."""
    net = dyadic_net()
    x_lower, x_upper = dyadic_box()
    lower, upper = true_bounds(net, x_lower, x_upper)
    mins, maxs = enumerate_membrane_extremes(net, BoxSet(x_lower[:, 0], x_upper[:, 0]))
    return net, [Case("c1", x_lower, x_upper, claimed_lower=lower, claimed_upper=upper,
                      claimed_mem_lower={0: mins[0][:, None]}, claimed_mem_upper={0: maxs[0][:, None]})]


def float_tie_net(firing):
    """One neuron, one input: m = 0.1 + 0.2. The float64 sum is 0.30000000000000004 == th, the exact
    sum of the stored floats is 0.3000000000000000166... < th."""
    return SNN([Linear(np.array([[0.1]]), np.array([0.2]))], threshold=0.1 + 0.2, firing=firing)


def tight_at_float_tie():
    """The exact membrane is below th: the neuron never fires, rate exactly 0; a float64 forward says 1."""
    x = np.ones((1, 1, 1), np.uint8)
    return float_tie_net(">="), [Case("c1", x, x, claimed_lower=np.zeros((1, 1)), claimed_upper=np.zeros((1, 1)))]


def other_convention_at_tie():
    """An exact tie m == th that float64 rounds away: m = 1 + 2^-53 + 2^-53 = 1 + 2^-52 = th exactly,
    the float sum is 1.0. The model fires at ">="; claims made for ">" (never fires) are unsound."""
    net = SNN([Linear(np.array([[1.0, 2.0 ** -53]]), np.array([2.0 ** -53]))], threshold=1 + 2.0 ** -52,
              decay=0.25, firing=">=")
    x = np.ones((1, 1, 2), np.uint8)
    return net, [Case("c1", x, x, claimed_lower=np.zeros((1, 1)), claimed_upper=np.zeros((1, 1)), method="fires-at->")]


def claims_nan():
    net = dyadic_net()
    x_lower, x_upper = dyadic_box()
    lower, upper = true_bounds(net, x_lower, x_upper)
    lower = lower.copy()
    lower[0, 1] = np.nan
    return net, {"x_lower": x_lower, "x_upper": x_upper, "claimed_lower": lower, "claimed_upper": upper}


def membrane_nan():
    net = dyadic_net()
    x_lower, x_upper = dyadic_box()
    mem = np.zeros((STEPS, 1, 2))
    mem[1, 0, 1] = np.nan
    return net, {"x_lower": x_lower, "x_upper": x_upper, "claimed_membranes/lower/0": mem}


def claims_shape():
    net = dyadic_net()
    x_lower, x_upper = dyadic_box()
    return net, {"x_lower": x_lower, "x_upper": x_upper, "claimed_lower": np.zeros((1, 3))}


def valid_cases():
    net = dyadic_net()
    x_lower, x_upper = dyadic_box()
    return net, [Case("c1", x_lower, x_upper)]



def _snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


BAD_OPTIONS = [  # (id, extra argv, fragments of the one-line message)
    ("atol-nan", ["--atol", "nan"], ["--atol", "finite", ">= 0"]),
    ("atol-inf", ["--atol", "inf"], ["--atol", "finite", ">= 0"]),
    ("atol-overflow", ["--atol", "1e400"], ["--atol", "finite", ">= 0"]),
    ("atol-negative", ["--atol", "-1"], ["--atol", "finite", ">= 0"]),
    ("time-limit-nan", ["--time-limit", "nan"], ["--time-limit"]),
]

CLAIM_ROWS = [  # (id, build, extra argv, exit code, status of the case)
    ("one-ulp-lower", one_ulp("lower"), [], 1, "UNSOUND"),
    ("one-ulp-upper", one_ulp("upper"), [], 1, "UNSOUND"),
    ("one-ulp-lower-milp", one_ulp("lower"), ["--method", "milp"], 1, "UNSOUND"),
    ("one-ulp-upper-search", one_ulp("upper"), ["--method", "search"], 1, "UNSOUND"),
    ("nearest-float-upper-2/3", nearest_float_upper, [], 1, "UNSOUND"),
    ("tight-dyadic", tight_dyadic, [], 0, "SOUND"),
    ("tight-at-float-tie", tight_at_float_tie, [], 0, "SOUND"),
    ("other-firing-convention-at-tie", other_convention_at_tie, [], 1, "UNSOUND"),
    # true and tighter than refsnn's bounds: search can refute but never prove, so undecided
    ("tight-dyadic-search-undecided", tight_dyadic, ["--method", "search"], 3, "NOT_REFUTED"),
]

BAD_FILES = [  # (id, build raw fields or a file writer, fragments)
    ("claims-nan", claims_nan, ["'c1'", "claimed_lower", "NaN", "allowed"]),
    ("membrane-claims-nan", membrane_nan, ["'c1'", "claimed_membranes/lower/0", "NaN", "allowed"]),
    ("claims-shape-vs-model", claims_shape, ["'c1'", "claimed_lower", "(1, 3)", "n_spec=2", "2 outputs"]),
]


def _run(tmp_path, capsys, net, cases, extra, cases_path=None):
    model = save_model(tmp_path / "model.h5", net)
    if cases_path is None:
        cases_path = write_cases(tmp_path / "cases.h5", cases, producer="tests") if isinstance(cases, list) \
            else _raw_cases(tmp_path / "cases.h5", cases)
    before = _snapshot(tmp_path)
    report_path = tmp_path / "out" / "report.json"
    report_path.parent.mkdir()
    try:
        code = main(["--model", str(model), "--cases", str(cases_path), "--json", str(report_path), *extra])
    except SystemExit as stop:  # argparse refuses an option by exiting
        code = stop.code
    captured = capsys.readouterr()
    assert _snapshot(tmp_path) == before  # the model and the cases file are untouched
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return code, captured, report


def _assert_one_line_error(code, captured, report, fragments):
    assert code == 2
    err = captured.err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert report is None  # nothing checked, no report written


@pytest.mark.parametrize("extra, fragments", [row[1:] for row in BAD_OPTIONS], ids=[row[0] for row in BAD_OPTIONS])
def test_bad_option_is_refused(tmp_path, capsys, extra, fragments):
    net, cases = valid_cases()
    _assert_one_line_error(*_run(tmp_path, capsys, net, cases, extra), fragments)


@pytest.mark.parametrize("atol", [math.nan, math.inf, -1.0, -1e-300])
def test_library_refuses_atol(atol):
    with pytest.raises(CheckConfigError, match=r"atol .*finite number >= 0") as raised:
        CheckConfig(atol=atol)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("build, extra, code, status", [row[1:] for row in CLAIM_ROWS],
                         ids=[row[0] for row in CLAIM_ROWS])
def test_claims_are_decided_exactly(tmp_path, capsys, build, extra, code, status):
    net, cases = build()
    got, captured, report = _run(tmp_path, capsys, net, cases, extra)
    assert got == code, captured.out + captured.err
    [case_report] = report["cases"]
    assert case_report["status"] == status
    [case] = cases
    exact = ExactNetwork(net)
    if status == "SOUND":
        assert case_report["outputs"]["refuted"] == case_report["outputs"]["unproven"] == 0
        assert case_report["membranes"]["unproven"] == 0
        return
    if status == "NOT_REFUTED":
        assert not case_report["violations"] and not case_report["membrane_violations"]
        assert case_report["outputs"]["refuted"] == case_report["membranes"]["refuted"] == 0
        assert case_report["outputs"]["unproven"] > 0 and report["undecided"] and not report["unsound"]
        assert "undecided" in captured.out
        return
    assert case_report["violations"]
    for violation in case_report["violations"]:
        witness = np.array(violation["witness"]["input"], dtype=np.uint8)
        b = violation["sample"]
        assert np.all((case.x_lower[:, b] <= witness) & (witness <= case.x_upper[:, b]))
        value = exact.run(witness).value(violation["C_row"])  # replay in exact arithmetic
        assert str(value) == violation["true_value_exact"]
        claimed = Fraction(violation["claimed"])
        assert value < claimed if violation["side"] == "lower" else value > claimed
    assert "UNSOUND" in captured.out


def test_witness_at_tie_shows_the_float_disagreement(tmp_path, capsys):
    net, cases = other_convention_at_tie()
    _, _, report = _run(tmp_path, capsys, net, cases, [])
    [violation] = report["cases"][0]["violations"]
    assert violation["witness"]["rates_exact"] == ["1"] and violation["witness"]["rates_float64"] == [0.0]
    assert violation["witness"]["float64_disagrees"] is True


@pytest.mark.parametrize("build, fragments", [row[1:] for row in BAD_FILES], ids=[row[0] for row in BAD_FILES])
def test_bad_cases_file(tmp_path, capsys, build, fragments):
    net, fields = build()
    _assert_one_line_error(*_run(tmp_path, capsys, net, fields, []), fragments)


@pytest.mark.parametrize("content, fragments", [(None, ["no such file"]),
                                                (b"not an hdf5 file", ["not a readable HDF5"])],
                         ids=["missing-file", "not-hdf5"])
def test_unreadable_cases_file(tmp_path, capsys, content, fragments):
    net, _ = valid_cases()
    path = tmp_path / "given.h5"
    if content is not None:
        path.write_bytes(content)
    _assert_one_line_error(*_run(tmp_path, capsys, net, None, [], cases_path=path), [str(path), *fragments])


def test_library_decides_one_ulp_like_the_cli():
    net, cases = one_ulp("lower")()
    report = check_cases(net, cases, CheckConfig())
    assert report["unsound"] and report["cases"][0]["outputs"]["refuted"] == 1
