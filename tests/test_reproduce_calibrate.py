"""Calibrated attack eps (refsnn.reproduce_calibrate) and the rows refsnn.reproduce renders from them."""
from __future__ import annotations

import json

import pytest

from refsnn import reproduce as rp
from refsnn.reproduce_calibrate import CalibrationError, bisect_targets
from refsnn.reproduce_tables import NOT_TRAINED, _calibrated_section, add_untrained_settings


def test_bisection_finds_each_target_within_tolerance_and_measures_each_eps_once():
    calls = []

    def error_at(eps):
        calls.append(eps)
        return min(1.0, round(100 * 2.5 * eps) / 100)   # 1 % steps, like 100 samples

    found = bisect_targets(error_at, (0.2, 0.3, 0.4, 0.5), upper=0.05)
    assert len(calls) == len(set(calls))                   # shared between the targets
    assert all(float(f"{e:.3g}") == e for e in calls)      # eps rounded to 3 significant digits
    for target, eps, error in zip((0.2, 0.3, 0.4, 0.5), found["eps"], found["errors"]):
        assert abs(error - target) <= 0.02 and error == error_at(eps)
    assert found["eps"] == sorted(found["eps"])


def test_bisection_returns_the_closest_eps_of_a_step_function():
    # the error jumps from 10 % to 60 % at eps 0.3: no eps reaches 20-50 % within tolerance
    found = bisect_targets(lambda eps: 0.1 if eps < 0.3 else 0.6, (0.2, 0.5), upper=1.0, iterations=8)
    assert found["errors"] == [0.1, 0.6]
    assert 0.28 <= found["eps"][0] < 0.3 <= found["eps"][1] <= 0.32


@pytest.mark.parametrize("targets", [(), (0.5, 0.2), (0.0, 0.3), (0.3, 1.0)])
def test_bad_targets_are_refused(targets):
    with pytest.raises(CalibrationError, match="targets"):
        bisect_targets(lambda eps: eps, targets, upper=1.0)
    assert issubclass(CalibrationError, ValueError)


def _row(model, eps, original, attack, fresh=None):
    return {"model": model, "attack": "paper", "eps": eps, "original_error": original, "attack_error": attack,
            "attack_error_fresh": fresh}


def test_calibrated_rows_show_target_eps_and_both_models():
    setting = {"calibration": {"targets": [0.2, 0.5], "eps": [0.09, 0.17], "errors": [0.21, 0.49], "n": 100},
               "attack_calibrated": {"n": 300, "rows": [_row("plain", 0.09, 0.02, 0.2, 0.12),
                                                        _row("robust", 0.09, 0.03, 0.1, 0.05),
                                                        _row("plain", 0.17, 0.02, 0.52, 0.3),
                                                        _row("robust", 0.17, 0.03, 0.13, 0.07)]}}
    lines = _calibrated_section(setting, rp.PRESETS["budget"], "*")
    rows = [line for line in lines if line.startswith("| 20 %") or line.startswith("| 50 %")]
    assert rows == ["| 20 % | 0.09 | 21.0 | 2.0 / 20.0* | 3.0 / 10.0* | 10.0* | 12.0 / 5.0 |",
                    "| 50 % | 0.17 | 49.0 | 2.0 / 52.0* | 3.0 / 13.0* | 39.0* | 30.0 / 7.0 |"]
    assert _calibrated_section({"calibration": None, "attack_calibrated": None}, rp.PRESETS["budget"], "*") == []


def test_settings_without_a_run_get_paper_cells_and_never_replace_a_run():
    preset = rp.PRESETS["budget"]
    table1 = ("# T1\n\n| data set | arch | a | b | c | d | e | f | g | h |\n|---|---|---|---|---|---|---|---|---|---|\n"
              "| MNIST | FC | 98.28* | 96.63* | 1.64* | 98.45 | n/r | -0.17 | 97 | 160 |\n\ntail\n")
    table2 = ("# T2\n\n## MNIST CONV (training eps 0.12)\n\nour own CONV rows\n\n"
              "Paper headline (abstract): x.\n")
    new1, new2 = add_untrained_settings(table1, table2, preset, rp.PAPER_REFERENCE)
    assert f"| FMNIST | CONV | {NOT_TRAINED} | {NOT_TRAINED} | - | 89.53 | n/r | - | - | - |" in new1
    assert new1.count("| MNIST | FC |") == 1 and new1.rstrip().endswith("tail")
    assert "our own CONV rows" in new2 and new2.count("## MNIST CONV") == 1     # kept, not replaced
    assert "| 0.0015 | 1.3 / 49.0 | 4.3 / 12.0 | 37.0 | not trained yet |" in new2   # N-MNIST CONV
    headings = [line for line in new2.split("\n") if line.startswith("## ")]
    assert [h.split(" (")[0] for h in headings] == ["## MNIST FC", "## MNIST CONV", "## FMNIST FC", "## FMNIST CONV",
                                                    "## N-MNIST FC", "## N-MNIST CONV"]
    assert new2.rstrip().endswith("Paper headline (abstract): x.")


def test_fresh_draw_rescoring_is_its_own_labelled_table_beside_the_paper_cells():
    from refsnn.reproduce_tables import _fresh_section, _rows

    rows = [dict(_row("plain", 0.04, 0.1, 0.4, 0.2), original_error_fresh=0.12),
            dict(_row("robust", 0.04, 0.1, 0.3, 0.15), original_error_fresh=0.11)]
    attack = {"rows": rows}
    setting = {"attack_eps": [0.04]}
    cells = rp.PAPER_REFERENCE["table2_cells"]["fmnist-fc"]
    lines = _fresh_section(setting, _rows(attack, "plain", "paper"), _rows(attack, "robust", "paper"), cells, "*")
    assert "`--scoring fresh`, not the paper's scoring" in lines[1]
    assert lines[-1] == "| 0.04 | 12.0 / 20.0* | 11.0 / 15.0* | 5.0* | 20.7 / 20.0 |"
    spikes = [dict(row, attack_error_fresh=None) for row in rows]
    assert _fresh_section(setting, _rows({"rows": spikes}, "plain", "paper"),
                          _rows({"rows": spikes}, "robust", "paper"), cells, "*") == []


def test_calibration_never_goes_past_the_limit_and_says_which_targets_it_missed():
    """Digital inputs live in [0, 1]: eps above 1 is no larger set, so the search stops at the limit."""
    seen = []

    def error_at(eps):
        seen.append(eps)
        return 0.45 * min(eps, 1.0)

    found = bisect_targets(error_at, (0.2, 0.3, 0.4, 0.5), upper=0.1, limit=1.0)
    assert max(seen) <= 1.0 and max(found["eps"]) <= 1.0
    assert found["reached"] == [True, True, True, False]
    assert len(seen) == len(set(seen))   # each eps measured once


def test_a_setting_with_a_finished_plain_run_shows_its_accuracy_until_it_is_finished(tmp_path):
    """Plain summary there, robust checkpoint waiting: the plain accuracy and ``in training``, rebuilt on
    the next call (a robust run that finished since replaces the row through merge_table1)."""
    from refsnn.reproduce_tables import IN_TRAINING
    preset = rp.PRESETS["budget"]
    plain = tmp_path / "mnist-conv" / "plain"
    plain.mkdir(parents=True)
    (plain / "summary.json").write_text(json.dumps({"test_accuracy": {"mean": 0.9887}, "seconds_per_epoch": 598.8,
                                                    "config": {"dataset": "mnist"}}))
    from refsnn.reproduce_tables import render_table1
    table1, _ = add_untrained_settings(render_table1([], preset, rp.PAPER_REFERENCE), "", preset,
                                       rp.PAPER_REFERENCE, tmp_path)
    row = next(line for line in table1.split("\n") if line.startswith("| MNIST | CONV"))
    assert f"| 98.87* | {NOT_TRAINED} |" in row and "| -0.22 |" in row and "| 599 |" in row
    (tmp_path / "mnist-conv" / "robust").mkdir()
    (tmp_path / "mnist-conv" / "robust" / "checkpoint.h5").write_bytes(b"")
    again, _ = add_untrained_settings(table1, "", preset, rp.PAPER_REFERENCE, tmp_path)
    rows = [line for line in again.split("\n") if line.startswith("| MNIST | CONV")]
    assert len(rows) == 1 and f"| 98.87* | {IN_TRAINING} |" in rows[0]
    fmnist = next(line for line in again.split("\n") if line.startswith("| FMNIST | CONV"))
    assert f"| {NOT_TRAINED} | {NOT_TRAINED} |" in fmnist
    (tmp_path / "mnist-conv" / "robust" / "summary.json").write_text(json.dumps(
        {"test_accuracy": {"mean": 0.9721}, "seconds_per_epoch": 2335.2}))
    trained, _ = add_untrained_settings(again, "", preset, rp.PAPER_REFERENCE, tmp_path)
    rows = [line for line in trained.split("\n") if line.startswith("| MNIST | CONV")]
    assert len(rows) == 1 and "| 98.87* | 97.21* | 1.66* |" in rows[0] and "| 599 | 2335 |" in rows[0]
