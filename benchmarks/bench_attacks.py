"""How close do the attacks come to the exact answer? Attacks vs the MILP verifier on a small SNN.

A small FC SNN (196-32-16-10, T = 4) is trained on the embedded MNIST subset downsampled to
14x14 (2x2 average pooling); for each eps, every correctly classified test sample is decided exactly
(``verify.robust_query`` on the exact digital l-inf set with the evaluation rand maps, all
classes solved) and attacked with the paper attack and with ``Strongest``; S-IBP/S-CROWN
certification (``refsnn.bounds.certify``) is run on the same sets. Printed per eps: samples
exactly misclassifiable (a member is predicted as another class, ties to the lowest index as
``SNN.predict``), found by each attack (share of the misclassifiable ones), certified by the bounds
(share of the exactly robust ones), and consistency checks (an attack never breaks an exactly
robust sample; the bounds never certify a misclassifiable one), plus seconds per sample.

    python benchmarks/bench_attacks.py [--n 40] [--eps 0.2,0.4] [--time-limit 20] [--out results/attacks/bench_exact.json]

``--bounds-check TABLE.json`` instead cross-checks a Table 2 run of ``python -m refsnn.attack``
(digital) with the bounds: for every row, the samples certified by ``refsnn.bounds.certify``
(method "best") at that eps on the protocol's evaluation rand maps must all have survived the
attack (a violation is a bug in one of the two), and the attack error cannot exceed the
verified error bound (1 - certified fraction).

``--throughput`` instead times the Table 2 protocol (``refsnn.attacks.protocol.run_protocol``) of an
old source tree (default: revision b212f4e, extracted with ``git archive``) against this tree, in
worker processes started one after the other in the same run: samples per second of the paper
attack and of the ``strongest`` ensemble (one chunk, eps 0.124) on the committed MNIST FC model and
on the committed plain MNIST CONV model (an untrained ``build_network("conv")`` if it is absent),
the old tree as the process starts it and at ``REFSNN_NUM_THREADS=1`` (the thread count the new
attacks compute at), the new tree serially and on ``--workers`` processes (0: not); with
``--protocol`` the whole protocol of one setting (plain and robust MNIST FC, the paper's 4 eps,
``--protocol-n`` samples, paper + strongest) old serial vs new serial. Every row (errors,
fresh-draw errors, per-sample outcomes) is checked for identity across all sides:

    python benchmarks/bench_attacks.py --throughput [--protocol | --protocol-only] [--protocol-n 300]
        [--protocol-old-1-thread] [--workers 2] [--reps 3] [--n-fc 100] [--n-conv 20]
        [--out runs/bench_attacks/throughput.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refsnn import SNN, Linear  # noqa: E402
from refsnn.attacks import PaperAttack, Strongest, rate_loss  # noqa: E402
from refsnn.attacks.constraints import encode  # noqa: E402
from refsnn.data import load_dataset  # noqa: E402
from refsnn.encoders import rate_encode  # noqa: E402

T = 4


def downsample(images: np.ndarray) -> np.ndarray:
    """[N, 1, 28, 28] -> [N, 196] by 2x2 average pooling."""
    return images.reshape(len(images), 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(images), 196)


def train_small(seed: int = 0, epochs: int = 20):
    x, y = load_dataset("mnist-subset", "train")
    x = downsample(x)
    rng = np.random.default_rng(seed)
    sizes = (196, 32, 16, 10)
    net = SNN([Linear(rng.uniform(-1, 1, (b, a)) / np.sqrt(a), rng.uniform(-1, 1, b) / np.sqrt(a))
               for a, b in zip(sizes[:-1], sizes[1:])])
    params = net.params()
    velocity = [np.zeros_like(p) for p in params]
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), 32):
            idx = order[start:start + 32]
            spikes, _ = rate_encode(x[idx], T, rng)
            trace = net.run(spikes)
            _, grad = rate_loss(trace.rates, y[idx], "ce", 5.0)
            grads, _ = net.backward(trace, grad / idx.size)
            for param, g, v in zip(params, grads, velocity):
                v *= 0.9
                v -= g
                param += 0.01 * v
    return net


def exact_status(net, image, maps, eps, label, time_limit) -> str:
    """"misclassifiable" (some member is predicted != label, ties to the lowest index as
    ``SNN.predict``), "robust" (every margin > 0), or "undecided" (time limit, or only ties found)."""
    from verify import DigitalLinfSet, robust_query

    result = robust_query(net, DigitalLinfSet(image, eps, maps), int(label), time_limit=time_limit,
                          early_stop=False, attack_samples=64)
    if result.status == "robust":
        return "robust"
    if result.witness_prediction is not None and result.witness_prediction != label:
        return "misclassifiable"
    margins = result.margins  # exact minimum of f_y - f_j where solved; NaN: label, unsolved or proven > 0
    lower = np.arange(margins.size) < label
    with np.errstate(invalid="ignore"):
        broken = (lower & (margins <= 0)) | (~lower & (margins < 0))
    return "misclassifiable" if broken.any() else "undecided"


def bounds_check(table_path: str, out: str = None, batch: int = 50) -> int:
    from refsnn.attacks.protocol import evaluation_maps, select_samples
    from refsnn.bounds import certify
    from refsnn.input_sets import digital_linf_set
    from refsnn.io import load_model

    table = json.loads(Path(table_path).read_text())
    if table["kind"] != "digital":
        raise SystemExit("--bounds-check handles digital Table 2 runs")
    x_all, y_all = load_dataset(table["dataset"], "test", T=table["T"])
    seed, T = table["protocol"]["seed"], table["T"]
    indices = select_samples(len(y_all), table["n"], seed)
    assert indices.tolist() == table["sample_indices"], "the sample selection changed since the run"
    images, labels = np.asarray(x_all[indices], dtype=np.float64), np.asarray(y_all[indices])
    maps = evaluation_maps(images.shape, T, seed)
    convention = table["protocol"]["convention"]
    report = {"table": table_path, "command": "python benchmarks/bench_attacks.py --bounds-check " + table_path,
              "rows": []}
    certified_cache = {}
    violations = 0
    for row in table["rows"]:
        model = table["models"][row["model"]]
        key = (row["model"], row["eps"])
        if key not in certified_cache:
            net = load_model(model["path"])
            started = time.perf_counter()
            parts = []
            for begin in range(0, labels.size, batch):
                part = slice(begin, begin + batch)
                x_lower, x_upper, _ = digital_linf_set(images[part], row["eps"], maps[:, part], convention)
                parts.append(certify(net, x_lower, x_upper, labels[part], method="best"))
            certified_cache[key] = (np.concatenate(parts), time.perf_counter() - started)
        certified, seconds = certified_cache[key]
        wrong = np.asarray(row["adv_wrong"], dtype=bool)
        bad = int((certified & wrong).sum())
        violations += bad
        record = {"model": row["model"], "attack": row["attack"], "eps": row["eps"],
                  "attack_error": row["attack_error"], "verified_error_bound": float(1 - certified.mean()),
                  "certified": int(certified.sum()), "certified_and_broken": bad,
                  "unresolved": int((~certified & ~wrong).sum()), "certify_seconds": seconds}
        report["rows"].append(record)
        print(f"{row['model']:10s} {row['attack']:10s} eps {row['eps']}: attack error {100 * row['attack_error']:.1f}% "
              f"<= verified error bound {100 * record['verified_error_bound']:.1f}%; certified {record['certified']}, "
              f"certified yet broken {bad}, unresolved {record['unresolved']} of {labels.size}")
    report["violations"] = violations
    report["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                         "python": platform.python_version(), "numpy": np.__version__}
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 1 if violations else 0


THROUGHPUT_WORKER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from refsnn.attacks.protocol import ProtocolConfig, run_protocol, select_samples
from refsnn.data import load_dataset
from refsnn.io import load_model
from refsnn.architectures import build_network
job = json.loads(sys.argv[2])
x_all, y_all = load_dataset("mnist", "test", T=10)
idx = select_samples(len(y_all), job["n"], 0)
x = np.asarray(x_all[idx], dtype=np.float64)
y = np.asarray(y_all[idx], dtype=np.int64)
models = {}
for name, path in job["models"].items():
    models[name] = build_network("conv", (1, 28, 28), seed=0, dtype=np.float32) if path == "conv" else load_model(path)
config = ProtocolConfig(attacks=job["attacks"], eps=job["eps"], kind="digital", T=10, seed=0,
                        fresh_draws=job["fresh_draws"], batch_size=100)
scheduler = None
started = time.perf_counter()
if job["workers"]:
    from refsnn.parallel import dask_client
    with dask_client(job["workers"]) as client:
        rows = run_protocol(models, x, y, config, scheduler=client)
else:
    rows = run_protocol(models, x, y, config)
wall = time.perf_counter() - started
from dataclasses import asdict
print(json.dumps({"wall": wall, "cpu": time.process_time(),
                  "rows": [{k: v for k, v in asdict(r).items() if k != "seconds"} for r in rows]}))
"""


def _tree(revision: str) -> str:
    """The source tree of ``revision`` (``git archive``) under runs/bench_attacks/, extracted once."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    target = repo / "runs" / "bench_attacks" / f"tree-{revision}"
    if not (target / "refsnn").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", revision, "refsnn"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return str(target)


def _timed_job(tree: str, job: dict, threads: str = None) -> dict:
    import subprocess

    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("REFSNN_NUM_THREADS", None)
    if threads is not None:
        env["REFSNN_NUM_THREADS"] = threads
    done = subprocess.run([sys.executable, "-c", THROUGHPUT_WORKER, tree, json.dumps(job)], check=True,
                          capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(args) -> int:
    """Old vs new samples per second (module docstring); prints ratios measured in this one run."""
    repo = str(Path(__file__).resolve().parents[1])
    old = _tree(args.old)
    fc = str(Path(repo) / "results/budget/mnist-fc/plain/model.h5")
    robust = str(Path(repo) / "results/budget/mnist-fc/robust/model.h5")
    conv_model = Path(repo) / "results/budget/mnist-conv/plain/model.h5"
    conv = {"plain": str(conv_model)} if conv_model.is_file() else {"untrained": "conv"}
    report = {"command": "python benchmarks/bench_attacks.py " + " ".join(sys.argv[1:]), "old": args.old,
              "load_average_at_start": list(os.getloadavg()), "rows": []}
    cases = [] if args.protocol_only else [("fc", {"plain": fc}, args.n_fc), ("conv", conv, args.n_conv)]
    # Untimed first run of each tree: Numba compiles (and caches) what an edit of a source file invalidated.
    for tree in (old, repo):
        for models in ([{"plain": fc}] if args.protocol_only else [{"plain": fc}, conv]):
            _timed_job(tree, {"n": 2, "models": models, "attacks": ["paper", "strongest"], "eps": [0.124],
                              "fresh_draws": 1, "workers": 0})
    # "old 1 thread": the old tree with REFSNN_NUM_THREADS=1, the thread count the new attacks use
    # (refsnn.attacks.base.ATTACK_THREADS): what is left of the gain is the attacks' own arithmetic.
    sides = [("old", old, 0, None), ("old 1 thread", old, 0, "1"), ("new", repo, 0, None)]
    if args.workers:
        sides.append((f"new --workers {args.workers}", repo, args.workers, None))
    for arch, models, n in cases:
        for attack in ("paper", "strongest"):
            attacks = ["paper", "strongest"] if attack == "strongest" else ["paper"]
            job = {"n": n, "models": models, "attacks": attacks, "eps": [0.124], "fresh_draws": 0}
            walls = {side[0]: [] for side in sides}
            outcome = {}
            for _ in range(args.reps):  # alternate, so that every side sees the same load
                for side, tree, workers, threads in sides:
                    result = _timed_job(tree, dict(job, workers=workers), threads)
                    walls[side].append(result["wall"])
                    outcome[side] = result["rows"]
            same = all(rows == outcome["old"] for rows in outcome.values())
            median = {side: float(np.median(w)) for side, w in walls.items()}
            row = {"arch": arch, "attack": attack, "n": n, "eps": 0.124, "wall_median_s": median,
                   "samples_per_s": {side: n / m for side, m in median.items()}, "identical_rows": same}
            report["rows"].append(row)
            row["speedup_new_serial_vs_old"] = median["old"] / median["new"]
            row["speedup_new_serial_vs_old_1_thread"] = median["old 1 thread"] / median["new"]
            print(f"{arch} {attack:9s} n={n}: samples/s " + ", ".join(
                f"{side} {n / m:.2f}" for side, m in median.items())
                + f"; new serial / old {row['speedup_new_serial_vs_old']:.2f}x, / old at 1 thread "
                f"{row['speedup_new_serial_vs_old_1_thread']:.2f}x; rows identical: {same}; "
                f"load {os.getloadavg()[0]:.1f}", flush=True)
    if args.protocol or args.protocol_only:
        job = {"n": args.protocol_n, "models": {"plain": fc, "robust": robust}, "attacks": ["paper", "strongest"],
               "eps": [0.104, 0.124, 0.140, 0.154], "fresh_draws": 5}
        load_before = os.getloadavg()[0]
        old_run = _timed_job(old, dict(job, workers=0))
        load_old = os.getloadavg()[0]
        new_run = _timed_job(repo, dict(job, workers=0))  # serially: the target is the attacks' own speed
        load_new = os.getloadavg()[0]
        old1_run = _timed_job(old, dict(job, workers=0), "1") if args.protocol_old_1_thread else None
        same = old_run["rows"] == new_run["rows"] and (old1_run is None or old1_run["rows"] == new_run["rows"])
        committed = json.loads((Path(repo) / "results/budget/mnist-fc/attack/table.json").read_text())["rows"]
        keys = ("model", "attack", "eps", "original_error", "attack_error", "adv_wrong", "attack_error_fresh")
        # the committed table has 300 samples: comparable only for the whole protocol
        as_committed = ([{k: r[k] for k in keys} for r in committed] == [{k: r[k] for k in keys}
                                                                          for r in new_run["rows"]]
                        if args.protocol_n == 300 else None)
        row = {"protocol": f"MNIST FC plain + robust, eps 0.104/0.124/0.140/0.154, {args.protocol_n} samples, "
                           "paper + strongest, batch 100",
               "old_serial_s": old_run["wall"], "new_serial_s": new_run["wall"],
               "speedup": old_run["wall"] / new_run["wall"], "identical_rows": same,
               "old_serial_1_thread_s": None if old1_run is None else old1_run["wall"],
               "load_average_1min": {"start": load_before, "after_old": load_old, "after_new": load_new},
               "identical_to_committed_table": as_committed}
        report["protocol"] = row
        print(f"Table 2 protocol (one setting, 2 models x 4 eps x {args.protocol_n} samples, paper + strongest): old serial "
              f"{old_run['wall']:.0f} s, new serial {new_run['wall']:.0f} s: {row['speedup']:.2f}x"
              + ("" if old1_run is None else f" (old serial at 1 thread {old1_run['wall']:.0f} s: "
                 f"{old1_run['wall'] / new_run['wall']:.2f}x)")
              + f"; rows identical: {same}; identical to results/budget/mnist-fc/attack: {as_committed}; "
              f"load {load_before:.1f} -> {load_old:.1f} -> {load_new:.1f}", flush=True)
    report["load_average_at_end"] = list(os.getloadavg())
    report["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                         "python": platform.python_version(), "numpy": np.__version__}
    out = Path(args.out or "runs/bench_attacks/throughput.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {report['load_average_at_start']} -> {report['load_average_at_end']}; wrote {out}")
    return 0 if all(r["identical_rows"] for r in report["rows"]) and report.get("protocol", {}).get(
        "identical_rows", True) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounds-check", metavar="TABLE_JSON", help="cross-check a Table 2 run with the bounds")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--eps", default="0.2,0.4")
    parser.add_argument("--time-limit", type=float, default=20.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--throughput", action="store_true", help="old vs new samples per second")
    parser.add_argument("--protocol", action="store_true", help="with --throughput: one whole Table 2 setting")
    parser.add_argument("--old", default="b212f4e", help="with --throughput: the old revision")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="with --throughput: also time the new tree on this many workers (0: not)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n-fc", type=int, default=100)
    parser.add_argument("--n-conv", type=int, default=20)
    parser.add_argument("--protocol-n", type=int, default=300, help="with --protocol: samples (300 = the committed table)")
    parser.add_argument("--protocol-only", action="store_true", help="with --throughput: only the whole-protocol timing")
    parser.add_argument("--protocol-old-1-thread", action="store_true",
                        help="with --protocol: also time the old tree serially at REFSNN_NUM_THREADS=1")
    args = parser.parse_args(argv)
    if args.throughput:
        return throughput(args)
    if args.bounds_check:
        return bounds_check(args.bounds_check, args.out)
    from refsnn.bounds import certify
    from refsnn.input_sets import digital_linf_set

    started = time.perf_counter()
    net = train_small()
    train_seconds = time.perf_counter() - started
    x, y = load_dataset("mnist-subset", "test")
    x, y = downsample(x)[:args.n], y[:args.n]
    maps = np.random.default_rng(1).random((T,) + x.shape)
    correct = net.predict(encode(x, maps)) == y
    print(f"small net 196-32-16-10, T = {T}: trained in {train_seconds:.0f} s; clean accuracy on the "
          f"{args.n} evaluation samples {correct.mean():.3f}")
    report = {"command": "python benchmarks/bench_attacks.py " + " ".join(argv or sys.argv[1:]),
              "network": "196-32-16-10 FC, T=4, MNIST subset downsampled 2x2", "n": args.n,
              "clean_accuracy": float(correct.mean()), "rows": []}
    for eps in [float(v) for v in args.eps.split(",")]:
        t0 = time.perf_counter()
        exact = np.array([exact_status(net, x[i], maps[:, i], eps, y[i], args.time_limit) if correct[i] else "wrong"
                          for i in range(args.n)])
        exact_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        paper = PaperAttack(net, eps)(x, y, maps)
        paper_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        strongest = Strongest(net, eps)(x, y, maps, start=paper)
        strongest_seconds = paper_seconds + (time.perf_counter() - t0)  # the union includes the paper attack
        x_lower, x_upper, _ = digital_linf_set(x, eps, maps)
        certified = certify(net, x_lower, x_upper, y, method="best")
        mis = exact == "misclassifiable"
        robust = exact == "robust"
        decided = mis | robust
        row = {"eps": eps, "radius": eps / 2, "correct": int(correct.sum()), "decided": int(decided.sum()),
               "unknown": int((correct & ~decided).sum()), "exact_misclassifiable": int(mis.sum()),
               "exact_robust": int(robust.sum()),
               "paper_found": int((paper.success & mis).sum()), "strongest_found": int((strongest.success & mis).sum()),
               "certified": int((certified & correct).sum()),
               "violations_attack_on_robust": int(((paper.success | strongest.success) & robust).sum()),
               "violations_certified_misclassifiable": int((certified & mis).sum()),
               "seconds_per_sample": {"exact": exact_seconds / max(1, correct.sum()),
                                      "paper": paper_seconds / args.n, "strongest": strongest_seconds / args.n},
               "per_sample": {"exact": exact.tolist(), "paper_broken": paper.success.astype(int).tolist(),
                              "strongest_broken": strongest.success.astype(int).tolist(),
                              "certified": certified.astype(int).tolist()}}
        report["rows"].append(row)
        share = lambda a, b: f"{a}/{b} ({100.0 * a / b:.0f}%)" if b else f"{a}/0"  # noqa: E731
        print(f"eps {eps} (radius {eps / 2}): exactly misclassifiable {mis.sum()} of {decided.sum()} decided "
              f"({(correct & ~decided).sum()} unknown); paper finds {share(row['paper_found'], mis.sum())}, "
              f"strongest {share(row['strongest_found'], mis.sum())}; bounds certify "
              f"{share(row['certified'], robust.sum())} of the robust; violations "
              f"{row['violations_attack_on_robust']} / {row['violations_certified_misclassifiable']}; "
              f"s/sample exact {row['seconds_per_sample']['exact']:.2f}, paper {row['seconds_per_sample']['paper']:.3f}, "
              f"strongest {row['seconds_per_sample']['strongest']:.3f}")
    report["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                         "python": platform.python_version(), "numpy": np.__version__,
                         "load_average_at_end": os.getloadavg()}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
