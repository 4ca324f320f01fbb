"""Time per natural-training step and per MNIST epoch, FC and CONV presets, float32/float64.

One step = Bernoulli encoding of a batch (eq. 13) + forward + loss + manual BPTT + SGD update,
batch 64, T = 10 (the unit the authors' numbers refer to: FC 0.024 s, CONV 0.23 s per step on a
2-core CPU). The epoch time is extrapolated from the timed steps: 60,000 / 64 = 938 steps.

The CONV preset is also timed with the previous convolution (strided windows + tensordot +
windowed scatter, kept here as ``TensordotConv2d``) so the speed-up is a ratio measured in the
same run, on the same machine and load. Steps alternate between variants and the MEDIAN of
the repetitions is reported (the minimum too), because the machine may be shared. The process
CPU time per step is reported as well: on a loaded machine, run with
``OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1`` and read the CPU time, which then approximates
the single-core time of a quiet machine (wall times of multithreaded BLAS degrade badly when
other processes compete for the cores).

    python benchmarks/bench_train.py [--steps 10] [--out runs/bench/bench_train.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refsnn.architectures import build_network  # noqa: E402
from refsnn.data import load_dataset  # noqa: E402
from refsnn.encoders import rate_encode  # noqa: E402
from refsnn.layers import Conv2d, _conv_windows, _scatter_windows  # noqa: E402
from refsnn.losses import rate_cross_entropy  # noqa: E402
from refsnn.network import SNN  # noqa: E402
from refsnn.optim import SGD  # noqa: E402

BATCH, STEPS_T, EPOCH_STEPS = 64, 10, 60000 / 64
AUTHORS_STEP_SECONDS = {"fc": 0.024, "conv": 0.23}  # docs/semantics-and-pitfalls.md, 2-core CPU


class TensordotConv2d(Conv2d):
    """The convolution before im2col/GEMM: windows view + tensordot, scatter by kernel offset."""

    def _linear(self, x, weight, bias=None):
        windows = _conv_windows(x, self.kernel_size, self.stride, self.padding)
        out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
        return out if bias is None else out + bias[None, :, None, None]

    def transpose(self, coef):
        cols = np.tensordot(coef, self.weight, axes=([1], [0])).transpose(0, 3, 1, 2, 4, 5)
        return _scatter_windows(cols, self._require_input_shape(), self.kernel_size, self.stride, self.padding)

    def backward(self, x, grad_out):
        windows = _conv_windows(x, self.kernel_size, self.stride, self.padding)
        grad_weight = np.tensordot(grad_out, windows, axes=([0, 2, 3], [0, 2, 3]))
        return self.transpose(grad_out), {"weight": grad_weight, "bias": grad_out.sum(axis=(0, 2, 3))}

    def astype(self, dtype):
        layer = TensordotConv2d(self.weight.astype(dtype), self.bias.astype(dtype), self.stride, self.padding)
        layer.input_shape = self.input_shape
        return layer


def legacy_conv_net(net: SNN) -> SNN:
    layers = [TensordotConv2d(layer.weight, layer.bias, layer.stride, layer.padding)
              if isinstance(layer, Conv2d) else layer for layer in net.layers]
    return SNN(layers, input_shape=net.input_shape, dtype=net.dtype)


def make_step(net: SNN, images: np.ndarray, labels: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    optimizer = SGD(net.params(), lr=0.01, momentum=0.9)

    def step():
        index = rng.integers(0, len(images), BATCH)
        spikes, _ = rate_encode(images[index], STEPS_T, rng)
        trace = net.run(spikes, validate=False)
        _, grad_rates = rate_cross_entropy(trace.rates, labels[index])
        grads, _ = net.backward(trace, grad_rates)
        optimizer.step(grads)

    return step


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()[:15]
    except (OSError, subprocess.CalledProcessError):
        lscpu = []
    return {"platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "cpu_count": os.cpu_count(), "lscpu": lscpu, "loadavg_start": os.getloadavg(),
            "thread_settings": {key: os.environ.get(key) for key in THREAD_VARIABLES}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--arch", nargs="+", default=["fc", "conv"])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--no-legacy", action="store_true", help="skip the tensordot convolution baseline")
    parser.add_argument("--out", default="runs/bench/bench_train.json",
                        help="default under runs/; committed evidence only with --out results/...")
    args = parser.parse_args(argv)

    machine_info = machine()  # load average before the timed work
    images, labels = load_dataset("mnist-subset", "train")
    variants = {}
    for arch in args.arch:
        for dtype in args.dtype:
            net = build_network(arch, (1, 28, 28), seed=0, dtype=np.dtype(dtype))
            variants[f"{arch}-{dtype}"] = make_step(net, images, labels, 0)
            if arch == "conv" and not args.no_legacy:
                variants[f"conv-{dtype}-tensordot"] = make_step(legacy_conv_net(net), images, labels, 0)
    times = {name: [] for name in variants}
    cpu_times = {name: [] for name in variants}
    for step in variants.values():  # warm-up: Numba compilation, BLAS threads, caches
        step()
        step()
    for _ in range(args.steps):  # interleaved, so load changes hit all variants alike
        for name, step in variants.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            step()
            times[name].append(time.perf_counter() - started)
            cpu_times[name].append(time.process_time() - cpu_started)

    results = {}
    for name, samples in times.items():
        median, best = float(np.median(samples)), float(np.min(samples))
        arch = name.split("-")[0]
        results[name] = {"step_seconds_median": median, "step_seconds_min": best,
                         "step_cpu_seconds_median": float(np.median(cpu_times[name])),
                         "epoch_seconds_estimate": median * EPOCH_STEPS, "samples": samples,
                         "ratio_to_authors_pytorch_step": median / AUTHORS_STEP_SECONDS[arch]}
    for dtype in args.dtype:
        new, old = results.get(f"conv-{dtype}"), results.get(f"conv-{dtype}-tensordot")
        if new and old:
            new["speedup_vs_tensordot_conv"] = old["step_seconds_median"] / new["step_seconds_median"]

    report = {"command": "python " + " ".join([sys.argv[0]] + list(argv if argv is not None else sys.argv[1:])),
              "batch": BATCH, "T": STEPS_T, "steps_per_epoch": EPOCH_STEPS, "timed_steps": args.steps,
              "machine": machine_info, "results": results}
    report["machine"]["loadavg_end"] = os.getloadavg()
    print(f"{'variant':24s} {'step median':>12s} {'step min':>10s} {'cpu median':>11s} {'epoch est.':>11s}  notes")
    for name, row in results.items():
        notes = f"{row['ratio_to_authors_pytorch_step']:.2f}x the authors' PyTorch step"
        if "speedup_vs_tensordot_conv" in row:
            notes += f", {row['speedup_vs_tensordot_conv']:.2f}x faster than the tensordot conv"
        print(f"{name:24s} {row['step_seconds_median']:10.3f} s {row['step_seconds_min']:8.3f} s "
              f"{row['step_cpu_seconds_median']:9.3f} s "
              f"{row['epoch_seconds_estimate']:9.0f} s  {notes}")
    print(f"load average start {report['machine']['loadavg_start']}, end {report['machine']['loadavg_end']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
