"""``python -m verify.report RUN_DIR [RUN_DIR ...] [--merge RERUN_DIR] --out FILE.md``: exact vs
certified vs attacked robustness of each ``python -m verify.dataset`` run, on the same sets.

For each run folder (its ``verify.json``) the report rebuilds the run's samples and input sets from
the run's own config (model, data set, split, eps, set, convention, T', seed, ``--sets``, indices;
``verify.dataset.run_samples`` and ``sample_set``) and gives one row:

- clean error (the clean member of each set, as the run recorded it: rebuilt and compared);
- certified error by S-IBP, S-CROWN, best-of and alpha: ``refsnn.certify.set_margin_lower_bounds``
  on the set's enclosing box (its any-``k`` form for an l0 set of any ``k`` flips per step, as
  ``refsnn.certify --set spike-any-k``), sound float64 bounds; a sample is certified when every margin bound is > 0
  (``refsnn.certify.margins_certified``);
- exact robust error (every sample decided) or its bracket ``[not robust / n, 1 - robust / n]``;
- paper-attack and ensemble (``refsnn.attacks.Strongest``) error on the same sets: an image counts
  as broken only when the attack's spike train is a member of the set and its margin, replayed in
  exact arithmetic (``verify.exact.ExactNetwork``), is <= 0;
- median and worst seconds per image of the verifier, the run's command and machine.

Attacks run on the images the verifier did not prove robust (an attack cannot break a set proved
robust: every member has a positive exact margin), and also on a seeded sample of up to
``--robust-sample`` proven-robust images as a consistency check, where sets of at most
``--enumerate-max`` members are also enumerated. The witness of each "not robust" verdict is
replayed: the one stored in the record (``--method complete``); for runs that did not store it
(``--method milp``, older runs) an attack's witness or one found again by ``verify.robust_bab``
within ``--witness-time`` seconds, so there a verdict may stay unconfirmed ("not re-found"). A
contradiction (an attack or an enumeration breaks a proven-robust image, a bound certifies an image
that has a witness or is recorded not robust, a stored witness does not replay or cannot be read,
branch and bound now proves robust an image recorded not robust) is printed as an ``UNSOUND`` line
and the command exits with code 1 after writing the report; a merged rerun that reverses a decided
verdict is refused. An existing report is replaced only with ``--overwrite``.

``--merge RERUN_DIR`` overlays a rerun's decided verdicts (the same model, data, eps, set and seed;
its samples a subset of one run's, e.g. the undecided images rerun with a longer time limit) onto
that run; the row says so.

    python -m verify.report results/verify/bab/mnist-fc-robust-eps0.12-complete-n1000 \\
        --merge results/verify/bab/mnist-fc-robust-eps0.12-complete-n1000-undecided-600s \\
        --out runs/verify-report/mnist.md
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from refsnn import cli
from refsnn.io import atomic_write_text

from .dataset import DatasetVerifyConfig, run_samples, sample_set, unpack_spikes
from .sets import BoxSet, InputSet, SpikeL0Set

PROG = "python -m verify.report"
#: Bound methods of the certified-error columns (``refsnn.certify`` names).
BOUND_METHODS = ("ibp", "crown-ibp", "best", "alpha")
BOUND_TITLES = {"ibp": "S-IBP", "crown-ibp": "S-CROWN", "best": "best", "alpha": "alpha"}
ATTACKS = ("paper", "strongest")
STATUSES = ("robust", "not_robust", "unknown")
DEFAULT_OUT = Path("runs/verify-report/report.md")
#: Identity fields a merged rerun must share with its run (the sets depend only on these and the index).
MERGE_KEYS = ("model_sha256", "dataset", "split", "input_set", "eps", "convention", "robust_T", "seed", "sets")


class ReportError(ValueError):
    """Bad input of ``verify.report`` (a run folder, a ``--merge`` folder or an option); one line."""


@dataclass
class ReportOptions:
    """Settings of one report (saved with it)."""

    robust_sample: int = 20
    enumerate_max: int = 4096
    witness_time: float = 20.0
    iterations: int = 20
    effort: float = 1.0
    batch_size: int = 100
    data_dir: Optional[str] = None

    def __post_init__(self):
        if int(self.robust_sample) != self.robust_sample or self.robust_sample < 0:
            raise ReportError(f"robust_sample must be an integer >= 0, got {self.robust_sample!r}")
        if int(self.enumerate_max) != self.enumerate_max or self.enumerate_max < 0:
            raise ReportError(f"enumerate_max must be an integer >= 0, got {self.enumerate_max!r}")
        if not np.isfinite(self.witness_time) or self.witness_time < 0:
            raise ReportError(f"witness_time must be a finite number >= 0, got {self.witness_time!r}")
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ReportError(f"iterations must be an integer >= 0, got {self.iterations!r}")
        if not np.isfinite(self.effort) or self.effort <= 0:
            raise ReportError(f"effort must be a finite number > 0, got {self.effort!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ReportError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")


@dataclass
class Run:
    """One verification run: its folder, its ``verify.json`` and the records after any merge."""

    path: Path
    document: dict
    records: List[dict]
    merged: List[dict] = field(default_factory=list)  # per merged rerun: path, command, overlaid indices


# --- reading and merging ------------------------------------------------------------------------

def read_run(path) -> Run:
    """The run in folder ``path`` (its ``verify.json``); ``ReportError`` naming the folder otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"run folder {path} does not exist or is not a folder")
    file = path / "verify.json"
    if not file.is_file():
        partial = " (it holds only verify.partial.json: the run has not finished)" if (path / "verify.partial.json").is_file() else ""
        raise ReportError(f"{path} has no verify.json{partial}")
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ReportError(f"{file} is not a readable verify.dataset result ({' '.join(str(error).split())})") from None
    problem = _document_problem(document)
    if problem:
        raise ReportError(f"{file} is not a verify.dataset result: {problem}")
    records = [dict(record) for record in document["samples"]]
    if not records:
        raise ReportError(f"{file} holds no samples")
    return Run(path, document, records)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _document_problem(document) -> Optional[str]:
    """What makes a parsed ``verify.json`` unusable by the report (None when nothing): every field
    the report reads, checked for its JSON type here so that a bad file is one line, not a traceback."""
    if not isinstance(document, dict):
        return f"the document is a JSON {type(document).__name__}, not a JSON object"
    missing = [key for key in ("samples", "identity", "config", "model", "dataset", "split", "command")
               if key not in document]
    if missing:
        return f"it has no {', '.join(repr(key) for key in missing)}"
    for key in ("identity", "config"):
        if not isinstance(document[key], dict):
            return f"its {key!r} is a JSON {type(document[key]).__name__}, not a JSON object"
    for key in ("model", "dataset", "split"):
        if not isinstance(document[key], str):
            return f"its {key!r} is not a string"
    indices = document["identity"].get("indices")
    if indices is not None and not (isinstance(indices, list) and all(_is_int(i) and i >= 0 for i in indices)):
        return "its identity's 'indices' is not a list of sample indices"
    if not isinstance(document["samples"], list):
        return f"its 'samples' is a JSON {type(document['samples']).__name__}, not a list"
    for position, record in enumerate(document["samples"]):
        if not isinstance(record, dict):
            return f"sample {position} is not a JSON object"
        absent = [key for key in ("index", "label", "status", "clean_prediction") if key not in record]
        if absent:
            return f"sample {position} has no {', '.join(repr(key) for key in absent)}"
        if not all(_is_int(record[key]) for key in ("index", "label", "clean_prediction")):
            return f"sample {position}: index, label and clean_prediction must be integers"
        if record["status"] not in STATUSES:
            return f"sample {position}: status {record['status']!r} is not one of {', '.join(STATUSES)}"
    return None


def _merge_identity(document: dict) -> dict:
    identity = dict(document["identity"])
    identity.setdefault("sets", "protocol")
    return {key: identity.get(key) for key in MERGE_KEYS}


def merge_rerun(run: Run, rerun: Run) -> List[int]:
    """Overlays ``rerun``'s decided verdicts onto ``run`` (in place); returns the overlaid indices.

    The rerun must verify the same sets (``MERGE_KEYS``) on a subset of the run's samples. A decided
    verdict that the rerun reverses is a contradiction (one of the two is unsound): ``ReportError``.
    """
    mine, theirs = _merge_identity(run.document), _merge_identity(rerun.document)
    differ = [key for key in MERGE_KEYS if mine[key] != theirs[key]]
    if differ:
        raise ReportError(f"--merge {rerun.path} is not a rerun of {run.path}: {', '.join(differ)} differ")
    by_index = {int(record["index"]): position for position, record in enumerate(run.records)}
    outside = sorted(int(r["index"]) for r in rerun.records if int(r["index"]) not in by_index)
    if outside:
        raise ReportError(f"--merge {rerun.path}: samples {outside[:5]} are not samples of {run.path}")
    overlaid = []
    for record in rerun.records:
        position = by_index[int(record["index"])]
        old = run.records[position]
        if record["status"] not in ("robust", "not_robust"):
            continue
        if old["status"] in ("robust", "not_robust") and old["status"] != record["status"]:
            raise ReportError(f"--merge {rerun.path}: sample {record['index']} is {record['status']} there but "
                              f"{old['status']} in {run.path}; one of the two verdicts is unsound")
        if int(record["label"]) != int(old["label"]):
            raise ReportError(f"--merge {rerun.path}: sample {record['index']} has another label than in {run.path}")
        if old["status"] != record["status"]:
            run.records[position] = dict(record, merged_from=str(rerun.path), original_status=old["status"],
                                         original_seconds=old.get("seconds"))
            overlaid.append(int(record["index"]))
    run.merged.append({"path": str(rerun.path), "command": rerun.document.get("command"), "indices": overlaid})
    return overlaid


def attach_merges(runs: Sequence[Run], reruns: Sequence[Run]) -> None:
    """Each rerun onto the one run it is a rerun of (``ReportError`` when none or several match)."""
    for rerun in reruns:
        matches = [run for run in runs if _merge_identity(run.document) == _merge_identity(rerun.document)
                   and {int(r["index"]) for r in rerun.records} <= {int(r["index"]) for r in run.records}]
        if not matches:
            raise ReportError(f"--merge {rerun.path} matches no run given (the model, data, eps, set and seed must "
                              "agree and its samples be a subset of the run's)")
        if len(matches) > 1:
            raise ReportError(f"--merge {rerun.path} matches several runs: {', '.join(str(r.path) for r in matches)}")
        merge_rerun(matches[0], rerun)


# --- one run --------------------------------------------------------------------------------------

def exact_margin(exact_net, x: np.ndarray, label: int) -> Fraction:
    """``min_{j != label} f_label - f_j`` of one spike train ``x [T', *in]`` in exact arithmetic."""
    return exact_net.run(x).margin(label)[0]


def _config_of(document: dict) -> DatasetVerifyConfig:
    names = {f.name for f in fields(DatasetVerifyConfig)}
    try:
        return DatasetVerifyConfig(**{k: v for k, v in document["config"].items() if k in names})
    except (TypeError, ValueError) as error:
        raise ReportError(f"the config in verify.json is not a verify.dataset config: {error}") from None


def _load_model(document: dict, run_path: Path):
    from refsnn.io import load_model
    from refsnn.validation import sha256_file

    model = Path(document["model"])
    if not model.is_file():
        raise ReportError(f"{run_path}: its model {model} does not exist (run the report from the folder the "
                          "run was made in)")
    expected = document["identity"].get("model_sha256")
    if expected is not None and sha256_file(model) != expected:
        raise ReportError(f"{run_path}: the model file {model} is not the one the run verified (SHA-256 differs)")
    return load_model(model, dtype=np.float64)


def _bounds(net, sets: Sequence[InputSet], cleans: np.ndarray, labels: np.ndarray, method: str,
            options: ReportOptions) -> np.ndarray:
    """``[B, n_out - 1]`` sound margin lower bounds over the sets (one kind of set per run)."""
    from refsnn.bounds import margin_spec
    from refsnn.certify import set_margin_lower_bounds

    C = margin_spec(labels, net.n_outputs)
    if isinstance(sets[0], SpikeL0Set):  # any k flips per step: refsnn.certify's spike-any-k set
        if any(s.mask is not None and not np.all(s.mask == 1) for s in sets):
            raise ReportError("l0 sets with a mask of flippable bits have no bound method in refsnn.certify")
        k, per_step = sets[0].k, sets[0].per_step
        if any(s.k != k or s.per_step != per_step for s in sets):
            raise ReportError("the l0 sets of one run must share k and the budget")
        return set_margin_lower_bounds(net, method, C, options.iterations, any_k=(cleans, k, per_step))
    boxes = [s.box() for s in sets]
    x_lower = np.stack([b[0] for b in boxes], axis=1)
    x_upper = np.stack([b[1] for b in boxes], axis=1)
    return set_margin_lower_bounds(net, method, C, options.iterations, box=(x_lower, x_upper))


def _attack(net, name: str, config: DatasetVerifyConfig, sets, xs, labels, options: ReportOptions, start=None):
    """One attack on the images/trains ``xs`` of the sets; returns its ``AttackResult``."""
    from refsnn.attacks import PaperAttack, Strongest

    kind = config.input_set
    common = dict(kind=kind, convention=config.convention, seed=[config.seed, 3], T=config.horizon)
    attack = (PaperAttack(net, config.eps, **common) if name == "paper"
              else Strongest(net, config.eps, effort=options.effort, **common))
    extra = {} if start is None else {"start": start}
    if kind == "digital":
        maps = np.stack([s.rand_maps for s in sets], axis=1)
        return attack(np.stack(xs), labels, maps, **extra)
    trains = np.stack(xs, axis=1)
    allowed = None
    if isinstance(sets[0], BoxSet):  # refsnn.certify's l0 box: only its freed positions may flip
        allowed = np.stack([s.lower != s.upper for s in sets], axis=1)
    return attack(trains, labels, None, allowed, **extra)


def analyze_run(run: Run, options: ReportOptions, log=None) -> Tuple[dict, List[dict], List[str]]:
    """``(row, per-sample records, contradictions)`` of one run (see the module docstring)."""
    from refsnn.certify import margins_certified

    from .exact import ExactNetwork

    say = log or (lambda text: None)
    document, records = run.document, run.records
    config = _config_of(document)
    net = _load_model(document, run.path)
    exact_net = ExactNetwork(net)
    identity = document["identity"]
    n = len(records)
    try:
        indices, x, labels = run_samples(document["dataset"], document["split"], n, config,
                                         identity.get("indices"), options.data_dir)
    except (OSError, ValueError) as error:
        raise ReportError(f"{run.path}: cannot rebuild its samples: {' '.join(str(error).split())}") from None
    if [int(r["index"]) for r in records] != [int(i) for i in indices]:
        raise ReportError(f"{run.path}: its samples are not the ones its config selects (indices differ)")
    if [int(r["label"]) for r in records] != [int(v) for v in labels]:
        raise ReportError(f"{run.path}: its labels differ from the data set's")
    problems: List[str] = []
    sets, cleans = [], []
    for index, x_sample in zip(indices, x):
        input_set, clean = sample_set(x_sample, int(index), config)
        sets.append(input_set)
        cleans.append(clean)
    clean_pred = np.concatenate([net.predict(np.stack(cleans[b:b + options.batch_size], axis=1))
                                 for b in range(0, n, options.batch_size)])
    mismatch = [int(indices[i]) for i in range(n) if int(clean_pred[i]) != int(records[i]["clean_prediction"])]
    if mismatch:
        raise ReportError(f"{run.path}: the rebuilt sets do not match the run (clean predictions differ on samples "
                          f"{mismatch[:5]})")
    samples = [{"index": int(r["index"]), "label": int(r["label"]), "status": r["status"],
                "clean_correct": int(r["clean_prediction"]) == int(r["label"]), "seconds": r.get("seconds"),
                **({"merged_from": r["merged_from"]} if "merged_from" in r else {})} for r in records]

    # certified error: sound float64 bounds of refsnn.certify on exactly these sets
    started = time.perf_counter()
    for method in BOUND_METHODS:
        for b in range(0, n, options.batch_size):
            part = slice(b, b + options.batch_size)
            lower = _bounds(net, sets[part], np.stack(cleans[part], axis=1), labels[part], method, options)
            for sample, row, ok in zip(samples[part], lower, margins_certified(lower)):
                sample.setdefault("certified", {})[method] = bool(ok)
                sample.setdefault("margin_lower_bound", {})[method] = float(row.min())
    say(f"{run.path}: bounds {time.perf_counter() - started:.1f} s")

    # attacks: every image not proven robust, and a seeded sample of the proven-robust ones
    robust_positions = [i for i, s in enumerate(samples) if s["status"] == "robust"]
    rng = np.random.default_rng([config.seed, 7])
    check = sorted(rng.choice(robust_positions, size=min(options.robust_sample, len(robust_positions)),
                              replace=False).tolist()) if robust_positions else []
    targets = sorted([i for i, s in enumerate(samples) if s["status"] != "robust"] + check)
    attack_witness: Dict[int, np.ndarray] = {}
    outside = {name: 0 for name in ATTACKS}
    float_only = {name: 0 for name in ATTACKS}
    started = time.perf_counter()
    for b in range(0, len(targets), options.batch_size):
        part = targets[b:b + options.batch_size]
        part_sets = [sets[i] for i in part]
        xs = [x[i] if config.input_set == "digital" else cleans[i] for i in part]
        paper = None
        for name in ATTACKS:
            result = _attack(net, name, config, part_sets, xs, labels[part], options, start=paper)
            if name == "paper":
                paper = result
            for j, i in enumerate(part):
                broken = False
                if result.adv_pred[j] != labels[i]:
                    train = np.ascontiguousarray(result.spikes_adv[:, j])
                    if not sets[i].contains(train):
                        outside[name] += 1
                    elif exact_margin(exact_net, train, int(labels[i])) <= 0:
                        broken = True
                        attack_witness.setdefault(i, train)
                    else:
                        float_only[name] += 1
                samples[i].setdefault("attacked", True)
                samples[i][f"{name}_broken"] = broken
    say(f"{run.path}: attacks on {len(targets)} images {time.perf_counter() - started:.1f} s")
    for sample in samples:
        sample.setdefault("attacked", False)
        for name in ATTACKS:
            sample.setdefault(f"{name}_broken", False)  # proven robust: no attack can break it

    # consistency of the proven-robust sample: small sets are enumerated
    from .enumerate import enumerate_robust

    enumerated = 0
    for i in check:
        samples[i]["robust_check"] = True
        if sets[i].count() <= options.enumerate_max:
            enumerated += 1
            robust, _, witness = enumerate_robust(net, sets[i], int(labels[i]), max_members=options.enumerate_max)
            if not robust and witness is not None:
                train = np.ascontiguousarray(witness)
                if exact_margin(exact_net, train, int(labels[i])) <= 0:
                    attack_witness.setdefault(i, train)
                    samples[i]["enumeration_broken"] = True
    for i, sample in enumerate(samples):
        if sample["status"] == "robust" and (any(sample[f"{name}_broken"] for name in ATTACKS)
                                              or sample.get("enumeration_broken")):
            problems.append(f"{run.path}: sample {sample['index']} is proven robust, but an attack or the "
                            "enumeration found a member with exact margin <= 0 (attack broke a proven-robust image)")

    # witnesses of the "not robust" verdicts, replayed exactly
    witnesses = {"stored": 0, "attack": 0, "search": 0, "missing": 0, "failed": 0}
    shape = (config.horizon,) + tuple(net.input_shape)
    for i, (sample, record) in enumerate(zip(samples, records)):
        if sample["status"] != "not_robust":
            continue
        if record.get("witness"):
            try:
                train = unpack_spikes(record["witness"], shape)
            except ValueError as error:  # a verdict whose evidence is unreadable is not confirmed: a contradiction
                train, why = None, f"its stored witness cannot be read ({' '.join(str(error).split())})"
            else:
                why = "its stored witness is not a member of the set with exact margin <= 0"
            ok = train is not None and sets[i].contains(train) and exact_margin(exact_net, train, int(labels[i])) <= 0
            witnesses["stored" if ok else "failed"] += 1
            sample["witness_checked"] = "stored" if ok else "failed"
            if not ok:
                problems.append(f"{run.path}: sample {sample['index']}: {why}")
            continue
        if i in attack_witness:
            witnesses["attack"] += 1
            sample["witness_checked"] = "attack"
            continue
        found = _search_witness(net, exact_net, sets[i], int(labels[i]), config, int(sample["index"]), options)
        if isinstance(found, str):  # "robust": branch and bound now proves what the run said is not
            problems.append(f"{run.path}: sample {sample['index']} is recorded not robust, but branch and bound now "
                            "proves it robust")
            sample["witness_checked"] = "contradicted"
        elif found is None:
            witnesses["missing"] += 1
            sample["witness_checked"] = "not re-found"
        else:
            witnesses["search"] += 1
            sample["witness_checked"] = "search"
    for sample in samples:
        certified_by = [m for m in BOUND_METHODS if sample["certified"][m]]
        has_witness = sample.get("witness_checked") in ("stored", "attack", "search") or any(
            sample[f"{name}_broken"] for name in ATTACKS)
        if certified_by and has_witness:
            problems.append(f"{run.path}: sample {sample['index']} is certified by {', '.join(certified_by)} but has "
                            "a witness with exact margin <= 0 (unsound bound)")
        elif certified_by and sample["status"] == "not_robust":  # a sound bound and a not-robust verdict exclude each other
            problems.append(f"{run.path}: sample {sample['index']} is certified by {', '.join(certified_by)} but "
                            "recorded not robust by the verifier (the bound or the verifier is unsound)")
    say(f"{run.path}: witnesses {witnesses}")
    row = _row(run, samples, config, witnesses, outside, float_only, len(check), enumerated)
    return row, samples, problems


def _search_witness(net, exact_net, input_set, label: int, config: DatasetVerifyConfig, index: int,
                    options: ReportOptions):
    """A witness of a run that did not store it: ``verify.robust_bab`` again with the run's settings
    and seed for ``witness_time`` seconds. Returns the replayed witness, ``"robust"`` or None."""
    if options.witness_time <= 0:
        return None
    from .bab import BabConfig, robust_bab

    bab = BabConfig(time_limit=options.witness_time, solver=config.solver, attack_samples=config.attack_samples,
                    branching=config.branching, root_milp=config.root_milp)
    result = robust_bab(net, input_set, label, bab, rng=np.random.default_rng([config.seed, index, 1]))
    if result.status == "robust":
        return "robust"
    if result.status == "not_robust" and result.witness is not None:
        train = np.ascontiguousarray(result.witness)
        if input_set.contains(train) and exact_margin(exact_net, train, label) <= 0:
            return train
    return None


def _row(run: Run, samples: List[dict], config: DatasetVerifyConfig, witnesses: dict, outside: dict,
         float_only: dict, robust_checked: int, enumerated: int) -> dict:
    document = run.document
    n = len(samples)
    counts = {status: sum(s["status"] == status for s in samples) for status in ("robust", "not_robust", "unknown")}
    seconds = [float(s["seconds"]) for s in samples if s.get("seconds") is not None]
    return {"run": str(run.path), "model": document["model"], "dataset": document["dataset"],
            "split": document["split"], "eps": config.eps, "input_set": config.input_set, "sets": config.sets,
            "convention": config.convention, "robust_T": config.horizon, "seed": config.seed,
            "method": config.method, "time_limit": config.time_limit, "n": n,
            "clean_error": sum(not s["clean_correct"] for s in samples) / n,
            "certified_error": {m: 1 - sum(s["certified"][m] for s in samples) / n for m in BOUND_METHODS},
            "counts": counts,
            "exact_robust_error": counts["not_robust"] / n if counts["unknown"] == 0 else None,
            "exact_robust_error_bracket": [counts["not_robust"] / n, 1 - counts["robust"] / n],
            "attack_error": {name: sum(s[f"{name}_broken"] for s in samples) / n for name in ATTACKS},
            "attacked": sum(s["attacked"] for s in samples), "robust_checked": robust_checked,
            "robust_enumerated": enumerated, "attack_outside_set": outside, "attack_float_only": float_only,
            "witnesses": witnesses,
            "median_seconds": float(np.median(seconds)) if seconds else None,
            "worst_seconds": max(seconds) if seconds else None,
            "command": document["command"], "machine": document.get("machine"), "merged": run.merged}


# --- rendering ------------------------------------------------------------------------------------

def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _name(row: dict) -> str:
    model = Path(row["model"])
    model_name = f"{model.parent.parent.name}/{model.parent.name}" if model.stem == "model" else model.stem
    return (f"{model_name}, {row['dataset']}, {row['input_set']} eps {row['eps']:g}, T' {row['robust_T']}, "
            f"{row['sets']} sets, n {row['n']}" + (" (merged)" if any(m["indices"] for m in row["merged"]) else ""))


def render_markdown(rows: Sequence[dict], problems: Sequence[str], options: ReportOptions,
                    header: str = "") -> str:
    """The report: one table row per run, then each run's command, machine, merges and checks."""
    lines = ["# Exact vs certified vs attacked robustness", ""]
    if header:
        lines += [header.rstrip(), ""]
    lines += ["Errors in % of each run's n samples, all on the run's own sets. Certified: sound float64 bounds "
              "(`refsnn.certify`) on the set's enclosing box, every margin bound > 0; exact: `verify.dataset`'s "
              "verdicts (a bracket `[not robust, 1 - robust]` while some image is unknown); attacks: the "
              "paper attack and the ensemble (`strongest`), counted only with a member of the set whose exact "
              "margin is <= 0. Seconds: the verifier's time per image.", "",
              "| run | clean err. | S-IBP | S-CROWN | best | alpha | exact robust err. | robust / not / unknown | "
              "paper attack | ensemble | median s | worst s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        c = row["counts"]
        exact = (_pct(row["exact_robust_error"]) if row["exact_robust_error"] is not None else
                 f"[{_pct(row['exact_robust_error_bracket'][0])}, {_pct(row['exact_robust_error_bracket'][1])}]")
        certified = " | ".join(_pct(row["certified_error"][m]) for m in BOUND_METHODS)
        lines.append(f"| {_name(row)} | {_pct(row['clean_error'])} | {certified} | {exact} | "
                     f"{c['robust']} / {c['not_robust']} / {c['unknown']} | {_pct(row['attack_error']['paper'])} | "
                     f"{_pct(row['attack_error']['strongest'])} | {_fmt_s(row['median_seconds'])} | "
                     f"{_fmt_s(row['worst_seconds'])} |")
    lines += ["", "An attack cannot break a set the verifier proved robust (every member has a positive exact "
              "margin), so attacks run only on the images not proven robust, plus a seeded sample of up to "
              f"{options.robust_sample} proven-robust images as a consistency check (sets of at most "
              f"{options.enumerate_max} members there are also enumerated).", ""]
    if problems:
        lines += ["**WARNING: contradictions found (a bound, the verifier or an attack is unsound):**", ""]
        lines += [f"- {p}" for p in problems] + [""]
    for row in rows:
        w = row["witnesses"]
        replayed = w["stored"] + w["attack"] + w["search"]
        lines += [f"## {_name(row)}", "", f"- run: `{row['run']}`; command: `{row['command']}`",
                  f"- machine: {_machine(row['machine'])}; method {row['method']}, time limit {row['time_limit']} s "
                  "per image"]
        for merge in row["merged"]:
            lines.append(f"- merged: {len(merge['indices'])} decided verdicts from `{merge['path']}` "
                         f"(samples {', '.join(map(str, merge['indices'])) or 'none'}; command `{merge['command']}`); "
                         "their seconds are the rerun's")
        lines.append(f"- witnesses of the {row['counts']['not_robust']} not-robust verdicts replayed exactly "
                     f"(member, margin <= 0): {replayed} ({w['stored']} stored in verify.json, {w['attack']} from "
                     f"an attack, {w['search']} found again by branch and bound); {w['missing']} not found again "
                     f"within the witness time; {w['failed']} failed")
        lines.append(f"- attacks on {row['attacked']} images ({row['robust_checked']} of them proven robust, "
                     f"{row['robust_enumerated']} of those enumerated): no proven-robust image broken"
                     if not any(row["run"] in p and "proven robust" in p for p in problems) else
                     f"- attacks on {row['attacked']} images: a PROVEN-ROBUST IMAGE WAS BROKEN (see the warning)")
        off = {k: v for k, v in row["attack_outside_set"].items() if v}
        flt = {k: v for k, v in row["attack_float_only"].items() if v}
        if off or flt:
            lines.append(f"- not counted: attack results outside the set {off or 0}, misclassified in float64 "
                         f"only (exact margin > 0) {flt or 0}")
        lines.append("")
    return "\n".join(lines)


def _fmt_s(value: Optional[float]) -> str:
    return "-" if value is None else (f"{value:.2f}" if value < 10 else f"{value:.0f}")


def _machine(machine) -> str:
    if not isinstance(machine, dict):
        return str(machine)
    return f"{machine.get('platform')}, {machine.get('cpu_count')} CPUs, Python {machine.get('python')}, " \
           f"workers {machine.get('workers')}"


# --- command line ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``python -m verify.report`` parser."""
    parser = cli.make_parser(PROG, "Exact vs certified vs attacked robustness of verify.dataset runs, on the "
                                   "runs' own sets.")
    add = parser.add_argument
    add("runs", nargs="+", metavar="RUN_DIR", help="verify.dataset output folders (each with verify.json)")
    add("--merge", action="append", default=[], metavar="RERUN_DIR",
        help="a rerun of some samples of one RUN_DIR (same model, data, eps, set and seed): its decided verdicts "
             "replace the run's (repeatable)")
    add("--out", default=None, metavar="FILE.md",
        help=f"output file, a Markdown report; its .json goes beside it; its folder must exist "
             f"(default: {DEFAULT_OUT}, folder created)")
    add("--overwrite", action="store_true",
        help="replace an existing report FILE.md and its FILE.json (without it an existing one is refused)")
    add("--header", default=None, metavar="FILE",
        help="Markdown text put under the report's title (default: none)")
    add("--robust-sample", type=cli.nonnegative_int, default=ReportOptions.robust_sample,
        help="proven-robust images per run also attacked as a consistency check (seeded)")
    add("--enumerate-max", type=cli.nonnegative_int, default=ReportOptions.enumerate_max,
        help="enumerate the sets of those images with at most this many members")
    add("--witness-time", type=cli.nonnegative_float, default=ReportOptions.witness_time, metavar="SECONDS",
        help="seconds of branch and bound to find again the witness of a not-robust verdict that the run did not "
             "store and no attack found (0: none)")
    add("--iterations", type=cli.nonnegative_int, default=ReportOptions.iterations,
        help="gradient steps of the alpha bounds")
    add("--effort", type=cli.positive_float, default=ReportOptions.effort,
        help="step-count scale of the ensemble attack's components")
    cli.add_batch_size(parser, ReportOptions.batch_size, detail=" (bounds and attacks)")
    add("--data-dir", metavar="FOLDER", help=f"{cli.VOCABULARY['--data-dir']} (default: refsnn.data's lookup order)")
    cli.add_progress(parser, bars=False)
    return parser


def _out_file(value: Optional[str], overwrite: bool) -> Path:
    """The report file (nothing created): ``--out`` must name ``FILE.md`` in an existing writable
    folder (the default's folder is created when the report is written); an existing report or its
    ``.json`` is refused unless ``overwrite``."""
    path = cli.check_out_file(str(DEFAULT_OUT) if value is None else value, "--out")
    if path.suffix.lower() != ".md":
        raise ReportError(f"--out {path}: the report is a Markdown file; name it FILE.md")
    folder = path.parent if str(path.parent) else Path(".")
    if value is not None and not folder.is_dir():
        raise ReportError(f"--out {path}: its folder {folder} does not exist")
    if not overwrite:
        existing = [p for p in (path, path.with_suffix(".json")) if p.exists()]
        if existing:
            raise ReportError(f"--out {path}: {' and '.join(map(str, existing))} already exist"
                              f"{'s' if len(existing) == 1 else ''}; choose another --out or pass --overwrite "
                              "to replace the report")
    return path


@cli.run_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_intermixed_args(argv)  # RUN_DIR --merge RERUN_DIR RUN_DIR ...
    options = ReportOptions(robust_sample=args.robust_sample, enumerate_max=args.enumerate_max,
                            witness_time=args.witness_time, iterations=args.iterations, effort=args.effort,
                            batch_size=args.batch_size, data_dir=args.data_dir)
    out = _out_file(args.out, args.overwrite)  # before the work, not after it
    header = ""
    if args.header is not None:
        try:
            header = Path(args.header).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ReportError(f"--header {args.header}: {' '.join(str(error).split())}") from None
    if len({str(Path(p).resolve()) for p in args.runs}) != len(args.runs):
        raise ReportError("a RUN_DIR is given twice")
    runs = [read_run(path) for path in args.runs]
    reruns = [read_run(path) for path in args.merge]
    attach_merges(runs, reruns)
    log = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    rows, problems, per_run = [], [], []
    started = time.perf_counter()
    for run in runs:
        row, samples, found = analyze_run(run, options, log)
        rows.append(row)
        problems += found
        per_run.append({"run": str(run.path), "samples": samples})
    text = render_markdown(rows, problems, options, header)
    document = {"command": "python -m verify.report " + " ".join(shlex.quote(a) for a in argv),
                "options": {k: getattr(options, k) for k in (f.name for f in fields(ReportOptions))},
                "rows": rows, "problems": problems, "samples": per_run,
                "seconds_total": round(time.perf_counter() - started, 3),
                "machine": {"platform": platform.platform(), "python": platform.python_version()}}
    out.parent.mkdir(parents=True, exist_ok=True)  # the default's folder, only once there is a report
    atomic_write_text(out, text + "\n")
    atomic_write_text(out.with_suffix(".json"), json.dumps(document, indent=1) + "\n")
    for row in rows:
        c = row["counts"]
        print(f"{_name(row)}: exact {c['robust']}/{c['not_robust']}/{c['unknown']}, certified best "
              f"{_pct(row['certified_error']['best'])} %, ensemble attack {_pct(row['attack_error']['strongest'])} %")
    print(f"wrote {out} and {out.with_suffix('.json').name}")
    for problem in problems:
        print(f"UNSOUND: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
