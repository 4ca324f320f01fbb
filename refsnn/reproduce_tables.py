"""Table and figure writers of ``python -m refsnn.reproduce``: Table 1, Table 2 (paper eps and
calibrated eps), Figure 5 and Figure 6, and the merge of new rows into tables already written."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from typing import Any, Dict, List, Optional, Tuple

from .reproduce_config import (ARCHS, DATASETS, ReproducePreset, _TABLE2_FIELDS, _log, eps_key,
                               paper_reduction)


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


def _alpha_error(record: Dict[str, Any]) -> Optional[float]:
    result = record.get("result", record)
    entry = result.get("alpha") or {}
    return entry.get("certified_error")


def _certified_on(folder: Path, indices: List[int], method: str, seed: Optional[int]) -> Optional[List[bool]]:
    """Per sample of ``indices``, whether ``method`` certified it (``certify_samples.json`` in
    ``folder``); None when a file or a sample is missing, or when that certification drew its sets
    with another seed than ``seed`` (other rand maps: other sets, not comparable)."""
    path, config = folder / "certify_samples.json", folder / "certify.json"
    if not path.is_file() or not config.is_file():
        return None
    if (json.loads(config.read_text()).get("config") or {}).get("seed") != seed:
        return None
    records = {int(r["index"]): r for r in json.loads(path.read_text())}
    if any(i not in records or method not in records[i] for i in indices):
        return None
    return [bool(records[i][method]["certified"]) for i in indices]


def exact_error(summary: Dict[str, Any]) -> str:
    """The exact robust error of a ``verify.dataset`` summary in %, or its bracket
    ``[not robust share, 1 - robust share]`` while some sample is undecided."""
    lower, upper = summary["verified_robust_error_lower"], summary["verified_robust_error_upper"]
    return _pct(lower) if lower == upper else f"[{_pct(lower)}, {_pct(upper)}]"


def _exact_rows(setting: Dict[str, Any], preset: ReproducePreset, mark: str) -> List[str]:
    """The robust model's row on the samples the complete verifier decided (``exact_robust/``):
    certified errors on the same samples beside the exact error, and the check that every sample
    a bound certifies has no exact witness. Empty when that step did not run."""
    exact = setting.get("exact")
    if not exact:
        return []
    records, summary = exact["samples"], exact["summary"]
    indices = [int(r["index"]) for r in records]
    refuted = [r["status"] == "not_robust" for r in records]
    root = Path(setting["dir"])
    seed = (exact.get("config") or {}).get("seed")
    certified = {m: _certified_on(root / folder, indices, m, seed)
                 for m, folder in (("crown-ibp", "certify_robust"), ("best", "certify_robust"),
                                   ("alpha", "certify_robust_alpha"))}
    cells = {m: "-" if c is None else f"{_pct(1 - sum(c) / len(c))}{mark}" for m, c in certified.items()}
    other = [m for m, c in certified.items() if c is None]
    clean = sum(r["clean_prediction"] == r["label"] for r in records) / len(records)
    seconds = sorted(float(r["seconds"]) for r in records)
    limit = exact.get("config", {}).get("time_limit")
    lines = [f"| robust, first {len(records)} samples (seed {seed}) | {_pct(clean)}{mark} | {cells['crown-ibp']} | {cells['best']} | "
             f"{cells['alpha']}{' (alpha)' if certified['alpha'] is not None else ''} | "
             f"{exact_error(summary)}{mark} |", ""]
    broken = [i for m, c in certified.items() if c is not None for i, ok, bad in zip(indices, c, refuted) if ok and bad]
    checked = [m for m, c in certified.items() if c is not None]
    lines.append(f"Exact column: `python -m verify.dataset --method complete --sets certify` on the robust model "
                 f"(`exact_robust/verify.json`), {summary['robust']} robust, {summary['not_robust']} not robust, "
                 f"{summary['unknown']} undecided"
                 + (f" at {limit:g} s per image" if limit else "")
                 + f"; {np.median(seconds):.1f} s per image (median), {seconds[-1]:.1f} s (worst). "
                 + (f"No sample certified by {', '.join(checked)} has a witness (certificates agree)."
                    if checked and not broken else
                    f"WARNING: samples {sorted(set(broken))} are certified and have an exact witness: a bound is unsound."
                    if broken else "")
                 + (f" `-`: {', '.join(other)} ran with another seed (other rand maps) or on fewer samples."
                    if other else "")
                 + " The attack errors above are at the paper's attack eps, not at this training eps.")
    return lines


def _fresh_pair(plain_row: Dict[str, Any], robust_row: Dict[str, Any]) -> str:
    """``regular / robust`` attack error re-scored on fresh draws (``-`` for spike inputs)."""
    if plain_row.get("attack_error_fresh") is None or robust_row.get("attack_error_fresh") is None:
        return "-"
    return f"{_pct(plain_row['attack_error_fresh'])} / {_pct(robust_row['attack_error_fresh'])}"


def _fresh_section(setting: Dict[str, Any], plain_rows: Dict[float, Dict[str, Any]],
                   robust_rows: Dict[float, Dict[str, Any]], cells: Dict[str, Any], mark: str) -> List[str]:
    """The paper-attack rows re-scored on fresh draws (the other scoring, labelled); empty for spikes."""
    eps_list = [e for e in setting["attack_eps"] if round(e, 6) in plain_rows and round(e, 6) in robust_rows
                and plain_rows[round(e, 6)].get("attack_error_fresh") is not None]
    if not eps_list:
        return []
    lines = ["", "Same adversarial images re-scored on fresh rand-map draws (`--scoring fresh`, not the paper's "
                 "scoring; mean over 5 draws, clean error on the same draws):", "",
             "| attack eps | regular: original / attack err. (fresh) | robust: original / attack err. (fresh) | "
             "reduction (pp) | paper: regular / robust attack err. |", "|---|---|---|---|---|"]
    for eps in eps_list:
        p, r = plain_rows[round(eps, 6)], robust_rows[round(eps, 6)]
        cell = cells.get(eps_key(eps), {})
        paper = (f"{cell['regular_attack_error']:.1f} / {cell['robust_attack_error']:.1f}"
                 if cell.get("regular_attack_error") is not None and cell.get("robust_attack_error") is not None
                 else "-")
        lines.append(f"| {eps:g} | {_pct(p.get('original_error_fresh'))} / {_pct(p['attack_error_fresh'])}{mark} | "
                     f"{_pct(r.get('original_error_fresh'))} / {_pct(r['attack_error_fresh'])}{mark} | "
                     f"{100 * (p['attack_error_fresh'] - r['attack_error_fresh']):.1f}{mark} | {paper} |")
    return lines


def _calibrated_section(setting: Dict[str, Any], preset: ReproducePreset, mark: str) -> List[str]:
    """Rows at the eps calibrated on our plain model (``--calibrate``); empty when not run."""
    calibration, attack = setting.get("calibration"), setting.get("attack_calibrated")
    if not calibration or not attack:
        return []
    plain_rows, robust_rows = _rows(attack, "plain", "paper"), _rows(attack, "robust", "paper")
    lines = ["", f"Calibrated eps (the paper's rule on our own plain model: eps bisected to about "
                 f"{'/'.join(f'{100 * t:.0f}' for t in calibration['targets'])} % paper-attack error on "
                 f"{calibration['n']} test samples, `calibration.json`; then the protocol above on "
                 f"{attack.get('n', preset.attack_n)} samples, paper attack; no paper cells: the paper's rows are at "
                 "its own eps):", "",
             "| target (plain) | attack eps | plain err. on the calibration samples | regular: original / attack err. | "
             "robust: original / attack err. | reduction (pp) | regular / robust re-scored on fresh draws |",
             "|---|---|---|---|---|---|---|"]
    for target, eps, found in zip(calibration["targets"], calibration["eps"], calibration["errors"]):
        p, r = plain_rows.get(round(eps, 6)), robust_rows.get(round(eps, 6))
        if p is None or r is None:
            continue
        lines.append(f"| {100 * target:.0f} % | {eps:g} | {_pct(found)} | {_pct(p['original_error'])} / "
                     f"{_pct(p['attack_error'])}{mark} | {_pct(r['original_error'])} / {_pct(r['attack_error'])}{mark} | "
                     f"{100 * (p['attack_error'] - r['attack_error']):.1f}{mark} | {_fresh_pair(p, r)} |")
    return lines


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
             "(docs/REPRODUCTION.md). Scoring: on the evaluation draw the attack judged success on (the "
             "paper's, as the authors' attack code: docs/REPRODUCTION.md, \"Scoring\"); the table below each setting's "
             "re-scores the same adversarial images on 5 fresh rand-map draws (mean, `--scoring fresh`).", ""]
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
        lines += _fresh_section(setting, plain_rows, robust_rows, cells, mark)
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
                  "test samples; the paper reports none), and the exact robust error where the complete verifier "
                  "ran (same samples and sets; a bracket [proven not robust, 1 - proven robust] where some image "
                  "is undecided):", "",
                  "| model | clean acc. at T' | S-CROWN certified error | best-of (S-IBP, S-CROWN) certified error | "
                  "alpha (optimized slopes) certified error | exact robust error (complete verifier) |",
                  "|---|---|---|---|---|---|"]
        for name in ("plain", "robust"):
            record = cert[name]
            result = record.get("result", record)
            lines.append(f"| {'regular' if name == 'plain' else 'robust'} | {_pct(result.get('clean_accuracy'))}{mark} | "
                         f"{_pct(_crown_error(record))}{mark} | {_pct(_best_error(record))}{mark} | - | - |")
        alpha = cert.get("robust_alpha")
        if alpha is not None:
            result = alpha.get("result", alpha)
            lines.append(f"| robust, first {result.get('n', '?')} samples | {_pct(result.get('clean_accuracy'))}{mark} | - | "
                         f"{_pct(_best_error(alpha))}{mark} | {_pct(_alpha_error(alpha))}{mark} (alpha) | - |")
        lines += _exact_rows(setting, preset, mark)
        lines += _calibrated_section(setting, preset, mark)
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
    """Per T': clean accuracy, bound loss and certified error after training, time relative to natural."""
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


_DATASET_NAMES = {"mnist": "MNIST", "fmnist": "FMNIST", "nmnist": "N-MNIST"}


def finished_sweeps(root: Path) -> List[Dict[str, Any]]:
    """Every T' sweep under ``root/sweep/<dataset>-<arch>/`` whose natural reference and at least one
    T' run finished (their ``summary.json``), as ``run_sweep`` returns it; the paper's setting (CONV)
    first, then FC, each in ``DATASETS`` order. Runs still in progress are left out."""
    found = []
    for folder in sorted((root / "sweep").glob("*-*")):
        dataset, _, arch = folder.name.partition("-")
        reference = folder / "natural" / "summary.json"
        if dataset not in DATASETS or arch not in ARCHS or not reference.is_file():
            continue
        runs = {}
        for run in folder.glob("T*"):
            if run.name[1:].isdigit() and (run / "summary.json").is_file():
                runs[int(run.name[1:])] = json.loads((run / "summary.json").read_text())
        if runs:
            found.append({"dataset": dataset, "arch": arch, "reference": json.loads(reference.read_text()),
                          "runs": dict(sorted(runs.items())), "dir": str(folder)})
    return sorted(found, key=lambda s: (-ARCHS.index(s["arch"]), DATASETS.index(s["dataset"])))


def figure5_name(sweep: Dict[str, Any]) -> str:
    """File name of a sweep's plot: ``figure5_<arch>.png`` for MNIST (the paper's data set),
    ``figure5_<dataset>-<arch>.png`` otherwise, so no sweep overwrites another's."""
    stem = sweep["arch"] if sweep["dataset"] == "mnist" else f"{sweep['dataset']}-{sweep['arch']}"
    return f"figure5_{stem}.png"


def sweep_schedule_line(sweep: Dict[str, Any]) -> str:
    """What the sweep ran, read from its runs' own configurations (not from today's preset)."""
    config = sweep["reference"].get("config") or {}
    epochs = config.get("epochs", sweep["reference"].get("epochs"))
    first = next(iter(sweep["runs"].values()))
    ramp = ((first.get("config") or {}).get("method_options") or {}).get("ramp_epochs", epochs)
    n_train = sweep["reference"].get("n_train")
    images = (f"the first {config['limit_train']:,} training images" if config.get("limit_train")
              else f"the whole training set ({n_train:,} images)" if n_train else "the whole training set")
    return (f"{epochs} robust epoch(s) per T' from the same natural model on {images}, eps ramped linearly to "
            f"the training eps over {float(ramp):g} epoch(s); time reference: {epochs} natural epoch(s) on the "
            "same images from the same model.")


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
    figure, axes = plt.subplots(1, 4, figsize=(15, 3.5))
    panels = [("clean_accuracy", "clean test accuracy"), ("robust_loss", "bound loss, last epoch"),
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
    import textwrap

    figure.suptitle(textwrap.fill(f"Figure 5 (refsnn, preset {preset.name}): T' sweep on {sweep['dataset']} "
                                  f"{sweep['arch'].upper()}; {sweep_schedule_line(sweep)}", 170), fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def render_sweep_md(sweeps: List[Tuple[Dict[str, Any], List[Dict[str, Any]]]], preset: ReproducePreset,
                    paper: Dict[str, Any]) -> str:
    """``figure5.md``: one section per ``(sweep, sweep_table(sweep))``, each with its own schedule line."""
    ratios = paper.get("figure5_time_ratio", {})
    mark = "" if preset.name == "paper" else "*"
    lines = [f"# Figure 5 (refsnn, preset `{preset.name}`): T' sweeps", "", *smoke_line(preset),
             "The paper's sweep is CONV MNIST at eps 0.12 with its full schedule (300 robust epochs, GPU); its time "
             "ratios are per epoch relative to natural training. Bound loss: the robust training loss of the last "
             "epoch, the recipe's mix of the S-IBP and S-CROWN bounds (S-IBP alone once the mix's weight on "
             "S-CROWN has reached 0, as in the last epoch of these short schedules)."
             + (" Values marked * come from the shortened schedule of each section." if mark else ""), ""]
    for sweep, rows in sweeps:
        paper_setting = sweep["dataset"] == "mnist" and sweep["arch"] == "conv"
        lines += [f"## {_DATASET_NAMES[sweep['dataset']]} {sweep['arch'].upper()}"
                  + (" (the paper's setting)" if paper_setting else ""), "",
                  sweep_schedule_line(sweep) + f" Plot: `{figure5_name(sweep)}`.", ""]
        missing = [t for t in preset.sweep_T if t not in sweep["runs"]]
        if missing:
            lines += [f"Not finished yet: T' = {', '.join(map(str, missing))} (rerun the same command to continue).",
                      ""]
        errors = [row["cert_error_crown"] for row in rows]
        if rows and all(e is not None and e >= 1.0 for e in errors):
            lines += ["Every bound is vacuous after this schedule: certified error 100 % at every T' (the loss "
                      "column is then the trivial bound's), so this section shows the time ratios only, not "
                      "the paper's accuracy / loss trade-off.", ""]
        lines += ["| T' | clean acc. % | bound loss (last epoch) | S-CROWN certified error % | s/epoch | "
                  "time / natural | paper time ratio |", "|---|---|---|---|---|---|---|"]
        for row in rows:
            loss = "n/a" if row["robust_loss"] is None else f"{row['robust_loss']:.3f}"
            lines.append(f"| {row['T_prime']} | {_pct(row['clean_accuracy'], 2)}{mark} | {loss}{mark} | "
                         f"{_pct(row['cert_error_crown'])}{mark} | {row['seconds_per_epoch']:.0f} | "
                         f"{row['time_ratio']:.1f}{mark} | {ratios.get(str(row['T_prime']), 'n/t')} |")
        lines.append("")
    return "\n".join(lines)


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


_NAMES = {"mnist": "MNIST", "fmnist": "FMNIST", "nmnist": "N-MNIST"}
NOT_TRAINED = "not trained yet"
IN_TRAINING = "in training"
# ends a Table 1 row built from a setting's finished models before the setting is (rebuilt on every render)
PARTIAL_MARK = " <!-- setting not finished -->"


def _partial_row(root: Optional[Path], dataset: str, arch: str, paper: Dict[str, Any], mark: str) -> Optional[str]:
    """The Table 1 row of a setting whose plain model is finished and whose other steps are not (yet):
    the plain accuracy and time from its ``summary.json``; the robust model's likewise when it is
    trained, ``in training`` where a robust checkpoint waits, else ``not trained yet``. None when not
    even the plain run is finished."""
    if root is None:
        return None
    summary_text = _read_text(root / f"{dataset}-{arch}" / "plain" / "summary.json")
    if not summary_text:
        return None
    summary = json.loads(summary_text)
    plain_acc = summary["test_accuracy"]["mean"]
    robust_dir = root / f"{dataset}-{arch}" / "robust"
    robust_text = _read_text(robust_dir / "summary.json")
    robust_summary = json.loads(robust_text) if robust_text else None
    if robust_summary is not None:   # trained; its attacks or certification still to come
        robust_acc = robust_summary["test_accuracy"]["mean"]
        robust, cost = f"{_pct(robust_acc, 2)}{mark}", f"{100 * (plain_acc - robust_acc):.2f}{mark}"
        robust_time = f"{robust_summary['seconds_per_epoch']:.0f}"
    else:
        robust = IN_TRAINING if (robust_dir / "checkpoint.h5").is_file() else NOT_TRAINED
        cost, robust_time = "-", "-"
    ref = paper.get("clean_accuracy", {}).get(f"{dataset}-{arch}", {}).get("regular")
    same_data = summary.get("config", {}).get("dataset", dataset) == dataset
    diff = "n/t" if ref is None else f"{100 * plain_acc - ref:+.2f}" if same_data else "other data"
    return (f"| {_NAMES[dataset]} | {arch.upper()} | {_pct(plain_acc, 2)}{mark} | {robust} | {cost} | "
            f"{f'{ref:.2f}' if ref is not None else 'n/t'} | n/r | {diff} | {summary['seconds_per_epoch']:.0f} | "
            f"{robust_time} |{PARTIAL_MARK}")


def add_untrained_settings(table1: str, table2: str, preset: ReproducePreset, paper: Dict[str, Any],
                           root: Optional[Path] = None) -> Tuple[str, str]:
    """Tables 1 and 2 with a ``not trained yet`` row / section (paper cells filled) for every setting of
    ``preset`` that has none yet; a setting with results is never replaced. Under ``root`` (the preset's
    output folder), a setting whose plain run is finished shows its plain accuracy with the robust run
    ``in training`` (rebuilt on every call until the setting is finished)."""
    before, rows, after = _table1_rows(table1)
    rows = [row for row in rows if f"| {IN_TRAINING} |" not in row and f"| {NOT_TRAINED} |" not in row
            and not row.endswith(PARTIAL_MARK)]
    have1 = {_table1_key(row) for row in rows}
    mark = "" if preset.name == "paper" else "*"
    preamble, sections, tail = _table2_sections(table2)
    have2 = {_table2_key(section) for section in sections}
    for dataset in preset.datasets:
        for arch in preset.archs:
            key = f"{dataset}-{arch}"
            name = f"{_NAMES[dataset]} {arch.upper()}"
            partial = _partial_row(root, dataset, arch, paper, mark) if (dataset, arch) not in have1 else None
            if partial is not None:
                rows.append(partial)
            elif (dataset, arch) not in have1:
                ref = paper.get("clean_accuracy", {}).get(key, {}).get("regular")
                rows.append(f"| {_NAMES[dataset]} | {arch.upper()} | {NOT_TRAINED} | {NOT_TRAINED} | - | "
                            f"{f'{ref:.2f}' if ref is not None else 'n/t'} | n/r | - | - | - |")
            cells = paper.get("table2_cells", {}).get(key, {})
            if (dataset, arch) not in have2 and cells:
                train_eps = paper.get("train_eps", {}).get(key)
                section = [f"## {name} (training eps {train_eps:g})" if train_eps is not None else f"## {name}", "",
                           f"{NOT_TRAINED}: the paper's cells only.", "",
                           "| attack eps | paper: regular original / attack err. | paper: robust original / attack err. | "
                           "paper: reduction (pp) | ours |", "|---|---|---|---|---|"]
                for eps_text, cell in cells.items():
                    section.append(f"| {eps_text} | {cell['regular_original_error']:.1f} / "
                                   f"{cell['regular_attack_error']:.1f} | {cell['robust_original_error']:.1f} / "
                                   f"{cell['robust_attack_error']:.1f} | "
                                   f"{cell['regular_attack_error'] - cell['robust_attack_error']:.1f} | {NOT_TRAINED} |")
                sections.append(section + [""])
    rows.sort(key=lambda row: _order(_table1_key(row)))
    sections.sort(key=lambda section: _order(_table2_key(section)))
    return ("\n".join(before + rows + after),
            "\n".join(preamble + [line for section in sections for line in section] + tail))
