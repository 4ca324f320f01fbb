"""``python -m refsnn.reproduce``'s T' sweep (Figure 5): its per-arch schedule, one output per arch,
``--sweep-only``. Training is stubbed: these tests check what is run and written, not the runs."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from refsnn import reproduce as rp
from refsnn import train


def _fake_train(calls):
    """A ``refsnn.train.main`` that records its argv and writes the files a finished run leaves."""
    def main(argv):
        calls.append(list(argv))
        value = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
        out = Path(value["--out"])
        out.mkdir(parents=True, exist_ok=True)
        limit = int(value["--limit-train"]) if "--limit-train" in value else None
        horizon = int(value.get("--robust-T", 0))
        options = {"ramp_epochs": float(value["--ramp-epochs"])} if "--ramp-epochs" in value else {}
        summary = {"config": {"epochs": int(value["--epochs"]), "limit_train": limit, "method_options": options},
                   "seconds_per_epoch": 2.0 + horizon, "test_accuracy": {"mean": 0.9 - 0.01 * horizon},
                   "n_train": limit or 1000}
        (out / "summary.json").write_text(json.dumps(summary))
        (out / "metrics.jsonl").write_text(json.dumps({"train_robust_loss": 1.5, "cert_error_crown-ibp_final": 0.4})
                                           + "\n")
        return 0
    return main


@pytest.fixture
def two_arch_preset(monkeypatch):
    """The quick preset (embedded MNIST subset) with both archs and a CONV sweep of its own schedule."""
    preset = replace(rp.PRESETS["quick"], archs=("fc", "conv"), sweep_T=(1, 2), sweep_epochs=2,
                     sweep_limit_train=128, sweep_args=(), sweep_schedule={"conv": (1, 64)})
    monkeypatch.setitem(rp.PRESETS, "quick", preset)
    return preset


def _argv_value(argv, flag):
    """The value argparse reads for ``flag``: its last one."""
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1] if flag in argv else None


def test_budget_preset_sweeps_conv_on_a_subset_and_fc_unchanged():
    budget = rp.PRESETS["budget"]
    assert budget.sweep_for("fc") == (2, None)      # the committed FC sweep: 2 epochs on the whole set
    assert budget.sweep_for("conv") == (2, 6400)
    assert rp.PRESETS["paper"].sweep_for("conv") == (300, None)


def test_sweep_runs_use_the_schedule_of_their_arch(tmp_path, monkeypatch, two_arch_preset):
    calls = []
    monkeypatch.setattr(train, "main", _fake_train(calls))
    config = rp.ReproduceConfig("quick", quiet=True)
    for arch in ("conv", "fc"):
        rp.run_sweep(tmp_path, "mnist", arch, two_arch_preset, config)
    # per arch: a natural and a robust warm-up step outside the output folder (no timed epoch compiles
    # kernels), then the natural reference and the 2 T' runs
    outs = [_argv_value(c, "--out") for c in calls]
    inside = [out.startswith(str(tmp_path)) for out in outs]
    assert inside == [False, False, True, True, True] * 2
    warm_ups = [c for c, kept in zip(calls, inside) if not kept]
    assert [_argv_value(c, "--method") for c in warm_ups] == [None, "robust"] * 2
    assert {(_argv_value(c, "--limit-train"), _argv_value(c, "--epochs")) for c in warm_ups} == {("64", "1")}
    assert not any(Path(out).exists() for out, kept in zip(outs, inside) if not kept)
    calls[:] = [c for c, kept in zip(calls, inside) if kept]
    by_arch = {arch: [c for c in calls if _argv_value(c, "--arch") == arch] for arch in ("conv", "fc")}
    for arch, (epochs, limit) in (("conv", ("1", "64")), ("fc", ("2", "128"))):
        assert {(_argv_value(c, "--epochs"), _argv_value(c, "--limit-train")) for c in by_arch[arch]} == {(epochs, limit)}
        # without a ramp in sweep_args, eps ramps over the sweep's own epochs
        assert {_argv_value(c, "--ramp-epochs") for c in by_arch[arch] if "--robust-T" in c} == {epochs}
        assert all(_argv_value(c, "--out").startswith(str(tmp_path / "sweep" / f"mnist-{arch}")) for c in by_arch[arch])


def test_sweep_only_leaves_the_other_arch_and_the_settings_alone(tmp_path, monkeypatch, two_arch_preset, capsys):
    calls = []
    monkeypatch.setattr(train, "main", _fake_train(calls))
    root = tmp_path / "quick"
    # an FC sweep finished earlier, and the tables of the settings
    for run in ("natural", "T1", "T2"):
        _fake_train([])(["--out", str(root / "sweep" / "mnist-fc" / run), "--epochs", "2", "--limit-train", "128",
                         *(["--robust-T", run[1], "--ramp-epochs", "2"] if run != "natural" else [])])
    fc_files = {p: p.read_bytes() for p in (root / "sweep" / "mnist-fc").rglob("*") if p.is_file()}
    (root / "table1.md").write_text("table 1 of the settings\n")
    (root / "summary.json").write_text(json.dumps({"settings": [{"dataset": "mnist", "arch": "fc", "dir": "x"}],
                                                   "outputs": {"figure6_mnist": "kept.png",
                                                               "figure5": "gone.png"}}))
    (root / "mnist-conv" / "plain").mkdir(parents=True)
    (root / "mnist-conv" / "plain" / "model.h5").write_bytes(b"")   # only its existence is checked
    code = rp.main(["--preset", "quick", "--dataset", "mnist", "--arch", "conv", "--out", str(tmp_path),
                    "--sweep-only"])
    assert code == 0, capsys.readouterr().err
    # only the CONV sweep ran: no plain, robust, attack or certification step
    assert {_argv_value(c, "--arch") for c in calls} == {"conv"} and len(calls) == 5   # 2 warm-up steps
    assert all("/sweep/mnist-conv/" in _argv_value(c, "--out") for c in calls[2:])
    assert {p: p.read_bytes() for p in (root / "sweep" / "mnist-fc").rglob("*") if p.is_file()} == fc_files
    assert (root / "table1.md").read_text() == "table 1 of the settings\n" and not (root / "table2.md").exists()
    for name in ("figure5_conv.png", "figure5_fc.png"):
        assert (root / name).stat().st_size > 1000, name
    text = (root / "figure5.md").read_text()
    # the paper's setting first, each section with the schedule its runs were trained with
    assert text.index("## MNIST CONV (the paper's setting)") < text.index("## MNIST FC")
    conv, fc = text.split("## MNIST FC")
    assert "1 robust epoch(s) per T'" in conv and "first 64 training images" in conv
    assert "2 robust epoch(s) per T'" in fc and "first 128 training images" in fc
    summary = json.loads((root / "summary.json").read_text())
    assert sorted(summary["figure5"]) == ["mnist-conv", "mnist-fc"]
    assert [r["T_prime"] for r in summary["figure5"]["mnist-conv"]] == [1, 2]
    assert summary["settings"] == [{"dataset": "mnist", "arch": "fc", "dir": "x"}]
    assert summary["outputs"]["figure6_mnist"] == "kept.png" and "figure5" not in summary["outputs"]
    assert summary["outputs"]["figure5_mnist-fc"].endswith("figure5_fc.png")

    # rerun: every sweep run is finished, nothing is trained again
    assert rp.main(["--preset", "quick", "--dataset", "mnist", "--arch", "conv", "--out", str(tmp_path),
                    "--sweep-only", "--quiet"]) == 0
    assert len(calls) == 5


def test_unfinished_sweep_renders_what_finished_and_says_what_is_left(tmp_path, two_arch_preset):
    from refsnn.reproduce_tables import finished_sweeps, render_sweep_md, sweep_table

    for run in ("natural", "T1"):
        _fake_train([])(["--out", str(tmp_path / "sweep" / "mnist-conv" / run), "--epochs", "1"])
    (tmp_path / "sweep" / "mnist-conv" / "T2").mkdir()   # interrupted: a checkpoint, no summary
    (tmp_path / "sweep" / "mnist-fc" / "natural").mkdir(parents=True)   # nothing finished: not rendered
    sweeps = finished_sweeps(tmp_path)
    assert [(s["dataset"], s["arch"], sorted(s["runs"])) for s in sweeps] == [("mnist", "conv", [1])]
    text = render_sweep_md([(s, sweep_table(s)) for s in sweeps], two_arch_preset, rp.PAPER_REFERENCE)
    assert "Not finished yet: T' = 2" in text and "on the whole training set (1,000 images)" in text


@pytest.mark.parametrize("extra, message", [
    ([], "sweep_only: no plain model"),
    (["--no-sweep"], "sweep_only: the sweep is turned off"),
    (["--calibrate"], "sweep_only: --calibrate is an option of the settings' steps"),
    (["--workers", "2"], "sweep_only: --workers is an option of the settings' steps"),
    (["--exact-n", "5"], "sweep_only: --exact-n is an option of the settings' steps"),
    (["--sweep-arch", "fc"], "sweep_only: --sweep-arch fc is not among --arch conv"),
])
def test_sweep_only_refuses_bad_input_in_one_line(tmp_path, monkeypatch, two_arch_preset, capsys, extra, message):
    calls = []
    monkeypatch.setattr(train, "main", _fake_train(calls))
    code = rp.main(["--preset", "quick", "--dataset", "mnist", "--arch", "conv", "--out", str(tmp_path),
                    "--sweep-only", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert calls == [] and not (tmp_path / "quick").exists()   # refused before anything is written


def test_sweep_only_without_data_is_refused_before_anything_is_written(tmp_path, monkeypatch, two_arch_preset, capsys):
    """The plain model is there, the data is not: one line, exit 2, no record written into the folder."""
    calls = []
    monkeypatch.setattr(train, "main", _fake_train(calls))
    plain = tmp_path / "quick" / "mnist-conv" / "plain"
    plain.mkdir(parents=True)
    (plain / "model.h5").write_bytes(b"")
    monkeypatch.setattr(rp, "_data_available", lambda dataset, data_dir: "no such data directory: /nowhere")
    code = rp.main(["--preset", "quick", "--dataset", "mnist", "--arch", "conv", "--out", str(tmp_path),
                    "--sweep-only"])
    err = capsys.readouterr().err
    assert code == 2 and "sweep_only: no data for mnist (no such data directory" in err, err
    assert len(err.strip().splitlines()) == 1 and calls == []
    assert sorted(p.name for p in (tmp_path / "quick").iterdir()) == ["mnist-conv"]


def test_a_run_without_sweep_keeps_an_old_format_figure5(tmp_path, monkeypatch, two_arch_preset):
    """A summary.json of the one-sweep format (``figure5`` a list) keeps its rows when no sweep runs."""
    root = tmp_path / "quick"
    root.mkdir()
    old_rows = [{"T_prime": 1, "clean_accuracy": 0.9}]
    (root / "summary.json").write_text(json.dumps({"figure5": old_rows, "outputs": {"figure5": "figure5.png"}}))
    monkeypatch.setattr(rp, "_data_available", lambda dataset, data_dir: "no data here")
    assert rp.main(["--preset", "quick", "--dataset", "mnist", "--arch", "fc", "--out", str(tmp_path),
                    "--no-sweep", "--quiet"]) == 0
    summary = json.loads((root / "summary.json").read_text())
    assert summary["figure5"] == old_rows and summary["outputs"]["figure5"] == "figure5.png"
