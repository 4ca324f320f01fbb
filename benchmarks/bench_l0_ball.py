"""How far the bounds over an l0 ball are from a proof, and what input splits could gain.

Per sample of a ``verify.dataset`` protocol spike run (the ball of ``k`` flips per step around the
clean train), prints sound margin lower bounds in grid steps (``T' x`` the worst margin bound):

- the root bound by ``refsnn.l0.anyk_bounds`` for each ``--methods``;
- the same bound over smaller balls (``--ks``: flips per step), i.e. the radius the bound proves;
- the input-split estimate: the bound over the ball whose ``m`` most influential positions per step
  (largest ``|coefficient|`` of the worst row's S-CROWN bound at the root) may not flip (``--masks``).
  The child "bit i not flipped" of an input split is such a masked ball, so the chain of "not
  flipped" children needs at least the smallest ``m`` that closes the bound before any leaf of
  that chain closes (and every "flipped" sibling still has to be proved).

    python benchmarks/bench_l0_ball.py --model results/budget/nmnist-fc/robust/model.h5 \\
        --indices 82,1,10 [--out runs/bench_l0_ball/report.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _samples import add_sample_arguments, ints, load_samples
from refsnn.l0 import anyk_bounds, anyk_node_bounds
from refsnn.spec import margin_spec
from verify.dataset import sample_set


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser, dataset="nmnist", eps=0.005)
    parser.add_argument("--methods", default="best,crown")
    parser.add_argument("--ks", type=ints, default=[1, 2, 3, 4, 6, 9, 12])
    parser.add_argument("--masks", type=ints, default=[12, 50, 200, 800, 1600])
    parser.add_argument("--out", default="runs/bench_l0_ball/report.json")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    net, config, indices, x, labels = load_samples(args, input_set="spike")
    rows = []
    started = time.perf_counter()
    for index, sample, label in zip(indices, x, labels):
        ball, clean = sample_set(sample, int(index), config)
        steps, C = ball.steps, margin_spec(np.array([label]), net.n_outputs)
        row = {"index": int(index), "label": int(label), "k": ball.k, "root": {}, "by_k": {}, "masked": {}}
        for method in methods:
            tic = time.perf_counter()
            lower, _ = anyk_bounds(net, clean[:, None], ball.k, C, method)
            row["root"][method] = {"steps": float(lower.min() * steps), "seconds": time.perf_counter() - tic}
        for k in args.ks:
            row["by_k"][k] = float(anyk_bounds(net, clean[:, None], k, C, "best")[0].min() * steps)
        lower, _, _, lam = anyk_node_bounds(net, clean[:, None], ball.k, C, "best")
        weight = np.abs(lam[:, 0, int(np.argmin(lower[0]))].reshape(steps, -1))
        order = np.argsort(-weight, axis=1, kind="stable")
        for m in args.masks:
            mask = np.ones(weight.shape, np.uint8)
            np.put_along_axis(mask, order[:, :m], 0, axis=1)
            masked = anyk_bounds(net, clean[:, None], ball.k, C, "best", mask=mask.reshape(clean.shape)[:, None])[0]
            row["masked"][m] = float(masked.min() * steps)
        rows.append(row)
        print(f"sample {index} (label {label}, k {ball.k}): root "
              + ", ".join(f"{m} {v['steps']:+.2f}" for m, v in row["root"].items())
              + "; by k " + ", ".join(f"{k}: {v:+.2f}" for k, v in row["by_k"].items())
              + "; m positions may not flip " + ", ".join(f"{m}: {v:+.2f}" for m, v in row["masked"].items()),
              flush=True)
    report = {"command": "python benchmarks/bench_l0_ball.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "load_average": os.getloadavg(), "machine": platform.platform(), "cpus": os.cpu_count(),
              "seconds": time.perf_counter() - started,
              "note": "bounds in grid steps: T' x the worst margin lower bound (> 0 proves robust)",
              "samples": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out} (load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
