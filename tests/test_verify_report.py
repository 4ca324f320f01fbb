"""``python -m verify.report``: exact vs certified vs attacked robustness of verify.dataset runs.

On a small template network (one hidden neuron per class) and a few mnist-subset samples: the counts
are the run's, certified error >= exact robust error >= attack error on the same sets, every stored
witness replays, a forged "robust" verdict that has a witness, a certified image recorded "not robust"
and a stored witness that does not replay or cannot be read make the report fail, a rerun's verdicts
overlay the run with --merge, an existing report is replaced only with --overwrite, and bad input is
refused with one line and exit code 2.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from refsnn import SNN, Flatten, Linear
from refsnn.io import save_model

N = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A template net and two complete-method runs of it (eps 0.02 and 0.05)."""
    from refsnn.data import load_dataset
    from verify.dataset import main

    root = tmp_path_factory.mktemp("report")
    x, y = load_dataset("mnist-subset", "train", limit=500)
    x = x.reshape(len(x), -1)
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    net = SNN([Flatten(), Linear((means - means.mean(axis=0)) * 0.3, np.full(10, -3.0)),
               Linear(np.eye(10) * 1.5 - 0.2, np.zeros(10))], input_shape=(1, 28, 28))
    model = root / "template" / "model.h5"
    model.parent.mkdir()
    save_model(model, net)
    out = {}
    for eps in ("0.02", "0.05"):
        out[eps] = root / f"run{eps}"
        assert main(["--model", str(model), "--dataset", "mnist-subset", "--n", str(N), "--eps", eps,
                     "--robust-T", "2", "--method", "complete", "--time-limit", "10", "--out", str(out[eps]),
                     "--no-progress", "--quiet"]) == 0
    out["model"] = model
    return out


def _report(tmp_path, *argv, name="report.md"):
    from verify.report import main

    target = tmp_path / name
    # fewer alpha steps and a lighter ensemble than the defaults: the same checks, less time
    code = main([*map(str, argv), "--out", str(target), "--iterations", "5", "--effort", "0.25", "--quiet"])
    document = json.loads(target.with_suffix(".json").read_text()) if target.exists() else None
    return code, document, target


@pytest.fixture(scope="module")
def baseline(runs, tmp_path_factory):
    """The report of both runs, written with --overwrite over an earlier report and its .json."""
    folder = tmp_path_factory.mktemp("baseline")
    (folder / "report.md").write_text("an earlier report\n")
    (folder / "report.json").write_text("{}\n")
    return _report(folder, runs["0.02"], runs["0.05"], "--overwrite")


def test_counts_and_certified_ge_exact_ge_attack(runs, baseline):
    code, document, target = baseline
    assert code == 0 and document["problems"] == []
    for row, eps in zip(document["rows"], ("0.02", "0.05")):
        summary = json.loads((runs[eps] / "verify.json").read_text())["summary"]
        counts = row["counts"]
        assert (counts["robust"], counts["not_robust"], counts["unknown"]) == (
            summary["robust"], summary["not_robust"], summary["unknown"])
        assert row["clean_error"] == pytest.approx(1 - summary["clean_correct"] / N)
        upper = row["exact_robust_error_bracket"][1]
        lower = row["exact_robust_error_bracket"][0]
        for method, error in row["certified_error"].items():
            assert error >= upper, method          # bounds over-estimate ...
        assert lower >= row["attack_error"]["strongest"] >= row["attack_error"]["paper"]  # ... attacks under-
        assert row["attack_error"]["paper"] >= row["clean_error"]
        # every not-robust verdict's witness is stored by verify.dataset and replays exactly
        assert row["witnesses"]["stored"] == counts["not_robust"] and row["witnesses"]["failed"] == 0
    assert document["rows"][0]["counts"]["robust"] > 0 and document["rows"][0]["counts"]["not_robust"] > 0
    text = target.read_text()
    assert "| S-IBP | S-CROWN | best | alpha |" in text and "WARNING" not in text  # --overwrite replaced it


def test_an_existing_report_is_refused_before_the_analysis_unless_overwrite(runs, tmp_path, capsys, monkeypatch):
    import verify.report as report

    def no_analysis(*args, **kwargs):
        raise AssertionError("the run was analysed before --out was checked")

    monkeypatch.setattr(report, "analyze_run", no_analysis)
    for existing in ("r.md", "r.json"):
        folder = tmp_path / existing
        folder.mkdir()
        (folder / existing).write_text("earlier\n")
        assert report.main([str(runs["0.02"]), "--out", str(folder / "r.md")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("python -m verify.report: error:") and err.count("\n") == 1, err
        assert "--overwrite" in err and str(folder / existing) in err
        assert [p.name for p in folder.iterdir()] == [existing] and (folder / existing).read_text() == "earlier\n"


def test_the_default_out_folder_is_not_created_for_a_bad_run_folder(tmp_path, capsys, monkeypatch):
    from verify.report import main

    monkeypatch.chdir(tmp_path)
    assert main([str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _forged(runs, tmp_path, edit):
    run = tmp_path / "forged"
    shutil.copytree(runs["0.02"], run)
    document = json.loads((run / "verify.json").read_text())
    edit(document["samples"])
    (run / "verify.json").write_text(json.dumps(document))
    return run


def test_a_robust_verdict_with_a_witness_fails_the_report(runs, tmp_path, capsys):
    def forge(samples):  # a misclassified image (its clean member is a witness) recorded robust
        record = next(r for r in samples if r["clean_prediction"] != r["label"])
        record.update(status="robust", witness=None)

    code, document, target = _report(tmp_path, _forged(runs, tmp_path, forge))
    assert code == 1
    assert any("attack broke a proven-robust image" in p for p in document["problems"])
    assert "UNSOUND" in capsys.readouterr().err and "WARNING" in target.read_text()


def test_a_bound_that_certifies_an_image_with_a_witness_fails_the_report(runs, tmp_path, monkeypatch):
    import refsnn.certify as certify

    # an unsound bound method: every margin "certified"
    monkeypatch.setattr(certify, "margin_lower_bounds", lambda net, method, lo, hi, C, iterations=20:
                        np.ones(C.shape[:2]))
    code, document, _ = _report(tmp_path, runs["0.02"])
    assert code == 1 and document["rows"][0]["certified_error"]["best"] == 0.0
    assert any("unsound bound" in p for p in document["problems"])


def test_a_certified_image_recorded_not_robust_fails_the_report_without_a_witness(runs, baseline, tmp_path, capsys):
    samples = baseline[1]["samples"][0]["samples"]  # the eps 0.02 run's
    certified = next(s["index"] for s in samples if s["status"] == "robust" and s["certified"]["best"])

    def forge(records):  # a proven-robust, certified image recorded not robust, with no witness to replay
        record = next(r for r in records if r["index"] == certified)
        record.update(status="not_robust", witness=None)

    code, document, _ = _report(tmp_path, _forged(runs, tmp_path, forge), "--witness-time", "0")
    assert code == 1 and document["rows"][0]["witnesses"]["missing"] == 1
    assert any(f"sample {certified} is certified by" in p and "recorded not robust" in p
               for p in document["problems"])
    assert "UNSOUND" in capsys.readouterr().err


def test_a_stored_witness_that_cannot_be_read_is_a_failed_witness(runs, tmp_path, capsys):
    def forge(samples):
        record = next(r for r in samples if r["status"] == "not_robust")
        record["witness"] = "not base64!"

    code, document, _ = _report(tmp_path, _forged(runs, tmp_path, forge))
    assert code == 1 and document["rows"][0]["witnesses"]["failed"] == 1
    assert any("stored witness cannot be read" in p for p in document["problems"])
    assert "UNSOUND" in capsys.readouterr().err


def test_a_stored_witness_that_does_not_replay_fails_the_report(runs, tmp_path, capsys):
    from verify.dataset import pack_spikes

    def forge(samples):  # the witness of a not-robust image replaced by an all-zero train
        record = next(r for r in samples if r["status"] == "not_robust")
        record["witness"] = pack_spikes(np.zeros((2, 1, 28, 28), dtype=np.uint8))

    code, document, _ = _report(tmp_path, _forged(runs, tmp_path, forge))
    assert code == 1 and document["rows"][0]["witnesses"]["failed"] == 1
    assert "stored witness" in capsys.readouterr().err


def test_runs_without_stored_witnesses_get_them_from_attacks_or_branch_and_bound(runs, tmp_path):
    def forge(samples):  # a run made before verify.dataset stored witnesses
        for record in samples:
            record.pop("witness", None)

    code, document, _ = _report(tmp_path, _forged(runs, tmp_path, forge))
    row = document["rows"][0]
    assert code == 0 and row["witnesses"]["stored"] == 0 and row["witnesses"]["missing"] == 0
    assert row["witnesses"]["attack"] + row["witnesses"]["search"] == row["counts"]["not_robust"]


def test_a_merge_that_reverses_a_decided_verdict_is_refused(runs, tmp_path, capsys):
    from verify.report import main

    def forge(samples):
        record = next(r for r in samples if r["status"] == "not_robust")
        record.update(status="robust", witness=None)

    argv = [str(runs["0.02"]), "--merge", str(_forged(runs, tmp_path, forge)), "--out", str(tmp_path / "r.md")]
    assert main(argv) == 2
    assert "one of the two verdicts is unsound" in capsys.readouterr().err


def test_merge_overlays_a_reruns_decided_verdicts(runs, tmp_path):
    from verify.dataset import main

    undecided = {}

    def forge(samples):  # one decided image left unknown, as a time limit would leave it
        record = next(r for r in samples if r["status"] == "not_robust" and r["clean_prediction"] == r["label"])
        record.update(status="unknown", witness=None, reason="time limit")
        undecided["index"] = record["index"]

    run = _forged(runs, tmp_path, forge)
    code, alone, _ = _report(tmp_path, run)
    assert code == 0 and alone["rows"][0]["counts"]["unknown"] == 1 and alone["rows"][0]["exact_robust_error"] is None
    rerun = tmp_path / "rerun"
    assert main(["--model", str(runs["model"]), "--dataset", "mnist-subset", "--indices", str(undecided["index"]),
                 "--eps", "0.02", "--robust-T", "2", "--method", "complete", "--time-limit", "10",
                 "--out", str(rerun), "--no-progress", "--quiet"]) == 0
    code, merged, target = _report(tmp_path, run, "--merge", rerun, name="merged.md")
    assert code == 0
    row = merged["rows"][0]
    assert row["counts"]["unknown"] == 0 and row["counts"] == {
        key: value for key, value in json.loads((runs["0.02"] / "verify.json").read_text())["summary"].items()
        if key in ("robust", "not_robust", "unknown")}
    assert row["merged"][0]["indices"] == [undecided["index"]]
    assert row["exact_robust_error"] == pytest.approx(row["counts"]["not_robust"] / N)
    assert "(merged)" in target.read_text() and "merged: 1 decided verdicts" in target.read_text()


BAD_DOCUMENTS = {"document not an object": lambda d: [d],
                 "config not an object": lambda d: dict(d, config=[1]),
                 "identity not an object": lambda d: dict(d, identity="mnist"),
                 "samples not objects": lambda d: dict(d, samples=[1, 2])}


@pytest.mark.parametrize("case", ["missing run", "no verify.json", "merge of another eps", "merge not a subset",
                                  "out folder missing", "out not markdown", *BAD_DOCUMENTS])
def test_cli_refuses_bad_input_with_one_line(runs, tmp_path, capsys, case):
    from verify.report import main

    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    if case == "merge not a subset":
        shutil.copytree(runs["0.02"], other)
        document = json.loads((other / "verify.json").read_text())
        document["samples"][0]["index"] = 99999
        (other / "verify.json").write_text(json.dumps(document))
    if case in BAD_DOCUMENTS:
        shutil.copytree(runs["0.02"], other)
        document = json.loads((other / "verify.json").read_text())
        (other / "verify.json").write_text(json.dumps(BAD_DOCUMENTS[case](document)))
    argv = {"missing run": [str(tmp_path / "nothing"), "--out", str(tmp_path / "r.md")],
            "no verify.json": [str(empty), "--out", str(tmp_path / "r.md")],
            "merge of another eps": [str(runs["0.02"]), "--merge", str(runs["0.05"]), "--out", str(tmp_path / "r.md")],
            "merge not a subset": [str(runs["0.02"]), "--merge", str(other), "--out", str(tmp_path / "r.md")],
            "out folder missing": [str(runs["0.02"]), "--out", str(tmp_path / "no" / "r.md")],
            "out not markdown": [str(runs["0.02"]), "--out", str(tmp_path / "r.txt")]}.get(
        case, [str(other), "--out", str(tmp_path / "r.md")])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m verify.report: error:") and err.count("\n") == 1, err
    if case in BAD_DOCUMENTS:
        assert "is not a verify.dataset result" in err and ("not a JSON object" in err) == ("object" in case), err
    assert not (tmp_path / "r.md").exists()
