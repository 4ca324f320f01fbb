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
                   attack_n=20, certify_n=20, sweep_T=(1, 2), sweep_limit_train=128,
                   plain_args=("--milestones", "100", "--limit-train", "256", "--limit-test", "100",
                               "--eval-seeds", "1"),
                   robust_args=("--lr", "0.01", "--limit-train", "256", "--limit-test", "100", "--eval-seeds", "1"))
    monkeypatch.setitem(rp.PRESETS, "quick", tiny)
    return tiny


def test_end_to_end_resumable_and_missing_data(tmp_path, tiny_preset, capsys):
    out = tmp_path / "results"
    empty = tmp_path / "no-data"
    empty.mkdir()
    # nmnist has no files under the empty data dir: it must be skipped with the reason, not invented.
    code = rp.main(["--preset", "quick", "--dataset", "mnist,nmnist", "--arch", "fc", "--out", str(out),
                    "--data-dir", str(empty)])
    assert code == 0
    root = out / "quick"
    for name in ("table1.md", "table2.md", "figure5.md", "summary.json", "reproduce_config.json"):
        assert (root / name).is_file(), name
    assert (root / "figure5.png").stat().st_size > 1000
    assert (root / "figure6_mnist.png").stat().st_size > 1000
    summary = json.loads((root / "summary.json").read_text())
    assert [s["dataset"] for s in summary["settings"]] == ["mnist"]
    assert summary["outputs"]["skipped"][0]["dataset"] == "nmnist"
    assert "skipping nmnist: no data" in capsys.readouterr().out
    setting = summary["settings"][0]
    # every attack eps of the paper's MNIST FC row has both models and the paper attack
    rows = {(r["model"], r["eps"]) for r in setting["attack_rows"] if r["attack"] == "paper"}
    assert rows == {(m, e) for m in ("plain", "robust") for e in rp.PAPER_REFERENCE["attack_eps"]["mnist-fc"]}
    table2 = (root / "table2.md").read_text()
    assert "| 0.104 |" in table2 and "NOT a reproduction" in table2 and "n/t" in table2
    assert [row["T_prime"] for row in summary["figure5"]] == [1, 2]
    config = json.loads((root / "reproduce_config.json").read_text())
    assert config["command"].startswith("python -m refsnn.reproduce --preset quick")

    # A rerun skips every finished step: no model file is rewritten.
    models = sorted(root.rglob("model.h5"))
    stamps = {p: p.stat().st_mtime_ns for p in models}
    assert rp.main(["--preset", "quick", "--dataset", "mnist", "--arch", "fc", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in models} == stamps
    assert "skip" in capsys.readouterr().out

    # An interrupted training resumes from its checkpoint: drop the robust run's result files.
    robust_dir = root / "mnist-fc" / "robust"
    (robust_dir / "summary.json").unlink()
    (robust_dir / "model.h5").unlink()
    for stale in (root / "mnist-fc" / "attack" / "table.json", root / "mnist-fc" / "certify_robust" / "certify.json"):
        stale.unlink()
    assert rp.main(["--preset", "quick", "--dataset", "mnist", "--arch", "fc", "--out", str(out), "--no-sweep"]) == 0
    assert "resume" in capsys.readouterr().out
    assert (robust_dir / "model.h5").is_file()


def test_attack_eps_sources():
    eps, source = rp.attack_eps_for("mnist", "fc")
    assert source == "paper" and eps == [0.104, 0.124, 0.140, 0.154]
    eps, source = rp.attack_eps_for("fmnist", "fc")
    assert source == "scaled" and eps[0] == pytest.approx(0.01 * 0.104 / 0.12, abs=1e-6)
    transcribed = {"attack_eps": {"fmnist-fc": [0.02, 0.03]}}
    assert rp.attack_eps_for("fmnist", "fc", transcribed) == ([0.02, 0.03], "paper")


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
