"""``python -m verify.dataset``: exact (MILP) robustness of every sample of a test split.

Each selected test sample gets its own input set and its own seeded generator, so the result of a
sample does not depend on which other samples run, in which order or on which machine:

- ``--set digital`` (image datasets): ``DigitalLinfSet(image, eps, rand_maps)`` with rand maps
  ``[T', *in]`` drawn from ``default_rng([seed, index])`` (``index`` = the sample's index in the
  split), radius ``eps/2`` (``--convention paper``) or ``eps`` (``authors``);
- ``--set spike`` (event datasets): ``SpikeL0Set(frames[:T'], k, per_step=True)`` with
  ``k = round(prod(input_shape) * eps)`` flips per time step.

The verdict per sample is ``verify.robust_query``'s (``--method milp``: one MILP per class) or
``verify.robust_bab``'s (``--method complete``: branch and bound with falsification, MILP leaves
and ``--time-limit`` seconds per sample; records add ``margin_lower``, the proven lower bound of
the smallest margin, ``attack_margin``, the smallest exact margin a member reached, and
``decided_fraction``, the share of the set's members in closed nodes):
"robust" (every margin ``f_label - f_j`` strictly positive over the set), "not_robust" (with the
witness's prediction) or "unknown" (time limit). The sample selection is ``refsnn.attacks.protocol.select_samples`` (sorted, seeded).
``--sets certify`` verifies the samples and sets of ``python -m refsnn.certify`` instead (the first
``--n`` samples of the split, its seeded rand maps, for spikes its box of freed positions), so the
exact verdicts can be compared sample by sample with its certificates.
Chunks of ``--batch-size`` samples run serially or, with ``--workers N`` / ``--scheduler ADDRESS``,
as one Dask task each (``refsnn.parallel``): the per-sample records and the summary are identical
to the serial run as long as no query reaches ``--time-limit`` (a time limit depends on the
machine's speed; such samples say "unknown" with the reason).

    python -m verify.dataset --model runs/small/model.h5 --dataset mnist --n 100 --eps 0.02 \\
        --robust-T 3 --time-limit 60 --workers 8 --out runs/verify/mnist-small

The default ``--out`` folder names the data set, the model, the set, eps, T', n, the seed and a key
of every argument that changes the result and of the model's SHA-256; a different result already
in ``--out`` is refused unless ``--overwrite`` (the same result may be rewritten).

Resuming: after every chunk the finished samples' records are written atomically to
``--out/verify.partial.json`` (with the run's identity). A run stopped by Ctrl-C or SIGTERM exits
with code 130 and leaves that file consistent; the same command again verifies only the samples it
lacks (with any ``--batch-size`` or ``--workers``) and then writes ``verify.json`` and
``verify.csv`` and removes the partial file. A partial file of different arguments is refused like
a different result (``--overwrite`` discards it).
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
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from refsnn import cli
from refsnn.encoders import bernoulli_encode, draw_rand_maps
from refsnn.input_sets import DEFAULT_ROBUST_T
from refsnn.io import atomic_write_text
from refsnn.network import SNN
from refsnn.parallel import add_cluster_arguments, chunk_ranges, dask_client, map_chunks
from refsnn.runlock import ResultExistsError, guard_result, result_key
from refsnn.validation import sha256_file

from .bab import BRANCHING, BabConfig, robust_bab
from .milp import robust_query
from .sets import BoxSet, DigitalLinfSet, SpikeL0Set

EVENT_DATASETS = ("nmnist",)
METHODS = ("milp", "complete")
SAMPLE_SETS = ("protocol", "certify")
PARTIAL = "verify.partial.json"  # the finished samples of a run in progress (removed when verify.json is written)


@dataclass
class DatasetVerifyConfig:
    """Settings of one data-set verification run (saved with its results)."""

    eps: float = 0.02
    input_set: str = "digital"
    convention: str = "paper"
    horizon: int = DEFAULT_ROBUST_T
    seed: int = 0
    time_limit: Optional[float] = 60.0
    bigm: str = "auto"
    solver: Optional[str] = None
    attack_samples: int = 64
    chunk_size: int = 4
    method: str = "milp"
    branching: str = BabConfig.branching
    root_milp: float = BabConfig.root_milp
    sets: str = "protocol"
    beta: bool = BabConfig.beta
    enumerate_always: int = BabConfig.enumerate_always
    enumerate_max: int = BabConfig.enumerate_max

    def __post_init__(self):
        if self.input_set not in ("digital", "spike"):
            raise ValueError(f"input_set must be 'digital' or 'spike', got {self.input_set!r}")
        if self.sets not in SAMPLE_SETS:
            raise ValueError(f"sets must be one of {SAMPLE_SETS}, got {self.sets!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.convention not in ("paper", "authors"):
            raise ValueError(f"convention must be 'paper' or 'authors', got {self.convention!r}")
        if not np.isfinite(self.eps) or self.eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if int(self.horizon) != self.horizon or self.horizon < 1:
            raise ValueError(f"horizon T' must be an integer >= 1, got {self.horizon!r}")
        if int(self.chunk_size) != self.chunk_size or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {self.chunk_size!r}")
        BabConfig(branching=self.branching, root_milp=self.root_milp, beta=self.beta,  # names a refused field
                  enumerate_always=self.enumerate_always, enumerate_max=self.enumerate_max)


def sample_set(x_sample: np.ndarray, index: int, config: DatasetVerifyConfig):
    """``(input set, clean spikes [T', *in])`` of one sample; seeded by ``[seed, index]`` only.

    ``x_sample``: an image ``[*in]`` in [0, 1] (digital) or frames ``[T, *in]`` of 0/1 (spike).
    ``config.sets == "certify"``: the sets ``python -m refsnn.certify`` bounds (its rand maps,
    ``refsnn.certify.sample_rng(seed, index)``; for spikes its l0 box of freed positions), so that a
    sample it certifies is robust here too.
    """
    if config.input_set == "digital":
        image = np.asarray(x_sample, dtype=np.float64)
        if config.sets == "certify":
            from refsnn.certify import sample_rng

            rand_maps = sample_rng(config.seed, index).random((config.horizon, 1) + image.shape)[:, 0]
        else:
            rand_maps = draw_rand_maps(np.random.default_rng([config.seed, int(index)]), config.horizon,
                                       (1,) + image.shape)[:, 0]
        clean = bernoulli_encode(image[None], rand_maps[:, None])[:, 0]
        return DigitalLinfSet(image, config.eps, rand_maps, convention=config.convention), clean
    frames = np.asarray(x_sample)
    if frames.shape[0] < config.horizon:
        raise ValueError(f"sample {index} has {frames.shape[0]} frames, fewer than the horizon {config.horizon}")
    clean = np.ascontiguousarray(frames[:config.horizon]).astype(np.uint8)
    if config.sets == "certify":
        from refsnn.certify import sample_rng
        from refsnn.input_sets import spike_l0_set

        box = spike_l0_set(clean[:, None], config.eps, sample_rng(config.seed, index, 1))
        return BoxSet(box.x_lower[:, 0], box.x_upper[:, 0]), clean
    k = int(np.floor(np.prod(clean.shape[1:]) * config.eps + 0.5))
    return SpikeL0Set(clean, k, per_step=True), clean


def verify_samples(net: SNN, config: DatasetVerifyConfig, chunk) -> List[dict]:
    """Records of one chunk ``(indices [n], x [n, ...], labels [n])``: a pure function of its arguments."""
    indices, x_chunk, labels = chunk
    records = []
    for index, x_sample, label in zip(indices, x_chunk, labels):
        input_set, clean = sample_set(x_sample, int(index), config)
        clean_prediction = int(net.predict(clean[:, None])[0])
        if config.method == "complete":
            records.append(_complete_record(net, config, input_set, int(index), int(label), clean_prediction))
            continue
        result = robust_query(net, input_set, int(label), time_limit=config.time_limit, bigm=config.bigm,
                              solver=config.solver, attack_samples=config.attack_samples,
                              rng=np.random.default_rng([config.seed, int(index), 1]))
        finite = result.margins[np.isfinite(result.margins)]
        records.append({"index": int(index), "label": int(label), "clean_prediction": clean_prediction,
                        "status": result.status, "reason": result.reason,
                        "min_exact_margin": float(finite.min()) if finite.size else None,
                        "witness_prediction": result.witness_prediction,
                        "seconds": round(result.seconds, 4)})
    return records


def _complete_record(net: SNN, config: DatasetVerifyConfig, input_set, index: int, label: int,
                     clean_prediction: int) -> dict:
    """One sample's record under ``--method complete`` (``verify.robust_bab``)."""
    bab = BabConfig(time_limit=config.time_limit, solver=config.solver, attack_samples=config.attack_samples,
                    branching=config.branching, root_milp=config.root_milp, beta=config.beta,
                    enumerate_always=config.enumerate_always, enumerate_max=config.enumerate_max)
    result = robust_bab(net, input_set, label, bab, rng=np.random.default_rng([config.seed, index, 1]))
    finite = (lambda v: float(v) if np.isfinite(v) else None)
    witness = pack_spikes(result.witness) if result.status == "not_robust" and result.witness is not None else None
    return {"index": index, "label": label, "clean_prediction": clean_prediction, "status": result.status,
            "reason": result.reason, "margin_lower": finite(result.margin_lower),
            "attack_margin": finite(result.attack_margin), "witness_prediction": result.witness_prediction,
            "nodes": result.stats["nodes"], "spike_splits": result.stats["spike_splits"],
            "milp_leaves": result.stats["milp"],
            "decided_fraction": result.stats["decided_fraction"], "seconds": round(result.seconds, 4),
            "witness": witness, "code": code_revision(),
            **({"beta_bounds": result.stats["beta_bounds"], "beta_raised": result.stats["beta_raised"]}
               if config.beta else {})}


_REVISION: List[Optional[str]] = []


def code_revision() -> Optional[str]:
    """The git commit of the checkout this ``verify`` package runs from (``+dirty`` when tracked files
    of ``verify/`` or ``refsnn/`` differ from it), or None outside a git checkout: a record says which code decided it, so a
    run resumed after the verifier changed shows which images each version decided."""
    if not _REVISION:
        import subprocess

        here = Path(__file__).resolve().parent
        try:
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
            # the code only (verify/ and refsnn/ beside it): a run's own result files change as it runs
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", str(here),
                                    str(here.parent / "refsnn")], cwd=here, capture_output=True, text=True,
                                   timeout=10, check=True).stdout.strip()
            _REVISION.append(head + ("+dirty" if dirty else "") if head else None)
        except (OSError, subprocess.SubprocessError):
            _REVISION.append(None)
    return _REVISION[0]


def pack_spikes(x: np.ndarray) -> str:
    """A 0/1 spike train ``[T', *in]`` as base64 of its packed bits (a record's ``witness``)."""
    import base64

    return base64.b64encode(np.packbits(np.asarray(x, dtype=np.uint8).ravel())).decode("ascii")


def unpack_spikes(text: str, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`pack_spikes`: the spike train ``[T', *in]`` of ``shape`` (uint8)."""
    import base64
    import binascii

    size = int(np.prod(shape))
    try:
        bits = np.unpackbits(np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8))
    except (binascii.Error, TypeError, ValueError):
        raise ValueError("witness: not a base64 string of packed spike bits") from None
    if bits.size != 8 * ((size + 7) // 8):
        raise ValueError(f"witness: {bits.size} bits stored, a spike train of shape {tuple(shape)} needs {size}")
    return bits[:size].reshape(tuple(shape))


class SampleIndexError(ValueError):
    """A requested sample index (``--indices``, a run's ``identity.indices``) lies beyond the split."""

    def __init__(self, index: int, size: int, split: str):
        self.index, self.size, self.split = index, size, split
        super().__init__(f"sample {index} is beyond the {size} samples of the {split} split")

    def __reduce__(self):
        return type(self), (self.index, self.size, self.split)


def run_samples(dataset: str, split: str, n: int, config: DatasetVerifyConfig,
                indices: Optional[Sequence[int]] = None, data_dir=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indices [n], x [n, ...], labels [n])``: the samples a run verifies (and ``verify.report``
    rebuilds). ``--sets certify``: the first ``n`` of the split, loaded as ``refsnn.certify`` loads
    them; otherwise the given ``indices`` or the protocol's seeded selection of ``n``."""
    from refsnn.attacks.protocol import select_samples
    from refsnn.data import load_dataset

    if config.sets == "certify":  # exactly refsnn.certify's load (event data binned at load_dataset's default T)
        x_all, y_all = load_dataset(dataset, split, data_dir=data_dir, limit=n)
    else:
        x_all, y_all = load_dataset(dataset, split, data_dir=data_dir, T=config.horizon)
    if indices is not None and len(indices) and max(indices) >= len(y_all):
        raise SampleIndexError(int(max(indices)), len(y_all), split)
    if config.sets == "certify":  # refsnn.certify's samples: the first n of the split
        if not 0 < n <= len(y_all):
            raise ValueError(f"cannot take the first {n} samples of {len(y_all)}; n must lie in 1..{len(y_all)}")
        chosen = np.arange(n)
    elif indices is not None:  # the sets depend only on (seed, index): see sample_set
        chosen = np.asarray(indices, dtype=np.int64)
    else:
        chosen = select_samples(len(y_all), n, config.seed)
    return chosen, x_all[chosen], np.asarray(y_all[chosen], dtype=np.int64)


def verify_dataset(net: SNN, x: np.ndarray, labels: np.ndarray, indices: Sequence[int],
                   config: DatasetVerifyConfig, scheduler=None, progress=None,
                   done: Optional[Dict[int, dict]] = None,
                   on_chunk: Optional[Callable[[List[dict]], None]] = None) -> Dict[str, object]:
    """Verify every sample; ``x [n, ...]`` and ``labels [n]`` are the selected samples, ``indices [n]``
    their indices in the split (the per-sample seeds). ``scheduler``: None (serial) or a Dask client.
    ``done``: records of samples already verified (by index; a resumed run), not run again;
    ``on_chunk(records)``: called with each finished chunk's records as it completes.

    Returns ``{"samples": [record per sample, in order], "summary": counts and fractions}``.
    """
    labels = np.asarray(labels).reshape(-1)
    indices = np.asarray(indices).reshape(-1)
    if not len(x) == labels.size == indices.size:
        raise ValueError(f"x ({len(x)}), labels ({labels.size}) and indices ({indices.size}) differ in length")
    done = dict(done or {})
    todo = np.array([i for i, index in enumerate(indices) if int(index) not in done], dtype=np.int64)
    chunks = [(indices[todo[part]], x[todo[part]], labels[todo[part]])
              for part in chunk_ranges(todo.size, config.chunk_size)]
    if progress is not None and todo.size < indices.size:
        progress(int(indices.size - todo.size))

    def report(i, records):
        if on_chunk is not None:
            on_chunk(records)
        if progress is not None:
            progress(len(records))

    parts = map_chunks(partial(verify_samples, net, config), chunks, scheduler=scheduler, progress=report)
    done.update((record["index"], record) for part in parts for record in part)
    samples = [done[int(index)] for index in indices]
    statuses = [record["status"] for record in samples]
    n = len(samples)
    robust_and_correct = sum(r["status"] == "robust" and r["clean_prediction"] == r["label"] for r in samples)
    summary = {"n": n, "robust": statuses.count("robust"), "not_robust": statuses.count("not_robust"),
               "unknown": statuses.count("unknown"),
               "clean_correct": sum(r["clean_prediction"] == r["label"] for r in samples),
               "verified_robust_accuracy": robust_and_correct / n if n else None,
               "verified_robust_error_upper": 1 - robust_and_correct / n if n else None,
               "verified_robust_error_lower": statuses.count("not_robust") / n if n else None}
    return {"samples": samples, "summary": summary}


def finished_records(path: Path) -> Dict[int, dict]:
    """The records (by sample index) of a finished ``verify.json`` whose identity ``guard_result``
    has already compared, for ``--retry-unknown`` after a run has finished."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return {int(record["index"]): record for record in stored["samples"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ResultExistsError(f"{path} is not a readable result ({' '.join(str(error).split())}); "
                                "choose another --out or pass --overwrite to replace it") from None


def read_partial(path: Path, identity: Dict[str, object], overwrite: bool = False) -> Dict[int, dict]:
    """The records (by sample index) of an interrupted run with the same ``identity`` in ``path``
    (``{}`` when there is none). A partial file of a different run is refused
    (``ResultExistsError``), or ignored with ``overwrite``."""
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        records = {int(record["index"]): record for record in stored["samples"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        if overwrite:
            return {}
        raise ResultExistsError(f"{path} is not a readable partial result ({' '.join(str(error).split())}); "
                                "choose another --out or pass --overwrite to replace it") from None
    if stored.get("identity") == json.loads(json.dumps(identity, sort_keys=True, default=str)):
        return records
    if overwrite:
        return {}
    guard_result(path, identity)  # raises, naming the arguments that differ
    return records  # pragma: no cover - guard_result raised


def write_partial(path: Path, identity: Dict[str, object], command: str, records: Dict[int, dict]) -> None:
    """Writes the finished samples' records atomically (a reader sees the old file or the new one)."""
    document = {"identity": identity, "command": command, "partial": True,
                "samples": [records[index] for index in sorted(records)]}
    atomic_write_text(path, json.dumps(document, indent=1, default=str) + "\n")


class _TermAsInterrupt:
    """SIGTERM raises ``KeyboardInterrupt`` (as Ctrl-C does) while the run is in progress, so an
    interrupted run stops between two atomic writes of its partial file. Main thread only."""

    def __enter__(self):
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


PROG = "python -m verify.dataset"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m verify.dataset`` parser (shared vocabulary of ``refsnn.cli``)."""
    parser = cli.make_parser(PROG, "Exact robustness (MILP or complete branch and bound) of every selected sample "
                                   "of a test split.")
    add = parser.add_argument
    cli.add_model(parser)
    cli.add_dataset(parser, required=True)
    add("--split", choices=("train", "test"), default="test", help="data split")
    cli.add_n(parser, 20, detail=" (sorted seeded selection of --split)")
    cli.add_eps(parser, 0.02, detail=" (digital: l-inf radius eps/2 under --convention paper)")
    add("--set", dest="input_set", choices=("digital", "spike"),
        help="input set (default: spike for nmnist, digital otherwise)")
    add("--convention", choices=("paper", "authors"), default="paper",
        help="digital l-inf radius: paper = eps/2, authors = eps")
    cli.add_robust_T(parser, 3, detail="; the verified set (T is the model's stored training T when it has one)")
    cli.add_seed(parser, detail=" (selection and per-sample rand maps)")
    cli.add_time_limit(parser, 60.0)
    add("--method", choices=METHODS, default="milp",
        help="decision method (command-specific): milp = one exact MILP per class (--time-limit per MILP), "
             "complete = branch and bound with falsification and MILP leaves (--time-limit per sample)")
    add("--solver", default=None, help="PuLP solver (default: HiGHS when installed, else CBC)")
    add("--branching", choices=BRANCHING, default=BabConfig.branching,
        help="--method complete: branching rule of verify.bab (docs/VERIFY.md)")
    add("--root-milp", type=float, default=BabConfig.root_milp,
        help="--method complete: share of --time-limit for one MILP on the whole set, in [0, 1] (0: none)")
    add("--beta", action="store_true",
        help="--method complete: also bound nodes with spike splits with the splits as Lagrangian terms "
             "(beta-CROWN style, BabConfig.beta; docs/VERIFY.md)")
    add("--enumerate-always", type=cli.nonnegative_int, default=BabConfig.enumerate_always, metavar="N",
        help="--method complete: a node of at most N members is enumerated (BabConfig.enumerate_always)")
    add("--enumerate-max", type=cli.nonnegative_int, default=BabConfig.enumerate_max, metavar="N",
        help="--method complete: a node of at most N members whose bound is at least two grid steps below 0 is "
             "enumerated (BabConfig.enumerate_max)")
    add("--sets", choices=SAMPLE_SETS, default="protocol",
        help="samples and sets: protocol = the attack protocol's seeded selection and rand maps; certify = "
             "python -m refsnn.certify's (the first --n samples, its rand maps and l0 boxes)")
    add("--indices", type=_index_list, default=None, metavar="I,J,...",
        help="verify exactly these samples of --split (comma-separated indices; their sets are the ones the "
             "protocol selection gives them: per-sample seeds) instead of the seeded selection of --n; "
             "for rerunning undecided samples with another --time-limit")
    cli.add_batch_size(parser, 4, detail=" (one task)")
    cli.add_out(parser, "runs/verify/<dataset>-<model name>-<set>-eps<eps>-robustT<T'>-n<n>-seed<seed>-<key of all "
                        "arguments and the model>; writes verify.json and verify.csv")
    add("--overwrite", action="store_true",
        help="replace a different result already in --out (a rerun of the same result is always allowed)")
    add("--retry-unknown", action="store_true",
        help="verify again the samples the partial file (or, after a finished run, verify.json) records as "
             "unknown, e.g. after the verifier improved; each record's 'code' names the commit that decided it")
    cli.add_progress(parser)
    add_cluster_arguments(parser)
    cli.add_deprecated(parser, "--horizon", "--robust-T", "robust_T", cli.positive_int)
    cli.add_deprecated(parser, "--chunk-size", "--batch-size", "batch_size", cli.positive_int)
    return parser


def result_identity(args: argparse.Namespace, config: DatasetVerifyConfig) -> Dict[str, object]:
    """Every argument that changes a verify.dataset result, and the model file's SHA-256: two runs
    write the same ``--out`` only when these agree (``refsnn.runlock.guard_result``). Not in it: the
    batch size and the workers (per-sample seeds) and the data folder."""
    model = Path(args.model)
    return {"model": model.name, "model_sha256": sha256_file(model), "dataset": args.dataset, "split": args.split,
            "n": args.n, "input_set": config.input_set, "eps": config.eps, "convention": config.convention,
            "robust_T": config.horizon, "seed": config.seed, "time_limit": config.time_limit, "bigm": config.bigm,
            "solver": config.solver, "attack_samples": config.attack_samples, "method": config.method,
            **({"branching": config.branching, "root_milp": config.root_milp} if config.method == "complete" else {}),
            **({"beta": True} if config.method == "complete" and config.beta else {}),
            **({name: getattr(config, name) for name in ("enumerate_always", "enumerate_max")
                if config.method == "complete" and getattr(config, name) != getattr(BabConfig, name)}),
            **({"sets": config.sets} if config.sets != "protocol" else {}),
            **({"indices": list(args.indices)} if getattr(args, "indices", None) is not None else {})}


def _index_list(text: str) -> Tuple[int, ...]:
    """``--indices``: distinct non-negative integers, comma-separated, kept sorted."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sample indices, got {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative sample indices, got {text!r}")
    return tuple(sorted(values))


@cli.run_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    from refsnn.io import load_model

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sets == "certify" and args.split != "test":
        parser.error("--sets certify verifies refsnn.certify's sets, which are drawn from the test split; "
                     "drop --split or use --sets protocol")
    if args.indices is not None:
        if args.sets == "certify":
            parser.error("--indices selects protocol samples; it cannot be combined with --sets certify")
        if any(arg == "--n" or arg.startswith("--n=") for arg in argv):
            parser.error("--indices names the samples; it cannot be combined with --n")
        args.n = len(args.indices)
    model_name = Path(args.model).parent.name if Path(args.model).stem == "model" else Path(args.model).stem
    input_set = args.input_set or ("spike" if args.dataset in EVENT_DATASETS else "digital")
    try:
        config = DatasetVerifyConfig(eps=args.eps, input_set=input_set, convention=args.convention,
                                     horizon=args.robust_T, seed=args.seed, time_limit=args.time_limit,
                                     solver=args.solver, chunk_size=args.batch_size, method=args.method,
                                     branching=args.branching, root_milp=args.root_milp, sets=args.sets,
                                     beta=args.beta, enumerate_always=args.enumerate_always,
                                     enumerate_max=args.enumerate_max)
        net = load_model(args.model, dtype=np.float64)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    identity = result_identity(args, config)
    out = cli.check_out_dir(Path(args.out) if args.out else cli.default_out(
        "verify", args.dataset, model_name, input_set, f"eps{args.eps:g}", f"robustT{args.robust_T}", f"n{args.n}",
        f"seed{args.seed}", result_key(identity)))
    guard_result(out / "verify.json", identity, args.overwrite)  # before the work, not after it
    done = read_partial(out / PARTIAL, identity, args.overwrite)
    if args.retry_unknown and not done and (out / "verify.json").is_file():
        # a finished run of the same identity (guard_result let it through): its records seed the retry
        done = finished_records(out / "verify.json")
    cli.check_robust_T(args.robust_T, cli.model_time_steps(args.model), "the model's training T")
    try:
        indices, x, labels = run_samples(args.dataset, args.split, args.n, config, args.indices, args.data_dir)
    except SampleIndexError as error:
        parser.error(f"--indices: {error}")
    except ValueError as error:
        parser.error(str(error))
    expected = tuple(x.shape[1:]) if input_set == "digital" else tuple(x.shape[2:])
    if tuple(net.input_shape) != expected:
        parser.error(f"the model expects inputs {net.input_shape}, the dataset gives {expected}")
    from refsnn.progress import Progress

    command = "python -m verify.dataset " + " ".join(shlex.quote(a) for a in argv)
    selected = {int(index) for index in indices}
    done = {index: record for index, record in done.items() if index in selected}
    # --retry-unknown: those samples run again; the partial file keeps their old records until replaced
    keep = {index: record for index, record in done.items()
            if not (args.retry_unknown and record.get("status") == "unknown")}
    out.mkdir(parents=True, exist_ok=True)

    def save_chunk(records: List[dict]) -> None:
        done.update((record["index"], record) for record in records)
        write_partial(out / PARTIAL, identity, command, done)

    resumed = len(keep)
    started = time.perf_counter()
    try:
        with _TermAsInterrupt(), dask_client(args.workers, args.scheduler) as client, \
                Progress(args.n, "verify", "sample", quiet=args.quiet, bar=not args.no_progress) as bar:
            if done and not args.quiet:
                print(f"resuming: {len(keep)} of {args.n} samples already verified in {out / PARTIAL}"
                      + (f" ({len(done) - len(keep)} unknown ones run again)" if len(done) > len(keep) else ""))
            report = verify_dataset(net, x, labels, indices, config, scheduler=client, progress=bar.update,
                                    done=dict(keep), on_chunk=save_chunk)
    except ImportError as error:
        parser.error(str(error))
    except KeyboardInterrupt:
        print(f"interrupted: {len(done)} of {args.n} samples saved in {out / PARTIAL}; rerun the same command "
              "to continue", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - started
    import os

    document = {"identity": identity, "command": command, "model": args.model, "dataset": args.dataset,
                "split": args.split, "config": asdict(config), "summary": report["summary"],
                "samples": report["samples"], "seconds_total": round(seconds, 3),
                "resumed_samples": resumed,
                "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "python": platform.python_version(),
                            "workers": args.workers, "scheduler": args.scheduler}}
    # verify.json first: it carries the identity that guard_result compares on the next run
    atomic_write_text(out / "verify.json", json.dumps(document, indent=2) + "\n")
    buffer = io.StringIO()
    # the packed witness stays in verify.json only
    # every key of any record (a resumed run's older records may lack newer fields such as "code")
    fields = list(dict.fromkeys(key for record in report["samples"] for key in record if key != "witness"))
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(report["samples"])
    atomic_write_text(out / "verify.csv", buffer.getvalue())
    (out / PARTIAL).unlink(missing_ok=True)  # superseded by verify.json
    s = report["summary"]
    print(f"{s['n']} samples: {s['robust']} robust, {s['not_robust']} not robust, {s['unknown']} unknown; "
          f"clean correct {s['clean_correct']}; verified robust accuracy {s['verified_robust_accuracy']:.3f} "
          f"({seconds:.1f} s) -> {out / 'verify.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
