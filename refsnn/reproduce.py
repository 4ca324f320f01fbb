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
5. ``exact_robust/``: the exact robust error of the robust model on the first ``exact_n`` of those
   samples and sets (``python -m verify.dataset --method complete --sets certify``, the preset's
   ``exact_time_limit`` seconds per image; a bracket where some image is undecided; ``--exact-n``,
   0 turns it off, the quick presets run none);

and once, on the first dataset, the T' sweep of Figure 5 (``sweep/<dataset>-<arch>/``: robust
training for each T' from the plain model, and natural training on the same samples as the time
reference, on the preset's schedule for that arch, ``ReproducePreset.sweep_for``; ``--sweep-only``
runs only this, from a plain model an earlier run left). It then writes ``table1.md``,
``table2.md``, ``figure5.md`` (every finished sweep in the folder, one section per arch, CONV
first), ``figure5_<arch>.png`` per sweep, ``figure6_<dataset>.png``, ``summary.json`` and
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
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .io import atomic_write_text
from .robust import DEFAULT_EPS
from .reproduce_config import (ARCHS, DATASETS, DEFAULT_OUT, PAPER_REFERENCE, PRESETS, ReproduceConfig,  # noqa: F401
                               ReproduceConfigError, ReproducePreset, _OUTPUT, _PAPER_TABLE2_ROWS, _TABLE2_FIELDS,
                               _log, eps_key, load_paper_values, paper_reduction)
from .reproduce_tables import (_best_error, _crown_error, _order, _read_text, add_untrained_settings,  # noqa: F401
                               figure5_name, finished_sweeps, merge_table1, merge_table2, render_figure5, render_figure6, render_sweep_md, render_table1,
                               render_table2, smoke_line, sweep_table)


# --- steps --------------------------------------------------------------------------------------


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
                 preset: ReproducePreset, n: int, data_dir: Optional[str], seed: int,
                 attacks: Optional[Sequence[str]] = None, workers: Optional[int] = None) -> Dict[str, Any]:
    from .attack import main as attack_main

    argv = ["--model", str(plain), "--name", "plain", "--model2", str(robust), "--name2", "robust",
            "--dataset", dataset, "--n", str(n), "--eps", ",".join(f"{e:g}" for e in eps),
            "--attack", ",".join(attacks or preset.attacks), "--seed", str(seed), "--out", str(out_dir),
            "--no-progress", *(["--workers", str(workers)] if workers else [])]
    return _json_step(out_dir / "table.json", f"attack {out_dir}", attack_main, argv + _data_dir_args(data_dir))


def _calibrate_step(out_dir: Path, plain: Path, dataset: str, start: float, n: int, seed: int,
                    data_dir: Optional[str]) -> Dict[str, Any]:
    """The eps at which ``plain``'s paper-attack error is about 20/30/40/50 % (``calibration.json``
    in ``out_dir``; skipped when it exists)."""
    from .reproduce_calibrate import calibrate_eps

    result = out_dir / "calibration.json"
    if result.is_file():
        _log(f"skip calibration {out_dir} (finished)")
        _step_done()
        return json.loads(result.read_text())
    _log(f"calibrate {dataset} on {plain}: bisect eps on {n} samples for 20/30/40/50 % paper-attack error")
    found = calibrate_eps(plain, dataset, n, seed=seed, data_dir=data_dir, start=start, log=_log)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(result, json.dumps(found, indent=2) + "\n")
    _step_done()
    return found


def _certify_step(out_dir: Path, model: Path, dataset: str, eps: float, n: int, horizon: int,
                  data_dir: Optional[str], methods: str = "ibp,crown-ibp,best") -> Dict[str, Any]:
    from .certify import main as certify_main, output_files

    argv = ["--model", str(model), "--dataset", dataset, "--eps", f"{eps:g}", "--n", str(n),
            "--robust-T", str(horizon), "--method", methods, "--out", str(out_dir), "--no-progress"]
    path = output_files(out_dir)["json"]
    return _json_step(path, f"certify {model} -> {path}", certify_main, argv + _data_dir_args(data_dir))


def _exact_step(out_dir: Path, model: Path, dataset: str, eps: float, n: int, horizon: int, time_limit: float,
                data_dir: Optional[str], workers: Optional[int] = None, seed: int = 0) -> Dict[str, Any]:
    """Exact robust error of ``model`` on the first ``n`` samples ``refsnn.certify`` certifies, on the
    same sets (``python -m verify.dataset --method complete --sets certify``, ``time_limit`` s per image;
    an interrupted run resumes from its partial file). ``seed``: the certification's seed (its rand
    maps and l0 positions)."""
    from verify.dataset import main as verify_main

    argv = ["--model", str(model), "--dataset", dataset, "--eps", f"{eps:g}", "--n", str(n), "--robust-T",
            str(horizon), "--method", "complete", "--sets", "certify", "--time-limit", f"{time_limit:g}",
            "--seed", str(seed), "--out", str(out_dir), "--no-progress",
            *(["--workers", str(workers)] if workers else [])]
    return _json_step(out_dir / "verify.json", f"exact {model} -> {out_dir}", verify_main,
                      argv + _data_dir_args(data_dir))


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
    robust_epochs, ramp_epochs = preset.robust_epochs_for(arch)
    robust_argv = ["--method", "robust", "--dataset", data_name, "--arch", arch,
                   "--init", str(setting_dir / "plain" / "model.h5"), "--eps", f"{train_eps:g}",
                   "--epochs", str(robust_epochs), "--ramp-epochs", f"{ramp_epochs:g}",
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
                          min(preset.attack_n, n_test), config.data_dir, config.seed, workers=config.workers)
    certified = {name: _certify_step(setting_dir / f"certify_{name}", models[name], data_name, train_eps,
                                     min(preset.certify_n, n_test), preset.robust_T, config.data_dir)
                 for name in models}
    # alpha-CROWN (optimized slopes) is ~100x the cost of S-CROWN: on its own, smaller sample count
    certified["robust_alpha"] = _certify_step(setting_dir / "certify_robust_alpha", models["robust"], data_name,
                                              train_eps, min(preset.alpha_n, preset.certify_n, n_test),
                                              preset.robust_T, config.data_dir, methods="best,alpha")
    exact_n = preset.exact_n if config.exact_n is None else config.exact_n
    exact = None
    if exact_n > 0:
        # the seed the robust model's certification drew its sets with (results/ holds runs made with 1234)
        cert_seed = int((certified["robust"].get("config") or {}).get("seed", 0))
        exact = _exact_step(setting_dir / "exact_robust", models["robust"], data_name, train_eps,
                            min(exact_n, preset.certify_n, n_test), preset.robust_T, preset.exact_time_limit,
                            config.data_dir, config.workers, seed=cert_seed)
    elif (setting_dir / "exact_robust" / "verify.json").is_file():  # finished by an earlier run: shown without a step
        exact = json.loads((setting_dir / "exact_robust" / "verify.json").read_text())
    calibration = calibrated = None
    calibrated_dir = setting_dir / "attack_calibrated"
    if config.calibrate:
        calibration = _calibrate_step(calibrated_dir, models["plain"], data_name, max(paper_eps),
                                      min(preset.calibrate_n, n_test), config.seed, config.data_dir)
        calibrated = _attack_step(calibrated_dir, models["plain"], models["robust"], data_name,
                                  calibration["eps"], preset, min(preset.attack_n, n_test), config.data_dir,
                                  config.seed, attacks=preset.calibrated_attacks, workers=config.workers)
    elif (calibrated_dir / "calibration.json").is_file() and (calibrated_dir / "table.json").is_file():
        # finished by an earlier --calibrate run: shown in the tables without a step
        calibration = json.loads((calibrated_dir / "calibration.json").read_text())
        calibrated = json.loads((calibrated_dir / "table.json").read_text())
    return {"dataset": dataset, "data": data_name, "arch": arch, "train_eps": train_eps, "attack_eps": eps,
            "attack_eps_source": eps_source, "paper_attack_eps": paper_eps, "plain": plain, "robust": robust, "attack": attack,
            "certify": certified, "exact": exact, "calibration": calibration, "attack_calibrated": calibrated,
            "dir": str(setting_dir)}


def _warm_up_kernels(natural_argv: List[str], robust_argv: List[str]) -> None:
    """Runs one natural and one robust training step on 64 images into a folder that is then deleted,
    so that compiling or loading the Numba kernels falls in no epoch the sweep times (the first
    run of a process would otherwise pay it in its first epoch)."""
    import contextlib
    import io
    import tempfile

    from .train import main as train_main

    tiny = ["--limit-train", "64", "--limit-test", "16", "--eval-seeds", "1", "--epochs", "1", "--no-progress"]
    _log("warm-up: one natural and one robust step on 64 images (kernels compiled or loaded outside the timed epochs)")
    with tempfile.TemporaryDirectory(prefix="refsnn-warm-up-") as folder:
        for name, argv in (("natural", natural_argv), ("robust", [*robust_argv, "--method-option", "eval_n=8"])):
            errors = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
                code = train_main([*argv, *tiny, "--out", str(Path(folder) / name)])   # the last value of a flag wins
            if code != 0:
                raise RuntimeError(f"warm-up of the T' sweep ({name} step) failed (exit code {code}): "
                                   f"{(errors.getvalue().strip().splitlines() or [''])[-1]}")


def run_sweep(root: Path, dataset: str, arch: str, preset: ReproducePreset,
              config: ReproduceConfig) -> Dict[str, Any]:
    """Figure 5: robust training for each T' from the same plain model, and a natural reference."""
    data_name = preset.dataset_alias.get(dataset, dataset)
    sweep_dir = root / "sweep" / f"{dataset}-{arch}"
    plain_model = root / f"{dataset}-{arch}" / "plain" / "model.h5"
    data_args = _data_dir_args(config.data_dir)
    epochs, limit_train = preset.sweep_for(arch)
    limits = _limit_args(limit_train, preset.limit_test)
    common = ["--dataset", data_name, "--arch", arch, "--init", str(plain_model), "--seed", str(config.seed),
              "--epochs", str(epochs), "--lr", "0.01", *limits, *data_args]
    natural_argv = [*common, "--milestones", "100000"]
    robust_argv = {horizon: [*common, "--method", "robust", "--eps", f"{DEFAULT_EPS[(dataset, arch)]:g}",
                             "--robust-T", str(horizon), "--method-option", f"eval_n={min(preset.eval_n, 500)}",
                             *_robust_recipe(preset, dataset), *preset.sweep_args,
                             *([] if "--ramp-epochs" in preset.sweep_args else ["--ramp-epochs", f"{epochs:g}"])]
                   for horizon in preset.sweep_T}
    if not all((sweep_dir / run / "summary.json").is_file() for run in ["natural", *(f"T{t}" for t in robust_argv)]):
        _warm_up_kernels(natural_argv, robust_argv[min(robust_argv)])
    reference = _train_step(sweep_dir / "natural", natural_argv, need_model=False)
    runs = {horizon: _train_step(sweep_dir / f"T{horizon}", argv, need_model=False)
            for horizon, argv in robust_argv.items()}
    return {"dataset": dataset, "arch": arch, "reference": reference, "runs": runs, "dir": str(sweep_dir)}


# --- entry points ---------------------------------------------------------------------------------


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
    if config.sweep_only:
        _check_sweep_only(config, root)
    root.mkdir(parents=True, exist_ok=True)
    record = {"config": asdict(config), "preset": asdict(preset), "command": command,
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "threads": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                                                                      "OMP_NUM_THREADS")}}}
    record_path = root / "reproduce_config.json"
    if record_path.is_file():   # keep what earlier runs into this folder recorded (other settings, other commands)
        try:
            previous = json.loads(record_path.read_text())
        except ValueError as error:
            raise ReproduceConfigError(f"{record_path} is not JSON ({error}); move it aside to run into "
                                       f"{root}") from None
        record["earlier"] = list(previous.pop("earlier", [])) + [previous]
    atomic_write_text(record_path, json.dumps(record, indent=2, default=str) + "\n")
    _OUTPUT.update(quiet=config.quiet, bar=None)
    try:
        return _run_and_render(config, preset, paper, root)
    finally:
        if _OUTPUT["bar"] is not None:
            _OUTPUT["bar"].close()
        _OUTPUT.update(quiet=False, bar=None)


def _check_sweep_only(config: ReproduceConfig, root: Path) -> None:
    """``--sweep-only`` needs the sweep's arch among the archs and the plain model it starts from."""
    sweep_arch = config.sweep_arch or config.archs[0]
    if sweep_arch not in config.archs:
        raise ReproduceConfigError(f"sweep_only: --sweep-arch {sweep_arch} is not among --arch {','.join(config.archs)}")
    plain = root / f"{config.datasets[0]}-{sweep_arch}" / "plain" / "model.h5"
    if not plain.is_file():
        raise ReproduceConfigError(f"sweep_only: no plain model {plain}; run the command without --sweep-only "
                                   "(with --no-sweep for no sweep) to train it first")
    preset = PRESETS[config.preset]
    missing = _data_available(preset.dataset_alias.get(config.datasets[0], config.datasets[0]), config.data_dir)
    if missing:
        raise ReproduceConfigError(f"sweep_only: no data for {config.datasets[0]} ({missing.rstrip(':')})")


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
    # Steps: plain, robust, attack, two certifications and the alpha one per setting (+ the exact column,
    # + calibration and its attack); the sweep's natural reference and each T'.
    exact_steps = int((preset.exact_n if config.exact_n is None else config.exact_n) > 0)
    setting_steps = 0 if config.sweep_only else len(available) * len(config.archs)
    total = (((8 if config.calibrate else 6) + exact_steps) * setting_steps
             + (1 + len(preset.sweep_T) if run_sweep_now else 0))
    compile_notice(quiet=config.quiet)
    _OUTPUT["bar"] = Progress(total, f"reproduce {preset.name}", "step", quiet=config.quiet)
    settings = []
    for dataset in ([] if config.sweep_only else available):
        for arch in config.archs:
            started = time.perf_counter()
            settings.append(run_setting(root, dataset, arch, preset, config, paper))
            _log(f"{dataset}-{arch} done in {time.perf_counter() - started:.0f} s")
    outputs: Dict[str, Any] = {"skipped": skipped}
    if settings:
        table1, table2 = add_untrained_settings(
            merge_table1(render_table1(settings, preset, paper), _read_text(root / "table1.md")),
            merge_table2(render_table2(settings, preset, paper), _read_text(root / "table2.md")), preset, paper,
            root)
        atomic_write_text(root / "table1.md", table1)
        atomic_write_text(root / "table2.md", table2)
        for dataset in dict.fromkeys(s["dataset"] for s in settings):
            figure = render_figure6(settings, dataset, root / f"figure6_{dataset}.png", preset)
            outputs[f"figure6_{dataset}"] = str(figure) if figure else None
    previous = json.loads(_read_text(root / "summary.json") or "{}")
    # an earlier summary's rows (a list in the one-sweep format of old) stay as they were unless a sweep
    # runs now, which rebuilds every finished sweep's rows from the sweep folders
    figure5 = previous.get("figure5")
    if run_sweep_now:
        figure5 = figure5 if isinstance(figure5, dict) else {}
        run_sweep(root, available[0], sweep_arch, preset, config)
        # every finished sweep in the folder (one per data set and arch) is rendered, each to its own plot
        sweeps = [(sweep, sweep_table(sweep)) for sweep in finished_sweeps(root)]
        atomic_write_text(root / "figure5.md", render_sweep_md(sweeps, preset, paper))
        for sweep, rows in sweeps:
            key = f"{sweep['dataset']}-{sweep['arch']}"
            figure5[key] = rows
            figure = render_figure5(sweep, rows, preset, paper, root / figure5_name(sweep))
            outputs[f"figure5_{key}"] = str(figure) if figure else None
    summary_rows = [_summary_setting(s) for s in settings]
    ran = {(s["dataset"], s["arch"]) for s in summary_rows}
    kept = [s for s in previous.get("settings", []) if (s.get("dataset"), s.get("arch")) not in ran]
    # outputs of the settings not run now (their figure 6) stay listed; a sweep rendered now re-renders
    # every finished sweep, so the earlier plots' entries (and the single figure5.png of old) go
    kept_outputs = {k: v for k, v in (previous.get("outputs") or {}).items()
                    if not (run_sweep_now and k.startswith("figure5"))}
    summary = {"preset": preset.name, "label": preset.label, "smoke": preset.smoke, "paper_reference": paper,
               "outputs": {**kept_outputs, **outputs},
               "settings": sorted(summary_rows + kept, key=lambda s: _order((s["dataset"], s["arch"]))
                                  if s.get("dataset") in DATASETS and s.get("arch") in ARCHS else _order(None)),
               # per "<dataset>-<arch>": the rows of its T' sweep (figure5.md)
               "figure5": figure5}
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    _log(f"wrote {root}/" + ("" if config.sweep_only else "table1.md, table2.md, ") + "summary.json"
         + "".join(f", {Path(v).name}" for k, v in outputs.items() if k.startswith("figure5") and v)
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
    add("--sweep-only", action="store_true",
        help="run only the T' sweep, from the plain model of the first --dataset and the sweep's arch that an "
             "earlier run left (no other step is run or rewritten; resumable like the others)")
    add("--paper-values", metavar="FILE",
        help="JSON file with more transcribed paper cells (docs/REPRODUCTION.md; default: none)")
    cli.add_seed(parser, detail=" (training, attacks)")
    add("--calibrate", action="store_true",
        help="also find the eps at which the plain model's paper-attack error is about 20/30/40/50 %% (bisection "
             "on the preset's calibrate_n samples) and attack both models there (<setting>/attack_calibrated/)")
    add("--workers", type=cli.positive_int, default=None, metavar="N",
        help=f"{cli.VOCABULARY['--workers']} of N worker processes for the attack steps (needs refsnn[dask]; "
             "tables identical to the serial run; default: serial)")
    add("--exact-n", type=cli.nonnegative_int, default=None, metavar="N",
        help="samples of the exact robust error column (python -m verify.dataset --method complete on the first N "
             "certified samples, robust model, training eps; 0: off; default: the preset's, budget 100, quick 0)")
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
                             args.sweep_arch, args.paper_values, args.seed, getattr(args, "quiet", False),
                             args.calibrate, args.workers, args.exact_n, args.sweep_only)
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
