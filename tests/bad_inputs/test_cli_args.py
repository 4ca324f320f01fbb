"""Bad command-line arguments, every CLI: one table.

Each row runs a CLI in-process on a tiny model (the embedded mnist-subset data) and asserts exit
code 2, ONE stderr line ``<prog>: error: ...`` holding the row's phrase, no traceback, and that no
file in the test folder changed or appeared (the working directory is inside it, so a default
output under runs/ would show too). A few rows run through ``python -m`` to prove that path.
"""
import errno
import hashlib
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refsnn import cli
from refsnn.io import save_model
from refsnn.layers import Flatten, Linear
from refsnn.network import SNN

REPO = Path(__file__).resolve().parents[2]
MODULES = {"train": "refsnn.train", "certify": "refsnn.certify", "attack": "refsnn.attack",
           "evaluate": "refsnn.evaluate", "report": "refsnn.report", "reproduce": "refsnn.reproduce",
           "check": "verify.check", "dataset": "verify.dataset", "tightness": "verify.tightness"}
SCRIPTS = ("convert_to_hdf5", "import_torch", "make_mnist_subset")

M = ["--model", "{model}"]                       # a valid tiny model whose metadata says T = 4
SUB = ["--dataset", "mnist-subset"]

#: (command, argv, phrase of the one stderr line)
TABLE = [
    # certify
    ("certify", [*M, *SUB, "--eps", "1.5"], "argument --eps: must be a finite number in [0, 1], got '1.5'"),
    ("certify", [*M, *SUB, "--eps", "-0.1"], "argument --eps: must be a finite number in [0, 1]"),
    ("certify", [*M, *SUB, "--eps", "nan"], "argument --eps: must be a finite number in [0, 1]"),
    ("certify", [*M, *SUB, "--n", "0"], "argument --n: must be an integer >= 1, got '0'"),
    ("certify", [*M, *SUB, "--robust-T", "0"], "argument --robust-T: must be an integer >= 1"),
    ("certify", [*M, *SUB, "--robust-T", "9"], "--robust-T 9 exceeds the model's training T = 4"),
    ("certify", [*M, *SUB, "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    ("certify", [*M, *SUB, "--confidence-alpha", "1"], "argument --confidence-alpha: must lie strictly between 0"),
    ("certify", [*M, *SUB, "--workers", "0"], "argument --workers: must be an integer >= 1"),
    ("certify", [*M, *SUB, "--method", "ibp,nonsense"], "--method: unknown method(s) ['nonsense']"),
    ("certify", [*M, "--dataset", "cifar10"], "argument --dataset: invalid choice: 'cifar10'"),
    ("certify", ["--model", "{missing}", *SUB], "no such model or checkpoint file"),
    ("certify", ["--model", "{not_h5}", *SUB], "is not a readable HDF5 file"),
    ("certify", [*M, *SUB, "--out", "{a_file}"], "exists and is not a folder; --out names a folder"),
    ("certify", [*M, *SUB, "--out", "{a_file}/sub"], "is a file, so the folder cannot be created there"),
    # attack
    ("attack", [*M, *SUB, "--T", "0"], "argument --T: must be an integer >= 1, got '0'"),
    ("attack", [*M, *SUB, "--eps", "0.1,2"], "argument --eps: must be a finite number in [0, 1], got '2'"),
    ("attack", [*M, *SUB, "--n", "-3"], "argument --n: must be an integer >= 1"),
    ("attack", [*M, *SUB, "--attack", "paper,bogus"], "argument --attack:"),
    ("attack", [*M, *SUB, "--out", "{a_file}"], "exists and is not a folder"),
    ("attack", ["--model", "{not_h5}", *SUB], "is not a readable HDF5 file"),
    # train
    ("train", [*SUB, "--method", "robust", "--T", "3", "--robust-T", "5", "--out", "{new}"],
     "--robust-T 5 exceeds --T = 3"),
    ("train", ["--epochs", "0", "--out", "{new}"], "argument --epochs: must be an integer >= 1"),
    ("train", ["--lr", "-1", "--out", "{new}"], "argument --lr: must be a finite number > 0"),
    ("train", ["--eps", "inf", "--out", "{new}"], "argument --eps: must be a finite number in [0, 1]"),
    ("train", ["--out", "{a_file}"], "exists and is not a folder"),
    # evaluate
    ("evaluate", ["--model", "{missing}", *SUB], "no such model or checkpoint file"),
    ("evaluate", ["--model", "{not_h5}", *SUB], "is not a readable HDF5 file"),
    ("evaluate", [*M, *SUB, "--T", "0"], "argument --T: must be an integer >= 1"),
    ("evaluate", [*M, *SUB, "--n", "0"], "argument --n: must be an integer >= 1"),
    # verify.check
    ("check", [*M, "--cases", "{a_file}", "--atol", "nan"], "argument --atol: must be a finite number >= 0"),
    ("check", [*M, "--cases", "{a_file}", "--atol=-1e-9"], "argument --atol: must be a finite number >= 0"),
    ("check", [*M, "--cases", "{a_file}", "--time-limit", "0"], "argument --time-limit: must be a finite number > 0"),
    ("check", [*M, "--cases", "{a_file}", "--json", "{folder}"], "--json {folder} is a folder; --json names a file"),
    # verify.dataset
    ("dataset", [*M, *SUB, "--eps", "-1"], "argument --eps: must be a finite number in [0, 1]"),
    ("dataset", [*M, *SUB, "--robust-T", "5"], "--robust-T 5 exceeds the model's training T = 4"),
    ("dataset", [*M, *SUB, "--out", "{a_file}"], "exists and is not a folder"),
    # verify.tightness, report, reproduce
    ("tightness", ["--n", "0"], "argument --n: must be an integer >= 1"),
    ("tightness", ["--out", "{a_file}"], "exists and is not a folder"),
    ("report", ["{folder}/no-run"], "metrics.jsonl not found"),
    ("report", ["{folder}", "--out", "{a_file}"], "exists and is not a folder"),
    ("reproduce", ["--dataset", "cifar"], "must be a comma-separated subset of"),
    ("reproduce", ["--out", "{a_file}"], "exists and is not a folder"),
    # data_scripts
    ("convert_to_hdf5", ["nmnist", "--T", "0"], "argument --T: must be an integer >= 1"),
    ("convert_to_hdf5", ["mnist", "--timeout", "-1"], "argument --timeout: must be a finite number > 0"),
    ("import_torch", ["--framework", "plain", "--model", "{missing}", "--n-random", "0"],
     "argument --n-random: must be an integer >= 1"),
    ("make_mnist_subset", ["--train-per-class", "0"], "argument --train-per-class: must be an integer >= 1"),
    ("make_mnist_subset", ["--out", "{a_file}"], "exists and is not a folder"),
]

#: (module, argv, phrase): the same refusals through ``python -m``.
SUBPROCESS_ROWS = [
    ("refsnn.certify", [*M, *SUB, "--eps", "2"], "python -m refsnn.certify: error: argument --eps:"),
    ("verify.check", [*M, "--cases", "{a_file}", "--atol", "nan"], "python -m verify.check: error: argument --atol:"),
    ("refsnn.evaluate", ["--model", "{not_h5}", *SUB], "python -m refsnn.evaluate: error: "),
]


def _main(name: str):
    if name in MODULES:
        return importlib.import_module(MODULES[name]).main
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A folder with a tiny model (metadata T = 4), a non-HDF5 file and a plain file; cwd inside it."""
    rng = np.random.default_rng(0)
    net = SNN([Flatten(), Linear(rng.normal(0, 0.1, (4, 784)), np.zeros(4)),
               Linear(rng.normal(0, 0.5, (10, 4)), np.zeros(10))], input_shape=(1, 28, 28))
    save_model(tmp_path / "model.h5", net, config={"T": 4})
    (tmp_path / "not_h5.h5").write_text("this is not HDF5\n")
    (tmp_path / "a_file.txt").write_text("keep me\n")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    names = {"model": tmp_path / "model.h5", "missing": tmp_path / "missing.h5", "not_h5": tmp_path / "not_h5.h5",
             "a_file": tmp_path / "a_file.txt", "folder": tmp_path, "new": tmp_path / "new-run"}
    return tmp_path, {key: str(value) for key, value in names.items()}


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _fill(argv, names):
    return [arg.format(**names) for arg in argv]


def _run_in_process(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:   # argparse's own exit
        return exit_info.code


@pytest.mark.parametrize("name, argv, phrase", TABLE, ids=[f"{i:02d}-{row[0]}" for i, row in enumerate(TABLE)])
def test_bad_argument_is_refused_in_one_line(name, argv, phrase, place, capsys):
    root, names = place
    before = _snapshot(root)
    code = _run_in_process(_main(name), _fill(argv, names))
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert ": error: " in lines[0] and phrase.format(**names) in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert _snapshot(root) == before


@pytest.mark.parametrize("module, argv, phrase", SUBPROCESS_ROWS, ids=[row[0] for row in SUBPROCESS_ROWS])
def test_python_m_path_gives_the_same_line(module, argv, phrase, place):
    root, names = place
    before = _snapshot(root)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("REFSNN_TRACEBACK", None)
    result = subprocess.run([sys.executable, "-m", module, *_fill(argv, names)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(phrase), result.stderr
    assert "Traceback" not in result.stderr
    assert _snapshot(root) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_out_folder_is_refused_before_the_work(place, capsys):
    root, names = place
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = _run_in_process(_main("certify"), _fill([*M, *SUB, "--out", str(locked / "cert")], names))
    finally:
        locked.chmod(0o700)
    assert code == 2 and "is not writable" in capsys.readouterr().err


def test_run_main_turns_user_errors_into_one_line_and_keeps_bugs_loud(capsys):
    def full_disk(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/certify.json")

    def bug(argv):
        raise KeyError("a bug")

    assert cli.run_main("prog")(full_disk)([]) == 2
    assert capsys.readouterr().err == "prog: error: [Errno 28] No space left on device: 'runs/x/certify.json'\n"
    with pytest.raises(KeyError):
        cli.run_main("prog")(bug)([])


def test_deprecated_alias_validates_like_the_new_flag(place, capsys):
    root, names = place
    code = _run_in_process(_main("dataset"), _fill([*M, *SUB, "--horizon", "0"], names))
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 2
    assert "--horizon is deprecated; use --robust-T" in lines[0] and "argument --horizon: must be an integer" in lines[1]
