"""Tightness report: S-IBP, S-CROWN and their intersection against the exact MILP bounds.

    python -m verify.tightness [--quick] [--out runs/verify/tightness]

Networks: small random FC nets (PyTorch initialisation, X-H-10) and a small FC net trained here
for a few epochs on the embedded MNIST subset downsampled to 7x7 (49 inputs), both at T' = 4 (``--robust-T``).
Input sets: digital l-inf sets (paper convention, radius eps/2) of real images around fixed rand
maps; their enclosing spike box is what S-IBP/S-CROWN bound, and the exact bounds are computed
over the same box (so all methods answer the same question).

Reported per network and eps: mean width of the output-rate bounds (upper - lower) of each method
and of the exact bounds, the fraction of rate bounds each method gets exactly, and the fraction
of samples certified by each method (every margin lower bound > 0, label = clean prediction)
against the fraction exactly robust (``verify_robust``) and the fraction with an unknown result;
``clean_margin_positive``: samples whose clean input already has a strictly positive margin (a tie
at the clean input is not robust, and ties are common at small T').
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from refsnn import cli
from refsnn.architectures import linear_layer
from refsnn.bounds import compute_bounds, digital_linf_set, margin_spec
from refsnn.encoders import bernoulli_encode, draw_rand_maps
from refsnn.network import SNN

from .milp import exact_bounds, verify_robust

METHODS = ("ibp", "crown-ibp", "best")


def downsample(images: np.ndarray, size: int = 7) -> np.ndarray:
    """``[N, 1, 28, 28]`` -> ``[N, size * size]`` by block averaging."""
    factor = images.shape[-1] // size
    blocks = images[:, 0, :size * factor, :size * factor].reshape(len(images), size, factor, size, factor)
    return blocks.mean(axis=(2, 4)).reshape(len(images), -1)


def train_small(x: np.ndarray, y: np.ndarray, hidden: int, steps: int, epochs: int, seed: int) -> SNN:
    """Natural training (CE on 5 * rates, Adam) of an X-H-10 FC net with Bernoulli inputs."""
    from refsnn.losses import rate_cross_entropy
    from refsnn.optim import Adam
    rng = np.random.default_rng(seed)
    net = SNN([linear_layer(rng, x.shape[1], hidden), linear_layer(rng, hidden, 10)])
    optimizer = Adam(net.params(), lr=3e-3)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 64):
            index = order[start:start + 64]
            spikes = bernoulli_encode(x[index], draw_rand_maps(rng, steps, x[index].shape))
            trace = net.run(spikes)
            _, grad_rates = rate_cross_entropy(trace.rates, y[index], scale=5.0)
            grads, _ = net.backward(trace, grad_rates)
            optimizer.step(grads)
    return net


def evaluate(net: SNN, images: np.ndarray, eps: float, steps: int, rng, time_limit: float) -> dict:
    rand_maps = draw_rand_maps(rng, steps, images.shape)
    box = digital_linf_set(images, eps, rand_maps, convention="paper")
    x_lower, x_upper = box.x_lower, box.x_upper
    clean = bernoulli_encode(images, rand_maps)
    labels = net.predict(clean)
    start = time.perf_counter()
    exact = exact_bounds(net, x_lower, x_upper, time_limit=time_limit)
    exact_seconds = time.perf_counter() - start
    solved = (exact.lower_status == "exact") & (exact.upper_status == "exact")
    width_exact = float(np.mean((exact.upper - exact.lower)[solved])) if solved.any() else float("nan")
    rates = net.forward(clean)
    clean_margin = rates[np.arange(len(labels)), labels] - np.where(
        np.eye(net.n_outputs, dtype=bool)[labels], -np.inf, rates).max(axis=1)
    row = {"eps": eps, "samples": len(images), "free_bits_mean": float((x_lower != x_upper).sum() / len(images)),
           "clean_margin_positive": float(np.mean(clean_margin > 0)),
           "exact_width": width_exact, "exact_solved_fraction": float(solved.mean()),
           "exact_seconds": round(exact_seconds, 2)}
    for method in METHODS:
        lower, upper = compute_bounds(net, x_lower, x_upper, method=method)
        assert np.all(lower[solved] <= exact.lower[solved] + 1e-12) and np.all(upper[solved] >= exact.upper[solved] - 1e-12), \
            f"{method} bounds do not contain the exact bounds"
        row[f"{method}_width"] = float(np.mean((upper - lower)[solved]))
        tight = np.isclose(lower, exact.lower, atol=1e-9) & np.isclose(upper, exact.upper, atol=1e-9)
        row[f"{method}_exact_fraction"] = float(tight[solved].mean())
        margin_lower, _ = compute_bounds(net, x_lower, x_upper, method=method, C=margin_spec(labels, net.n_outputs))
        row[f"{method}_certified"] = float(np.all(margin_lower > 0, axis=1).mean())
    start = time.perf_counter()
    robust = verify_robust(net, x_lower, x_upper, labels, time_limit=time_limit)
    statuses = [r.status for r in robust]
    row["exactly_robust"] = statuses.count("robust") / len(statuses)
    row["robust_unknown"] = statuses.count("unknown") / len(statuses)
    row["robust_seconds"] = round(time.perf_counter() - start, 2)
    return row


PROG = "python -m verify.tightness"
#: The file written into the ``--out`` folder.
REPORT_NAME = "tightness.json"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m verify.tightness`` parser (shared vocabulary of ``refsnn.cli``)."""
    parser = cli.make_parser(PROG, __doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one eps and one training epoch")
    cli.add_n(parser, 20, detail=" (downsampled mnist-subset images)")
    cli.add_robust_T(parser, 4, detail="; the small networks run for T' steps too")
    cli.add_time_limit(parser, 20.0)
    cli.add_seed(parser, detail=" (networks, training, rand maps)")
    cli.add_out(parser, f"runs/verify/tightness; writes {REPORT_NAME}")
    cli.add_deprecated(parser, "--samples", "--n", "n", cli.positive_int)
    cli.add_deprecated(parser, "--steps", "--robust-T", "robust_T", cli.positive_int)
    return parser


@cli.run_main(PROG)
def main(argv=None) -> int:
    """``python -m verify.tightness``; returns the exit code (2 with one stderr line for bad input)."""
    args = build_parser().parse_args(argv)
    out_dir = cli.check_out_dir(cli.out_folder(PROG, args.out, cli.default_out("verify", "tightness"),
                                               file_suffixes=(".json",)))
    from refsnn.data import load_dataset
    rng = np.random.default_rng(args.seed)
    x_train, y_train = load_dataset("mnist-subset", "train")
    x_test, _ = load_dataset("mnist-subset", "test")
    train_small_x = downsample(np.asarray(x_train, dtype=np.float64))
    test_small_x = downsample(np.asarray(x_test, dtype=np.float64))[: args.n]
    epsilons = [0.01, 0.03, 0.1] if not args.quick else [0.03]
    hidden = 16
    nets = {"random-49-16-10": SNN([linear_layer(rng, 49, hidden), linear_layer(rng, hidden, 10)])}
    start = time.perf_counter()
    nets["trained-49-16-10"] = train_small(train_small_x, np.asarray(y_train), hidden, args.robust_T,
                                           epochs=1 if args.quick else 5, seed=args.seed)
    train_seconds = time.perf_counter() - start
    rows = []
    print(f"{'network':<18} {'eps':>5} {'exact_w':>8} {'ibp_w':>7} {'crown_w':>8} {'best_w':>7} "
          f"{'ibp_cert':>8} {'crown_cert':>10} {'best_cert':>9} {'robust':>7} {'unknown':>7} {'clean>0':>7}")
    for name, net in nets.items():
        for eps in epsilons:
            row = evaluate(net, test_small_x, eps, args.robust_T, np.random.default_rng(args.seed + 1), args.time_limit)
            row["network"] = name
            rows.append(row)
            print(f"{name:<18} {eps:>5} {row['exact_width']:>8.3f} {row['ibp_width']:>7.3f} "
                  f"{row['crown-ibp_width']:>8.3f} {row['best_width']:>7.3f} {row['ibp_certified']:>8.2f} "
                  f"{row['crown-ibp_certified']:>10.2f} {row['best_certified']:>9.2f} {row['exactly_robust']:>7.2f} "
                  f"{row['robust_unknown']:>7.2f} {row['clean_margin_positive']:>7.2f}", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / REPORT_NAME
    from .encoding import highs_available
    report = {"command": " ".join(["python -m verify.tightness"] + (argv if argv is not None else sys.argv[1:])),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "solver": "highs" if highs_available() else "cbc", "steps": args.robust_T, "samples": args.n,
              "train_seconds": round(train_seconds, 1), "rows": rows}
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
