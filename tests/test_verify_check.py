"""``python -m verify.check`` round trips on files written with the writer API; bad input gives a
one-line error naming the case and the field (exit code 2); unsound claims give exit code 1."""
from __future__ import annotations

import json
from fractions import Fraction

import h5py
import numpy as np
import pytest

from refsnn import SNN, Linear
from refsnn.bounds import compute_bounds, interval_bounds
from refsnn.io import save_model
from verify import exact_bounds
from verify.cases import Case, CasesError, read_cases, write_cases
from verify.check import CheckConfig, check_cases, main
from verify.exact import float_outward


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    net = SNN([Linear(rng.integers(-4, 5, (4, 5)) / 8, rng.integers(-2, 3, 4) / 8),
               Linear(rng.integers(-4, 5, (3, 4)) / 8, rng.integers(-2, 3, 3) / 8)], firing=">")
    model = save_model(tmp_path / "model.h5", net)
    steps, batch = 3, 2
    center = rng.integers(0, 2, (steps, batch, 5))
    free = rng.random((steps, batch, 5)) < 0.4
    x_lower = np.where(free, 0, center).astype(np.uint8)
    x_upper = np.where(free, 1, center).astype(np.uint8)
    return net, model, x_lower, x_upper, tmp_path


def _outward(exact, steps):
    """Exact extremes (multiples of 1/T') as sound float claims, rounded outward (float(2/3) < 2/3)."""
    return {side: np.vectorize(lambda v: float_outward(Fraction(round(v * steps), steps), side))(values)
            for side, values in (("lower", exact.lower), ("upper", exact.upper))}


def _run(tmp_path, model, cases, *extra):
    path = write_cases(tmp_path / "cases.h5", cases, producer="tests")
    report_path = tmp_path / "report.json"
    code = main(["--model", str(model), "--cases", str(path), "--json", str(report_path), *extra])
    return code, json.loads(report_path.read_text()) if report_path.exists() else None


def test_sound_claims_round_trip(setup):
    net, model, x_lower, x_upper, tmp_path = setup
    lower, upper = compute_bounds(net, x_lower, x_upper, method="crown-ibp")
    exact = exact_bounds(net, x_lower, x_upper)
    tight = _outward(exact, x_lower.shape[0])
    intervals = interval_bounds(net, x_lower, x_upper)
    cases = [Case("crown", x_lower, x_upper, claimed_lower=lower, claimed_upper=upper,
                  claimed_mem_lower=intervals.mem_lower, claimed_mem_upper=intervals.mem_upper, method="crown-ibp"),
             Case("exact", x_lower, x_upper, claimed_lower=tight["lower"], claimed_upper=tight["upper"])]
    code, report = _run(tmp_path, model, cases)
    assert code == 0
    assert [case["status"] for case in report["cases"]] == ["SOUND", "SOUND"]
    crown, tight = report["cases"]
    assert crown["outputs"]["implied"] == crown["outputs"]["claims"] == 12
    assert crown["membranes"]["implied"] == crown["membranes"]["claims"]
    # Exact claims are at least as tight as refsnn's outward-rounded bounds (most only by the rounding
    # margin, "equal" in the statistic): each one not implied by them is proven exactly.
    assert tight["comparison"]["lower"]["best"]["looser"] == 0
    assert tight["outputs"]["refuted"] == 0 and tight["outputs"]["unproven"] == 0
    assert tight["outputs"]["proven"] + tight["outputs"]["implied"] == tight["outputs"]["claims"] == 12
    assert tight["outputs"]["proven"] >= sum(tight["comparison"][s]["best"]["tighter"] for s in ("lower", "upper"))


@pytest.mark.parametrize("method", ["milp", "search"])
def test_unsound_claims_are_refuted_with_witnesses(setup, method):
    net, model, x_lower, x_upper, tmp_path = setup
    exact = exact_bounds(net, x_lower, x_upper)
    steps = x_lower.shape[0]
    tight = _outward(exact, steps)
    claimed_lower = tight["lower"].copy()
    claimed_lower[0, 1] += 1 / steps  # one notch above the true minimum
    code, report = _run(tmp_path, model, [Case("too-tight", x_lower, x_upper, claimed_lower=claimed_lower,
                                                claimed_upper=tight["upper"])], "--method", method)
    assert code == 1
    [case] = report["cases"]
    assert case["status"] == "UNSOUND"
    [violation] = case["violations"]
    assert (violation["sample"], violation["spec"], violation["side"]) == (0, 1, "lower")
    witness = np.array(violation["witness"]["input"], dtype=np.uint8)
    assert np.all((witness >= x_lower[:, 0]) & (witness <= x_upper[:, 0]))
    assert net.forward(witness[:, None])[0, 1] == violation["true_value"] == exact.lower[0, 1]


def test_wrong_membrane_claim_and_wrong_certificate(setup):
    net, model, x_lower, x_upper, tmp_path = setup
    intervals = interval_bounds(net, x_lower, x_upper)
    trace = net.run(x_upper)
    mem_upper = [m.copy() for m in intervals.mem_upper]
    mem_upper[0][0, 0, 0] = trace.membranes[0][0, 0, 0] - 0.125  # below a real membrane
    labels = np.array([0, 0])  # claimed certified; these boxes hold inputs not classified as 0
    case = Case("claims", x_lower, x_upper, claimed_mem_upper=mem_upper, labels=labels, certified=np.ones(2, bool))
    code, report = _run(tmp_path, model, [case])
    assert code == 1
    [result] = report["cases"]
    assert result["membranes"]["refuted"] >= 1
    violation = result["membrane_violations"][0]
    assert (violation["stage"], violation["t"], violation["neuron"]) == (0, 0, 0)
    refuted = [d for d in result["verdicts"]["details"] if d["result"] == "refuted"]
    assert result["verdicts"]["refuted"] == len(refuted) >= 1
    for detail in refuted:
        rates = np.array(detail["witness"]["rates"])
        assert rates[0] <= np.delete(rates, 0).max()


def test_tie_certificate_is_refuted(tmp_path):
    net = SNN([Linear(np.array([[0.5], [0.5]]), np.zeros(2))])
    model = save_model(tmp_path / "tie.h5", net)
    x = np.ones((2, 1, 1), np.uint8)
    code, report = _run(tmp_path, model, [Case("tie", x, x, labels=np.array([0]), certified=np.array([True]))])
    assert code == 1
    assert report["cases"][0]["verdicts"]["refuted"] == 1


def test_check_cases_in_memory(setup):
    net, _, x_lower, x_upper, _ = setup
    lower, upper = compute_bounds(net, x_lower, x_upper, method="ibp")
    report = check_cases(net, [Case("ibp", x_lower, x_upper, claimed_lower=lower, claimed_upper=upper)],
                         CheckConfig(method="search"))
    assert report["unsound"] is False
    assert report["cases"][0]["comparison"]["lower"]["ibp"]["equal"] == 6


# --- bad input ---------------------------------------------------------------------------------

def _expect_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_malformed_hdf5(setup, capsys):
    _, model, _, _, tmp_path = setup
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    _expect_error(capsys, ["--model", str(model), "--cases", str(bad)], "not a readable HDF5")
    _expect_error(capsys, ["--model", str(bad), "--cases", str(bad)], "model")
    _expect_error(capsys, ["--model", str(model), "--cases", str(tmp_path / "missing.h5")], "no such file")


def _raw_cases(path, fields, attrs=None):
    with h5py.File(path, "w") as h5:
        h5.attrs["format"] = "refsnn-cases"
        h5.attrs["format_version"] = 1
        group = h5.create_group("cases/c1")
        for name, value in fields.items():
            group.create_dataset(name, data=value)
        for name, value in (attrs or {}).items():
            group.attrs[name] = value
    return path


@pytest.mark.parametrize("change, fragments", [
    (lambda f: f.pop("x_upper"), ["'c1'", "x_upper", "missing"]),
    (lambda f: f.update(x_lower=np.zeros((3, 2, 4), np.uint8), x_upper=np.ones((3, 2, 4), np.uint8)),
     ["'c1'", "x_lower", "input shape"]),
    (lambda f: f.update(x_lower=np.full((3, 2, 5), 0.5)), ["'c1'", "x_lower", "binary"]),
    (lambda f: f.update(x_lower=np.ones((3, 2, 5), np.uint8), x_upper=np.zeros((3, 2, 5), np.uint8)),
     ["'c1'", "x_lower", "x_lower > x_upper"]),
    (lambda f: f.update(claimed_lower=np.full((2, 3), np.nan)), ["'c1'", "claimed_lower", "NaN"]),
    (lambda f: f.update(claimed_lower=np.zeros((2, 4))), ["'c1'", "claimed_lower", "shape"]),
    (lambda f: f.update(C=np.ones((2, 7))), ["'c1'", "'C'", "outputs"]),
    (lambda f: f.update(certified=np.ones(2, np.uint8)), ["'c1'", "labels"]),
    (lambda f: f.update(labels=np.array([0, 9]), certified=np.ones(2, np.uint8)), ["'c1'", "labels", "[0, 3)"]),
])
def test_bad_cases_name_case_and_field(setup, capsys, change, fragments):
    _, model, x_lower, x_upper, tmp_path = setup
    fields = {"x_lower": x_lower, "x_upper": x_upper}
    change(fields)
    path = _raw_cases(tmp_path / "raw.h5", fields)
    _expect_error(capsys, ["--model", str(model), "--cases", str(path)], *fragments)


def test_membrane_claim_shape_mismatch(setup):
    net, _, x_lower, x_upper, tmp_path = setup
    path = write_cases(tmp_path / "m.h5", [Case("m", x_lower, x_upper, claimed_mem_lower={1: np.zeros((3, 2, 7))})])
    with pytest.raises(CasesError, match="claimed_membranes/lower/1.*shape"):
        read_cases(path, net)


def test_writer_validates_before_writing(tmp_path):
    x = np.zeros((2, 1, 3), np.uint8)
    with pytest.raises(CasesError, match="unique"):
        write_cases(tmp_path / "dup.h5", [Case("a", x, x), Case("a", x, x)])
    with pytest.raises(CasesError, match="claimed_upper.*NaN"):
        write_cases(tmp_path / "nan.h5", [Case("a", x, x, claimed_upper=np.array([[np.nan]]))])
    assert not (tmp_path / "dup.h5").exists() and not (tmp_path / "nan.h5").exists()
