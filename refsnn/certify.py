"""``python -m refsnn.certify``: certified robust accuracy of a model file on a test split.

A sample is *certified* when it is correctly classified on its clean encoding (horizon T') AND
every margin lower bound ``f_y - f_j`` over the input set is STRICTLY positive (a bound of 0 is a
tie, not a certificate). The *certified robust error* of the paper's Figure 6 is the fraction of
samples with some margin lower bound ``<= 0``. All bounds are sound and float64.

Input sets (``--set``):

- ``digital``: the l-inf set through one seeded draw of rand maps per sample (``--convention
  paper``: ``xhat +- eps/2``; ``authors``: ``+- eps``); holds for that draw only. ``--encoder-draws
  N --confidence-alpha A`` adds, for the first ``--encoder-images`` samples, a Clopper-Pearson statement over
  N fresh draws (``refsnn.encoder_cert``, docs/CERTIFY.md);
- ``spike``: the paper's l0 set (``round(size * eps)`` freed positions per step, seeded; ``--l0-mode
  authors``: each bit free with probability eps); holds for those positions only;
- ``spike-any-k``: EVERY spike train within ``--k`` flips of the clean one per time step
  (``--budget total``: in total), ``refsnn.l0``.

Methods (``--method``, comma list): ``ibp``, ``crown-ibp`` (the paper's S-CROWN), ``best``,
``alpha`` (optimized relaxations, ``--iterations``), ``crown`` (full S-CROWN, small nets).
Image data sets are rate-encoded for the spike sets with the sample's own seed.

Every sample draws its randomness from ``SeedSequence([seed, index])``, so results do not depend
on how samples are split into chunks; ``--workers N`` / ``--scheduler ADDRESS`` run the chunks on
Dask (``refsnn.parallel.map_chunks``) with results identical to the serial run.

    python -m refsnn.certify --model runs/mnist-fc/model.h5 --dataset mnist --eps 0.12 --n 1000 --out runs/cert

writes ``certify.json``, ``certify.csv``, ``certify.md`` and ``certify_samples.json`` (per-sample
certificates) into the ``--out`` folder (default ``runs/certify/<key arguments>``).
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .bounds import compute_bounds, margin_spec
from .data import load_dataset
from .encoders import rate_encode
from .input_sets import DEFAULT_ROBUST_T, digital_linf_set, spike_l0_set
from .io import atomic_write_text
from .runlock import guard_result, result_key
from .validation import sha256_file

EVENT_DATASETS = ("nmnist",)
INPUT_SETS = ("digital", "spike", "spike-any-k")
METHODS = ("ibp", "crown-ibp", "best", "alpha", "crown")
DEFAULT_METHODS = ("ibp", "crown-ibp", "best")


@dataclass
class CertifyConfig:
    """One certification run; saved with its results."""

    model: str
    dataset: str = "mnist"
    split: str = "test"
    eps: float = 0.12
    input_set: str = "digital"
    convention: str = "paper"
    l0_mode: str = "paper"
    horizon: int = DEFAULT_ROBUST_T
    n: int = 1000
    seed: int = 0
    batch_size: int = 100
    data_dir: Optional[str] = None
    k: int = 1
    budget: str = "per-step"
    iterations: int = 20
    encoder_draws: int = 0
    encoder_images: int = 10
    alpha: float = 0.001


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of sample ``index`` (independent of chunking): ``SeedSequence([seed, index, stream])``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def _clean_spikes(net, x: np.ndarray, indices: Sequence[int], config: CertifyConfig) -> np.ndarray:
    """Clean trains ``[T', B, *in]``: frames of event data, or a per-sample rate encoding of images."""
    steps = config.horizon
    if x.ndim == len(net.input_shape) + 2:   # frames [B, T, *in]
        if x.shape[1] < steps:
            raise ValueError(f"the data has {x.shape[1]} frames per sample, fewer than the horizon T'={steps}")
        return np.ascontiguousarray(np.swapaxes(x, 0, 1)[:steps]).astype(np.uint8)
    trains = [rate_encode(x[i:i + 1], steps, sample_rng(config.seed, index))[0] for i, index in enumerate(indices)]
    return np.concatenate(trains, axis=1)


def margin_lower_bounds(net, method: str, x_lower: np.ndarray, x_upper: np.ndarray, C: np.ndarray,
                        iterations: int = 20) -> np.ndarray:
    """Sound float64 lower bounds ``[B, S]`` of ``C f`` over the boxes ``[x_lower, x_upper]``
    (``[T', B, *in]``) by ``method`` (one of ``METHODS``; ``alpha``: ``iterations`` gradient steps)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "alpha":
        from .alpha import alpha_bounds
        return alpha_bounds(net, x_lower, x_upper, C, iterations=iterations).lower
    return compute_bounds(net, x_lower, x_upper, method=method, C=C)[0]


def set_margin_lower_bounds(net, method: str, C: np.ndarray, iterations: int = 20, *,
                            box: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                            any_k: Optional[Tuple[np.ndarray, int, bool]] = None) -> np.ndarray:
    """Sound float64 lower bounds ``[B, S]`` of ``C f`` over one batch of input sets, given as
    exactly one of: ``box = (x_lower, x_upper)`` (``[T', B, *in]``; :func:`margin_lower_bounds`) or
    ``any_k = (clean, k, per_step)``, every spike train within ``k`` flips of ``clean``
    (``[T', B, *in]`` 0/1) per time step or in total (``refsnn.l0.anyk_bounds``)."""
    if (box is None) == (any_k is None):
        raise ValueError("give exactly one input set: box=(x_lower, x_upper) or any_k=(clean, k, per_step)")
    if any_k is not None:
        from .l0 import anyk_bounds
        clean, k, per_step = any_k
        return anyk_bounds(net, clean, k, C, method, per_step=per_step, iterations=iterations)[0]
    return margin_lower_bounds(net, method, box[0], box[1], C, iterations)


def margins_certified(lower: np.ndarray) -> np.ndarray:
    """``[B]`` bool: every margin lower bound of the row is STRICTLY positive (0 is a tie, no certificate)."""
    return np.all(np.asarray(lower) > 0.0, axis=-1)


def certify_chunk(net, x: np.ndarray, labels: np.ndarray, indices: Sequence[int], config: CertifyConfig,
                  methods: Sequence[str]) -> List[Dict[str, object]]:
    """Per-sample certificates of one chunk (a top-level, picklable function of its arguments).

    ``x``/``labels``: the chunk's samples (images ``[B, *in]`` or frames ``[B, T, *in]``);
    ``indices``: their positions in the split (they seed the randomness). Returns one dict per
    sample: ``index``, ``label``, ``clean_correct``, and per method ``certified`` (bool: correct and
    every margin bound > 0), ``margin_ok``, ``min_margin_lower`` and ``seconds`` (the chunk's time
    divided by its size).
    """
    indices = [int(i) for i in indices]
    labels = np.asarray(labels)
    batch = len(indices)
    steps = config.horizon
    C = margin_spec(labels, net.n_outputs)
    if config.input_set == "digital":
        maps = [sample_rng(config.seed, index).random((steps, 1) + x.shape[1:]) for index in indices]
        rand_maps = np.concatenate(maps, axis=1)
        box = digital_linf_set(x, config.eps, rand_maps, convention=config.convention)
        clean, x_lower, x_upper = box.x_clean, box.x_lower, box.x_upper
    else:
        clean = _clean_spikes(net, x, indices, config)
        if config.input_set == "spike":
            parts = [spike_l0_set(clean[:, i:i + 1], config.eps, sample_rng(config.seed, index, 1), mode=config.l0_mode)
                     for i, index in enumerate(indices)]
            x_lower = np.concatenate([p.x_lower for p in parts], axis=1)
            x_upper = np.concatenate([p.x_upper for p in parts], axis=1)
    correct = net.predict(clean) == labels
    records = [{"index": index, "label": int(labels[i]), "clean_correct": bool(correct[i])}
               for i, index in enumerate(indices)]
    for method in methods:
        started = time.perf_counter()
        if config.input_set == "spike-any-k":
            lower = set_margin_lower_bounds(net, method, C, config.iterations,
                                            any_k=(clean, config.k, config.budget == "per-step"))
        else:
            lower = set_margin_lower_bounds(net, method, C, config.iterations, box=(x_lower, x_upper))
        seconds = (time.perf_counter() - started) / batch
        certified = margins_certified(lower)
        for i, record in enumerate(records):
            ok = bool(certified[i])
            record[method] = {"certified": ok and record["clean_correct"], "margin_ok": ok,
                              "min_margin_lower": float(lower[i].min()), "seconds": seconds}
    if config.encoder_draws > 0 and config.input_set == "digital":
        from .encoder_cert import certify_encoder
        for i, index in enumerate(indices):
            if index < config.encoder_images:
                cert = certify_encoder(net, x[i], int(labels[i]), config.eps, config.encoder_draws,
                                       sample_rng(config.seed, index, 2), horizon=steps, alpha=config.alpha,
                                       method="best", convention=config.convention)
                records[i]["encoder"] = cert.as_dict()
    return records


def _chunk_task(net, config: CertifyConfig, methods: Sequence[str], chunk):
    indices, x, labels = chunk
    return certify_chunk(net, x, labels, indices, config, methods)


def certify_samples(net, x: np.ndarray, labels: np.ndarray, config: CertifyConfig, methods: Sequence[str] = DEFAULT_METHODS,
                    chunk_size: Optional[int] = None, workers: Optional[int] = None, scheduler=None,
                    progress=None) -> List[Dict[str, object]]:
    """Per-sample records of all samples, through ``refsnn.parallel.map_chunks`` (in sample order)."""
    from .parallel import chunk_ranges, map_chunks

    labels = np.asarray(labels)
    n = len(labels)
    chunk_size = config.batch_size if chunk_size is None else chunk_size
    chunks = [(list(r), x[r.start:r.stop], labels[r.start:r.stop]) for r in chunk_ranges(n, chunk_size)]
    task = functools.partial(_chunk_task, net, config, tuple(methods))
    results = map_chunks(task, chunks, workers=workers, scheduler=scheduler, progress=progress)
    return [record for chunk in results for record in chunk]


def summarize(records: List[Dict[str, object]], methods: Sequence[str]) -> Dict[str, object]:
    """Certified accuracy/error, mean margin lower bound and time per method; clean accuracy."""
    n = len(records)
    correct = np.array([r["clean_correct"] for r in records], bool)
    result: Dict[str, object] = {"n": n, "clean_accuracy": float(correct.mean()) if n else float("nan")}
    for method in methods:
        certified = np.array([r[method]["certified"] for r in records], bool)
        margin_ok = np.array([r[method]["margin_ok"] for r in records], bool)
        lowers = np.array([r[method]["min_margin_lower"] for r in records])
        result[method] = {"certified_accuracy": float(certified.mean()),
                          "certified_error": float(1.0 - margin_ok.mean()),
                          "mean_min_margin_lower": float(lowers.mean()),
                          "seconds_per_sample": float(sum(r[method]["seconds"] for r in records) / max(n, 1))}
    encoder = [r["encoder"] for r in records if "encoder" in r]
    if encoder:
        result["encoder"] = {"images": len(encoder), "draws": encoder[0]["draws"], "alpha": encoder[0]["alpha"],
                             "probability_lower_bounds": [e["probability_lower_bound"] for e in encoder],
                             "mean_probability_lower_bound": float(np.mean([e["probability_lower_bound"]
                                                                            for e in encoder]))}
    return result


def certify_dataset(net, x: np.ndarray, labels: np.ndarray, config: CertifyConfig,
                    methods: Sequence[str] = DEFAULT_METHODS, **kwargs) -> Dict[str, object]:
    """Summary (``summarize``) of ``certify_samples``; ``kwargs`` go to ``certify_samples``."""
    return summarize(certify_samples(net, x, labels, config, methods, **kwargs), methods)


def set_label(config: Dict[str, object]) -> str:
    """The input set as printed and written: spike-any-k by its k (eps has no effect on that set),
    the others by eps and their convention or l0 mode."""
    if config["input_set"] == "spike-any-k":
        return f"spike-any-k k={config['k']} ({config['budget']})"
    detail = config["convention"] if config["input_set"] == "digital" else config["l0_mode"]
    return f"{config['input_set']} eps={config['eps']:g} ({detail})"


def render_markdown(record: Dict[str, object], methods: Sequence[str]) -> str:
    config, result = record["config"], record["result"]
    lines = [f"# Certified accuracy: {config['model']}", "",
             f"{config['dataset']} {config['split']}, first {result['n']} samples, {set_label(config)}, T'={config['horizon']}, "
             f"seed {config['seed']}. Clean accuracy at T': {100 * result['clean_accuracy']:.1f}%.", "",
             "| method | certified accuracy % | certified error % | mean min margin lower bound | s/sample |",
             "|---|---|---|---|---|"]
    for method in methods:
        row = result[method]
        lines.append(f"| {method} | {100 * row['certified_accuracy']:.1f} | {100 * row['certified_error']:.1f} | "
                     f"{row['mean_min_margin_lower']:.4f} | {row['seconds_per_sample']:.3f} |")
    if "encoder" in result:
        enc = result["encoder"]
        lines += ["", f"Encoder certificate (Clopper-Pearson, alpha {enc['alpha']:g}, {enc['draws']} draws, first "
                  f"{enc['images']} images): lower bounds {', '.join(f'{v:.4f}' for v in enc['probability_lower_bounds'])}"]
    lines += ["", f"Command: `{record['command']}`", f"Machine: {record['machine']}", ""]
    return "\n".join(lines)


def render_csv(result: Dict[str, object], methods: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "n", "clean_accuracy", "certified_accuracy", "certified_error", "mean_min_margin_lower",
                     "seconds_per_sample"])
    for method in methods:
        row = result[method]
        writer.writerow([method, result["n"], result["clean_accuracy"], row["certified_accuracy"],
                         row["certified_error"], row["mean_min_margin_lower"], row["seconds_per_sample"]])
    return buffer.getvalue()


PROG = "python -m refsnn.certify"
#: The files a run writes into its ``--out`` folder.
OUTPUT_STEM = "certify"


def output_files(out: Path) -> Dict[str, Path]:
    """The files of one run in the folder ``out``: ``json`` (config + summary), ``csv``, ``md``, ``samples``."""
    stem = Path(out) / OUTPUT_STEM
    return {"json": stem.with_suffix(".json"), "csv": stem.with_suffix(".csv"), "md": stem.with_suffix(".md"),
            "samples": Path(f"{stem}_samples.json")}


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m refsnn.certify`` parser (shared vocabulary of ``refsnn.cli``)."""
    from . import cli
    from .parallel import add_cluster_arguments

    parser = cli.make_parser(PROG, __doc__.splitlines()[0])
    cli.add_model(parser, nir=True)
    cli.add_dataset(parser, default="mnist")
    cli.add_eps(parser, 0.12, detail=" (digital: l-inf radius eps/2 under --convention paper; spike: fraction "
                                     "of freed positions)")
    parser.add_argument("--set", dest="input_set", choices=INPUT_SETS, default=None,
                        help="input set (default: spike for nmnist, digital otherwise)")
    parser.add_argument("--k", type=cli.nonnegative_int, default=1, help="flips for --set spike-any-k")
    parser.add_argument("--budget", choices=("per-step", "total"), default="per-step",
                        help="spike-any-k: at most k flips per time step or in total")
    parser.add_argument("--convention", choices=("paper", "authors"), default="paper",
                        help="digital l-inf radius: paper = eps/2, authors = eps")
    parser.add_argument("--l0-mode", choices=("paper", "authors"), default="paper",
                        help="spike set: paper = round(size * eps) freed positions, authors = each bit with "
                             "probability eps")
    cli.add_robust_T(parser, 3, detail="; T is the model's stored training T when it has one")
    parser.add_argument("--method", default="ibp,crown-ibp,best",
                        help=f"bound methods: comma list of {', '.join(METHODS)}, or all")
    parser.add_argument("--iterations", type=cli.nonnegative_int, default=20,
                        help="gradient steps of --method alpha")
    cli.add_n(parser, 1000, detail=" (the first N of the test split)")
    cli.add_seed(parser, detail=" (per sample: SeedSequence([seed, index]))")
    cli.add_batch_size(parser, 100, detail=" (one chunk of work)")
    parser.add_argument("--encoder-draws", type=cli.nonnegative_int, default=0,
                        help="digital set: Clopper-Pearson certificate over N fresh rand-map draws (0: off)")
    parser.add_argument("--encoder-images", type=cli.nonnegative_int, default=10,
                        help="... for the first M samples")
    parser.add_argument("--confidence-alpha", type=cli.open_unit_float, default=0.001,
                        help="Clopper-Pearson confidence level alpha of the encoder certificate, in (0, 1)")
    cli.add_out(parser, "runs/certify/<dataset>-<set>-eps<eps>-robustT<T'>-n<n>-seed<seed>-<methods>-<key of all "
                        f"arguments and the model>; writes {OUTPUT_STEM}.json, .csv, .md and {OUTPUT_STEM}_samples.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different result already in --out (a rerun of the same result is always allowed)")
    cli.add_progress(parser)
    add_cluster_arguments(parser)
    cli.add_deprecated(parser, "--horizon", "--robust-T", "robust_T", cli.positive_int)
    cli.add_deprecated(parser, "--alpha", "--confidence-alpha", "confidence_alpha", cli.open_unit_float)
    return parser


def result_identity(args: argparse.Namespace, input_set: str, methods: Sequence[str]) -> Dict[str, object]:
    """Every argument that changes a certify result, and the model file's SHA-256: two runs write
    the same ``--out`` only when these agree (``refsnn.runlock.guard_result``). Not in it: the
    batch size and the workers (results do not depend on chunking) and the data folder."""
    model = Path(args.model)
    return {"model": model.name, "model_sha256": sha256_file(model) if model.is_file() else None,
            "dataset": args.dataset, "split": "test", "input_set": input_set, "eps": args.eps,
            "convention": args.convention, "l0_mode": args.l0_mode, "robust_T": args.robust_T, "n": args.n,
            "seed": args.seed, "k": args.k, "budget": args.budget, "iterations": args.iterations,
            "encoder_draws": args.encoder_draws, "encoder_images": args.encoder_images,
            "confidence_alpha": args.confidence_alpha, "methods": list(methods)}


def _main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    quiet = args.quiet
    methods = METHODS if args.method == "all" else tuple(m.strip() for m in args.method.split(","))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise cli.CLIError(f"--method: unknown method(s) {unknown}; choose a comma list of {', '.join(METHODS)} "
                           "or all")
    input_set = args.input_set or ("spike" if args.dataset in EVENT_DATASETS else "digital")
    identity = result_identity(args, input_set, methods)
    out = cli.out_folder(PROG, args.out, cli.default_out(
        "certify", args.dataset, input_set, f"k{args.k}" if input_set == "spike-any-k" else f"eps{args.eps:g}",
        f"robustT{args.robust_T}", f"n{args.n}", f"seed{args.seed}", "+".join(methods), result_key(identity)),
        file_suffixes=(".json",))
    cli.check_out_dir(out)
    guard_result(output_files(out)["json"], identity, args.overwrite)  # before the work, not after it
    config = CertifyConfig(args.model, args.dataset, "test", args.eps, input_set, args.convention,
                           args.l0_mode, args.robust_T, args.n, args.seed, args.batch_size, args.data_dir,
                           args.k, args.budget, args.iterations, args.encoder_draws, args.encoder_images,
                           args.confidence_alpha)
    from .interop.nir import load_any_model

    net = load_any_model(args.model, dt=args.dt)
    cli.check_robust_T(args.robust_T, cli.model_time_steps(args.model), "the model's training T")
    x, y = load_dataset(args.dataset, "test", data_dir=args.data_dir, limit=args.n)
    from .progress import Progress, compile_notice

    compile_notice(quiet=quiet)
    started = time.perf_counter()
    with Progress(len(y), "certify", "sample", quiet=quiet, bar=not args.no_progress) as bar:
        records = certify_samples(net, x, y, config, methods, workers=args.workers, scheduler=args.scheduler,
                                  progress=lambda index, chunk: bar.update(len(chunk)))
    result = summarize(records, methods)
    result["seconds"] = time.perf_counter() - started
    record = {"identity": identity, "config": asdict(config), "result": result,
              "command": " ".join(["python -m refsnn.certify", *(argv if argv is not None else sys.argv[1:])]),
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "workers": args.workers, "scheduler": args.scheduler}}
    print(f"{args.model}: {args.dataset} {set_label(asdict(config))}, T'={args.robust_T}, "
          f"n={result['n']}, clean accuracy at T' {100 * result['clean_accuracy']:.1f}%")
    for method in methods:
        row = result[method]
        print(f"  {method:9s} certified accuracy {100 * row['certified_accuracy']:5.1f}%   certified error "
              f"{100 * row['certified_error']:5.1f}%   mean min margin bound {row['mean_min_margin_lower']:+.4f}   "
              f"{1000 * row['seconds_per_sample']:.1f} ms/sample")
    if "encoder" in result:
        enc = result["encoder"]
        print(f"  encoder certificate (alpha {enc['alpha']:g}, {enc['draws']} draws): P(correct on every image in "
              f"the ball) >= {', '.join(f'{v:.4f}' for v in enc['probability_lower_bounds'])}")
    files = output_files(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(files["json"], json.dumps(record, indent=2) + "\n")
    atomic_write_text(files["csv"], render_csv(result, methods))
    atomic_write_text(files["md"], render_markdown(record, methods))
    atomic_write_text(files["samples"], json.dumps(records, indent=1) + "\n")
    if not quiet:
        print(f"wrote {files['json']}, {files['csv'].name}, {files['md'].name}, {files['samples'].name}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m refsnn.certify``; returns the exit code (2 with one stderr line for bad input)."""
    from .cli import run_main

    return run_main(PROG)(_main)(argv)


if __name__ == "__main__":
    sys.exit(main())
