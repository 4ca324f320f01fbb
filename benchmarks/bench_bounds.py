"""Benchmark of refsnn's bounds: tightness (S-IBP vs S-CROWN vs best) and speed (S-CROWN vs forward).

(a) Tightness: mean width of the margin bounds ``f_y - f_j`` of S-IBP, S-CROWN and best on the
    paper's FC and CONV nets (random weights; trained weights with ``--model``) for digital l-inf
    sets with eps in {0.005, 0.01, 0.05, 0.12}; how often S-CROWN alone is tighter than S-IBP.
(b) Speed: S-CROWN (including its S-IBP pass) on a batch of 64 at T' in {1, 3, 5, 10}: time per
    batch, ``time(T') / time(1) / T'`` (1.0 = linear in T'), bound throughput next to the forward
    throughput at T = 10 on the same batch, and the ratio at T' = 3 (target <= 10).

All timings of one table are measured in one run, interleaved, median of ``--repeats``.

    python benchmarks/bench_bounds.py                    # full run (a few minutes on 2 cores)
    python benchmarks/bench_bounds.py --quick            # smoke run
    python benchmarks/bench_bounds.py --model trained-fc=runs/x/model.h5
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
from refsnn.bounds import compute_bounds, crown_bounds, interval_bounds, margin_spec  # noqa: E402
from refsnn.crown import normalize_spec  # noqa: E402
from refsnn.data import load_dataset  # noqa: E402
from refsnn.encoders import draw_rand_maps  # noqa: E402
from refsnn.ibp import ibp_spec_bounds  # noqa: E402
from refsnn.input_sets import digital_linf_set  # noqa: E402

EPS_VALUES = (0.005, 0.01, 0.05, 0.12)


def machine_description() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import numba
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        commit = done.stdout.strip() if done.returncode == 0 else "unknown (no git checkout)"
    except OSError:
        commit = "unknown (no git)"
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "thread_env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                       "NUMBA_NUM_THREADS", "MKL_NUM_THREADS")},
        "git_commit": commit, "platform": platform.platform(),
    }


def load_images(count: int, seed: int):
    try:
        images, labels = load_dataset("mnist", "test", limit=None)
        source = "mnist test"
    except Exception:  # the real data set is optional; the embedded subset always exists
        images, labels = load_dataset("mnist-subset", "test", limit=None)
        source = "mnist-subset test (embedded)"
    index = np.random.default_rng(seed).choice(len(images), count, replace=False)
    return images[index], labels[index], source


def load_model(path: str):
    from refsnn.io import load_model as read
    return read(path)


def tightness(nets, images, labels, eps_values, steps, convention, seed):
    rows = []
    for name, net in nets:
        x = images.reshape((len(images),) + net.input_shape)
        rand_maps = draw_rand_maps(np.random.default_rng(seed), steps, x.shape)
        C = margin_spec(labels, net.n_outputs)
        clean_correct = None
        for eps in eps_values:
            dset = digital_linf_set(x, eps, rand_maps, convention=convention)
            if clean_correct is None:
                clean_correct = net.predict(dset.x_clean) == labels
            start = time.perf_counter()
            ib = interval_bounds(net, dset.x_lower, dset.x_upper)
            ibp = ibp_spec_bounds(ib, normalize_spec(C, len(labels), net.n_outputs))
            crown = crown_bounds(net, dset.x_lower, dset.x_upper, C, intermediate=ib, return_coefficients=False)
            best = compute_bounds(net, dset.x_lower, dset.x_upper, method="best", C=C)
            elapsed = time.perf_counter() - start
            result = {"net": name, "eps": eps, "convention": convention, "radius": dset.radius, "steps": steps,
                      "samples": len(labels), "clean_accuracy": float(clean_correct.mean()),
                      "unstable_fraction_per_layer": [round(v, 4) for v in ib.unstable_fraction()]}
            for method, (lower, upper) in (("ibp", ibp), ("crown-ibp", (crown.lower, crown.upper)), ("best", best)):
                result[method] = {
                    "mean_width": float(np.mean(upper - lower)),
                    "mean_lower": float(np.mean(lower)),
                    "certified": float(np.mean(np.all(lower > 0.0, axis=1) & clean_correct)),
                }
            result["crown_tighter_lower"] = float(np.mean(crown.lower > ibp[0]))
            result["crown_tighter_upper"] = float(np.mean(crown.upper < ibp[1]))
            result["crown_narrower"] = float(np.mean(crown.upper - crown.lower < ibp[1] - ibp[0]))
            result["crown_outside_0_1_range"] = float(np.mean((crown.lower < -1.0) | (crown.upper > 1.0)))
            result["seconds"] = round(elapsed, 3)
            rows.append(result)
            print(f"{name:>14} eps={eps:<6} width ibp={result['ibp']['mean_width']:.4f} "
                  f"crown={result['crown-ibp']['mean_width']:.4f} best={result['best']['mean_width']:.4f} | "
                  f"crown tighter: lower {result['crown_tighter_lower']:.1%} upper {result['crown_tighter_upper']:.1%} | "
                  f"certified ibp {result['ibp']['certified']:.1%} crown {result['crown-ibp']['certified']:.1%} "
                  f"best {result['best']['certified']:.1%} | unstable {result['unstable_fraction_per_layer']}",
                  flush=True)
    return rows


def _median_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), [round(t, 4) for t in times]


def speed(archs, images, labels, batch, horizons, repeats, seed, eps=0.05, convention="paper"):
    rows = []
    for arch in archs:
        shape = (784,) if arch == "fc" else (1, 28, 28)
        net = build_network(arch, shape, seed=seed)
        x = images[:batch].reshape((batch,) + shape)
        C = margin_spec(labels[:batch], net.n_outputs)
        rng = np.random.default_rng(seed)
        forward_input = (draw_rand_maps(rng, 10, x.shape) < x[None]).astype(np.uint8)
        boxes = {}
        for steps in horizons:
            dset = digital_linf_set(x, eps, draw_rand_maps(rng, steps, x.shape), convention=convention)
            boxes[steps] = (dset.x_lower, dset.x_upper)
        # Warm-up: Numba compilation and first-touch allocations are not part of the timings.
        compute_bounds(net, boxes[horizons[0]][0][:, :2], boxes[horizons[0]][1][:, :2], method="crown-ibp",
                       C=C[:2])
        net.forward(forward_input[:, :2])
        timings = {"forward": []}
        for steps in horizons:
            timings[("ibp", steps)] = []
            timings[("crown", steps)] = []
        for _ in range(repeats):  # interleaved so load changes hit every measurement alike
            timings["forward"].append(_median_time(lambda: net.forward(forward_input), 1)[0])
            for steps in horizons:
                lower, upper = boxes[steps]
                timings[("ibp", steps)].append(_median_time(
                    lambda: compute_bounds(net, lower, upper, method="ibp", C=C), 1)[0])
                timings[("crown", steps)].append(_median_time(
                    lambda: compute_bounds(net, lower, upper, method="crown-ibp", C=C), 1)[0])
        forward = float(np.median(timings["forward"]))
        base = float(np.median(timings[("crown", horizons[0])])) / horizons[0]
        print(f"{arch}: forward T=10, batch {batch}: {forward:.4f} s ({batch / forward:.0f} samples/s)", flush=True)
        for steps in horizons:
            crown = float(np.median(timings[("crown", steps)]))
            ibp = float(np.median(timings[("ibp", steps)]))
            row = {"arch": arch, "batch": batch, "steps": steps, "n_spec": C.shape[1], "eps": eps,
                   "convention": convention,
                   "ibp_seconds": ibp, "crown_ibp_seconds": crown, "forward_T10_seconds": forward,
                   "crown_samples_per_second": batch / crown, "forward_samples_per_second": batch / forward,
                   "crown_over_forward": crown / forward, "ibp_over_forward": ibp / forward,
                   "linearity_time_over_time1_over_steps": crown / (base * steps) if horizons[0] == 1 else None,
                   "raw_crown_seconds": [round(t, 4) for t in timings[("crown", steps)]],
                   "raw_forward_seconds": [round(t, 4) for t in timings["forward"]]}
            rows.append(row)
            linear = row["linearity_time_over_time1_over_steps"]
            print(f"  T'={steps:<2} S-IBP {ibp:.4f} s | S-CROWN (incl. S-IBP) {crown:.4f} s "
                  f"({batch / crown:.0f} samples/s) = {crown / forward:.2f}x forward"
                  + (f" | time(T')/time(1)/T' = {linear:.2f}" if linear is not None else ""), flush=True)
    return rows


def write_markdown(path: Path, payload: dict) -> None:
    lines = ["# Bounds benchmark", "", f"Command: `{payload['command']}`", "",
             f"Machine: {payload['machine']['cpu']}, {payload['machine']['logical_cpus']} logical CPUs, "
             f"load average at start {payload['machine']['load_average_at_start']}, "
             f"threads {payload['machine']['thread_env']}, numba threads {payload['machine']['numba_threads']}.",
             f"Commit {payload['machine']['git_commit']}. Images: {payload.get('images', '')}.", ""]
    if payload.get("tightness"):
        first = payload["tightness"][0]
        lines += [f"## Tightness: margin bounds f_y - f_j, digital l-inf ({first['convention']} convention), "
                  f"T' = {first['steps']}, {first['samples']} test images", "",
                  "| net | eps | width S-IBP | width S-CROWN | width best | S-CROWN tighter (lower / upper) "
                  "| certified S-IBP / S-CROWN / best | clean acc | unstable per layer |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in payload["tightness"]:
            lines.append(f"| {r['net']} | {r['eps']} | {r['ibp']['mean_width']:.4f} | "
                         f"{r['crown-ibp']['mean_width']:.4f} | {r['best']['mean_width']:.4f} | "
                         f"{r['crown_tighter_lower']:.1%} / {r['crown_tighter_upper']:.1%} | "
                         f"{r['ibp']['certified']:.1%} / {r['crown-ibp']['certified']:.1%} / "
                         f"{r['best']['certified']:.1%} | {r['clean_accuracy']:.1%} | "
                         f"{r['unstable_fraction_per_layer']} |")
        lines.append("")
    if payload.get("speed"):
        lines += ["## Speed: S-CROWN (incl. its S-IBP pass), margin specs, batch 64", "",
                  "| arch | T' | S-IBP s | S-CROWN s | S-CROWN samples/s | forward T=10 samples/s "
                  "| S-CROWN / forward | time(T')/time(1)/T' |", "|---|---|---|---|---|---|---|---|"]
        for r in payload["speed"]:
            linear = r["linearity_time_over_time1_over_steps"]
            lines.append(f"| {r['arch']} | {r['steps']} | {r['ibp_seconds']:.4f} | {r['crown_ibp_seconds']:.4f} | "
                         f"{r['crown_samples_per_second']:.0f} | {r['forward_samples_per_second']:.0f} | "
                         f"{r['crown_over_forward']:.2f} | {'' if linear is None else f'{linear:.2f}'} |")
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run (16 images, T' in {1, 3}, 1 repeat)")
    parser.add_argument("--samples", type=int, default=64, help="test images for the tightness table")
    parser.add_argument("--steps", type=int, default=3, help="T' of the tightness table")
    parser.add_argument("--convention", choices=("paper", "authors"), default="paper")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="trained model file (refsnn HDF5), repeatable")
    parser.add_argument("--no-random", action="store_true", help="skip the random-weight nets in the tightness table")
    parser.add_argument("--skip-tightness", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--archs", nargs="+", default=["fc", "conv"])
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/bounds")
    parser.add_argument("--tag", default=None, help="suffix of the output files (default: quick or full)")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.horizons, args.repeats = 16, [1, 3], 1

    machine = machine_description()
    images, labels, source = load_images(max(args.samples, 64), args.seed)
    payload = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
               "machine": machine, "images": source}
    if not args.skip_tightness:
        nets = [] if args.no_random else [(f"random-{a}", build_network(a, (784,) if a == "fc" else (1, 28, 28),
                                                                        seed=args.seed)) for a in args.archs]
        for spec in args.model:
            name, _, path = spec.partition("=")
            nets.append((name, load_model(path)))
        payload["tightness"] = tightness(nets, images[:args.samples], labels[:args.samples], EPS_VALUES,
                                         args.steps, args.convention, args.seed)
    if not args.skip_speed:
        payload["speed"] = speed(args.archs, images, labels, 64, args.horizons, args.repeats, args.seed)
    payload["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or ("quick" if args.quick else "full")
    (out / f"bench_bounds_{tag}.json").write_text(json.dumps(payload, indent=2))
    write_markdown(out / f"bench_bounds_{tag}.md", payload)
    print(f"wrote {out / f'bench_bounds_{tag}.json'} and .md")


if __name__ == "__main__":
    main()
