"""Spike splits with and without their Lagrangian terms (``BabConfig.beta``) at the same node budget.

Per sample of a ``verify.dataset`` protocol selection (``--indices``), ``verify.robust_bab`` with
spike branching, falsification off (no random members, restarts or searches: only the bounds'
minimizers are offered) and ``--nodes`` bounded nodes, once without and once with ``beta``: the
closed share of the tree, the margin bound, the nodes whose worst row ``beta`` raised, and seconds.
Equal nodes compare the bounds; the per-second comparison is ``verify.dataset --beta``'s.

    python benchmarks/bench_beta.py --model results/budget/nmnist-fc/robust/model.h5 --dataset nmnist \\
        --eps 0.005 --indices 13,82 --nodes 400 --out runs/bench_beta/report.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _samples import add_sample_arguments, load_samples
from verify.bab import BabConfig, robust_bab
from verify.dataset import sample_set


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser, dataset="nmnist", eps=0.005)
    parser.add_argument("--nodes", type=int, default=400)
    parser.add_argument("--branching", default="neuron-babsr")
    parser.add_argument("--beta-iterations", type=int, default=BabConfig.beta_iterations)
    parser.add_argument("--out", default="runs/bench_beta/report.json")
    args = parser.parse_args(argv)
    net, config, indices, x, labels = load_samples(args)
    rows = []
    for index, sample, label in zip(indices, x, labels):
        subset, _ = sample_set(sample, int(index), config)
        for beta in (False, True):
            bab = BabConfig(branching=args.branching, max_nodes=args.nodes, time_limit=None, attack_samples=0,
                            search_starts=0, restarts=0, restart_share=0.0, root_milp=0.0, enumerate_max=0,
                            enumerate_always=0, beta=beta, beta_iterations=args.beta_iterations)
            tic = time.perf_counter()
            result = robust_bab(net, subset, int(label), bab, rng=np.random.default_rng([args.seed, int(index), 1]))
            row = {"index": int(index), "label": int(label), "beta": beta, "status": result.status,
                   "margin_lower": result.margin_lower, "nodes": result.stats["nodes"],
                   "closed_share": result.stats["decided_fraction"], "beta_bounds": result.stats["beta_bounds"],
                   "beta_raised": result.stats["beta_raised"], "seconds": round(time.perf_counter() - tic, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
