"""Event-driven vs dense (BLAS) Linear kernels, spike densities in practice, fused LIF loops.

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/bench_kernels.py [--repeats 5] [--out results/perf]

1. Spike densities: rate-coded input of 256 embedded MNIST test images (T = 10) and the hidden
   layers of results/robust/plain_mnist_fc.h5 and robust_mnist_fc_epoch5.h5 on it.
2. For the FC preset's layer shapes (784->512, 512->256, 256->10) and time x batch = 640 and 2560
   rows, the median time of the dense GEMM and of the event-driven kernel (forward ``x W^T + b``
   and weight gradient ``g^T x``) on random binary inputs over a grid of densities; the crossover
   of a case is the smallest grid density at which BLAS is at least as fast. refsnn.kernels.CROSSOVERS
   holds, per layer width, the smaller crossover of the two row counts.
3. The LIF recurrence and its BPTT: NumPy loop (refsnn.neurons) vs fused Numba loop (refsnn.kernels).
4. The FC network's forward + BPTT on real spikes with the event path off vs on.
5. Conv2d forward of the conv preset's two shapes (1->64 on 28x28, 64->128 on 14x14; 3x3, stride
   2, padding 1; 640 rows): im2col/GEMM vs the event-driven kernels over a grid of densities; the
   crossover of a shape is the smallest grid density at which im2col/GEMM was at least as fast
   (refsnn.kernels.CONV_CROSSOVER: the smaller of the two).
6. The sound S-IBP current bounds (eq. 11, float64) of the 784x512 stage on random 0/1 boxes:
   GEMMs vs the event-driven kernel per upper density (refsnn.ibp.EVENT_INTERVAL_DENSITY).
7. ``--adjoint`` (alone): the training bound graph's Linear coefficient products (adjoint and weight
   gradient, 1,728 rows) BLAS vs event kernels per coefficient density
   (refsnn.kernels.LINEAR_ADJOINT_CROSSOVER), written to linear_adjoint.json.
Writes kernels.json and kernels.md with the command and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refsnn import ibp, kernels  # noqa: E402
from refsnn.neurons import loops  # noqa: E402
from refsnn.neurons import Rectangular, lif_backward, lif_forward  # noqa: E402

DENSITIES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2)
SHAPES = ((784, 512), (512, 256), (256, 10))
ROWS = (640, 2560)


def median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measured_densities():
    from refsnn.data import load_dataset
    from refsnn.encoders import rate_encode
    from refsnn.io import load_model

    images, _ = load_dataset("mnist-subset", "test")
    spikes, _ = rate_encode(images[:256], 10, np.random.default_rng(0))
    out = {"rate_coded_input": float(spikes.mean())}
    for name in ("plain_mnist_fc", "robust_mnist_fc_epoch5"):
        path = Path("results/robust") / f"{name}.h5"
        if not path.exists():
            continue
        trace = load_model(str(path)).run(spikes)
        out[name] = [float(s.mean()) for s in trace.spikes]
    return out


def kernel_grid(repeats):
    rng = np.random.default_rng(0)
    cases = []
    for n_in, n_out in SHAPES:
        weight = rng.normal(0, 1 / np.sqrt(n_in), (n_out, n_in)).astype(np.float32)
        bias = np.zeros(n_out, np.float32)
        for rows in ROWS:
            grad = rng.normal(size=(rows, n_out)).astype(np.float32)
            for density in DENSITIES:
                x = (rng.random((rows, n_in)) < density).astype(np.float32)
                assert np.array_equal(kernels.event_weight_grad(x, grad).shape, (n_out, n_in))
                cases.append({
                    "n_in": n_in, "n_out": n_out, "rows": rows, "density": density,
                    "forward_dense_ms": 1e3 * median_time(lambda: x @ weight.T + bias, repeats),
                    "forward_event_ms": 1e3 * median_time(lambda: kernels.event_linear_forward(x, weight, bias), repeats),
                    "wgrad_dense_ms": 1e3 * median_time(lambda: grad.T @ x, repeats),
                    "wgrad_event_ms": 1e3 * median_time(lambda: kernels.event_weight_grad(x, grad), repeats),
                    "density_count_ms": 1e3 * median_time(lambda: kernels.density(x), repeats)})
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in cases[-1].items()}, flush=True)
    return cases


def crossovers(cases):
    result = {}
    for kind in ("forward", "wgrad"):
        per_case = {}
        for n_in, n_out in SHAPES:
            for rows in ROWS:
                rows_of = [c for c in cases if (c["n_in"], c["n_out"], c["rows"]) == (n_in, n_out, rows)]
                losing = [c["density"] for c in rows_of if c[f"{kind}_dense_ms"] <= c[f"{kind}_event_ms"]]
                per_case[f"{n_in}x{n_out}@{rows}"] = min(losing) if losing else None
        known = [v for v in per_case.values() if v is not None]
        result[kind] = {"per_case": per_case, "min": min(known) if known else max(DENSITIES)}
    return result


def lif_timings(repeats):
    rng = np.random.default_rng(1)
    rows = []
    for batch in (64, 256):
        current = rng.normal(0.2, 0.3, (10, batch, 512)).astype(np.float32)
        membrane, spike = lif_forward(current, 0.25, 0.25)
        grad = rng.normal(size=current.shape).astype(np.float32)
        surrogate = Rectangular()
        fused_m, fused_s = loops.lif_forward_fused(current, 0.25, 0.25)
        assert np.array_equal(fused_m, membrane) and np.array_equal(fused_s, spike)

        def fused_backward():
            derivative = surrogate.derivative(membrane - np.float32(0.25))
            return loops.lif_backward_fused(membrane, spike, grad, derivative, 0.25)

        assert np.array_equal(fused_backward(), lif_backward(membrane, spike, grad, 0.25, 0.25, surrogate))
        rows.append({"shape": list(current.shape),
                     "forward_numpy_ms": 1e3 * median_time(lambda: lif_forward(current, 0.25, 0.25), repeats),
                     "forward_fused_ms": 1e3 * median_time(lambda: loops.lif_forward_fused(current, 0.25, 0.25), repeats),
                     "backward_numpy_ms": 1e3 * median_time(
                         lambda: lif_backward(membrane, spike, grad, 0.25, 0.25, surrogate), repeats),
                     "backward_fused_ms": 1e3 * median_time(fused_backward, repeats)})
        print(rows[-1], flush=True)
    return rows


def network_timings(repeats):
    from refsnn.data import load_dataset
    from refsnn.encoders import rate_encode
    from refsnn.io import load_model

    path = Path("results/robust/plain_mnist_fc.h5")
    if not path.exists():
        return []
    net = load_model(str(path))
    images, labels = load_dataset("mnist-subset", "test")
    rows = []
    for batch in (64, 256):
        spikes, _ = rate_encode(images[:batch], 10, np.random.default_rng(0))
        grad_rates = np.random.default_rng(2).normal(size=(batch, 10)).astype(np.float32)

        def step():
            trace = net.run(spikes)
            return net.backward(trace, grad_rates)

        row = {"batch": batch}
        for mode, values in (("dense", ("0", "0")), ("event", (None, None))):
            for variable, value in zip(("REFSNN_EVENT_FORWARD", "REFSNN_EVENT_WGRAD"), values):
                if value is None:
                    os.environ.pop(variable, None)
                else:
                    os.environ[variable] = value
            row[f"forward_{mode}_ms"] = 1e3 * median_time(lambda: net.run(spikes), repeats)
            row[f"step_{mode}_ms"] = 1e3 * median_time(step, repeats)
        rows.append(row)
        print(row, flush=True)
    return rows


CONV_SHAPES = ((1, 64, 28), (64, 128, 14))   # (in channels, out channels, input size) of the conv preset
CONV_DENSITIES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


def conv_grid(repeats, rows=640):
    """Conv2d (3x3, stride 2, padding 1) forward: im2col/GEMM vs event-driven, per input density."""
    from refsnn.layers import Conv2d
    rng = np.random.default_rng(1)
    cases = []
    for channels, out_channels, size in CONV_SHAPES:
        conv = Conv2d(rng.normal(0, 1 / np.sqrt(9 * channels), (out_channels, channels, 3, 3)).astype(np.float32),
                      np.zeros(out_channels, np.float32), 2, 1)
        conv.output_shape((channels, size, size))
        geometry = conv._geometry((channels, size, size))
        for density in CONV_DENSITIES:
            x = (rng.random((rows, channels, size, size)) < density).astype(np.float32)
            cases.append({"channels": channels, "out_channels": out_channels, "size": size, "rows": rows,
                          "density": density,
                          "dense_ms": 1e3 * median_time(lambda: conv._linear(x, conv.weight, conv.bias), repeats),
                          "event_ms": 1e3 * median_time(
                              lambda: kernels.event_conv_forward(x, conv.weight, conv.bias, geometry), repeats)})
            print(cases[-1], flush=True)
    per_shape = {}
    for channels, out_channels, size in CONV_SHAPES:
        losing = [c["density"] for c in cases if c["channels"] == channels and c["dense_ms"] <= c["event_ms"]]
        per_shape[f"{channels}x{out_channels}@{size}"] = min(losing) if losing else None
    return cases, per_shape


INTERVAL_DENSITIES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35)


def interval_grid(repeats, rows=192):
    """Sound S-IBP eq. 11 of the 784x512 stage (float64): the event-driven kernel vs the GEMMs, on
    random 0/1 boxes with the given upper density, half of the set bits free."""
    from refsnn.layers import Linear

    class _Stage:  # the attributes PreparedStage reads
        def __init__(self, layer):
            self.ops, self.input_shape, self.neuron_shape = [layer], (784,), (512,)

    rng = np.random.default_rng(2)
    layer = Linear(rng.normal(0, 1 / 28, (512, 784)).astype(np.float32), np.zeros(512, np.float32))
    layer.input_shape = (784,)
    stage = ibp.PreparedStage(_Stage(layer))
    cases = []
    saved = ibp.EVENT_INTERVAL_DENSITY
    try:
        for density in INTERVAL_DENSITIES:
            upper = (rng.random((rows, 784)) < density).astype(np.float64)
            lower = upper * (rng.random((rows, 784)) < 0.5)
            timing = {}
            for mode, limit in (("event", 1.0), ("dense", 0.0)):
                ibp.EVENT_INTERVAL_DENSITY = limit
                timing[mode] = 1e3 * median_time(lambda: stage.binary_interval(lower, upper, True), repeats)
            cases.append({"rows": rows, "density": density, "event_ms": timing["event"], "dense_ms": timing["dense"]})
            print(cases[-1], flush=True)
    finally:
        ibp.EVENT_INTERVAL_DENSITY = saved
    losing = [c["density"] for c in cases if c["dense_ms"] <= c["event_ms"]]
    return cases, (min(losing) if losing else None)


ADJOINT_SHAPES = ((512, 256), (6272, 256))   # (in, out) of the FC and CONV presets' 256-neuron Linear stages
ADJOINT_DENSITIES = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
ADJOINT_ROWS = 3 * 64 * 9   # T' x batch x specs of the robust step (T' = 3, batch 64, 9 margins)


def linear_adjoint_grid(repeats, rows=ADJOINT_ROWS):
    """The bound graph's Linear coefficient products on random coefficients of each density:
    adjoint ``coef @ W`` and weight gradient ``coef^T x`` (dense x), BLAS vs the event kernels; the
    crossover of a case is the smallest density at which BLAS was at least as fast
    (refsnn.kernels.LINEAR_ADJOINT_CROSSOVER: the smallest over the shapes and both products)."""
    rng = np.random.default_rng(2)
    cases = []
    for n_in, n_out in ADJOINT_SHAPES:
        weight = rng.normal(0, 1 / np.sqrt(n_in), (n_out, n_in)).astype(np.float32)
        x = rng.normal(size=(rows, n_in)).astype(np.float32)
        for density in ADJOINT_DENSITIES:
            coef = (rng.normal(size=(rows, n_out)) * (rng.random((rows, n_out)) < density)).astype(np.float32)
            cases.append({
                "n_in": n_in, "n_out": n_out, "rows": rows, "density": density,
                "adjoint_dense_ms": 1e3 * median_time(lambda: coef @ weight, repeats),
                "adjoint_event_ms": 1e3 * median_time(lambda: kernels.event_linear_transpose(coef, weight), repeats),
                "wgrad_dense_ms": 1e3 * median_time(lambda: coef.T @ x, repeats),
                "wgrad_event_ms": 1e3 * median_time(lambda: kernels.event_coef_weight_grad(x, coef), repeats)})
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in cases[-1].items()}, flush=True)
    per_case = {}
    for n_in, n_out in ADJOINT_SHAPES:
        for kind in ("adjoint", "wgrad"):
            of = [c for c in cases if (c["n_in"], c["n_out"]) == (n_in, n_out)]
            losing = [c["density"] for c in of if c[f"{kind}_dense_ms"] <= c[f"{kind}_event_ms"]]
            per_case[f"{kind} {n_in}x{n_out}@{rows}"] = min(losing) if losing else None
    known = [v for v in per_case.values() if v is not None]
    return cases, {"per_case": per_case, "min": min(known) if known else max(ADJOINT_DENSITIES)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="runs/bench/kernels")
    parser.add_argument("--adjoint", action="store_true",
                        help="only the bound graph's Linear coefficient products (linear_adjoint.json)")
    args = parser.parse_args(argv)
    started = time.time()
    if args.adjoint:
        cases, found = linear_adjoint_grid(args.repeats)
        print("linear adjoint crossovers", json.dumps(found), flush=True)
        document = {
            "command": "python benchmarks/bench_kernels.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "threads": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")},
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "load_average_at_end": list(os.getloadavg())},
            "linear_adjoint_crossover_in_code": kernels.LINEAR_ADJOINT_CROSSOVER,
            "crossovers": found, "kernels": cases, "seconds": round(time.time() - started, 1)}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "linear_adjoint.json").write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {out / 'linear_adjoint.json'}")
        return
    densities = measured_densities()
    print("densities", densities, flush=True)
    cases = kernel_grid(args.repeats)
    found = crossovers(cases)
    print("crossovers", json.dumps(found), flush=True)
    conv_cases, conv_crossover = conv_grid(args.repeats)
    print("conv crossovers", conv_crossover, flush=True)
    interval_cases, interval_crossover = interval_grid(args.repeats)
    print("interval crossover", interval_crossover, flush=True)
    lif = lif_timings(args.repeats)
    network = network_timings(args.repeats)
    document = {
        "command": "python benchmarks/bench_kernels.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "threads": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "numpy": np.__version__,
                    "load_average_at_end": list(os.getloadavg()), "note": "2-core shared VM, under load"},
        "crossovers_in_code": [list(entry) for entry in kernels.CROSSOVERS],
        "conv_crossover_in_code": kernels.CONV_CROSSOVER,
        "densities": densities, "crossovers": found, "kernels": cases,
        "conv_crossover": conv_crossover, "conv_kernels": conv_cases,
        "interval_crossover_in_code": ibp.EVENT_INTERVAL_DENSITY,
        "interval_crossover": interval_crossover, "interval_kernels": interval_cases,
        "lif": lif, "network_fc": network,
        "seconds": round(time.time() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out / 'kernels.json'}")


if __name__ == "__main__":
    main()
