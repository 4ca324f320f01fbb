"""``python -m refsnn.attack``: the paper's Table 2 protocol (original error vs attack error).

Example (the paper's MNIST FC eps)::

    python -m refsnn.attack --model runs/natural/model.h5 --model2 runs/robust/model.h5 \\
        --dataset mnist --n 300 --eps 0.104,0.124,0.140,0.154 --attack paper,strongest

Prints one table per attack in the layout of the paper's Table 2 (eps, original error, attack
error per model, difference of the two models' attack errors) and writes ``table.csv``,
``table.json`` (every setting, the sample indices, the machine, the command) and ``table.md``
into the ``--out`` folder (default ``runs/attack/<dataset>-<model name>-n<n>-seed<seed>-<key>``, the key
a hash of every argument that changes the tables and of the models' SHA-256). A different result
already in ``--out`` is refused unless ``--overwrite``; the same result may be rewritten. The errors of the
tables are measured on the evaluation rand maps (one fixed seeded draw shared by every model,
attack and eps); the ``*_fresh`` columns of the CSV/JSON re-score the same images on fresh
draws. See docs/ATTACKS.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .io import atomic_write_text
from .parallel import add_cluster_arguments, dask_client
from .runlock import guard_result, result_key
from .validation import sha256_file
from .attacks.protocol import (PROTOCOL_ATTACKS, ProtocolConfig, make_attack, markdown_table, rows_to_dicts,
                               run_protocol, select_samples)

EVENT_DATASETS = ("nmnist",)
#: How the attack error of rate-coded inputs is scored (docs/REPRODUCTION.md, "Scoring"): on the draw
#: the attack judged success on (the paper's: the authors' code stops at the first misclassifying draw
#: it sampled itself), or re-scored on fresh draws.
SCORINGS = ("attack-draw", "fresh")


def _attack_list(text: str):
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [name for name in names if name not in PROTOCOL_ATTACKS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"--attack takes a comma-separated list of {PROTOCOL_ATTACKS}, got {text!r}")
    if "strongest" in names and "paper" in names:
        names = ["paper"] + [name for name in names if name != "paper"]  # strongest reuses the paper result
    return names


PROG = "python -m refsnn.attack"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m refsnn.attack`` parser (shared vocabulary of ``refsnn.cli``)."""
    from . import cli

    parser = cli.make_parser(PROG, "Table 2 protocol: original and attack error of one or two models at several eps.")
    add = parser.add_argument
    cli.add_model(parser, detail="; e.g. from python -m refsnn.train")
    add("--model2", metavar="FILE", help="second model, shown side by side (e.g. the robustly trained one)")
    add("--name", default=None, help="label of --model in the tables (default: its file's parent folder)")
    add("--name2", default=None, help="label of --model2 (default: its file's parent folder)")
    cli.add_dataset(parser, required=True)
    cli.add_n(parser, 300, detail=" (fixed seeded selection)")
    cli.add_eps(parser, [0.104, 0.124, 0.140, 0.154], several=True, detail=" (attack radii)")
    add("--attack", type=_attack_list, default=["paper"], help=f"comma-separated, from {PROTOCOL_ATTACKS}")
    add("--convention", choices=("paper", "authors"), default="paper",
        help="digital l-inf radius: paper = eps/2 (the bounds' set), authors = eps")
    cli.add_T(parser, None, detail=" (default: the model's training T, else 10)")
    cli.add_seed(parser, detail=" (selection, rand maps and attacks)")
    add("--fresh-draws", type=cli.nonnegative_int, default=5,
        help="fresh rand-map draws to re-score digital images (0: off)")
    add("--scoring", choices=SCORINGS, default="attack-draw",
        help="draw the attack error is scored on, for the headline table of digital inputs: attack-draw = the "
             "evaluation rand maps the attack judged success on (the paper's, as the authors' attack code), "
             "fresh = the mean over --fresh-draws fresh draws; the other is printed below it, labelled")
    add("--steps", type=cli.positive_int, help="override the iterations of paper/pgd/greedy "
                                                "(default: each attack's own)")
    add("--effort", type=cli.positive_float, default=1.0, help="strongest: scale of its components' step counts")
    cli.add_batch_size(parser, 100, detail=" (one attack chunk)")
    add("--dtype", choices=("float32", "float64"), help="compute dtype (default: the model's)")
    cli.add_out(parser, "runs/attack/<dataset>-<model name>-n<n>-seed<seed>-<key of all arguments and the models>; "
                        "writes table.csv, table.json, table.md")
    add("--overwrite", action="store_true",
        help="replace a different result already in --out (a rerun of the same result is always allowed)")
    cli.add_progress(parser)
    add_cluster_arguments(parser)
    return parser


def _load(path: str, dtype):
    from .io import load_model, read_metadata

    net = load_model(path, dtype=dtype)
    try:
        metadata = read_metadata(path)
    except Exception:  # metadata are informative only
        metadata = {}
    return net, metadata


def _default_name(path: str) -> str:
    p = Path(path)
    return p.parent.name if p.stem == "model" and p.parent.name else p.stem


def _model_T(metadata: dict) -> Optional[int]:
    config = metadata.get("config") if isinstance(metadata, dict) else None
    if isinstance(config, dict) and isinstance(config.get("T"), int):
        return config["T"]
    return None


def result_identity(args: argparse.Namespace, names: Sequence[str], paths: Sequence[str], models: dict,
                    T: int) -> dict:
    """Every argument that changes the tables, and each model file's SHA-256: two runs write the same
    ``--out`` only when these agree (``refsnn.runlock.guard_result``). Not in it: the workers and the
    data folder. The batch size is in it: chunk ``c`` draws its attack seed from ``[seed, 3, c]``."""
    return {"models": [{"name": name, "file": Path(path).name, "sha256": sha256_file(path),
                        "dtype": models[name].dtype.name} for name, path in zip(names, paths)],
            "dataset": args.dataset, "split": "test", "n": args.n, "eps": list(args.eps), "attacks": list(args.attack),
            "convention": args.convention, "T": T, "seed": args.seed, "fresh_draws": args.fresh_draws,
            "steps": args.steps, "effort": args.effort, "batch_size": args.batch_size,
            # only when not the default, so that the keys of results written before the flag stay valid
            **({"scoring": args.scoring} if args.scoring != "attack-draw" else {})}


def machine_description() -> dict:
    import os

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "load_average_at_end": list(os.getloadavg())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m refsnn.attack``; returns the exit code (2 with one stderr line for bad input)."""
    from .cli import run_main

    return run_main(PROG)(_main)(argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli
    from .data import load_dataset, to_time_major

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)

    models, metadata = {}, {}
    names = [args.name or _default_name(args.model)]
    paths = [args.model]
    if args.model2:
        names.append(args.name2 or _default_name(args.model2))
        paths.append(args.model2)
        if names[0] == names[1]:
            names = [names[0] + " (1)", names[1] + " (2)"]
    for name, path in zip(names, paths):
        try:
            models[name], metadata[name] = _load(path, args.dtype)
        except (OSError, ValueError) as error:
            parser.error(f"cannot load model {path}: {error}")
    stored_T = {_model_T(metadata[name]) for name in names} - {None}
    T = args.T if args.T is not None else (stored_T.pop() if len(stored_T) == 1 else 10)
    identity = result_identity(args, names, paths, models, T)
    out = cli.check_out_dir(Path(args.out) if args.out else cli.default_out(
        "attack", args.dataset, names[0], f"n{args.n}", f"seed{args.seed}", result_key(identity)))
    kind = "spike" if args.dataset in EVENT_DATASETS else "digital"
    if args.scoring == "fresh" and (kind == "spike" or not args.fresh_draws):
        parser.error("--scoring fresh needs rate-coded inputs and --fresh-draws >= 1 "
                     f"(dataset {args.dataset}, --fresh-draws {args.fresh_draws})")
    guard_result(out / "table.json", identity, args.overwrite)  # before the work, not after it

    x_all, y_all = load_dataset(args.dataset, "test", data_dir=args.data_dir, T=T)
    try:
        indices = select_samples(len(y_all), args.n, args.seed)
    except ValueError as error:
        parser.error(str(error))
    labels = np.asarray(y_all[indices], dtype=np.int64)
    if kind == "digital":
        x = np.asarray(x_all[indices], dtype=np.float64)
    else:
        x = to_time_major(x_all[indices])
    for name, net in models.items():
        expected = tuple(x.shape[1:]) if kind == "digital" else tuple(x.shape[2:])
        if tuple(net.input_shape) != expected:
            parser.error(f"model {name} expects inputs {net.input_shape}, the dataset gives {expected}")

    config = ProtocolConfig(attacks=args.attack, eps=args.eps, kind=kind, convention=args.convention, T=T,
                            seed=args.seed, fresh_draws=args.fresh_draws, batch_size=args.batch_size,
                            steps=args.steps, effort=args.effort)
    from .progress import Progress, compile_notice

    compile_notice(quiet=args.quiet)
    # One bar over every (model, eps, attack) pass of every sample, so its ETA is the whole table's.
    bar = Progress(len(models) * len(config.eps) * len(config.attacks) * int(labels.size), "attack", "sample",
                   quiet=args.quiet, bar=not args.no_progress)

    def progress_factory(description, total):
        import types

        bar.set_description(description)
        return types.SimpleNamespace(update=bar.update, close=lambda: None)   # the one bar stays open

    started = time.perf_counter()
    try:
        with dask_client(args.workers, args.scheduler) as client, bar:
            rows = run_protocol(models, x, labels, config, progress_factory=progress_factory, scheduler=client)
    except ImportError as error:
        parser.error(str(error))
    seconds = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    command = "python -m refsnn.attack " + " ".join(shlex.quote(a) for a in argv)
    measured_on = ("the evaluation rand maps (one seeded draw shared by every model, attack and eps)"
                   if kind == "digital" else "the spike inputs")
    if kind == "spike":
        threat = ("spike l0 budget: round(size * eps) changed bits per sample, size = T * prod(input shape) "
                  "(shown next to eps); per iteration of the paper attack size * eps / 2 (FC) or / 6 (CONV)")
    elif args.convention == "paper":
        threat = "digital l-inf radius = eps/2 (convention 'paper', the bounds' set)"
    else:
        threat = "digital l-inf radius = eps (convention 'authors')"
    sections = [f"# Table 2 protocol: {args.dataset}, n = {args.n}, T = {T}",
                f"Command: `{command}`", "",
                f"Errors in %, measured on {measured_on}; {threat}."]
    if kind == "digital" and args.scoring == "fresh":
        sections[-1] = (f"Errors in %, the mean over {args.fresh_draws} fresh rand-map draws of each (clean or "
                        f"adversarial) image (`--scoring fresh`); {threat}.")
    for attack in args.attack:
        fresh_first = kind == "digital" and args.scoring == "fresh"
        sections += ["", f"## attack: {attack}", "", markdown_table(rows, attack, names, fresh=fresh_first)]
        if kind == "digital" and args.fresh_draws and not fresh_first:
            sections += ["", f"Same adversarial images re-scored on {args.fresh_draws} fresh rand-map draws (mean; "
                             "`--scoring fresh`):", "", markdown_table(rows, attack, names, fresh=True)]
        elif fresh_first:
            sections += ["", f"Scored on {measured_on} (`--scoring attack-draw`, the paper's):", "",
                         markdown_table(rows, attack, names)]
    markdown = "\n".join(sections) + "\n"
    print(markdown)

    records = rows_to_dicts(rows)
    buffer = io.StringIO()
    fields = [f for f in records[0] if f not in ("broken_by", "adv_wrong")]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    summary = {"identity": identity, "command": command, "dataset": args.dataset, "kind": kind, "n": args.n, "T": T,
               "sample_indices": indices.tolist(),
               "selection": f"sorted(default_rng([{args.seed}, 0]).permutation({len(y_all)})[:{args.n}])",
               "evaluation_maps": f"draw_rand_maps(default_rng([{args.seed}, 1]), T, images.shape)"
                                  if kind == "digital" else None,
               "tables_use": "evaluation rand maps" if kind == "digital" else "spike inputs",
               "scoring": args.scoring if kind == "digital" else "spike inputs",
               "protocol": {k: (list(v) if isinstance(v, (list, tuple)) else v)
                            for k, v in vars(config).items()},
               "models": {name: {"path": path, "sha256": sha256_file(path), "metadata": _brief(metadata[name])}
                          for name, path in zip(names, paths)},
               "attack_configs": {name: make_attack(name, next(iter(models.values())), config.eps[0], config,
                                                    [args.seed, 3, 0]).config() for name in args.attack},
               "rows": records, "seconds_total": seconds, "machine": machine_description()}
    # table.json first: it carries the identity that guard_result compares on the next run
    atomic_write_text(out / "table.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    atomic_write_text(out / "table.csv", buffer.getvalue())
    atomic_write_text(out / "table.md", markdown)
    print(f"wrote {out / 'table.md'}, {out / 'table.csv'}, {out / 'table.json'} ({seconds:.0f} s)")
    return 0


def _brief(metadata: dict) -> dict:
    """Model metadata without the per-epoch history (kept in the training run's own files)."""
    return {key: value for key, value in metadata.items() if key != "history"}


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
