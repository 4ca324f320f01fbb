"""Old vs new on one machine in one run: the workloads of bench_bounds.py (S-CROWN incl. S-IBP,
batch 64, T' = 3; optimized S-CROWN, ``method="alpha"``, 20 iterations, batch 8 FC / 2 CONV), bench_robust.py (robust_loss, kappa 0.5, beta 1, batch 64, T' = 3) and
bench_train.py (natural step, float32, batch 64, T = 10), FC and CONV, and the fused LIF BPTT loops
(``lif-bptt-array``: ``lif_backward_fused`` on a derivative array, ``lif-bptt-rectangular``:
``lif_backward_rectangular_fused``; float32 [10, 256, 512], 20 calls each), timed in two worker
processes (one per source tree) that take turns call by call, so both see the same load. A worker
warms up (compiles) only the workloads asked for.

    python benchmarks/compare_revisions.py OLD_TREE NEW_TREE [--reps 7] [--conv-reps 3] [--out runs/compare.json]

Prints per workload the median wall and CPU time of each side and the ratio new / old.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

WORKER = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from refsnn.architectures import build_network
from refsnn.bounds import compute_bounds, margin_spec
from refsnn.data import load_dataset
from refsnn.encoders import rate_encode
from refsnn.input_sets import digital_linf_set
from refsnn.losses import rate_cross_entropy
from refsnn.robust import robust_loss

images, labels = load_dataset("mnist-subset", "train")
images, labels = images[:64], labels[:64]
spikes, maps = rate_encode(images, 10, np.random.default_rng(0))
box = digital_linf_set(images, 0.12, maps[:3])
C = margin_spec(labels, 10)
work = {}
for arch in ("fc", "conv"):
    net64 = build_network(arch, (1, 28, 28), seed=0)
    net32 = build_network(arch, (1, 28, 28), seed=0, dtype=np.float32)
    def bounds(net=net64):
        compute_bounds(net, box.x_lower, box.x_upper, method="crown-ibp", C=C)
    def robust(net=net32):
        robust_loss(net, spikes, labels, box.x_lower, box.x_upper, kappa=0.5, beta=1.0, temperature=5.0)
    def train(net=net32):
        trace = net.run(spikes, validate=False)
        _, grad = rate_cross_entropy(trace.rates, labels, 5.0)
        net.backward(trace, grad)
    def alpha(net=net64, batch=8 if arch == "fc" else 2):
        part = slice(0, batch)
        compute_bounds(net, box.x_lower[:, part], box.x_upper[:, part], method="alpha", C=C[part])
    work[f"bounds-{arch}"], work[f"robust-{arch}"], work[f"train-{arch}"] = bounds, robust, train
    work[f"alpha-{arch}"] = alpha
from refsnn.neurons import Rectangular, lif_forward
from refsnn.neurons import loops
lif_rng = np.random.default_rng(1)
current = lif_rng.normal(0.2, 0.3, (10, 256, 512)).astype(np.float32)
membrane, spike = lif_forward(current, 0.25, 0.25)
grad_spike = lif_rng.normal(size=current.shape).astype(np.float32)
derivative = Rectangular().derivative(membrane - np.float32(0.25))
def lif_array():
    for _ in range(20):
        loops.lif_backward_fused(membrane, spike, grad_spike, derivative, 0.25, True, 0.25)
def lif_rectangular():
    for _ in range(20):
        loops.lif_backward_rectangular_fused(membrane, spike, grad_spike, 0.25, 1.0, 1.0, 0.25)
work["lif-bptt-array"], work["lif-bptt-rectangular"] = lif_array, lif_rectangular
for name in sys.argv[2].split(","):
    work[name]()  # warm-up: Numba compilation and caches
print("ready", flush=True)
for line in sys.stdin:
    name = line.strip()
    wall, cpu = time.perf_counter(), time.process_time()
    work[name]()
    print(f"{time.perf_counter() - wall} {time.process_time() - cpu}", flush=True)
'''


def start(tree: str, python: str, names) -> subprocess.Popen:
    proc = subprocess.Popen([python, "-c", WORKER, tree, ",".join(names)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=tree)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def timed(proc: subprocess.Popen, name: str):
    proc.stdin.write(name + "\n")
    proc.stdin.flush()
    wall, cpu = proc.stdout.readline().split()
    return float(wall), float(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--conv-reps", type=int, default=3)
    parser.add_argument("--only", default="", help="comma list of workloads (default: all)")
    parser.add_argument("--out", default="runs/compare_revisions.json")
    args = parser.parse_args()
    names = [f"{kind}-{arch}" for arch in ("fc", "conv") for kind in ("bounds", "alpha", "robust", "train")]
    names += ["lif-bptt-array", "lif-bptt-rectangular"]
    if args.only:
        names = [name for name in names if name in args.only.split(",")]
    sides = {"old": start(args.old, sys.executable, names), "new": start(args.new, sys.executable, names)}
    rows = []
    for name in names:
        reps = args.conv_reps if name.endswith("conv") else args.reps
        times = {side: [] for side in sides}
        for rep in range(reps):
            order = ("old", "new") if rep % 2 == 0 else ("new", "old")
            for side in order:
                times[side].append(timed(sides[side], name))
        median = {side: [sorted(v[i] for v in times[side])[len(times[side]) // 2] for i in (0, 1)]
                  for side in sides}
        row = {"workload": name, "reps": reps, "old_wall_s": median["old"][0], "new_wall_s": median["new"][0],
               "old_cpu_s": median["old"][1], "new_cpu_s": median["new"][1],
               "wall_ratio": median["new"][0] / median["old"][0], "cpu_ratio": median["new"][1] / median["old"][1]}
        rows.append(row)
        print(f"{name:12s} wall {row['old_wall_s']:.4f} -> {row['new_wall_s']:.4f} s ({row['wall_ratio']:.3f}x)   "
              f"cpu {row['old_cpu_s']:.4f} -> {row['new_cpu_s']:.4f} s ({row['cpu_ratio']:.3f}x)", flush=True)
    for proc in sides.values():
        proc.stdin.close()
        proc.wait()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"old": args.old, "new": args.new, "time": time.ctime(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
