"""Progress output: one bar per long command, an honest kernel-compile notice, a quiet switch, epoch lines."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tqdm

from refsnn import progress
from refsnn.train import epoch_line


@pytest.fixture
def bars(monkeypatch):
    """Every tqdm bar created while the test runs (the class is counted, not replaced)."""
    created = []

    class Counting(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            created.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", Counting)
    return created


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from refsnn.train import main as train_main

    out = tmp_path_factory.mktemp("tiny") / "run"
    assert train_main(["--dataset", "mnist-subset", "--arch", "fc", "--epochs", "1", "--limit-train", "64",
                       "--limit-test", "20", "--eval-seeds", "1", "--out", str(out), "--quiet"]) == 0
    return out / "model.h5"


def test_progress_lines_bar_and_quiet(capsys, bars):
    with progress.Progress(3, "work", quiet=True) as bar:
        bar.update(3)
        bar.write("hidden")
    assert capsys.readouterr() == ("", "") and bars == []
    with progress.Progress(3, "work", bar=False) as bar:
        bar.write("shown")
    assert capsys.readouterr().out == "shown\n" and bars == []
    with progress.Progress(5, "work", initial=2) as bar:
        bar.update(3)
    assert len(bars) == 1 and bars[0]["total"] == 5 and bars[0]["initial"] == 2


NOTICE_SCRIPT = """
import numpy as np
from refsnn import progress
from refsnn.neurons import loops
progress.compile_notice(quiet={quiet})
progress.compile_notice(quiet={quiet})   # a second call installs no second listener
loops.lif_forward_fused(np.zeros((2, 3)), 0.25, 0.25)
loops.lif_forward_fused(np.zeros((2, 3), np.float32), np.float32(0.25), np.float32(0.25))
"""


def test_compile_notice_says_it_exactly_when_numba_compiles(tmp_path):
    """An empty Numba cache: one line while the kernels compile; the same cache again: silence."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))

    def stderr(quiet: bool) -> str:
        result = subprocess.run([sys.executable, "-c", NOTICE_SCRIPT.format(quiet=quiet)], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stderr

    assert stderr(quiet=True) == ""                          # compiles (fills the cache) without a word
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-2")
    assert stderr(quiet=False) == progress.COMPILE_MESSAGE + "\n"   # compiles: said once
    assert stderr(quiet=False) == ""                         # loads from the cache: nothing to say


QUIET_AFTER_LOUD_SCRIPT = """
import numpy as np
from refsnn import progress
from refsnn.neurons import loops
progress.compile_notice(quiet=False)   # an earlier command of this process installed the listener
progress.compile_notice(quiet=True)    # the command running now is quiet
loops.lif_forward_fused(np.zeros((2, 3)), 0.25, 0.25)
"""


def test_a_quiet_command_after_a_loud_one_in_the_same_process_says_nothing(tmp_path):
    """One listener serves every command of a process (tests, reproduce): it obeys the latest --quiet."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    result = subprocess.run([sys.executable, "-c", QUIET_AFTER_LOUD_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_training_shows_one_bar_for_the_whole_run(tmp_path, bars):
    from refsnn.train import main as train_main

    assert train_main(["--dataset", "mnist-subset", "--arch", "fc", "--epochs", "2", "--limit-train", "64",
                       "--limit-test", "20", "--eval-seeds", "1", "--batch-size", "32", "--out", str(tmp_path)]) == 0
    assert len(bars) == 1 and bars[0]["total"] == 4   # 2 epochs x 2 batches, not one bar per epoch


def test_attack_shows_one_bar_over_every_model_eps_and_attack(tiny_model, tmp_path, bars, capsys):
    from refsnn.attack import main as attack_main

    assert attack_main(["--model", str(tiny_model), "--model2", str(tiny_model), "--dataset", "mnist-subset",
                        "--n", "4", "--eps", "0.1,0.2", "--attack", "paper", "--fresh-draws", "0",
                        "--out", str(tmp_path / "attack")]) == 0
    assert len(bars) == 1 and bars[0]["total"] == 2 * 2 * 4   # models x eps x samples
    capsys.readouterr()
    assert attack_main(["--model", str(tiny_model), "--dataset", "mnist-subset", "--n", "4", "--eps", "0.1",
                        "--fresh-draws", "0", "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert len(bars) == 1 and capsys.readouterr().err == ""


def test_robust_epoch_line_names_eps_loss_parts_and_certified_error():
    record = {"epoch": 3, "train_loss": 1.25, "train_acc": 0.9, "test_acc": 0.85, "train_seconds": 4.0,
              "samples_per_s": 100.0, "lr": 0.01, "eps": 0.06, "kappa": 0.75, "beta": 0.5,
              "train_natural_loss": 0.5, "train_robust_loss": 2.0, "cert_n": 50,
              "cert_error_crown-ibp_now": 0.4, "cert_error_best_now": 0.3,
              "cert_error_crown-ibp_final": 0.9, "cert_error_best_final": 0.8}
    line = epoch_line(record, 10)
    assert line.startswith("epoch 3/10: loss 1.2500")
    for part in ("eps 0.06 (kappa 0.75, beta 0.5)", "loss parts: natural 0.5000, robust 2.0000",
                 "certified error (50 test samples): 40.0% S-CROWN at eps now, 30.0% best at eps now, "
                 "90.0% S-CROWN at final eps, 80.0% best at final eps"):
        assert part in line
    natural = {key: record[key] for key in ("epoch", "train_loss", "train_acc", "test_acc", "train_seconds",
                                            "samples_per_s", "lr")}
    assert "eps" not in epoch_line(natural, 10) and "certified" not in epoch_line(natural, 10)
