"""CONV natural BPTT step vs the machine: achieved GFLOP/s, NumPy's float32 GEMM GFLOP/s, old vs new.

The paper's CONV network ``X-C64K3S2-C128K3S2-FC256-FC10`` (``build_network("conv", (1, 28, 28))``),
float32, T = 10, one natural training step = forward + rate cross-entropy + manual BPTT with
``input_grad=False`` (as ``refsnn.train``), at each batch size and thread count asked for.

FLOP count (dense, 2 FLOP per multiply-add, whatever the event-driven kernels skip): for every
Conv2d/Linear on ``N = T * B`` rows, ``MACs = N * P * O * K`` (conv: ``P = OH*OW`` output positions,
``K = C*kh*kw``; linear: ``P = 1``, ``K = in``), counted once for the forward, once for the weight
gradient and once for the input gradient, except the first layer's input gradient (not computed
in training). The GEMM reference times NumPy's float32 ``matmul`` on exactly these products (the
shapes the im2col/GEMM layers use) at the same thread count in the same process: ``GEMM GFLOP/s``
= step FLOPs / summed GEMM time, and ``ratio`` = achieved / GEMM (target >= 50 %).

Workers keep freed memory mapped (``refsnn.memory.keep_freed_memory``), as ``refsnn.train``'s loop
does for its steps (``freed_memory_kept``): without it every array above glibc's mmap threshold is
a fresh mapping whose pages the kernel faults in and zeroes at each step, which cost the batch-256
step more system time than its GEMMs once the reference's GEMMs had freed their own large arrays;
``--fresh-memory`` measures that way instead; then the step that runs first after the GEMMs (which free
over 1 GB at batch 256) pays several-fold the system time of the other, so with an odd number of
repeats the side that went first more often looks slower (results/perf/conv.json of 791cfc5, batch 256,
one thread: 6.03, 5.85, 5.81 s for whichever step went first, 4.14, 4.67, 4.39 s for the second, so
new 5.81 s vs old 4.67 s). Each thread count runs in fresh worker processes with ``REFSNN_NUM_THREADS`` (and OpenBLAS/OMP/
Numba's own variables, for the old tree) set before import; the new tree and the old revision
(``--old``, exported with ``git archive`` into a temporary folder) take turns step by step so
both see the same load. Medians of ``--repeats``, of wall time and of each worker's process CPU time
(``time.process_time``: what the step itself costs, whatever else the shared machine runs) and of
its user part (``getrusage``; the system part, page faults of fresh arrays, varies several-fold);
the GEMM reference's process CPU time is recorded as well, so ``CPU ratio`` = GEMM CPU / step CPU
compares what each costs whatever share of the cores the shared machine gives the worker.

    python benchmarks/bench_conv.py [--batches 64 256] [--threads 1 2] [--repeats 5]
                                    [--old bd82eb6] [--fresh-memory] [--out runs/bench/conv]

Writes ``OUT.json`` and ``OUT.md`` (default ``runs/bench/conv``; committed evidence only with
``--out results/perf/conv``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Tuple

REPO = Path(__file__).resolve().parents[1]

WORKER = r'''
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import numba
kept = False
if sys.argv[3] == "kept":
    try:  # revisions before refsnn.memory existed run with fresh memory; the report says which
        from refsnn import memory
        kept = memory.keep_freed_memory()
    except ImportError:
        kept = False
from refsnn.architectures import build_network
from refsnn.data import load_dataset
from refsnn.encoders import rate_encode
from refsnn.losses import rate_cross_entropy

batch, steps_t = int(sys.argv[2]), 10
net = build_network("conv", (1, 28, 28), seed=0, dtype=np.float32)
images, labels = load_dataset("mnist-subset", "train")
rng = np.random.default_rng(0)
index = rng.integers(0, len(images), batch)
spikes, _ = rate_encode(images[index], steps_t, rng)
spikes = spikes.astype(np.float32)
labels = labels[index]
rows = steps_t * batch

# the products of one step, in the layouts of refsnn.layers (operands [m, k] @ [k, n])
products, first = [], True
for stage in net.stages:
    layer = stage.affine
    if layer.kind == "conv2d":
        out_channels = layer.weight.shape[0]
        k = int(np.prod(layer.weight.shape[1:]))
        positions = int(np.prod(stage.neuron_shape[1:]))
        columns = rows * positions
        products.append((out_channels, k, columns))                      # forward W @ cols
        products.append((max(k, out_channels), columns, min(k, out_channels)))  # weight gradient
        if not first:
            products.append((k, out_channels, columns))                  # input gradient W.T @ rows
    else:
        n_in, n_out = layer.in_features, layer.out_features
        products.append((rows, n_in, n_out))                              # forward x @ W.T
        products.append((n_out, rows, n_in))                              # weight gradient g.T @ x
        if not first:
            products.append((rows, n_out, n_in))                          # input gradient g @ W
    first = False
flops = sum(2 * m * k * n for m, k, n in products)
operands = [(rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32))
            for m, k, n in products]


def step():
    trace = net.run(spikes, validate=False)
    _, grad_rates = rate_cross_entropy(trace.rates, labels)
    net.backward(trace, grad_rates, input_grad=False)


def gemms():
    for a, b in operands:
        a @ b


work = {"step": step, "gemm": gemms}
step(); step(); gemms()  # warm-up: Numba compilation, BLAS threads, caches
print(json.dumps({"flops": flops, "products": products, "numba_threads": numba.get_num_threads(),
                  "freed_memory_kept": kept}), flush=True)
for line in sys.stdin:
    started, started_cpu = time.perf_counter(), time.process_time()
    started_user = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    work[line.strip()]()
    print(json.dumps([time.perf_counter() - started, time.process_time() - started_cpu,
                      resource.getrusage(resource.RUSAGE_SELF).ru_utime - started_user]), flush=True)
'''

THREAD_VARIABLES = ("REFSNN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")


class Worker:
    def __init__(self, tree: Path, batch: int, threads: int, memory: str = "kept"):
        env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(tree), str(batch), memory], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=tree, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker for {tree} failed to start")
        self.info = json.loads(line)

    def time(self, what: str) -> Tuple[float, float, float]:
        """Wall, process CPU and user CPU seconds of one ``what`` in the worker."""
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        wall, cpu, user = json.loads(self.proc.stdout.readline())
        return wall, cpu, user

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if len(ordered) % 2 else 0.5 * (ordered[len(ordered) // 2 - 1]
                                                                       + ordered[len(ordered) // 2])


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        lscpu = []
    model = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "?")
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": model,
            "cpu_count": os.cpu_count()}


def export_revision(revision: str, folder: Path) -> Path:
    """The ``refsnn`` package of ``revision`` (plus its data files) in ``folder``, via ``git archive``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "refsnn"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _memory_sentence(report: dict) -> str:
    """What the workers really did with freed memory (from each row's own record, not from the flag)."""
    if report.get("fresh_memory"):
        return "NOT kept (--fresh-memory): every step faults its large arrays in."
    rows = report.get("rows", [])
    new_kept = [row.get("freed_memory_kept") for row in rows]
    old_kept = [row.get("old_freed_memory_kept") for row in rows if "old_freed_memory_kept" in row]
    if new_kept and all(new_kept) and all(old_kept):
        return "kept mapped in every worker (new and old), as in refsnn.train's loop."
    return (f"asked to be kept mapped, as in refsnn.train's loop; kept in new workers: {new_kept}, "
            f"old workers: {old_kept or 'not recorded'} (refsnn.memory.keep_freed_memory refuses on "
            "non-glibc systems or when REFSNN_KEEP_FREED_MEMORY=0 or MALLOC_* settings are present).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per side (median reported)")
    parser.add_argument("--old", default="bd82eb6", help="git revision timed as 'old' ('' to skip)")
    parser.add_argument("--fresh-memory", action="store_true",
                        help="do not keep freed memory mapped in the workers (every step faults its arrays in)")
    parser.add_argument("--out", default="runs/bench/conv", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    for name, values in (("--batches", args.batches), ("--threads", args.threads)):
        if min(values) < 1:
            print(f"bench_conv: {name} must be integers >= 1, got {values}", file=sys.stderr)
            return 2
    if args.repeats < 1:
        print(f"bench_conv: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv or sys.argv[1:]))
    load_start = os.getloadavg()
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_conv_old_") as scratch:
        old_tree = export_revision(args.old, Path(scratch)) if args.old else None
        for threads in args.threads:
            for batch in args.batches:
                memory = "fresh" if args.fresh_memory else "kept"
                new = Worker(REPO, batch, threads, memory)
                old = Worker(old_tree, batch, threads, memory) if old_tree else None
                times = {"new": [], "old": [], "gemm": []}
                gemm_cpu = []
                cpu, user = {"new": [], "old": []}, {"new": [], "old": []}
                for rep in range(args.repeats):
                    wall, seconds, _ = new.time("gemm")
                    times["gemm"].append(wall)
                    gemm_cpu.append(seconds)
                    order = [("new", new), ("old", old)] if rep % 2 == 0 else [("old", old), ("new", new)]
                    for side, worker in order:
                        if worker is not None:
                            wall, seconds, user_seconds = worker.time("step")
                            times[side].append(wall)
                            cpu[side].append(seconds)
                            user[side].append(user_seconds)
                for worker in (new, old):
                    if worker is not None:
                        worker.close()
                flops = new.info["flops"]
                step_new, gemm = median(times["new"]), median(times["gemm"])
                row = {"threads": threads, "batch": batch, "numba_threads": new.info["numba_threads"],
                       "gflop_per_step": flops / 1e9, "step_new_s": step_new, "gemm_s": gemm,
                       "achieved_gflops": flops / step_new / 1e9, "gemm_gflops": flops / gemm / 1e9,
                       "ratio_to_gemm": gemm / step_new, "samples": times, "cpu_samples": cpu,
                       "user_samples": user, "step_new_cpu_s": median(cpu["new"]),
                       "gemm_cpu_samples": gemm_cpu, "gemm_cpu_s": median(gemm_cpu),
                       "cpu_ratio_to_gemm": median(gemm_cpu) / median(cpu["new"]),
                       "freed_memory_kept": new.info["freed_memory_kept"],
                       "step_new_user_s": median(user["new"]), "loadavg": os.getloadavg()}
                if times["old"]:
                    row["step_old_s"] = median(times["old"])
                    row["old_freed_memory_kept"] = old.info.get("freed_memory_kept", False)
                    row["speedup_vs_old"] = row["step_old_s"] / step_new
                    row["step_old_cpu_s"] = median(cpu["old"])
                    row["cpu_speedup_vs_old"] = row["step_old_cpu_s"] / row["step_new_cpu_s"]
                    row["user_speedup_vs_old"] = median(user["old"]) / row["step_new_user_s"]
                rows.append(row)
                old_text = (f"  old {row['step_old_s']:.3f} s ({row['speedup_vs_old']:.2f}x faster; process CPU "
                            f"{row['cpu_speedup_vs_old']:.2f}x, user CPU {row['user_speedup_vs_old']:.2f}x)" if "step_old_s" in row else "")
                print(f"threads {threads} batch {batch:4d}: step {step_new:.3f} s = {row['achieved_gflops']:.1f} "
                      f"GFLOP/s; GEMM {row['gemm_gflops']:.1f} GFLOP/s; ratio {100 * row['ratio_to_gemm']:.0f} % "
                      f"(CPU ratio {100 * row['cpu_ratio_to_gemm']:.0f} %)"
                      f"{old_text}  (load {row['loadavg'][0]:.2f})", flush=True)

    report = {"command": command, "revision": revision, "old_revision": args.old, "T": 10, "dtype": "float32",
              "network": "X-C64K3S2-C128K3S2-FC256-FC10", "time_utc": time.strftime("%Y-%m-%d %H:%M:%S",
                                                                                   time.gmtime()),
              "machine": machine(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
              "repeats": args.repeats, "fresh_memory": args.fresh_memory, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def markdown(report: dict) -> str:
    lines = [
        "# CONV natural BPTT step vs NumPy's float32 GEMM (benchmarks/bench_conv.py)",
        "",
        f"Command: `{report['command']}` at revision {report['revision']} ({report['time_utc']} UTC); old = "
        f"revision {report['old_revision']} in the same run. Machine: {report['machine']['cpu']}, "
        f"{report['machine']['cpu_count']} cores, {report['machine']['platform']}. Load average (1/5/15 min) "
        f"at start {tuple(round(x, 2) for x in report['loadavg_start'])}, at end "
        f"{tuple(round(x, 2) for x in report['loadavg_end'])}; the machine is shared, so only ratios measured "
        "in the same run mean something.",
        "",
        f"Network {report['network']}, {report['dtype']}, T = {report['T']}; step = forward + loss + BPTT "
        "(input_grad=False). FLOPs: dense conv/linear multiply-adds x 2 (forward, weight gradient, input "
        "gradient except the first layer). GEMM = NumPy matmul on the same products, same threads, same "
        f"process. Medians of {report['repeats']}. CPU = the worker's process CPU time per step (all its "
        "threads, user + system; other jobs on the machine do not count in it, page faults do); user = its "
        "user part (without the kernel's page-fault work, which varies several-fold between steps). GEMM CPU = "
        "the reference's process CPU time; CPU ratio = GEMM CPU / step CPU (new). Freed memory "
        + _memory_sentence(report),
        "",
        "| threads | batch | GFLOP/step | step new (s) | step old (s) | new vs old | CPU new (s) | CPU old (s) | "
        "CPU new vs old | user CPU new vs old | achieved GFLOP/s | GEMM GFLOP/s | achieved / GEMM | GEMM CPU (s) | "
        "CPU ratio | load (1 min) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        old = f"{row['step_old_s']:.3f}" if "step_old_s" in row else "-"
        speedup = f"{row['speedup_vs_old']:.2f}x" if "speedup_vs_old" in row else "-"
        cpu_new = f"{row['step_new_cpu_s']:.3f}" if "step_new_cpu_s" in row else "-"
        cpu_old = f"{row['step_old_cpu_s']:.3f}" if "step_old_cpu_s" in row else "-"
        cpu_speedup = f"{row['cpu_speedup_vs_old']:.2f}x" if "cpu_speedup_vs_old" in row else "-"
        user_speedup = f"{row['user_speedup_vs_old']:.2f}x" if "user_speedup_vs_old" in row else "-"
        lines.append(f"| {row['threads']} | {row['batch']} | {row['gflop_per_step']:.2f} | {row['step_new_s']:.3f} | "
                     f"{old} | {speedup} | {cpu_new} | {cpu_old} | {cpu_speedup} | {user_speedup} | {row['achieved_gflops']:.1f} | "
                     f"{row['gemm_gflops']:.1f} | "
                     f"{100 * row['ratio_to_gemm']:.0f} % | {row['gemm_cpu_s']:.3f} | "
                     f"{100 * row['cpu_ratio_to_gemm']:.0f} % | {row['loadavg'][0]:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
