"""``python -m refsnn.reproduce``: the paper's Table 1, Table 2, Figure 5 and Figure 6 from one command.

For every (dataset, arch) it runs, in ``OUT/<preset>/<dataset>-<arch>/`` (``OUT`` is ``--out``,
default ``runs/reproduce``; the committed ``results/`` only when passed as ``--out``):

1. ``plain/``: natural training (``python -m refsnn.train``);
2. ``robust/``: robust training from the plain model (``--method robust``, the paper's training
   eps, eps ramped linearly, T' of the preset, the ``crown-ibp`` recipe);
3. ``attack/``: the Table 2 protocol on both models at the attack eps (``python -m refsnn.attack``,
   paper attack and the ``strongest`` ensemble, 300 fixed test samples by default);
4. ``certify_plain/`` / ``certify_robust/``: certified (S-IBP, S-CROWN, best) robust error of
   both models at the training eps (``python -m refsnn.certify``);

and once, on the first dataset, the T' sweep of Figure 5 (``sweep/``: one robust epoch per T' from
the plain model, and one natural epoch on the same samples as the time reference). It then writes
``table1.md``, ``table2.md``, ``figure5.png``, ``figure6_<dataset>.png``, ``summary.json`` and
``reproduce_config.json``. Tables already in the folder are merged into: the rows of the settings
run now are replaced, the rows of every other setting are kept. Every step is resumable: a
finished step (its result file exists) is skipped, an interrupted training resumes from its
checkpoint, so rerunning the same command after a crash or on a bigger machine continues where it
stopped and then only re-renders the tables. One overall bar counts the steps (``--quiet``: no output).

Presets (``PRESETS``): ``quick`` (MNIST FC) and ``quick-conv`` (MNIST CONV) are smoke runs of
about two minutes on 2 cores on the embedded MNIST subset; every table they write says it is a
smoke run and NOT the paper's protocol. ``budget`` is the largest schedule that completes MNIST FC
in about an hour on 2 CPU cores; ``paper`` is the paper's schedule (80 natural epochs; 300 robust
epochs with the 250-epoch ramp).

The published numbers that are compared against are in ``PAPER_REFERENCE`` (the paper's Table 1,
Table 2 for all six settings, training eps and Figure 5 ratios; a cell not there is shown as
``n/t``, never guessed). Every preset attacks at the paper's four eps per setting; a paper cell is
printed only beside a row attacked at the same eps, and a finished attack run at other eps is
rendered as run, labelled with its eps. ``--paper-values FILE`` adds or corrects cells (see
docs/REPRODUCTION.md for the format).

    python -m refsnn.reproduce --preset budget --dataset mnist,fmnist --arch fc
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .input_sets import DEFAULT_ROBUST_T
from .io import atomic_write_text
from .robust import DEFAULT_EPS

DATASETS = ("mnist", "fmnist", "nmnist")
ARCHS = ("fc", "conv")
class ReproduceConfigError(ValueError):
    """A ``ReproduceConfig`` field out of its allowed values (the message names the field and them)."""


#: Output root when --out is not given (git-ignored; the committed results/ only through --out).
DEFAULT_OUT = "runs/reproduce"

# Table 2 of the paper, row by row as printed: (setting, attack eps, regular original err., regular
# attack err., robust original err., robust attack err.), errors in %. ``PAPER_REFERENCE``'s attack
# eps and Table 2 cells are built from these rows only.
_PAPER_TABLE2_ROWS: Tuple[Tuple[str, float, float, float, float, float], ...] = (
    ("mnist-fc", 0.104, 0.3, 19.3, 4.7, 16.6),
    ("mnist-fc", 0.124, 0.3, 29.7, 4.7, 20.3),
    ("mnist-fc", 0.140, 0.3, 39.0, 4.7, 23.3),
    ("mnist-fc", 0.154, 0.3, 50.0, 5.0, 24.3),
    ("mnist-conv", 0.120, 0.3, 18.7, 3.7, 8.3),
    ("mnist-conv", 0.140, 0.3, 29.0, 4.0, 9.0),
    ("mnist-conv", 0.170, 0.3, 40.7, 3.3, 10.7),
    ("mnist-conv", 0.190, 0.3, 50.7, 4.0, 13.0),
    ("fmnist-fc", 0.040, 13.0, 20.7, 13.6, 20.0),
    ("fmnist-fc", 0.070, 13.0, 29.7, 13.3, 24.0),
    ("fmnist-fc", 0.100, 11.7, 41.3, 14.0, 32.0),
    ("fmnist-fc", 0.114, 13.3, 49.7, 13.6, 38.7),
    ("fmnist-conv", 0.040, 10.0, 19.7, 13.7, 22.0),
    ("fmnist-conv", 0.060, 10.3, 28.3, 17.3, 23.0),
    ("fmnist-conv", 0.080, 10.0, 41.3, 17.0, 25.7),
    ("fmnist-conv", 0.100, 10.3, 52.3, 16.7, 34.3),
    ("nmnist-fc", 0.0007, 3.7, 21.0, 3.7, 10.0),
    ("nmnist-fc", 0.0009, 3.7, 30.7, 3.7, 12.3),
    ("nmnist-fc", 0.0012, 3.7, 41.3, 3.7, 16.7),
    ("nmnist-fc", 0.0014, 3.7, 48.7, 3.7, 18.3),
    ("nmnist-conv", 0.0008, 1.3, 20.0, 4.3, 7.0),
    ("nmnist-conv", 0.0010, 1.3, 33.7, 4.3, 11.0),
    ("nmnist-conv", 0.0012, 1.3, 41.0, 4.3, 11.0),
    ("nmnist-conv", 0.0015, 1.3, 49.0, 4.3, 12.0),
)
_TABLE2_FIELDS = ("regular_original_error", "regular_attack_error", "robust_original_error", "robust_attack_error")


def eps_key(eps: float) -> str:
    """The key of an attack eps in ``PAPER_REFERENCE['table2_cells'][setting]`` (``f"{eps:g}"``: 0.140 -> "0.14")."""
    return f"{eps:g}"


#: What the paper states and this module compares against (Liang et al., NeurIPS 2022), transcribed
#: from its Table 1, Table 2 and Figure 5 (``tests/test_paper_reference.py`` checks every value
#: against ../shared/docs/paper-tables.md). Setting keys are ``"<dataset>-<arch>"``; errors and
#: accuracies in %. A missing key renders as ``n/t``.
PAPER_REFERENCE: Dict[str, Any] = {
    "source": "Liang et al., Toward Robust Spiking Neural Network Against Adversarial Perturbation, NeurIPS 2022",
    # Table 2 header: the training eps of each setting.
    "train_eps": {f"{d}-{a}": eps for (d, a), eps in DEFAULT_EPS.items() if d in DATASETS},
    # Table 2: the four attack eps of each setting, as printed.
    "attack_eps": {key: [row[1] for row in _PAPER_TABLE2_ROWS if row[0] == key]
                   for key in dict.fromkeys(row[0] for row in _PAPER_TABLE2_ROWS)},
    # Abstract: the best reduction over all settings (MNIST CONV, eps 0.19: 50.7 - 13.0), for the
    # clean-accuracy cost stated with it (4.0 - 0.3).
    "headline": "up to 37.7 points less attack error for 3.7 points of clean accuracy",
    # Figure 5 (CONV, MNIST, eps 0.12): time per robust epoch relative to natural training, per T'.
    "figure5_time_ratio": {"1": 2.6, "3": 7.7, "5": 12.9},
    # Table 1: clean accuracy (%) of the original (naturally trained) networks; the paper's Table 1
    # has no robust-network column.
    "clean_accuracy": {"mnist-fc": {"regular": 98.45}, "fmnist-fc": {"regular": 87.58},
                       "nmnist-fc": {"regular": 98.30}, "mnist-conv": {"regular": 99.09},
                       "fmnist-conv": {"regular": 89.53}, "nmnist-conv": {"regular": 99.05}},
    # Table 2: per setting and attack eps (``eps_key``), the original and attack errors (%) of the
    # regular and the robust network.
    "table2_cells": {},
}
for _key, _eps, *_values in _PAPER_TABLE2_ROWS:
    PAPER_REFERENCE["table2_cells"].setdefault(_key, {})[eps_key(_eps)] = dict(zip(_TABLE2_FIELDS, _values))


def paper_reduction(cells: Dict[str, Dict[str, float]], eps: Sequence[float]) -> Optional[Tuple[float, float, float]]:
    """``(min, max, clean cost)`` in points of the paper's Table 2 over ``eps`` (None when a cell is missing).

    Reduction = regular - robust attack error per eps; clean cost = robust - regular original error
    at the first eps (the rule of refsnn's own summary line).
    """
    rows = [cells.get(eps_key(e)) for e in eps]
    if not rows or any(row is None or any(row.get(f) is None for f in _TABLE2_FIELDS) for row in rows):
        return None
    reductions = [round(row["regular_attack_error"] - row["robust_attack_error"], 6) for row in rows]
    cost = round(rows[0]["robust_original_error"] - rows[0]["regular_original_error"], 6)
    return min(reductions), max(reductions), cost


@dataclass(frozen=True)
class ReproducePreset:
    """One schedule for every (dataset, arch); saved with the results."""

    name: str
    label: str                       # shown on every table and figure
    plain_epochs: int
    plain_args: Tuple[str, ...]      # extra ``refsnn.train`` arguments of the natural run
    robust_epochs: int
    ramp_epochs: float
    robust_T: int = DEFAULT_ROBUST_T
    robust_args: Tuple[str, ...] = ("--lr", "0.01", "--method-option", "temperature=5",
                                    "--method-option", "kappa_end=0.5")
    eval_n: int = 1000               # per-epoch certified error during robust training
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    attack_n: int = 300
    attacks: Tuple[str, ...] = ("paper", "strongest")
    certify_n: int = 1000
    sweep_T: Tuple[int, ...] = (1, 2, 3, 4, 5)
    sweep_epochs: int = 1
    sweep_limit_train: Optional[int] = 5000
    sweep_args: Tuple[str, ...] = ()
    dataset_alias: Dict[str, str] = field(default_factory=dict)   # e.g. quick: mnist -> mnist-subset
    datasets: Tuple[str, ...] = DATASETS   # the settings this preset may run (default: all of them)
    archs: Tuple[str, ...] = ARCHS
    smoke: bool = False                    # a smoke run: every table says it is not the paper's protocol
    # Robust-training learning rate per dataset where it differs from robust_args' (FMNIST FC at lr 0.01
    # lost every spike within 5 epochs: results/budget/fmnist-fc/robust_lr0.01_collapsed/).
    robust_lr: Dict[str, float] = field(default_factory=lambda: {"fmnist": 0.001})


PRESETS: Dict[str, ReproducePreset] = {
    # The smoke presets check that every step runs end to end in about two minutes on 2 cores:
    # the embedded MNIST subset, one arch each, tiny schedules. Their numbers are not results.
    "quick": ReproducePreset(
        name="quick", label="quick smoke run (NOT a reproduction: embedded MNIST subset, FC, tiny schedule)",
        plain_epochs=3, plain_args=("--milestones", "100", "--eval-seeds", "1"), robust_epochs=1, ramp_epochs=1.0,
        eval_n=50, limit_train=1000, limit_test=200, attack_n=50, attacks=("paper",), certify_n=100,
        sweep_T=(1, 2), sweep_limit_train=256, dataset_alias={"mnist": "mnist-subset"},
        robust_args=("--lr", "0.01", "--method-option", "temperature=5", "--method-option", "kappa_end=0.5",
                     "--eval-seeds", "1"),
        datasets=("mnist",), archs=("fc",), smoke=True),
    "quick-conv": ReproducePreset(
        name="quick-conv", label="quick CONV smoke run (NOT a reproduction: embedded MNIST subset, CONV, tiny schedule)",
        plain_epochs=1, plain_args=("--milestones", "100", "--eval-seeds", "1"), robust_epochs=1, ramp_epochs=1.0,
        eval_n=10, limit_train=128, limit_test=50, attack_n=10, attacks=("paper",), certify_n=10,
        # T' = 3 only: the kernels of the robust run are reused instead of compiling T' = 1 ones.
        sweep_T=(3,), sweep_limit_train=64, dataset_alias={"mnist": "mnist-subset"},
        robust_args=("--lr", "0.01", "--method-option", "temperature=5", "--method-option", "kappa_end=0.5",
                     "--eval-seeds", "1"),
        datasets=("mnist",), archs=("conv",), smoke=True),
    "budget": ReproducePreset(
        name="budget", label="budget CPU schedule (10 natural + 20 robust epochs, eps ramp over 15)",
        plain_epochs=10, plain_args=("--milestones", "7"), robust_epochs=20, ramp_epochs=15.0, eval_n=1000,
        sweep_epochs=2, sweep_limit_train=None, sweep_args=("--ramp-epochs", "1")),
    "paper": ReproducePreset(
        name="paper", label="the paper's schedule (80 natural, 300 robust epochs, ramp 250)",
        plain_epochs=80, plain_args=("--preset", "paper"), robust_epochs=300, ramp_epochs=250.0, eval_n=1000,
        certify_n=10000, sweep_epochs=300, sweep_limit_train=None,
        sweep_args=("--ramp-epochs", "250")),
}


@dataclass
class ReproduceConfig:
    """The command's settings; saved as ``reproduce_config.json``."""

    preset: str = "budget"
    datasets: Optional[Tuple[str, ...]] = None   # None: the preset's datasets
    archs: Optional[Tuple[str, ...]] = None      # None: the preset's archs
    out: str = DEFAULT_OUT
    data_dir: Optional[str] = None
    sweep: bool = True
    sweep_arch: Optional[str] = None      # default: the first of archs
    paper_values: Optional[str] = None
    seed: int = 0
    quiet: bool = False


# --- steps --------------------------------------------------------------------------------------


# Where the status lines of the running ``reproduce`` go: its overall bar (``refsnn.progress``), or
# nowhere when quiet. Set for the duration of one ``reproduce`` call.
_OUTPUT: Dict[str, Any] = {"quiet": False, "bar": None}


def _log(message: str) -> None:
    if _OUTPUT["quiet"]:
        return
    line = f"[reproduce {time.strftime('%H:%M:%S')}] {message}"
    if _OUTPUT["bar"] is not None:
        _OUTPUT["bar"].write(line)
    else:
        print(line, flush=True)


def _step_done() -> None:
    if _OUTPUT["bar"] is not None:
        _OUTPUT["bar"].update(1)


def _run_cli(main: Callable[[List[str]], int], argv: List[str]) -> int:
    """Runs a CLI entry point (``argv`` turns its bars off); when quiet, with ``--quiet`` and its
    printed results dropped (errors on stderr still show)."""
    import contextlib
    import io

    if not _OUTPUT["quiet"]:
        return main(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        return main([*argv, "--quiet"])


def _train_step(out_dir: Path, argv: List[str], need_model: bool = True) -> Dict[str, Any]:
    """Runs (or resumes, or skips) one ``refsnn.train`` run; returns its summary.json.

    ``summary.json`` is written only when a run finishes. ``need_model=False`` (the T' sweep, whose
    model files are not kept in ``results/``) skips a finished run whose ``model.h5`` is gone.
    """
    from .train import main as train_main

    summary_path = out_dir / "summary.json"
    if summary_path.is_file() and (not need_model or (out_dir / "model.h5").is_file()):
        _log(f"skip {out_dir} (finished)")
        _step_done()
        return json.loads(summary_path.read_text())
    if (out_dir / "checkpoint.h5").is_file():
        _log(f"resume {out_dir}")
        code = _run_cli(train_main, ["--resume", "--out", str(out_dir), "--no-progress"])
    else:
        _log(f"train {out_dir}: {' '.join(argv)}")
        code = _run_cli(train_main, [*argv, "--out", str(out_dir), "--no-progress"])
    if code != 0 or not summary_path.is_file():
        raise RuntimeError(f"training in {out_dir} failed (exit code {code}); rerun the same command to resume")
    _step_done()
    return json.loads(summary_path.read_text())


def _json_step(result: Path, what: str, main: Callable[[List[str]], int], argv: List[str]) -> Dict[str, Any]:
    """Runs ``main(argv)`` (a CLI entry point) unless its JSON output ``result`` exists; returns that JSON."""
    if result.is_file():
        _log(f"skip {what} (finished)")
        _step_done()
        return json.loads(result.read_text())
    _log(f"{what}: {' '.join(argv)}")
    code = _run_cli(main, argv)
    if code != 0 or not result.is_file():
        raise RuntimeError(f"{what} failed (exit code {code}); rerun the same command to continue")
    _step_done()
    return json.loads(result.read_text())


def _attack_step(out_dir: Path, plain: Path, robust: Path, dataset: str, eps: Sequence[float],
                 preset: ReproducePreset, n: int, data_dir: Optional[str], seed: int) -> Dict[str, Any]:
    from .attack import main as attack_main

    argv = ["--model", str(plain), "--name", "plain", "--model2", str(robust), "--name2", "robust",
            "--dataset", dataset, "--n", str(n), "--eps", ",".join(f"{e:g}" for e in eps),
            "--attack", ",".join(preset.attacks), "--seed", str(seed), "--out", str(out_dir), "--no-progress"]
    return _json_step(out_dir / "table.json", f"attack {out_dir}", attack_main, argv + _data_dir_args(data_dir))


def _certify_step(out_dir: Path, model: Path, dataset: str, eps: float, n: int, horizon: int,
                  data_dir: Optional[str]) -> Dict[str, Any]:
    from .certify import main as certify_main, output_files

    argv = ["--model", str(model), "--dataset", dataset, "--eps", f"{eps:g}", "--n", str(n),
            "--robust-T", str(horizon), "--method", "ibp,crown-ibp,best", "--out", str(out_dir), "--no-progress"]
    path = output_files(out_dir)["json"]
    return _json_step(path, f"certify {model} -> {path}", certify_main, argv + _data_dir_args(data_dir))


def _data_dir_args(data_dir: Optional[str]) -> List[str]:
    return ["--data-dir", data_dir] if data_dir else []


def _robust_recipe(preset: ReproducePreset, dataset: str) -> List[str]:
    """The robust-training arguments shared by the main run and the T' sweep."""
    args = list(preset.robust_args)
    if dataset in preset.robust_lr:
        args += ["--lr", f"{preset.robust_lr[dataset]:g}"]   # the last --lr wins
    return args


def attack_eps_for(dataset: str, arch: str, paper: Optional[Dict[str, Any]] = None) -> Tuple[List[float], str]:
    """The attack eps of a setting: the paper's four as printed in its Table 2, and their source ``"paper"``."""
    key = f"{dataset}-{arch}"
    reference = PAPER_REFERENCE if paper is None else paper
    attack_eps = reference.get("attack_eps")
    if not isinstance(attack_eps, dict) or not attack_eps.get(key):
        raise ReproduceConfigError(f"paper_values: attack_eps has no eps for {key!r}; give a list of positive "
                                   f"floats like {PAPER_REFERENCE['attack_eps'][key]}")
    return [float(e) for e in attack_eps[key]], "paper"


def attacked_eps(table: Path) -> Optional[List[float]]:
    """The eps (sorted, rounded to 1e-6) a finished attack ``table.json`` was run at; None when there is none."""
    if not table.is_file():
        return None
    return sorted({round(float(row["eps"]), 6) for row in json.loads(table.read_text())["rows"]})


def _data_available(dataset: str, data_dir: Optional[str]) -> Optional[str]:
    """None when the dataset loads, else the reason it does not."""
    from .data import load_dataset

    try:
        load_dataset(dataset, "test", data_dir=data_dir, limit=1)
    except (FileNotFoundError, OSError, ValueError) as error:
        return str(error).splitlines()[0]
    return None


def _limit_args(limit_train: Optional[int], limit_test: Optional[int]) -> List[str]:
    args: List[str] = []
    if limit_train:
        args += ["--limit-train", str(limit_train)]
    if limit_test:
        args += ["--limit-test", str(limit_test)]
    return args


def run_setting(root: Path, dataset: str, arch: str, preset: ReproducePreset,
                config: ReproduceConfig, paper: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Plain + robust training, attacks and certification of one (dataset, arch)."""
    data_name = preset.dataset_alias.get(dataset, dataset)
    setting_dir = root / f"{dataset}-{arch}"
    data_args = _data_dir_args(config.data_dir)
    limits = _limit_args(preset.limit_train, preset.limit_test)
    train_eps = DEFAULT_EPS[(dataset, arch)]
    plain_argv = ["--dataset", data_name, "--arch", arch, "--epochs", str(preset.plain_epochs),
                  "--seed", str(config.seed), *preset.plain_args, *limits, *data_args]
    plain = _train_step(setting_dir / "plain", plain_argv)
    robust_argv = ["--method", "robust", "--dataset", data_name, "--arch", arch,
                   "--init", str(setting_dir / "plain" / "model.h5"), "--eps", f"{train_eps:g}",
                   "--epochs", str(preset.robust_epochs), "--ramp-epochs", f"{preset.ramp_epochs:g}",
                   "--robust-T", str(preset.robust_T), "--seed", str(config.seed), "--checkpoint-every", "200",
                   "--method-option", f"eval_n={preset.eval_n}", *_robust_recipe(preset, dataset), *limits,
                   *data_args]
    robust = _train_step(setting_dir / "robust", robust_argv)
    eps, eps_source = attack_eps_for(dataset, arch, paper)
    paper_eps = list(eps)
    # A finished attack is never rerun by itself: when it was run at other eps than the paper's, its
    # rows are shown at the eps they were run at, without paper cells (never compared across eps).
    ran = attacked_eps(setting_dir / "attack" / "table.json")
    if ran is not None and ran != sorted(round(e, 6) for e in eps):
        _log(f"{dataset}-{arch}: the finished attack in {setting_dir / 'attack'} was run at eps "
             f"{', '.join(f'{e:g}' for e in ran)}, not the paper's {', '.join(f'{e:g}' for e in eps)}; shown as run, "
             "without paper cells (move that folder aside and rerun to attack at the paper's eps)")
        eps, eps_source = ran, "earlier run"
    models = {name: setting_dir / name / "model.h5" for name in ("plain", "robust")}
    # Small test splits (the N-MNIST subset has 100 recordings) are used whole.
    n_test = int(plain.get("n_test") or preset.attack_n)
    attack = _attack_step(setting_dir / "attack", models["plain"], models["robust"], data_name, eps, preset,
                          min(preset.attack_n, n_test), config.data_dir, config.seed)
    certified = {name: _certify_step(setting_dir / f"certify_{name}", models[name], data_name, train_eps,
                                     min(preset.certify_n, n_test), preset.robust_T, config.data_dir)
                 for name in models}
    return {"dataset": dataset, "data": data_name, "arch": arch, "train_eps": train_eps, "attack_eps": eps,
            "attack_eps_source": eps_source, "paper_attack_eps": paper_eps, "plain": plain, "robust": robust, "attack": attack,
            "certify": certified, "dir": str(setting_dir)}


def run_sweep(root: Path, dataset: str, arch: str, preset: ReproducePreset,
              config: ReproduceConfig) -> Dict[str, Any]:
    """Figure 5: robust training for each T' from the same plain model, and a natural reference."""
    data_name = preset.dataset_alias.get(dataset, dataset)
    sweep_dir = root / "sweep" / f"{dataset}-{arch}"
    plain_model = root / f"{dataset}-{arch}" / "plain" / "model.h5"
    data_args = _data_dir_args(config.data_dir)
    limits = _limit_args(preset.sweep_limit_train, preset.limit_test)
    common = ["--dataset", data_name, "--arch", arch, "--init", str(plain_model), "--seed", str(config.seed),
              "--epochs", str(preset.sweep_epochs), "--lr", "0.01", *limits, *data_args]
    reference = _train_step(sweep_dir / "natural", [*common, "--milestones", "100000"], need_model=False)
    runs = {}
    for horizon in preset.sweep_T:
        argv = [*common, "--method", "robust", "--eps", f"{DEFAULT_EPS[(dataset, arch)]:g}", "--robust-T",
                str(horizon), "--method-option", f"eval_n={min(preset.eval_n, 500)}", *_robust_recipe(preset, dataset),
                *preset.sweep_args]
        if "--ramp-epochs" not in preset.sweep_args:
            argv += ["--ramp-epochs", f"{preset.sweep_epochs:g}"]
        runs[horizon] = _train_step(sweep_dir / f"T{horizon}", argv, need_model=False)
    return {"dataset": dataset, "arch": arch, "reference": reference, "runs": runs, "dir": str(sweep_dir)}


# --- rendering ------------------------------------------------------------------------------------


def _pct(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def _rows(attack: Dict[str, Any], model: str, name: str) -> Dict[float, Dict[str, Any]]:
    return {round(row["eps"], 6): row for row in attack["rows"] if row["model"] == model and row["attack"] == name}


def _crown_error(record: Dict[str, Any]) -> Optional[float]:
    result = record.get("result", record)
    entry = result.get("crown-ibp") or {}
    return entry.get("certified_error")


def _best_error(record: Dict[str, Any]) -> Optional[float]:
    result = record.get("result", record)
    entry = result.get("best") or {}
    return entry.get("certified_error")


def _nmnist_subset(setting: Dict[str, Any]) -> Optional[int]:
    """The number of train recordings when an N-MNIST run used a subset of the 60,000 (else None)."""
    n_train = setting["plain"].get("n_train")
    return n_train if setting["dataset"] == "nmnist" and n_train is not None and n_train < 60000 else None


def _label_for(setting: Dict[str, Any]) -> str:
    n_train = _nmnist_subset(setting)
    if n_train is not None:
        return f"N-MNIST 1k-subset ({n_train} train recordings)"
    names = {"mnist": "MNIST", "fmnist": "FMNIST", "nmnist": "N-MNIST"}
    label = names[setting["dataset"]]
    if setting["data"] != setting["dataset"]:
        label += f" ({setting['data']})"
    return label


def smoke_line(preset: ReproducePreset) -> List[str]:
    """The line every table of a smoke preset starts with (empty for the others)."""
    if not preset.smoke:
        return []
    return [f"**Smoke run** (preset `{preset.name}`): checks that every step runs end to end on a tiny schedule; "
            "this is NOT the paper's protocol and its numbers are not results.", ""]


def render_table2(settings: List[Dict[str, Any]], preset: ReproducePreset, paper: Dict[str, Any]) -> str:
    lines = [f"# Table 2 (refsnn, preset `{preset.name}`)", "", *smoke_line(preset),
             f"Schedule: {preset.label}. Every number below comes from this schedule (marked *), not the paper's "
             "80 + 300 epochs, unless the preset is `paper`.", "",
             "Errors in % on the Table 2 protocol (`python -m refsnn.attack`): "
             f"{preset.attack_n} fixed test samples (or the whole test split when smaller), one shared draw of evaluation rand maps, digital l-inf radius "
             "eps/2 (the bounds' set), spike inputs an l0 budget of round(size * eps) bits. `paper` = the paper's "
             "attack (25 iterations as the authors' code), `strongest` = refsnn's ensemble (includes the paper "
             "attack). Reduction = regular attack error - robust attack error (points). Paper cells are the "
             "paper's Table 2 at the same eps (`PAPER_REFERENCE`); `-` where this row's eps is not one of the "
             "paper's (numbers at different eps are never compared), `n/t` where not transcribed "
             "(docs/REPRODUCTION.md).", ""]
    mark = "" if preset.name == "paper" else "*"
    for setting in settings:
        key = f"{setting['dataset']}-{setting['arch']}"
        attack = setting["attack"]
        lines += [f"## {_label_for(setting)} {setting['arch'].upper()} (training eps {setting['train_eps']:g})", ""]
        paper_eps = [float(e) for e in setting.get("paper_attack_eps") or paper.get("attack_eps", {}).get(key, [])]
        at_paper_eps = setting["attack_eps_source"] == "paper"
        if not at_paper_eps:
            lines += [f"Attack eps: this setting's attack was run at eps {', '.join(f'{e:g}' for e in setting['attack_eps'])}, "
                      f"NOT at the paper's eps ({', '.join(f'{e:g}' for e in paper_eps)}); the paper's cells are at "
                      f"other eps and are not shown. To attack at the paper's eps, move `{setting['dir']}/attack` aside and "
                      "rerun (docs/REPRODUCTION.md).", ""]
        cells = paper.get("table2_cells", {}).get(key, {}) if at_paper_eps else {}
        header = ("| attack eps | regular: original err. | regular: attack err. (paper atk) | robust: original err. | "
                  "robust: attack err. (paper atk) | reduction (pp) | regular / robust: strongest atk err. | "
                  "paper: regular / robust original err. | paper: regular attack err. | paper: robust attack err. | "
                  "paper: reduction (pp) | ours - paper reduction (pp) |")
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        plain_rows, robust_rows = _rows(attack, "plain", "paper"), _rows(attack, "robust", "paper")
        plain_strong, robust_strong = _rows(attack, "plain", "strongest"), _rows(attack, "robust", "strongest")
        for eps in setting["attack_eps"]:
            e = round(eps, 6)
            p, r = plain_rows.get(e), robust_rows.get(e)
            if p is None or r is None:
                continue
            reduction = 100 * (p["attack_error"] - r["attack_error"])
            strong = (f"{_pct(plain_strong[e]['attack_error'])} / {_pct(robust_strong[e]['attack_error'])}"
                      if e in plain_strong and e in robust_strong else "-")
            cell = cells.get(eps_key(eps), {})
            missing = "n/t" if at_paper_eps else "-"
            shown = {f: (f"{cell[f]:.1f}" if cell.get(f) is not None else missing) for f in _TABLE2_FIELDS}
            paper_reg, paper_rob = cell.get("regular_attack_error"), cell.get("robust_attack_error")
            paper_red = (paper_reg - paper_rob) if paper_reg is not None and paper_rob is not None else None
            ours_minus = f"{reduction - paper_red:+.1f}" if paper_red is not None else missing
            lines.append(f"| {eps:g} | {_pct(p['original_error'])}{mark} | {_pct(p['attack_error'])}{mark} | "
                         f"{_pct(r['original_error'])}{mark} | {_pct(r['attack_error'])}{mark} | {reduction:.1f}{mark} | "
                         f"{strong}{mark} | {shown['regular_original_error']} / {shown['robust_original_error']} | "
                         f"{shown['regular_attack_error']} | {shown['robust_attack_error']} | "
                         f"{f'{paper_red:.1f}' if paper_red is not None else missing} | {ours_minus} |")
        reductions = [100 * (plain_rows[round(e, 6)]["attack_error"] - robust_rows[round(e, 6)]["attack_error"])
                      for e in setting["attack_eps"] if round(e, 6) in plain_rows and round(e, 6) in robust_rows]
        clean_cost = None
        if plain_rows and robust_rows:
            first = round(setting["attack_eps"][0], 6)
            clean_cost = 100 * (robust_rows[first]["original_error"] - plain_rows[first]["original_error"])
        paper_summary = paper_reduction(paper.get("table2_cells", {}).get(key, {}), paper_eps)
        if paper_summary is None:
            paper_line = "Paper: n/t for this setting."
        elif at_paper_eps:
            paper_line = (f"Paper: {paper_summary[0]:.1f} to {paper_summary[1]:.1f} points for {paper_summary[2]:.1f} "
                          "points of clean error.")
        else:
            paper_line = (f"Paper: its rows for this setting are at eps {', '.join(f'{e:g}' for e in paper_eps)}, "
                          "not this table's; not compared.")
        lines += ["", f"Summary: attack-error reduction {min(reductions):.1f} to {max(reductions):.1f} points "
                  f"for {clean_cost:.1f} points of clean error{mark}" if reductions and clean_cost is not None
                  else "Summary: incomplete rows.",
                  paper_line, ""]
        cert = setting["certify"]
        lines += [f"Certified robust error at the training eps {setting['train_eps']:g} (T' = {preset.robust_T}, "
                  f"`python -m refsnn.certify`, first {cert['plain'].get('result', {}).get('n', preset.certify_n)} "
                  "test samples; the paper reports none):", "",
                  "| model | clean acc. at T' | S-CROWN certified error | best-of (S-IBP, S-CROWN) certified error |",
                  "|---|---|---|---|"]
        for name in ("plain", "robust"):
            record = cert[name]
            result = record.get("result", record)
            lines.append(f"| {'regular' if name == 'plain' else 'robust'} | {_pct(result.get('clean_accuracy'))}{mark} | "
                         f"{_pct(_crown_error(record))}{mark} | {_pct(_best_error(record))}{mark} |")
        lines += ["", f"Raw: `{setting['dir']}/attack/table.json`, `certify_*/certify.json`, runs in `plain/`, `robust/`.", ""]
    lines += [f"Paper headline (abstract): {paper['headline']}.", ""]
    return "\n".join(lines)


def render_table1(settings: List[Dict[str, Any]], preset: ReproducePreset, paper: Dict[str, Any]) -> str:
    mark = "" if preset.name == "paper" else "*"
    lines = [f"# Table 1 (refsnn, preset `{preset.name}`): clean test accuracy", "", *smoke_line(preset),
             f"Schedule: {preset.label} (cells marked * come from it). Accuracy at T = 10 over the whole test split "
             "of the data used, mean over sampling seeds (`summary.json` of each run). Paper cells: the paper's Table 1 "
             "(`PAPER_REFERENCE`), which reports the natural networks only (robust: `n/r`, not reported); "
             "ours - paper is `other data` where refsnn's data is not the paper's (a subset).", "",
             "| data set | arch | regular (natural) acc. % | robust acc. % | clean-acc. cost (pp) | paper: regular | "
             "paper: robust | ours - paper (regular, pp) | natural s/epoch | robust s/epoch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for setting in settings:
        key = f"{setting['dataset']}-{setting['arch']}"
        plain_acc = setting["plain"]["test_accuracy"]["mean"]
        robust_acc = setting["robust"]["test_accuracy"]["mean"]
        ref = paper.get("clean_accuracy", {}).get(key, {})
        paper_plain, paper_robust = ref.get("regular"), ref.get("robust")
        same_data = setting["data"] == setting["dataset"] and _nmnist_subset(setting) is None
        diff = ("n/t" if paper_plain is None else f"{100 * plain_acc - paper_plain:+.2f}" if same_data
                else "other data")
        lines.append(f"| {_label_for(setting)} | {setting['arch'].upper()} | {_pct(plain_acc, 2)}{mark} | "
                     f"{_pct(robust_acc, 2)}{mark} | {100 * (plain_acc - robust_acc):.2f}{mark} | "
                     f"{f'{paper_plain:.2f}' if paper_plain is not None else 'n/t'} | "
                     f"{f'{paper_robust:.2f}' if paper_robust is not None else 'n/r'} | {diff} | "
                     f"{setting['plain']['seconds_per_epoch']:.0f} | {setting['robust']['seconds_per_epoch']:.0f} |")
    lines += ["", "Seconds per epoch are wall-clock on the machine in `reproduce_config.json` (shared, loaded 2-core VM "
              "for the committed runs), training only (evaluation excluded).", ""]
    return "\n".join(lines)


def _last_metrics(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return records[-1] if records else {}


def sweep_table(sweep: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per T': clean accuracy, S-CROWN loss and certified error after training, time relative to natural."""
    sweep_dir = Path(sweep["dir"])
    reference_seconds = sweep["reference"]["seconds_per_epoch"]
    rows = []
    for horizon, summary in sorted(sweep["runs"].items()):
        last = _last_metrics(sweep_dir / f"T{horizon}")
        rows.append({"T_prime": int(horizon), "clean_accuracy": summary["test_accuracy"]["mean"],
                     "robust_loss": last.get("train_robust_loss"),
                     "cert_error_crown": last.get("cert_error_crown-ibp_final"),
                     "seconds_per_epoch": summary["seconds_per_epoch"],
                     "time_ratio": summary["seconds_per_epoch"] / reference_seconds})
    return rows


def render_figure5(sweep: Dict[str, Any], rows: List[Dict[str, Any]], preset: ReproducePreset,
                   paper: Dict[str, Any], out: Path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log('figure5: matplotlib missing (pip install "refsnn[plot]"); table only')
        return None
    horizons = [r["T_prime"] for r in rows]
    figure, axes = plt.subplots(1, 4, figsize=(15, 3.3))
    panels = [("clean_accuracy", "clean test accuracy"), ("robust_loss", "S-CROWN (bound) loss, last epoch"),
              ("cert_error_crown", "S-CROWN certified error at eps"), ("time_ratio", "time / natural epoch")]
    for axis, (key, title) in zip(axes, panels):
        axis.plot(horizons, [float("nan") if r[key] is None else r[key] for r in rows], marker="o", label="refsnn")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("T'")
        axis.set_xticks(horizons)
    ratios = paper.get("figure5_time_ratio", {})
    if ratios:
        axes[3].plot([int(k) for k in ratios], list(ratios.values()), "s--", label="paper (CONV MNIST, GPU)")
        axes[3].legend(fontsize=7)
    figure.suptitle(f"Figure 5 (refsnn): T' sweep on {sweep['dataset']} {sweep['arch'].upper()}; {preset.label}",
                    fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def _sweep_ramp(preset: ReproducePreset) -> float:
    args = list(preset.sweep_args)
    return float(args[args.index("--ramp-epochs") + 1]) if "--ramp-epochs" in args else float(preset.sweep_epochs)


def render_sweep_md(sweep: Dict[str, Any], rows: List[Dict[str, Any]], preset: ReproducePreset,
                    paper: Dict[str, Any]) -> str:
    ratios = paper.get("figure5_time_ratio", {})
    mark = "" if preset.name == "paper" else "*"
    lines = [f"# Figure 5 (refsnn, preset `{preset.name}`): T' sweep, {sweep['dataset']} {sweep['arch'].upper()}", "",
             *smoke_line(preset),
             f"{preset.sweep_epochs} robust epoch(s) per T' from the same natural model"
             + (f" on the first {preset.sweep_limit_train} training images" if preset.sweep_limit_train else "")
             + f", eps ramped linearly to the training eps over {_sweep_ramp(preset):g} epoch(s); time reference: "
             f"{preset.sweep_epochs} natural epoch(s) on the same images from the same model. The paper's sweep is "
             "CONV MNIST with its full schedule.", "",
             "| T' | clean acc. % | S-CROWN loss | S-CROWN certified error % | s/epoch | time / natural | paper time ratio |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        loss = "n/a" if row["robust_loss"] is None else f"{row['robust_loss']:.3f}"
        lines.append(f"| {row['T_prime']} | {_pct(row['clean_accuracy'], 2)}{mark} | {loss}{mark} | "
                     f"{_pct(row['cert_error_crown'])}{mark} | {row['seconds_per_epoch']:.0f} | "
                     f"{row['time_ratio']:.1f}{mark} | {ratios.get(str(row['T_prime']), 'n/t')} |")
    return "\n".join(lines) + "\n"


def render_figure6(settings: List[Dict[str, Any]], dataset: str, out: Path,
                   preset: Optional[ReproducePreset] = None) -> Optional[Path]:
    from .report import plot_runs

    chosen = [s for s in settings if s["dataset"] == dataset]
    if not chosen:
        return None
    try:
        return plot_runs([Path(s["dir"]) / "robust" for s in chosen], out,
                         labels=[f"{s['arch'].upper()} robust" for s in chosen],
                         title=f"Figure 6 (refsnn): robust training on {_label_for(chosen[0])}"
                               + (f"; {preset.label}" if preset is not None else ""))
    except RuntimeError as error:
        _log(f"figure6: {error}")
        return None


# --- merging into existing tables ----------------------------------------------------------------

# The first word of a setting's label in the tables (``_label_for``) names its dataset.
_LABEL_DATASETS = {"MNIST": "mnist", "FMNIST": "fmnist", "N-MNIST": "nmnist"}


def _setting_key(label: str, arch: str) -> Optional[Tuple[str, str]]:
    words = label.split()
    dataset = _LABEL_DATASETS.get(words[0]) if words else None
    arch = arch.strip().lower()
    return (dataset, arch) if dataset is not None and arch in ARCHS else None


def _order(key: Optional[Tuple[str, str]]) -> Tuple[int, int]:
    if key is None:   # a row refsnn cannot attribute: kept, after the known settings
        return (len(DATASETS), len(ARCHS))
    return (DATASETS.index(key[0]), ARCHS.index(key[1]))


def _table1_rows(text: str) -> Tuple[List[str], List[str], List[str]]:
    """``(before, rows, after)`` of the first markdown table in ``text`` (rows without header and rule)."""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return lines, [], []
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[:start + 2], lines[start + 2:end], lines[end:]


def _table1_key(row: str) -> Optional[Tuple[str, str]]:
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    return _setting_key(cells[0], cells[1]) if len(cells) > 1 else None


def merge_table1(new: str, old: Optional[str]) -> str:
    """``new`` Table 1 plus the rows of ``old`` for settings ``new`` has no row for, in setting order."""
    before, rows, after = _table1_rows(new)
    if old:
        keys = {_table1_key(row) for row in rows}
        rows = rows + [row for row in _table1_rows(old)[1] if _table1_key(row) not in keys or _table1_key(row) is None]
        rows.sort(key=lambda row: _order(_table1_key(row)))
    return "\n".join(before + rows + after)


def _table2_sections(text: str) -> Tuple[List[str], List[List[str]], List[str]]:
    """``(preamble, sections, tail)``: each section runs from its ``## `` line to the next one or
    to the closing ``Paper headline`` line."""
    preamble: List[str] = []
    sections: List[List[str]] = []
    tail: List[str] = []
    for line in text.split("\n"):
        if tail or line.startswith("Paper headline"):
            tail.append(line)
        elif line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            preamble.append(line)
    return preamble, sections, tail


def _table2_key(section: List[str]) -> Optional[Tuple[str, str]]:
    title = section[0][3:].split(" (training eps")[0].split()
    return _setting_key(" ".join(title[:-1]), title[-1]) if len(title) > 1 else None


def merge_table2(new: str, old: Optional[str]) -> str:
    """``new`` Table 2 plus the sections of ``old`` for settings ``new`` has none for, in setting order."""
    preamble, sections, tail = _table2_sections(new)
    if old:
        keys = {_table2_key(section) for section in sections}
        sections = sections + [section for section in _table2_sections(old)[1]
                               if _table2_key(section) not in keys or _table2_key(section) is None]
        sections.sort(key=lambda section: _order(_table2_key(section)))
    return "\n".join(preamble + [line for section in sections for line in section] + tail)


def _read_text(path: Path) -> Optional[str]:
    return path.read_text() if path.is_file() else None


# --- entry points ---------------------------------------------------------------------------------


def load_paper_values(path: Optional[str]) -> Dict[str, Any]:
    """``PAPER_REFERENCE`` updated with a user's JSON file of more transcribed cells."""
    merged = json.loads(json.dumps(PAPER_REFERENCE))
    if path:
        extra = json.loads(Path(path).read_text())
        if not isinstance(extra, dict):
            raise ReproduceConfigError(f"paper_values: {path}: expected a JSON object with keys like 'clean_accuracy', 'table2_cells'")
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
    return merged


def _selection(config: ReproduceConfig, preset: ReproducePreset) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """The datasets and archs to run: the config's, else the preset's; refused outside the preset's."""
    chosen = []
    for field_name, given, allowed, known in (("datasets", config.datasets, preset.datasets, DATASETS),
                                               ("archs", config.archs, preset.archs, ARCHS)):
        values = tuple(allowed if given is None else given)
        unknown = [v for v in values if v not in known]
        if unknown:
            raise ReproduceConfigError(f"{field_name}: unknown {unknown}; choose from {', '.join(known)}")
        outside = [v for v in values if v not in allowed]
        if outside:
            other = " (use --preset quick-conv for CONV)" if field_name == "archs" and preset.name == "quick" else ""
            raise ReproduceConfigError(f"{field_name}: preset {preset.name!r} runs only {', '.join(allowed)}, "
                             f"not {', '.join(outside)}{other}")
        chosen.append(values)
    return chosen[0], chosen[1]


def _summary_setting(s: Dict[str, Any]) -> Dict[str, Any]:
    return ({key: s[key] for key in ("dataset", "data", "arch", "train_eps", "attack_eps", "attack_eps_source",
                                       "paper_attack_eps", "dir")}
            | {"plain_accuracy": s["plain"]["test_accuracy"]["mean"],
               "robust_accuracy": s["robust"]["test_accuracy"]["mean"],
               "plain_seconds_per_epoch": s["plain"]["seconds_per_epoch"],
               "robust_seconds_per_epoch": s["robust"]["seconds_per_epoch"],
               "attack_rows": [{k: row[k] for k in ("model", "attack", "eps", "original_error", "attack_error")}
                               for row in s["attack"]["rows"]],
               "certified_error_crown": {m: _crown_error(s["certify"][m]) for m in s["certify"]},
               "certified_error_best": {m: _best_error(s["certify"][m]) for m in s["certify"]}})


def reproduce(config: ReproduceConfig, command: Optional[str] = None) -> Dict[str, Any]:
    """Runs every step of ``config`` (skipping finished ones) and writes the tables and figures.

    Tables and ``summary.json`` already in the output folder are merged into: the settings run now
    replace their rows, the rows of every other setting are kept.
    """
    if config.preset not in PRESETS:
        raise ReproduceConfigError(f"preset: unknown {config.preset!r}; choose from {', '.join(sorted(PRESETS))}")
    preset = PRESETS[config.preset]
    datasets, archs = _selection(config, preset)
    config = replace(config, datasets=datasets, archs=archs)
    paper = load_paper_values(config.paper_values)
    root = Path(config.out) / preset.name
    root.mkdir(parents=True, exist_ok=True)
    record = {"config": asdict(config), "preset": asdict(preset), "command": command,
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "threads": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                                                                      "OMP_NUM_THREADS")}}}
    atomic_write_text(root / "reproduce_config.json", json.dumps(record, indent=2, default=str) + "\n")
    _OUTPUT.update(quiet=config.quiet, bar=None)
    try:
        return _run_and_render(config, preset, paper, root)
    finally:
        if _OUTPUT["bar"] is not None:
            _OUTPUT["bar"].close()
        _OUTPUT.update(quiet=False, bar=None)


def _run_and_render(config: ReproduceConfig, preset: ReproducePreset, paper: Dict[str, Any],
                    root: Path) -> Dict[str, Any]:
    from .progress import Progress, compile_notice

    skipped, available = [], []
    for dataset in config.datasets:
        missing = _data_available(preset.dataset_alias.get(dataset, dataset), config.data_dir)
        if missing:
            _log(f"skipping {dataset}: no data ({missing})")
            skipped.append({"dataset": dataset, "reason": missing})
        else:
            available.append(dataset)
    sweep_arch = config.sweep_arch or config.archs[0]
    run_sweep_now = bool(config.sweep and available and sweep_arch in config.archs)
    # Steps: plain, robust, attack and two certifications per setting; the sweep's natural reference and each T'.
    total = 5 * len(available) * len(config.archs) + (1 + len(preset.sweep_T) if run_sweep_now else 0)
    compile_notice(quiet=config.quiet)
    _OUTPUT["bar"] = Progress(total, f"reproduce {preset.name}", "step", quiet=config.quiet)
    settings = []
    for dataset in available:
        for arch in config.archs:
            started = time.perf_counter()
            settings.append(run_setting(root, dataset, arch, preset, config, paper))
            _log(f"{dataset}-{arch} done in {time.perf_counter() - started:.0f} s")
    outputs: Dict[str, Any] = {"skipped": skipped}
    if settings:
        atomic_write_text(root / "table1.md", merge_table1(render_table1(settings, preset, paper),
                                                           _read_text(root / "table1.md")))
        atomic_write_text(root / "table2.md", merge_table2(render_table2(settings, preset, paper),
                                                           _read_text(root / "table2.md")))
        for dataset in dict.fromkeys(s["dataset"] for s in settings):
            figure = render_figure6(settings, dataset, root / f"figure6_{dataset}.png", preset)
            outputs[f"figure6_{dataset}"] = str(figure) if figure else None
    sweep_rows = None
    if run_sweep_now:
        sweep = run_sweep(root, available[0], sweep_arch, preset, config)
        sweep_rows = sweep_table(sweep)
        atomic_write_text(root / "figure5.md", render_sweep_md(sweep, sweep_rows, preset, paper))
        figure = render_figure5(sweep, sweep_rows, preset, paper, root / "figure5.png")
        outputs["figure5"] = str(figure) if figure else None
    summary_rows = [_summary_setting(s) for s in settings]
    previous = json.loads(_read_text(root / "summary.json") or "{}")
    ran = {(s["dataset"], s["arch"]) for s in summary_rows}
    kept = [s for s in previous.get("settings", []) if (s.get("dataset"), s.get("arch")) not in ran]
    summary = {"preset": preset.name, "label": preset.label, "smoke": preset.smoke, "paper_reference": paper,
               "outputs": outputs,
               "settings": sorted(summary_rows + kept, key=lambda s: _order((s["dataset"], s["arch"]))
                                  if s.get("dataset") in DATASETS and s.get("arch") in ARCHS else _order(None)),
               "figure5": sweep_rows if sweep_rows is not None else previous.get("figure5")}
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    _log(f"wrote {root}/table1.md, table2.md, summary.json"
         + (", figure5.png" if outputs.get("figure5") else "")
         + "".join(f", {Path(v).name}" for k, v in outputs.items() if k.startswith("figure6") and v))
    return summary


def _csv(kind: str, choices: Sequence[str]):
    def parse(text: str) -> Tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"{kind} must be a comma-separated subset of {','.join(choices)}; got {text!r}")
        return values
    return parse


PROG = "python -m refsnn.reproduce"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m refsnn.reproduce`` parser (shared vocabulary of ``refsnn.cli``)."""
    from . import cli

    parser = cli.make_parser(PROG, __doc__.splitlines()[0])
    add = parser.add_argument
    add("--preset", choices=sorted(PRESETS), default="quick",
        help="named preset of the reproduction: quick / quick-conv (smoke runs of ~2 min, MNIST subset, "
             "FC / CONV), budget (~1 h for "
             "MNIST FC on 2 cores) or paper (full schedule)")
    add("--dataset", type=_csv("--dataset", DATASETS), default=None,
        help="data sets, comma-separated (default: the preset's; quick: mnist; budget, paper: all)")
    add("--arch", type=_csv("--arch", ARCHS), default=None,
        help="architectures, comma-separated (default: the preset's; quick: fc; quick-conv: conv; budget, paper: both)")
    cli.add_out(parser, f"{DEFAULT_OUT}; the preset's folder is created in it and existing tables there are "
                        "merged into", default=str(DEFAULT_OUT))
    add("--data-dir", metavar="FOLDER", help=f"{cli.VOCABULARY['--data-dir']} (default: refsnn.data's lookup order)")
    add("--no-sweep", action="store_true", help="skip the T' sweep of Figure 5")
    add("--sweep-arch", choices=ARCHS, help="arch of the T' sweep (default: the first --arch)")
    add("--paper-values", metavar="FILE",
        help="JSON file with more transcribed paper cells (docs/REPRODUCTION.md; default: none)")
    cli.add_seed(parser, detail=" (training, attacks)")
    cli.add_progress(parser, bars=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m refsnn.reproduce``; returns the exit code (2 with one stderr line for bad input)."""
    from .cli import run_main

    return run_main(PROG)(_main)(argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli

    args = build_parser().parse_args(argv)
    cli.check_out_dir(Path(args.out))
    config = ReproduceConfig(args.preset, args.dataset, args.arch, args.out, args.data_dir, not args.no_sweep,
                             args.sweep_arch, args.paper_values, args.seed, getattr(args, "quiet", False))
    try:
        reproduce(config, command="python -m refsnn.reproduce " + " ".join(sys.argv[1:] if argv is None else argv))
    except RuntimeError as error:   # a step failed; its own message says how to continue
        print(f"{PROG}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
