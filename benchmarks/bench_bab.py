"""Branching heuristics of ``verify.bab`` on a fixed set of small random nets.

Each problem: an FC net ``n_in-H-H-n_out`` (seeded normal weights), a spike box with ``free`` free
bits or a digital l-inf set of a random image, the label the net gives the clean input (problems
whose clean margin is below 2/T' are redrawn). Every
heuristic (x node bound) decides every problem with MILP leaves switched off (``milp_max_free=0``,
``root_milp=0``) and leaves of at most ``enumerate_max`` members, so the count of bounded nodes
measures the branching alone; every verdict is checked against exhaustive enumeration.

    python benchmarks/bench_bab.py [--problems 40] [--out runs/bench_bab]
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from refsnn import SNN, Linear
from verify.bab import BabConfig, robust_bab
from verify.enumerate import enumerate_robust
from verify.sets import BoxSet, DigitalLinfSet


def problems(count: int, seed: int = 0):
    """``(name, net, input set, label)`` for ``count`` seeded problems (half boxes, half digital sets)."""
    out = []
    draws = itertools.count()
    while len(out) < count:
        i = len(out)
        rng = np.random.default_rng([seed, i, next(draws)])
        n_in, hidden, n_out, steps = 16, 12, 4, 3
        sizes = (n_in, hidden, hidden, n_out)
        net = SNN([Linear(rng.normal(0, 1.2 / np.sqrt(a), (b, a)), rng.normal(0.1, 0.1, b))
                   for a, b in zip(sizes[:-1], sizes[1:])])
        if i % 2 == 0:
            center = rng.integers(0, 2, (steps, n_in)).astype(np.uint8)
            free = rng.choice(center.size, 12 + i % 5, replace=False)
            lower, upper = center.reshape(-1).copy(), center.reshape(-1).copy()
            lower[free], upper[free] = 0, 1
            input_set = BoxSet(lower.reshape(center.shape), upper.reshape(center.shape))
            clean = center
        else:
            image = rng.random(n_in)
            rand = rng.random((steps, n_in))
            input_set = DigitalLinfSet(image, (0.15, 0.2, 0.3)[i % 3], rand)
            clean = input_set.clean()
        rates = net.forward(clean[:, None])[0]
        label = int(np.argmax(rates))
        if rates[label] - np.delete(rates, label).max() < 0.5:
            continue  # clean margin below 2/T': mostly broken at once, nothing for the branching to do
        out.append((f"{'box' if i % 2 == 0 else 'digital'}-{i}", net, input_set, label))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_bab.py", description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--out", default="runs/bench_bab")
    parser.add_argument("--methods", default="ibp,best")
    parser.add_argument("--branching", default="first,widest,smear")
    args = parser.parse_args(argv)
    cases = problems(args.problems)
    truth = {name: enumerate_robust(net, s, label)[0] for name, net, s, label in cases}
    rows = []
    for method in args.methods.split(","):
        for branching in args.branching.split(","):
            nodes, seconds, robust, robust_nodes = [], [], 0, []
            for name, net, input_set, label in cases:
                config = BabConfig(method=method, branching=branching, milp_max_free=0, root_milp=0.0,
                                   enumerate_max=4, attack_samples=0, search_starts=0, restarts=0,
                                   time_limit=None)
                start = time.perf_counter()
                result = robust_bab(net, input_set, label, config)
                seconds.append(time.perf_counter() - start)
                if (result.status == "robust") != truth[name] or result.status == "unknown":
                    raise AssertionError(f"{name}: {result.status} but enumeration says robust={truth[name]}")
                nodes.append(result.stats["nodes"])
                robust += result.status == "robust"
                if result.status == "robust":
                    robust_nodes.append(result.stats["nodes"])
            rows.append({"method": method, "branching": branching, "problems": len(cases), "robust": robust,
                         "nodes_total": int(sum(nodes)), "nodes_median": statistics.median(nodes),
                         "nodes_max": int(max(nodes)), "nodes_robust_total": int(sum(robust_nodes)),
                         "nodes_not_robust_total": int(sum(nodes) - sum(robust_nodes)),
                         "seconds_total": round(sum(seconds), 2),
                         "seconds_median": round(statistics.median(seconds), 4)})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| node bound | branching | problems | robust | nodes total | on robust | on not robust | median | max "
             "| seconds total |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['method']} | {r['branching']} | {r['problems']} | {r['robust']} | {r['nodes_total']} | "
              f"{r['nodes_robust_total']} | {r['nodes_not_robust_total']} | {r['nodes_median']:g} | {r['nodes_max']} | "
              f"{r['seconds_total']} |" for r in rows]
    (out / "bench_bab.json").write_text(json.dumps({"rows": rows, "command": " ".join(["python"] + sys.argv),
                                                    "machine": platform.platform()}, indent=2) + "\n")
    (out / "bench_bab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
