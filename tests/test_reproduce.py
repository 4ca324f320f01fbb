"""``python -m refsnn.reproduce``: end-to-end on a tiny schedule, resumability, missing data, rendering."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from refsnn import reproduce as rp


@pytest.fixture
def tiny_preset(monkeypatch):
    """The quick preset shrunk to seconds (embedded MNIST subset)."""
    tiny = replace(rp.PRESETS["quick"], name="quick", plain_epochs=2, robust_epochs=1, ramp_epochs=1.0, eval_n=20,
                   attack_n=20, certify_n=20, sweep_T=(1, 2), sweep_limit_train=128, limit_train=256, limit_test=100,
                   plain_args=("--milestones", "100", "--eval-seeds", "1"),
                   robust_args=("--lr", "0.01", "--eval-seeds", "1"), datasets=("mnist", "nmnist"))
    monkeypatch.setitem(rp.PRESETS, "quick", tiny)
    return tiny


FMNIST_ROW = "| FMNIST | FC | 87.96* | 86.08* | 1.88* | n/t | n/t | n/t | 90 | 122 |"


def _seed_other_setting(root):
    """Tables of an earlier run in ``root`` with an FMNIST FC row and a stale MNIST FC row."""
    root.mkdir(parents=True)
    (root / "table1.md").write_text("# Table 1\n\n| data set | arch | regular |\n|---|---|---|\n"
                                    "| MNIST | FC | 11.11* |\n" + FMNIST_ROW + "\n\nfootnote\n")
    (root / "table2.md").write_text("# Table 2\n\n## MNIST FC (training eps 0.12)\n\nstale mnist section\n\n"
                                    "## FMNIST FC (training eps 0.01)\n\nkept fmnist section\n\n"
                                    "Paper headline (abstract): old.\n")
    (root / "summary.json").write_text(json.dumps({"settings": [{"dataset": "fmnist", "arch": "fc", "dir": "x"}]}))


def test_end_to_end_resumable_and_missing_data(tmp_path, tiny_preset, capsys):
    out = tmp_path / "results"
    empty = tmp_path / "no-data"
    empty.mkdir()
    _seed_other_setting(out / "quick")
    # nmnist has no files under the empty data dir: it must be skipped with the reason, not invented.
    code = rp.main(["--preset", "quick", "--dataset", "mnist,nmnist", "--arch", "fc", "--out", str(out),
                    "--data-dir", str(empty)])
    assert code == 0
    root = out / "quick"
    for name in ("table1.md", "table2.md", "figure5.md", "summary.json", "reproduce_config.json"):
        assert (root / name).is_file(), name
    assert (root / "figure5_fc.png").stat().st_size > 1000
    assert (root / "figure6_mnist.png").stat().st_size > 1000
    summary = json.loads((root / "summary.json").read_text())
    # Rows of the setting run now are replaced, the FMNIST row of the earlier run is kept (after MNIST).
    assert [(s["dataset"], s["arch"]) for s in summary["settings"]] == [("mnist", "fc"), ("fmnist", "fc")]
    table1 = (root / "table1.md").read_text()
    assert FMNIST_ROW in table1 and "11.11" not in table1
    assert table1.index("| MNIST (mnist-subset) | FC |") < table1.index(FMNIST_ROW)
    table2 = (root / "table2.md").read_text()
    assert "kept fmnist section" in table2 and "stale mnist section" not in table2
    assert table2.index("## MNIST (mnist-subset) FC") < table2.index("## FMNIST FC") < table2.index("Paper headline")
    for name in ("table1.md", "table2.md", "figure5.md"):
        assert "**Smoke run**" in (root / name).read_text(), name
    assert summary["outputs"]["skipped"][0]["dataset"] == "nmnist"
    assert "skipping nmnist: no data" in capsys.readouterr().out
    setting = summary["settings"][0]
    # every attack eps of the paper's MNIST FC row has both models and the paper attack
    rows = {(r["model"], r["eps"]) for r in setting["attack_rows"] if r["attack"] == "paper"}
    assert rows == {(m, e) for m in ("plain", "robust") for e in rp.PAPER_REFERENCE["attack_eps"]["mnist-fc"]}
    table2 = (root / "table2.md").read_text()
    assert "| 0.104 |" in table2 and "NOT a reproduction" in table2 and "n/t" in table2
    assert [row["T_prime"] for row in summary["figure5"]["mnist-fc"]] == [1, 2]
    config = json.loads((root / "reproduce_config.json").read_text())
    assert config["command"].startswith("python -m refsnn.reproduce --preset quick")

    # A rerun skips every finished step: no model file is rewritten.
    models = sorted(root.rglob("model.h5"))
    stamps = {p: p.stat().st_mtime_ns for p in models}
    assert rp.main(["--preset", "quick", "--dataset", "mnist", "--arch", "fc", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in models} == stamps
    assert "skip" in capsys.readouterr().out
    rerun = json.loads((root / "reproduce_config.json").read_text())
    assert [r["command"] for r in rerun["earlier"]] == [config["command"]]   # the first run's record is kept
    # quiet: nothing printed at all, not even the overall bar.
    rp.reproduce(rp.ReproduceConfig("quick", ("mnist",), ("fc",), str(out), quiet=True))
    assert capsys.readouterr() == ("", "")

    # An interrupted training resumes from its checkpoint: drop the robust run's result files.
    robust_dir = root / "mnist-fc" / "robust"
    (robust_dir / "summary.json").unlink()
    (robust_dir / "model.h5").unlink()
    for stale in (root / "mnist-fc" / "attack" / "table.json", root / "mnist-fc" / "certify_robust" / "certify.json"):
        stale.unlink()
    assert rp.main(["--preset", "quick", "--dataset", "mnist", "--arch", "fc", "--out", str(out), "--no-sweep"]) == 0
    assert "resume" in capsys.readouterr().out
    assert (robust_dir / "model.h5").is_file()


def test_attack_eps_are_the_papers_for_every_setting():
    # FMNIST and N-MNIST used to get MNIST FC's eps ratios times their training eps.
    assert rp.attack_eps_for("mnist", "fc") == ([0.104, 0.124, 0.140, 0.154], "paper")
    assert rp.attack_eps_for("fmnist", "fc") == ([0.040, 0.070, 0.100, 0.114], "paper")
    assert rp.attack_eps_for("nmnist", "fc") == ([0.0007, 0.0009, 0.0012, 0.0014], "paper")
    assert rp.attack_eps_for("fmnist", "conv") == ([0.04, 0.06, 0.08, 0.10], "paper")
    transcribed = {"attack_eps": {"fmnist-fc": [0.02, 0.03]}}
    assert rp.attack_eps_for("fmnist", "fc", transcribed) == ([0.02, 0.03], "paper")
    with pytest.raises(rp.ReproduceConfigError, match="paper_values: attack_eps has no eps for 'mnist-fc'"):
        rp.attack_eps_for("mnist", "fc", {"attack_eps": {}})


def _attack_table(path, eps_values, error=0.25):
    rows = [{"model": m, "attack": a, "eps": e, "original_error": 0.1, "attack_error": error}
            for m in ("plain", "robust") for a in ("paper", "strongest") for e in eps_values]
    path.mkdir(parents=True)
    (path / "table.json").write_text(json.dumps({"rows": rows}))


def _run_setting_on_finished_attack(tmp_path, monkeypatch, dataset, eps_values, exact_step=None):
    """``run_setting`` of a setting whose training and certification are stubbed and whose attack
    ``table.json`` exists at ``eps_values`` (the attack step must skip it)."""
    _attack_table(tmp_path / f"{dataset}-fc" / "attack", eps_values)
    summary = {"n_test": 300, "n_train": 60000, "test_accuracy": {"mean": 0.9}, "seconds_per_epoch": 1.0}
    monkeypatch.setattr(rp, "_train_step", lambda *args, **kwargs: summary)
    monkeypatch.setattr(rp, "_certify_step", lambda *args, **kwargs: {"result": {"n": 10}, "config": {"seed": 1234}})
    monkeypatch.setattr(rp, "_exact_step", exact_step or (lambda *args, **kwargs: None))
    config = rp.ReproduceConfig("budget", out=str(tmp_path))
    return rp.run_setting(tmp_path, dataset, "fc", rp.PRESETS["budget"], config, rp.PAPER_REFERENCE)


def test_attack_run_at_other_eps_is_shown_as_run_without_paper_cells(tmp_path, monkeypatch):
    """The committed FMNIST attack ran at 0.01 x MNIST FC's ratios: it is neither rerun nor compared
    with the paper's cells at 0.04 .. 0.114."""
    old_eps = [0.008667, 0.010333, 0.011667, 0.012833]
    setting = _run_setting_on_finished_attack(tmp_path, monkeypatch, "fmnist", old_eps)
    assert setting["attack_eps"] == old_eps and setting["attack_eps_source"] == "earlier run"
    assert setting["paper_attack_eps"] == [0.04, 0.07, 0.1, 0.114]
    table2 = rp.render_table2([setting], rp.PRESETS["budget"], rp.PAPER_REFERENCE)
    assert "NOT at the paper's eps (0.04, 0.07, 0.1, 0.114)" in table2
    rows = [line for line in table2.split("\n") if line.startswith("| 0.0")]
    assert len(rows) == 4 and all(line.endswith("| - / - | - | - | - | - |") for line in rows)
    for paper_number in ("20.7", "29.7", "41.3", "49.7", "38.7"):
        assert paper_number not in table2
    assert "Paper: its rows for this setting are at eps 0.04, 0.07, 0.1, 0.114, not this table's" in table2


def test_attack_at_the_paper_eps_gets_the_paper_cells(tmp_path, monkeypatch):
    setting = _run_setting_on_finished_attack(tmp_path, monkeypatch, "fmnist", [0.04, 0.07, 0.1, 0.114])
    assert setting["attack_eps_source"] == "paper"
    table2 = rp.render_table2([setting], rp.PRESETS["budget"], rp.PAPER_REFERENCE)
    # ours: 25.0 - 25.0 = 0 points; the paper's FMNIST FC row at 0.04: 20.7 - 20.0 = 0.7
    assert "| 0.04 | 10.0* | 25.0* | 10.0* | 25.0* | 0.0* | 25.0 / 25.0* | 13.0 / 13.6 | 20.7 | 20.0 | 0.7 | -0.7 |" in table2
    assert "| 0.114 |" in table2 and "| 13.3 / 13.6 | 49.7 | 38.7 | 11.0 | -11.0 |" in table2
    assert "Paper: 0.7 to 11.0 points for 0.6 points of clean error." in table2
    assert "NOT at the paper's eps" not in table2


def test_table1_shows_the_papers_clean_accuracy():
    summary = {"n_test": 10000, "n_train": 60000, "test_accuracy": {"mean": 0.9812}, "seconds_per_epoch": 1.0}
    mnist = {"dataset": "mnist", "data": "mnist", "arch": "conv", "plain": summary, "robust": summary}
    subset = {**mnist, "dataset": "nmnist", "data": "nmnist", "arch": "fc", "plain": {**summary, "n_train": 1000}}
    table1 = rp.render_table1([mnist, subset], rp.PRESETS["budget"], rp.PAPER_REFERENCE)
    assert "| MNIST | CONV | 98.12* | 98.12* | 0.00* | 99.09 | n/r | -0.97 |" in table1
    # the N-MNIST 1k-subset is not the paper's data: its cell is shown, no difference is taken
    assert "| FC | 98.12* | 98.12* | 0.00* | 98.30 | n/r | other data |" in table1


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        rp.main(["--dataset", "cifar"])
    assert "subset of mnist,fmnist,nmnist" in capsys.readouterr().err


def test_paper_values_file_merges(tmp_path):
    extra = tmp_path / "paper.json"
    extra.write_text(json.dumps({"clean_accuracy": {"mnist-fc": {"regular": 98.0}}}))
    merged = rp.load_paper_values(str(extra))
    assert merged["clean_accuracy"]["mnist-fc"]["regular"] == 98.0
    assert merged["attack_eps"]["mnist-fc"] == rp.PAPER_REFERENCE["attack_eps"]["mnist-fc"]
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        rp.load_paper_values(str(bad))


def test_default_output_is_under_runs_not_results(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(rp, "reproduce", lambda config, command=None: seen.setdefault("config", config))
    assert rp.main(["--preset", "budget", "--dataset", "mnist"]) == 0
    assert seen["config"].out == "runs/reproduce"


def test_quick_presets_are_smoke_runs_of_one_setting(monkeypatch, tmp_path, capsys):
    quick, conv = rp.PRESETS["quick"], rp.PRESETS["quick-conv"]
    assert quick.smoke and conv.smoke and not rp.PRESETS["budget"].smoke
    assert (quick.datasets, quick.archs, conv.archs) == (("mnist",), ("fc",), ("conv",))
    assert quick.dataset_alias["mnist"] == "mnist-subset"
    ran = []
    monkeypatch.setattr(rp, "run_setting", lambda root, dataset, arch, *rest: ran.append((dataset, arch)) or 1 / 0)
    # Without --dataset/--arch the quick preset runs MNIST FC only (it used to run every dataset and both archs).
    with pytest.raises(ZeroDivisionError):
        rp.main(["--preset", "quick", "--out", str(tmp_path), "--no-sweep"])
    assert ran == [("mnist", "fc")]
    capsys.readouterr()
    assert rp.main(["--preset", "quick", "--arch", "conv", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "archs: preset 'quick' runs only fc, not conv" in error and "quick-conv" in error
    assert error.count("\n") == 1


def test_merge_tables_keep_unknown_and_other_settings():
    new = "# T\n\n| data set | arch |\n|---|---|\n| N-MNIST 1k-subset (1000 train recordings) | FC |\n\nnote"
    old = "| data set | arch |\n|---|---|\n| MNIST | CONV |\n| N-MNIST | FC |\n| something else | FC |\n"
    merged = rp.merge_table1(new, old)
    assert merged.split("\n")[4:7] == ["| MNIST | CONV |", "| N-MNIST 1k-subset (1000 train recordings) | FC |",
                                        "| something else | FC |"]
    assert merged.endswith("\n\nnote") and rp.merge_table1(new, None) == new


@pytest.mark.parametrize("preset, datasets, archs, message", [
    ("nope", None, None, "preset: unknown 'nope'; choose from budget, paper, quick, quick-conv"),
    ("budget", ("cifar",), None, "datasets: unknown ['cifar']; choose from mnist, fmnist, nmnist"),
    ("budget", None, ("rnn",), "archs: unknown ['rnn']; choose from fc, conv"),
    ("quick", ("fmnist",), None, "datasets: preset 'quick' runs only mnist, not fmnist"),
    ("quick", None, ("conv",), "archs: preset 'quick' runs only fc, not conv (use --preset quick-conv"),
    ("quick-conv", None, ("fc", "conv"), "archs: preset 'quick-conv' runs only conv, not fc"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, preset, datasets, archs, message):
    config = rp.ReproduceConfig(preset, datasets, archs, str(tmp_path / "out"))
    with pytest.raises(rp.ReproduceConfigError) as info:
        rp.reproduce(config)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_quiet_reaches_every_step(monkeypatch, capsys):
    """Quiet: each step's command gets --quiet (no compile notice, no lines) and its results are not printed."""
    seen = []

    def step(argv):
        seen.append(argv)
        print("a result line")
        return 0

    monkeypatch.setitem(rp._OUTPUT, "quiet", True)
    assert rp._run_cli(step, ["--no-progress"]) == 0
    monkeypatch.setitem(rp._OUTPUT, "quiet", False)
    assert rp._run_cli(step, ["--no-progress"]) == 0
    assert seen == [["--no-progress", "--quiet"], ["--no-progress"]]
    assert capsys.readouterr().out == "a result line\n"


def test_finished_sweep_run_without_its_model_file_is_skipped(tmp_path, monkeypatch):
    """results/ keeps the T' sweep's summaries but not its model files: a rerun skips those runs
    (the main runs still need model.h5, which later steps read)."""
    import json

    from refsnn import reproduce, train

    calls = []
    monkeypatch.setattr(train, "main", lambda argv: calls.append(argv) or 1)
    run = tmp_path / "sweep" / "T1"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"seconds_per_epoch": 1.5}))
    before = sorted(p.name for p in run.iterdir())
    assert reproduce._train_step(run, ["--not-a-flag"], need_model=False) == {"seconds_per_epoch": 1.5}
    assert sorted(p.name for p in run.iterdir()) == before
    assert calls == []
    with pytest.raises(RuntimeError, match="failed"):
        reproduce._train_step(run, ["--not-a-flag"])  # a main run without model.h5 is not finished
    assert len(calls) == 1


def test_exact_column_step_runs_once_at_the_training_eps_and_is_rendered(tmp_path, monkeypatch, capsys):
    """The exact step runs verify.dataset --method complete --sets certify on the robust model at the
    training eps (skipped once its verify.json exists, off with exact_n 0); table2 shows the exact error
    beside the certified errors on the same samples and flags a certified sample with a witness."""
    import numpy as np

    from refsnn import SNN, Flatten, Linear, reproduce_tables
    from refsnn.io import save_model

    rng = np.random.default_rng(5)
    net = SNN([Flatten(), Linear(rng.normal(0, 0.08, (6, 784)), np.full(6, 0.1)),
               Linear(rng.normal(0, 0.5, (10, 6)), np.full(10, 0.05))], input_shape=(1, 28, 28))
    setting_dir = tmp_path / "mnist-fc"
    model = save_model(setting_dir / "robust" / "model.h5", net)
    out = setting_dir / "exact_robust"
    exact = rp._exact_step(out, model, "mnist-subset", 0.12, 4, 2, 20.0, None, seed=3)
    assert exact["identity"]["method"] == "complete" and exact["identity"]["sets"] == "certify"
    assert exact["identity"]["seed"] == 3
    assert exact["identity"]["eps"] == 0.12 and [r["index"] for r in exact["samples"]] == [0, 1, 2, 3]
    stamp = (out / "verify.json").stat().st_mtime_ns
    capsys.readouterr()
    assert rp._exact_step(out, model, "mnist-subset", 0.12, 4, 2, 20.0, None, seed=3) == exact
    assert (out / "verify.json").stat().st_mtime_ns == stamp and "skip exact" in capsys.readouterr().out

    statuses = [r["status"] for r in exact["samples"]]
    certified = [{"index": i, "label": 0, "clean_correct": True, "best": {"certified": False},
                  "crown-ibp": {"certified": False}} for i in range(4)]
    (setting_dir / "certify_robust").mkdir()
    (setting_dir / "certify_robust" / "certify_samples.json").write_text(json.dumps(certified))
    (setting_dir / "certify_robust" / "certify.json").write_text(json.dumps({"config": {"seed": 3}}))
    (setting_dir / "certify_robust_alpha").mkdir()  # another seed: other sets, not compared
    (setting_dir / "certify_robust_alpha" / "certify_samples.json").write_text(json.dumps(
        [{**r, "alpha": {"certified": True}} for r in certified]))
    (setting_dir / "certify_robust_alpha" / "certify.json").write_text(json.dumps({"config": {"seed": 0}}))
    setting = {"dir": str(setting_dir), "exact": exact}
    lines = "\n".join(reproduce_tables._exact_rows(setting, rp.PRESETS["budget"], "*"))
    error = reproduce_tables.exact_error(exact["summary"])
    assert "| robust, first 4 samples (seed 3) |" in lines and f"| 100.0* | 100.0* | - | {error}* |" in lines
    assert "No sample certified by crown-ibp, best has a witness" in lines and "WARNING" not in lines
    assert "`-`: alpha ran with another seed" in lines
    # a certificate on a sample the verifier broke is flagged (the untrained net misclassifies)
    broken = statuses.index("not_robust")
    certified[broken]["best"]["certified"] = True
    (setting_dir / "certify_robust" / "certify_samples.json").write_text(json.dumps(certified))
    lines = "\n".join(reproduce_tables._exact_rows(setting, rp.PRESETS["budget"], "*"))
    assert f"WARNING: samples [{broken}] are certified and have an exact witness" in lines
    assert reproduce_tables.exact_error({"verified_robust_error_lower": 0.25,
                                             "verified_robust_error_upper": 0.5}) == "[25.0, 50.0]"
    assert reproduce_tables.exact_error({"verified_robust_error_lower": 0.25,
                                             "verified_robust_error_upper": 0.25}) == "25.0"

    # run_setting: the step gets the robust model and the training eps; exact_n 0 turns it off
    calls = []
    setting = _run_setting_on_finished_attack(tmp_path / "b", monkeypatch, "fmnist", [0.04, 0.07, 0.1, 0.114],
                                              exact_step=lambda *args, **kwargs: calls.append((args, kwargs)) or exact)
    assert setting["exact"] is exact
    (args, kwargs), = calls
    assert str(args[1]).endswith("fmnist-fc/robust/model.h5")
    assert args[3] == rp.DEFAULT_EPS[("fmnist", "fc")] and args[4] == 100 and args[6] == 60.0
    assert kwargs["seed"] == 1234  # the certification's seed: the same rand maps, the same sets
    assert rp.PRESETS["quick"].exact_n == 0 and rp.PRESETS["quick-conv"].exact_n == 0
    with pytest.raises(rp.ReproduceConfigError, match="exact_n"):
        rp.ReproduceConfig("budget", exact_n=-1)
