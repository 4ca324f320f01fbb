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

from refsnn.io import load_model
from verify.bab import BabConfig, robust_bab
from verify.dataset import EVENT_DATASETS, DatasetVerifyConfig, run_samples, sample_set


def _ints(text: str) -> list:
    return [int(part) for part in text.split(",") if part]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="nmnist")
    parser.add_argument("--eps", type=float, default=0.005)
    parser.add_argument("--robust-T", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--indices", type=_ints, required=True)
    parser.add_argument("--nodes", type=int, default=400)
    parser.add_argument("--branching", default="neuron-babsr")
    parser.add_argument("--beta-iterations", type=int, default=BabConfig.beta_iterations)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/bench_beta/report.json")
    args = parser.parse_args(argv)
    net = load_model(args.model, dtype=np.float64)
    input_set = "spike" if args.dataset in EVENT_DATASETS else "digital"
    config = DatasetVerifyConfig(eps=args.eps, input_set=input_set, horizon=args.robust_T, seed=args.seed,
                                 method="complete", sets="protocol")
    indices, x, labels = run_samples(args.dataset, "test", len(args.indices), config, indices=args.indices,
                                     data_dir=args.data_dir)
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
