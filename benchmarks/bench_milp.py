"""MILP solve times of verify.exact_bounds on small FC nets: input size, hidden width, T', big-M.

    python benchmarks/bench_milp.py [--quick] [--time-limit 30] [--out results/verify/bench_milp.json]

Network: X-FC(H)-FC10 with PyTorch's default initialisation (refsnn.architectures.linear_layer),
th = alpha = 0.25, firing ">=". Input set: a random spike train with a fraction ``--free`` of its
bits free (default 0.25, like a digital l-inf set of moderate eps). Each configuration bounds all 10 output rates (10 minimizations + 10
maximizations); the S-IBP-derived big-M (``bigm="ibp"``: S-IBP bounds intersected with the
naive ones, and neurons S-IBP proves stable get no binary) is compared with the naive big-M
from weight sums (``bigm="naive"``) in the same run. Prints one line per configuration and writes
JSON + CSV with the command and the machine.

``--leaves MODEL``: instead, the branch and bound's MILP queries on a real model (HiGHS vs CBC on
the same queries): for the first ``--images`` test samples of ``verify.dataset``'s selection
(digital set, ``--eps``, T' = 3, its seeds), nodes of the set with ``--leaf-bits`` open bits (the
other pixels fixed at the clean sample's level) and the whole set (the root MILP), each decided by
``verify.milp.robust_query`` with each solver under ``--time-limit``.

    python benchmarks/bench_milp.py --leaves results/budget/mnist-fc/plain/model.h5 --eps 0.02 \
        --images 3 --leaf-bits 8,12 --time-limit 20 --out results/verify/bench_milp_leaves.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refsnn.architectures import linear_layer  # noqa: E402
from refsnn.network import SNN  # noqa: E402
from verify.milp import SampleVerifier  # noqa: E402
from verify.sets import BoxSet  # noqa: E402


def make_net(n_in: int, hidden: int, seed: int) -> SNN:
    rng = np.random.default_rng(seed)
    return SNN([linear_layer(rng, n_in, hidden), linear_layer(rng, hidden, 10)])


def run_config(n_in, hidden, steps, bigm, time_limit, seed, free_fraction, solver):
    net = make_net(n_in, hidden, seed)
    rng = np.random.default_rng(seed + 1)
    center = rng.integers(0, 2, (steps, n_in)).astype(np.uint8)
    free = rng.random((steps, n_in)) < free_fraction
    box = BoxSet(np.where(free, 0, center).astype(np.uint8), np.where(free, 1, center).astype(np.uint8))
    start = time.perf_counter()
    verifier = SampleVerifier(net, box, bigm=bigm, time_limit=time_limit, solver=solver)
    model = verifier.strict if verifier.grid_margin is not None else verifier.relaxed
    build = time.perf_counter() - start
    times, statuses = [], []
    for j in range(net.n_outputs):
        for sense in ("min", "max"):
            ext = verifier.rate_extreme(np.eye(net.n_outputs)[j], sense)
            times.append(ext.seconds)
            statuses.append(ext.status)
    return {"n_in": n_in, "hidden": hidden, "steps": steps, "bigm": bigm, "free_bits": box.n_free,
            "binaries": model.n_binaries,
            "build_s": round(build, 3), "total_s": round(sum(times), 3), "median_s": round(float(np.median(times)), 4),
            "max_s": round(max(times), 3), "exact": statuses.count("exact"), "timeouts": statuses.count("timeout"),
            "tie_gaps": statuses.count("tie-gap"), "queries": len(times)}


def leaf_queries(model: str, eps: float, images: int, leaf_bits, time_limit: float, solvers):
    """Rows of the ``--leaves`` mode: one per (image, node size, solver)."""
    from refsnn.attacks.protocol import select_samples
    from refsnn.data import load_dataset
    from refsnn.io import load_model
    from verify.dataset import DatasetVerifyConfig, sample_set
    from verify.milp import robust_query
    from verify.sets import LevelSet

    net = load_model(model, dtype=np.float64)
    x, y = load_dataset("mnist", "test", T=3)
    indices = select_samples(len(y), images, 0)
    config = DatasetVerifyConfig(eps=eps, horizon=3, method="complete")
    rows = []
    for index in indices:
        input_set, clean = sample_set(x[index], int(index), config)
        root = LevelSet.of(input_set)
        levels = root.levels_of(clean)
        for bits in list(leaf_bits) + [None]:
            node = root
            if bits is not None:  # keep the first open variables until `bits` open bits remain
                kept = 0
                for v in root.open_variables:
                    width = int(root.free_bits_per_variable()[v])
                    if kept + width <= bits:
                        kept += width
                    else:
                        node = node.restrict(int(v), int(levels[v]), int(levels[v]))
            for solver in solvers:
                result = robust_query(net, node, int(y[index]), time_limit=time_limit, solver=solver,
                                      attack_samples=0, rng=np.random.default_rng(0))
                rows.append({"index": int(index), "open_bits": int(node.n_free), "solver": solver,
                             "status": result.status, "seconds": round(result.seconds, 3)})
                print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few small configurations only")
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--free", type=float, default=0.25, help="fraction of free input bits")
    parser.add_argument("--solver", choices=["highs", "cbc"], default=None, help="default: HiGHS if installed")
    parser.add_argument("--out", default="runs/verify/bench_milp.json")
    parser.add_argument("--leaves", metavar="MODEL", help="MILP queries of the branch and bound on this model "
                        "(HiGHS vs CBC), see the module docstring")
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--leaf-bits", default="8,12")
    args = parser.parse_args()
    if args.leaves:
        rows = leaf_queries(args.leaves, args.eps, args.images, [int(v) for v in args.leaf_bits.split(",")],
                            args.time_limit, ["highs", "cbc"])
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join([Path(sys.executable).name] + sys.argv), "load": os.getloadavg(),
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                            "python": platform.python_version()}, "rows": rows}
        out.write_text(json.dumps(meta, indent=1))
        for solver in ("highs", "cbc"):
            mine = [r for r in rows if r["solver"] == solver]
            print(f"{solver}: decided {sum(r['status'] != 'unknown' for r in mine)}/{len(mine)}, "
                  f"total {sum(r['seconds'] for r in mine):.1f} s")
        return
    base = {"n_in": 16, "hidden": 16, "steps": 3}
    sweeps = {"n_in": [8, 16, 32, 64, 128, 256], "hidden": [8, 16, 32, 64, 128], "steps": [1, 2, 3, 4, 6, 8]}
    if args.quick:
        base = {"n_in": 8, "hidden": 8, "steps": 2}
        sweeps = {"n_in": [8, 16], "hidden": [8], "steps": [2]}
    from verify.encoding import highs_available
    solver = args.solver or ("highs" if highs_available() else "cbc")
    configs = []
    for name, values in sweeps.items():
        for value in values:
            config = dict(base, **{name: value})
            if config not in configs:
                configs.append(config)
    rows = []
    print(f"solver {solver}, free fraction {args.free}, time limit {args.time_limit}s per query")
    print(f"{'n_in':>5} {'H':>4} {'T':>3} {'bigm':>6} {'binaries':>8} {'total_s':>8} {'median_s':>8} "
          f"{'max_s':>7} {'exact':>5} {'timeout':>7}  naive/ibp")
    for config in configs:
        pair = {}
        for bigm in ("ibp", "naive"):
            row = run_config(config["n_in"], config["hidden"], config["steps"], bigm, args.time_limit, args.seed,
                             args.free, solver)
            pair[bigm] = row
            rows.append(row)
        for bigm in ("ibp", "naive"):
            row = pair[bigm]
            ratio = pair["naive"]["total_s"] / max(pair["ibp"]["total_s"], 1e-9)
            print(f"{row['n_in']:>5} {row['hidden']:>4} {row['steps']:>3} {bigm:>6} {row['binaries']:>8} "
                  f"{row['total_s']:>8.3f} {row['median_s']:>8.4f} {row['max_s']:>7.3f} {row['exact']:>5} "
                  f"{row['timeouts']:>7}  {ratio:.2f}" if bigm == "naive" else
                  f"{row['n_in']:>5} {row['hidden']:>4} {row['steps']:>3} {bigm:>6} {row['binaries']:>8} "
                  f"{row['total_s']:>8.3f} {row['median_s']:>8.4f} {row['max_s']:>7.3f} {row['exact']:>5} "
                  f"{row['timeouts']:>7}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join([Path(sys.executable).name] + sys.argv), "machine": {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version()},
        "solver": solver, "free_fraction": args.free, "time_limit_s": args.time_limit, "rows": rows}
    out.write_text(json.dumps(meta, indent=1))
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out} and {out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
