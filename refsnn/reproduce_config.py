"""Settings of ``python -m refsnn.reproduce``: data sets, architectures, presets, the command's
configuration and the paper's published numbers (``PAPER_REFERENCE``) that every table compares with."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from .input_sets import DEFAULT_ROBUST_T
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
    alpha_n: int = 300               # samples of the robust model's best + alpha certification
    calibrate_n: int = 100           # samples the calibrated eps are bisected on (then attacked on attack_n)
    calibrated_attacks: Tuple[str, ...] = ("paper",)
    certify_n: int = 1000
    # Exact robust error of the robust model (python -m verify.dataset --method complete --sets certify)
    # on the first exact_n of the certified samples at the training eps, exact_time_limit s per image (0: off)
    exact_n: int = 100
    exact_time_limit: float = 60.0
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
    # (robust epochs, ramp epochs) per arch where they differ from robust_epochs/ramp_epochs
    robust_schedule: Dict[str, Tuple[int, float]] = field(default_factory=dict)
    # (epochs per T', first N training images or None for all) of the T' sweep per arch where they
    # differ from sweep_epochs/sweep_limit_train
    sweep_schedule: Dict[str, Tuple[int, Optional[int]]] = field(default_factory=dict)

    def robust_epochs_for(self, arch: str) -> Tuple[int, float]:
        """``(robust epochs, eps ramp epochs)`` of the robust run of ``arch``."""
        return self.robust_schedule.get(arch, (self.robust_epochs, self.ramp_epochs))

    def sweep_for(self, arch: str) -> Tuple[int, Optional[int]]:
        """``(epochs per T', training images or None for the whole set)`` of the T' sweep of ``arch``."""
        return self.sweep_schedule.get(arch, (self.sweep_epochs, self.sweep_limit_train))


PRESETS: Dict[str, ReproducePreset] = {
    # The smoke presets check that every step runs end to end in about two minutes on 2 cores:
    # the embedded MNIST subset, one arch each, tiny schedules. Their numbers are not results.
    "quick": ReproducePreset(
        name="quick", label="quick smoke run (NOT a reproduction: embedded MNIST subset, FC, tiny schedule)",
        plain_epochs=3, plain_args=("--milestones", "100", "--eval-seeds", "1"), robust_epochs=1, ramp_epochs=1.0,
        eval_n=50, limit_train=1000, limit_test=200, attack_n=50, attacks=("paper",), certify_n=100, alpha_n=20,
        sweep_T=(1, 2), sweep_limit_train=256, dataset_alias={"mnist": "mnist-subset"}, exact_n=0,
        robust_args=("--lr", "0.01", "--method-option", "temperature=5", "--method-option", "kappa_end=0.5",
                     "--eval-seeds", "1"),
        datasets=("mnist",), archs=("fc",), smoke=True),
    "quick-conv": ReproducePreset(
        name="quick-conv", label="quick CONV smoke run (NOT a reproduction: embedded MNIST subset, CONV, tiny schedule)",
        plain_epochs=1, plain_args=("--milestones", "100", "--eval-seeds", "1"), robust_epochs=1, ramp_epochs=1.0,
        eval_n=10, limit_train=128, limit_test=50, attack_n=10, attacks=("paper",), certify_n=10,
        # T' = 3 only: the kernels of the robust run are reused instead of compiling T' = 1 ones.
        sweep_T=(3,), sweep_limit_train=64, dataset_alias={"mnist": "mnist-subset"}, exact_n=0,
        robust_args=("--lr", "0.01", "--method-option", "temperature=5", "--method-option", "kappa_end=0.5",
                     "--eval-seeds", "1"),
        datasets=("mnist",), archs=("conv",), smoke=True),
    "budget": ReproducePreset(
        name="budget", label="budget CPU schedule (10 natural + 20 robust epochs, eps ramp over 15; "
                             "CONV: 10 natural + 10 robust, ramp over 7)",
        plain_epochs=10, plain_args=("--milestones", "7"), robust_epochs=20, ramp_epochs=15.0, eval_n=1000,
        sweep_epochs=2, sweep_limit_train=None, sweep_args=("--ramp-epochs", "1"),
        # A CONV robust step at T' = 3 costs 8-12 natural steps on this 2-core machine (results/robust/
        # bench_robust.md): 10 robust epochs are the minimum, the ramp keeps FC's 3/4 share.
        robust_schedule={"conv": (10, 7.0)},
        # The CONV sweep (the paper's Figure 5 setting) on the whole set would take ~4.3 h of training
        # steps alone here (extrapolated from the run below); 2 epochs of the first 6,400 images ran the
        # five T' and the natural reference in 56 min wall on the shared machine (27 min of training
        # steps; docs/REPRODUCTION.md, Figure 5).
        sweep_schedule={"conv": (2, 6400)}),
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
    calibrate: bool = False               # also attack at eps calibrated on the plain model (20/30/40/50 %)
    workers: Optional[int] = None         # attack processes (None: serial; results identical either way)
    exact_n: Optional[int] = None         # samples of the exact (complete verifier) column; None: the preset's, 0: off
    sweep_only: bool = False              # only the T' sweep, from the plain model a finished run left

    def __post_init__(self):
        if self.exact_n is not None and (isinstance(self.exact_n, bool) or int(self.exact_n) != self.exact_n
                                         or self.exact_n < 0):
            raise ReproduceConfigError(f"exact_n must be an integer >= 0 (0: no exact column), got {self.exact_n!r}")
        if self.sweep_only and not self.sweep:
            raise ReproduceConfigError("sweep_only: the sweep is turned off (--no-sweep); give one of the two")
        for name, flag in (("calibrate", "--calibrate"), ("workers", "--workers"), ("exact_n", "--exact-n")):
            if self.sweep_only and getattr(self, name) not in (None, False):
                raise ReproduceConfigError(f"sweep_only: {flag} is an option of the settings' steps, which "
                                           "--sweep-only skips; give one of the two")


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


# --- status output of a running reproduce -------------------------------------------------------

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
