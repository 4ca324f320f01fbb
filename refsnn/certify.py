"""``python -m refsnn.certify``: certified robust accuracy of a model file on a test split.

A sample is *certified* when it is correctly classified on its clean encoding (horizon T') AND
every margin lower bound ``f_y - f_j`` over the input set is STRICTLY positive (a bound of 0 is a
tie, not a certificate). The *certified robust error* of the paper's Figure 6 is the fraction of
samples with some margin lower bound ``<= 0``. All bounds are the sound float64 ones of
``refsnn.bounds.compute_bounds``.

Input sets (``--set``): ``digital`` = the l-inf set through one seeded draw of rand maps
(``--convention paper``: ``xhat +- eps/2``; ``authors``: ``+- eps``); ``spike`` = the paper's l0
set (``round(size * eps)`` freed positions per step, seeded; ``--l0-mode authors``: each bit
with probability eps). Both certificates hold for that draw only (the paper's limitation).

    python -m refsnn.certify --model runs/mnist-fc/model.h5 --dataset mnist --eps 0.12 --n 1000
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .bounds import METHODS, compute_bounds, margin_spec
from .data import load_dataset
from .encoders import rate_encode
from .input_sets import digital_linf_set, spike_l0_set
from .io import atomic_write_text, load_model

EVENT_DATASETS = ("nmnist",)


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
    horizon: int = 3
    n: int = 1000
    seed: int = 1234
    batch_size: int = 100
    data_dir: Optional[str] = None


def certify_dataset(net, x: np.ndarray, labels: np.ndarray, config: CertifyConfig,
                    methods: Sequence[str] = METHODS) -> Dict[str, object]:
    """Certified robust accuracy/error per method and clean accuracy at horizon T' on ``x``.

    ``x``: images ``[N, *in]`` in [0, 1] (digital) or frames ``[N, T, *in]`` (spikes).
    Returns a dict with per-method ``certified_accuracy``, ``certified_error`` and seconds.
    """
    rng = np.random.default_rng(config.seed)
    steps = config.horizon
    labels = np.asarray(labels)
    n = len(labels)
    C_all = margin_spec(labels, net.n_outputs)
    margin_ok = {method: np.zeros(n, bool) for method in methods}
    seconds = {method: 0.0 for method in methods}
    correct = np.zeros(n, bool)
    for start in range(0, n, config.batch_size):
        part = slice(start, min(n, start + config.batch_size))
        if config.input_set == "digital":
            clean, rand_maps = rate_encode(x[part], steps, rng)
            box = digital_linf_set(x[part], config.eps, rand_maps, convention=config.convention)
        else:
            clean = np.ascontiguousarray(np.swapaxes(x[part], 0, 1)[:steps])
            box = spike_l0_set(clean, config.eps, rng, mode=config.l0_mode)
        correct[part] = net.predict(clean) == labels[part]
        for method in methods:
            started = time.perf_counter()
            lower, _ = compute_bounds(net, box.x_lower, box.x_upper, method=method, C=C_all[part])
            seconds[method] += time.perf_counter() - started
            margin_ok[method][part] = np.all(lower > 0.0, axis=1)
    result: Dict[str, object] = {"n": n, "clean_accuracy": float(correct.mean())}
    for method in methods:
        certified = margin_ok[method] & correct
        result[method] = {"certified_accuracy": float(certified.mean()),
                          "certified_error": float(1.0 - margin_ok[method].mean()),
                          "seconds_per_sample": seconds[method] / max(n, 1)}
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refsnn.certify", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fmnist", "nmnist", "mnist-subset"))
    parser.add_argument("--eps", type=float, default=0.12)
    parser.add_argument("--set", dest="input_set", choices=("digital", "spike"), default=None,
                        help="default: spike for nmnist, digital otherwise")
    parser.add_argument("--convention", choices=("paper", "authors"), default="paper")
    parser.add_argument("--l0-mode", choices=("paper", "authors"), default="paper")
    parser.add_argument("--horizon", "--robust-T", type=int, default=3, help="T' of the input set (default 3)")
    parser.add_argument("--method", default="all", help="ibp, crown-ibp, best or all (default)")
    parser.add_argument("--n", type=int, default=1000, help="first N samples of the split")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", help="write the JSON result here")
    args = parser.parse_args(argv)
    methods = METHODS if args.method == "all" else tuple(args.method.split(","))
    try:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS} or 'all'")
        if args.eps < 0 or args.n < 1 or args.horizon < 1:
            raise ValueError("--eps must be >= 0, --n and --horizon >= 1")
        input_set = args.input_set or ("spike" if args.dataset in EVENT_DATASETS else "digital")
        config = CertifyConfig(args.model, args.dataset, "test", args.eps, input_set, args.convention,
                               args.l0_mode, args.horizon, args.n, args.seed, data_dir=args.data_dir)
        net = load_model(args.model)
        x, y = load_dataset(args.dataset, "test", data_dir=args.data_dir, limit=args.n)
        started = time.perf_counter()
        result = certify_dataset(net, x, y, config, methods)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result["seconds"] = time.perf_counter() - started
    record = {"config": asdict(config), "result": result, "command": " ".join(["python -m refsnn.certify", *(argv or sys.argv[1:])]),
              "machine": {"platform": platform.platform(), "python": platform.python_version()}}
    print(f"{args.model}: {args.dataset} {input_set} eps={args.eps} ({args.convention if input_set == 'digital' else args.l0_mode}), "
          f"T'={args.horizon}, n={result['n']}, clean accuracy at T' {100 * result['clean_accuracy']:.1f}%")
    for method in methods:
        row = result[method]
        print(f"  {method:9s} certified accuracy {100 * row['certified_accuracy']:5.1f}%   certified error "
              f"{100 * row['certified_error']:5.1f}%   {1000 * row['seconds_per_sample']:.1f} ms/sample")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
