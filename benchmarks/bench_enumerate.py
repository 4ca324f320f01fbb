"""Members per second of an enumerated leaf: the chunked reduced pass, the Gray-code enumeration,
and the Gray-code enumeration that closes sweeps of last-step variables by intervals.

Per sample of a ``verify.dataset`` protocol selection (``--indices``), ``verify.robust_bab`` with the
whole set as one leaf (``enumerate_always`` above its size; falsification off), once per mode and
repetition, modes interleaved so that the ratios come from one run on one machine:

- ``chunks``: ``verify.enumerate.reduced_spike_counts`` on chunks of 4,096 members (the Gray path off);
- ``gray``: ``verify.enumerate.gray_margins`` evaluating every member (``close_sweeps=False``);
- ``gray-sweeps``: the default, sweeps of last-step variables closed by intervals where they can be.

    python benchmarks/bench_enumerate.py --model results/budget/mnist-fc/plain/model.h5 --dataset mnist \\
        --eps 0.02 --indices 1759,415,485 --out runs/bench_enumerate/report.json
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import numpy as np

import verify.bab as bab
from _samples import add_sample_arguments, load_samples
from verify.bab import BabConfig, robust_bab
from verify.dataset import sample_set
from verify.enumerate import gray_margins

MODES = ("chunks", "gray", "gray-sweeps")


def _run(mode: str, net, subset, label: int, seed: int, index: int) -> dict:
    bab.gray_margins = {"chunks": lambda *args, **kwargs: None,
                        "gray": functools.partial(gray_margins, close_sweeps=False),
                        "gray-sweeps": gray_margins}[mode]
    config = BabConfig(time_limit=None, enumerate_always=subset.count() + 1, attack_samples=0, search_starts=0,
                       restarts=0, root_milp=0.0)
    try:
        tic = time.perf_counter()
        result = robust_bab(net, subset, label, config, rng=np.random.default_rng([seed, index, 1]))
        seconds = time.perf_counter() - tic
    finally:
        bab.gray_margins = gray_margins
    return {"mode": mode, "status": result.status, "margin_lower": result.margin_lower, "seconds": seconds,
            "members_per_second": subset.count() / seconds, "exact_replays": result.stats["exact_replays"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser, dataset="mnist", eps=0.02)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", default="runs/bench_enumerate/report.json")
    args = parser.parse_args(argv)
    modes = [mode for mode in args.modes.split(",") if mode]
    if not modes or any(mode not in MODES for mode in modes):
        parser.error(f"--modes must name some of {', '.join(MODES)}")
    net, config, indices, x, labels = load_samples(args)
    subset0, _ = sample_set(x[0], int(indices[0]), config)
    _run(modes[-1], net, subset0, int(labels[0]), args.seed, int(indices[0]))   # compiles the kernels
    rows = []
    for index, sample, label in zip(indices, x, labels):
        subset, _ = sample_set(sample, int(index), config)
        for rep in range(args.reps):
            for mode in modes:
                row = {"index": int(index), "members": subset.count(), "rep": rep,
                       **_run(mode, net, subset, int(label), args.seed, int(index))}
                rows.append(row)
                print(f"{row['index']:>6} 2^{np.log2(row['members']):.1f} {mode:<12} {row['status']:<10} "
                      f"{row['seconds']:8.2f} s {row['members_per_second'] / 1e3:10.0f} k/s", flush=True)
    print("\nmedian members/s and ratio to chunks, per sample:")
    summary = []
    for index in indices:
        medians = {mode: float(np.median([r["members_per_second"] for r in rows
                                          if r["index"] == int(index) and r["mode"] == mode])) for mode in modes}
        verdicts = {r["status"] for r in rows if r["index"] == int(index)}
        line = {"index": int(index), "median_members_per_second": medians, "verdicts": sorted(verdicts)}
        if "chunks" in medians:
            line["ratio_to_chunks"] = {mode: medians[mode] / medians["chunks"] for mode in modes}
        summary.append(line)
        print(json.dumps(line))
        if len(verdicts) > 1:
            print(f"WARNING: sample {int(index)} got different verdicts from different modes: {sorted(verdicts)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python benchmarks/bench_enumerate.py " + " ".join(argv or []),
                               "machine": {"platform": platform.platform(), "processor": platform.processor()},
                               "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    import sys
    raise SystemExit(main(sys.argv[1:]))
