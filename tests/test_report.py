"""``python -m refsnn.report``: where the PNG goes, and that every curve carries its own run's label and colour."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from refsnn import report  # noqa: E402


def _run(folder, records):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture
def two_runs(tmp_path):
    """A natural run (no robust metrics) and a robust run, both in folders named ``run``."""
    natural = _run(tmp_path / "mnist-fc" / "run", [{"epoch": e, "test_acc": 0.5 + 0.1 * e} for e in (1, 2)])
    robust = _run(tmp_path / "mnist-conv" / "run",
                  [{"epoch": e, "test_acc": 0.4 + 0.1 * e, "train_robust_loss": 3.0 - e,
                    "cert_error_crown-ibp_now": 0.9 - 0.1 * e, "cert_error_crown-ibp_final": 1.0 - 0.05 * e}
                   for e in (1, 2, 3)])
    return natural, robust


def test_every_curve_has_its_runs_label_colour_and_data(two_runs, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)   # keep the figure to inspect it
    natural, robust = two_runs
    report.plot_runs([natural, robust], tmp_path / "out.png")
    axes = figures[0].axes
    expected = {"mnist-fc/run": report.read_metrics(natural), "mnist-conv/run": report.read_metrics(robust)}
    colours = {}
    for axis, (key, _) in zip(axes, report.PANELS):
        legend = axis.get_legend()
        lines = axis.get_lines()
        assert legend is not None and [t.get_text() for t in legend.get_texts()] == [line.get_label() for line in lines]
        for line in lines:
            records = expected[line.get_label()]
            values = [r.get(key) for r in records]
            assert list(line.get_xdata()) == [r["epoch"] for r in records]
            assert np.allclose(line.get_ydata(), [np.nan if v is None else v for v in values], equal_nan=True)
            assert colours.setdefault(line.get_label(), line.get_color()) == line.get_color()
    # the robust run is the only curve of the robust panels, still in its own colour and with its label
    assert [line.get_label() for line in axes[1].get_lines()] == ["mnist-conv/run"]
    assert colours["mnist-fc/run"] != colours["mnist-conv/run"]


def test_png_goes_to_the_run_folder_not_the_working_directory(two_runs, tmp_path, monkeypatch, capsys):
    natural, robust = two_runs
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert report.main([str(robust)]) == 0
    assert (robust / "curves.png").stat().st_size > 1000
    assert not (work / "curves.png").exists()
    assert report.main([str(natural), str(robust)]) == 0
    assert (work / "runs" / "report" / "curves.png").is_file() and not (work / "curves.png").exists()
    assert report.main([str(robust), "--out", str(tmp_path / "given")]) == 0
    assert (tmp_path / "given" / "curves.png").is_file()


@pytest.mark.parametrize("labels, message", [(["a"], "need 2 distinct labels"), (["a", "a"], "need 2 distinct")])
def test_bad_labels_are_refused(two_runs, tmp_path, labels, message):
    with pytest.raises(report.ReportError, match=message):
        report.plot_runs(list(two_runs), tmp_path / "x.png", labels=labels)
