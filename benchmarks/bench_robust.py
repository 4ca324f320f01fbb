"""Robust-training step vs natural-training step, FC and CONV presets, T' = 1, 3, 5.

One natural step: forward + CE + manual BPTT at T = 10, batch 64, float32. One robust step: the
same natural part plus S-IBP and S-CROWN margin lower bounds over the digital l-inf set (eps 0.12,
the paper's MNIST value, radius eps/2) at horizon T', the robust CE and its hand-written reverse
pass (``refsnn.robust.robust_loss``, kappa = 0.5, temperature 5). Two robust variants:

``beta=1``  CROWN-IBP with full weight on S-CROWN: every pass runs (the start of the crown-ibp
            ramp; the whole run of the ``authors`` recipe);
``beta=0``  S-IBP only: what the crown-ibp recipe runs once beta has reached 0 (the end of the
            ramp and every later epoch); ``robust_loss`` skips the S-CROWN pass and its reverse.

Each source tree (this checkout and, with ``--old REV``, that git revision extracted under
``runs/bench/``) is timed in its own worker process; the workers take turns call by call, so
every variant of every tree sees the same load, and the MEDIAN of the repetitions is reported.
Ratios are robust/natural step times of the same tree. The paper's numbers are epoch-time
ratios of its PyTorch code (2.6x / 7.7x / 12.9x at T' = 1 / 3 / 5); the target of issue 18 is a
robust step at T' = 3 of at most 3x the natural step.

    python benchmarks/bench_robust.py [--reps 5] [--conv-reps 3] [--arch fc,conv] [--horizons 1,3,5]
        [--old 8e6f9e7] [--threads 1] [--conv-model results/budget/mnist-conv/robust/checkpoint.h5]
        [--out runs/bench/robust]

Writes ``bench_robust.json`` and ``bench_robust.md`` into ``--out`` (default under ``runs/``;
committed evidence only with ``--out results/robust``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAPER_RATIO = {1: 2.6, 3: 7.7, 5: 12.9}
BATCH, T = 64, 10

WORKER = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from refsnn.architectures import build_network
from refsnn.data import load_dataset
from refsnn.encoders import rate_encode
from refsnn.input_sets import digital_linf_set
from refsnn.losses import rate_cross_entropy
from refsnn.robust import robust_loss

archs, horizons, eps = sys.argv[2].split(","), [int(h) for h in sys.argv[3].split(",")], float(sys.argv[4])
conv_model = sys.argv[5] if len(sys.argv) > 5 else ""
try:  # the allocator setting of the training loop (refsnn.train), where the tree has it
    from refsnn.memory import keep_freed_memory
    keep_freed_memory()
except ImportError:
    pass
images, labels = load_dataset("mnist-subset", "train")
images, labels = images[:64], labels[:64]
spikes, maps = rate_encode(images, 10, np.random.default_rng(0))
boxes = {h: digital_linf_set(images, eps, maps[:h]) for h in horizons}
work = {}
for arch in archs:
    net = build_network(arch, (1, 28, 28), seed=0, dtype=np.float32)
    if arch == "conv" and conv_model:  # trained weights: the sparsity a training run meets
        from refsnn.io import load_checkpoint, load_model
        net = (load_checkpoint(conv_model, dtype=np.float32).net if conv_model.endswith("checkpoint.h5")
               else load_model(conv_model, dtype=np.float32))
    def natural(net=net):
        trace = net.run(spikes, validate=False)
        _, grad = rate_cross_entropy(trace.rates, labels, 5.0)
        net.backward(trace, grad)
    work[f"{arch} natural"] = natural
    for h in horizons:
        for beta in (1.0, 0.0):
            def robust(net=net, box=boxes[h], beta=beta):
                robust_loss(net, spikes, labels, box.x_lower, box.x_upper, kappa=0.5, beta=beta, temperature=5.0)
            work[f"{arch} robust T'={h} beta={beta:g}"] = robust
for fn in work.values():
    fn()  # warm-up: Numba compilation and caches
print(json.dumps(sorted(work)), flush=True)
for line in sys.stdin:
    name = line.strip()
    started, cpu = time.perf_counter(), time.process_time()
    work[name]()
    print(time.perf_counter() - started, time.process_time() - cpu, flush=True)
'''


def extract_revision(rev: str, dest: Path) -> Path:
    """``refsnn/`` of git revision ``rev`` under ``dest/rev-<rev>`` (reused if already there)."""
    tree = dest / f"rev-{rev}"
    if not (tree / "refsnn" / "__init__.py").exists():
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "refsnn"],
                                 check=True, capture_output=True).stdout
        tree.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree)
    return tree


class Worker:
    def __init__(self, label: str, tree: Path, archs: str, horizons: str, eps: float, threads: int = 0,
                 conv_model: str = ""):
        self.label = label
        env = dict(os.environ)
        if threads:  # BLAS and Numba thread pools of the worker
            for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
                env[name] = str(threads)
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(tree), archs, horizons, str(eps), conv_model],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT),
                                     env=env)
        ready = self.proc.stdout.readline()
        if not ready:
            raise SystemExit(f"bench_robust: the {label} worker failed to start")
        self.names = json.loads(ready)

    def time(self, name: str) -> tuple:
        """``(wall s, process CPU s)`` of one call of workload ``name``."""
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        wall, cpu = self.proc.stdout.readline().split()
        return float(wall), float(cpu)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per FC variant")
    parser.add_argument("--conv-reps", type=int, default=3, help="repetitions per CONV variant")
    parser.add_argument("--arch", default="fc,conv")
    parser.add_argument("--horizons", default="1,3,5")
    parser.add_argument("--eps", type=float, default=0.12)
    parser.add_argument("--old", default=None, help="git revision to time beside this checkout (e.g. 8e6f9e7)")
    parser.add_argument("--threads", type=int, default=0,
                        help="BLAS/Numba threads of the workers (0: the libraries' default, all cores)")
    parser.add_argument("--conv-model", default="",
                        help="CONV weights from this model or checkpoint.h5 instead of the seed-0 initialization "
                             "(a trained net's stable neurons make the coefficients sparse)")
    parser.add_argument("--out", default="runs/bench/robust", help="output folder (default under runs/)")
    args = parser.parse_args()
    if args.reps < 1 or args.conv_reps < 1 or args.threads < 0:
        print("bench_robust: --reps and --conv-reps must be >= 1, --threads >= 0", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    if args.conv_model and not Path(args.conv_model).is_file():
        print(f"bench_robust: --conv-model {args.conv_model}: no such file", file=sys.stderr)
        return 2
    workers = [Worker("new", ROOT, args.arch, args.horizons, args.eps, args.threads, args.conv_model)]
    if args.old:
        trees = ROOT / "runs" / "bench"  # scratch, never under a results/ --out
        workers.append(Worker(f"old {args.old}", extract_revision(args.old, trees), args.arch, args.horizons,
                              args.eps, args.threads, args.conv_model))
    names = workers[0].names
    ordered = [n for arch in args.arch.split(",") for n in names if n.startswith(arch + " ")]
    times = {(w.label, n): [] for w in workers for n in ordered}
    for arch in args.arch.split(","):
        reps = args.reps if arch == "fc" else args.conv_reps
        for _ in range(reps):
            for name in (n for n in ordered if n.startswith(arch + " ")):
                for worker in workers:
                    times[(worker.label, name)].append(worker.time(name))
    for worker in workers:
        worker.close()
    rows = []
    for worker in workers:
        for name in ordered:
            arch = name.split()[0]
            walls = [w for w, _ in times[(worker.label, name)]]
            median = float(np.median(walls))
            cpu = float(np.median([c for _, c in times[(worker.label, name)]]))
            base = float(np.median([w for w, _ in times[(worker.label, f"{arch} natural")]]))
            base_cpu = float(np.median([c for _, c in times[(worker.label, f"{arch} natural")]]))
            horizon = int(name.split("T'=")[1].split()[0]) if "T'=" in name else None
            rows.append({"tree": worker.label, "arch": arch, "variant": name[len(arch) + 1:], "median_s": median,
                         "min_s": float(np.min(walls)), "ratio_to_natural": median / base,
                         "median_cpu_s": cpu, "cpu_ratio_to_natural": cpu / base_cpu,
                         "paper_epoch_ratio": PAPER_RATIO.get(horizon), "reps": len(times[(worker.label, name)])})
    load_after = os.getloadavg()
    threads = args.threads or "default (all cores)"
    weights = f"CONV weights {args.conv_model}" if args.conv_model else "seed-0 initial weights"
    lines = [f"# Robust step vs natural step (batch {BATCH}, T = {T}, float32, eps {args.eps}, threads {threads}, "
             f"{weights})", "",
             f"machine: {platform.platform()}, {os.cpu_count()} cpus; load average before "
             f"{load_before[0]:.2f} / after {load_after[0]:.2f} (1 min)", "",
             f"command: `{' '.join(['python', *sys.argv])}`", "",
             "Wall: median wall-clock seconds; CPU: median process CPU seconds (all threads), each with its "
             "ratio to the natural step of the same tree.", "",
             "| tree | arch | variant | wall s | robust/natural (wall) | CPU s | robust/natural (CPU) "
             "| paper (epoch time) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        paper = f"{row['paper_epoch_ratio']:.1f}x" if row["paper_epoch_ratio"] and "beta=1" in row["variant"] else ""
        lines.append(f"| {row['tree']} | {row['arch']} | {row['variant']} | {row['median_s']:.3f} | "
                     f"{row['ratio_to_natural']:.2f}x | {row['median_cpu_s']:.3f} | "
                     f"{row['cpu_ratio_to_natural']:.2f}x | {paper} |")
    text = "\n".join(lines) + "\n"
    print(text)
    record = {"command": " ".join([sys.executable, *sys.argv]), "machine": {
        "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": load_after},
        "batch": BATCH, "T": T, "eps": args.eps, "threads": args.threads, "conv_model": args.conv_model,
        "rows": rows}
    (out / "bench_robust.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "bench_robust.md").write_text(text)
    print(f"wrote {out / 'bench_robust.json'} and {out / 'bench_robust.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
