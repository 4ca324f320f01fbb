"""Certified accuracy and margin bounds per method: ibp, crown-ibp, best, alpha, crown and the exact MILP.

    python benchmarks/bench_certify.py [--quick] [--n 500] [--n-alpha 500] [--out results/certify]

Writes ``bench_certify.json`` and ``bench_certify.md`` under ``--out``:

1. small random FC nets (exact MILP feasible): per method the mean margin lower bound and the
   certified fraction on the same boxes, next to the exact values (verify.exact_bounds);
2. any-k-flip spike certificates on the same small nets against the MILP's l0 encoding (gap);
3. the MNIST FC models of results/robust (plain, robust) at eps 0.12 (training eps, T' = 3, paper
   convention): certified accuracy per method through ``refsnn.certify.certify_samples``;
4. any-k spike certificates on MNIST (k = 1, 2, 4 per step; k = 4 total) for both models;
5. the Clopper-Pearson encoder certificate on a few images.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refsnn import SNN, Linear  # noqa: E402
from refsnn.bounds import compute_bounds, margin_spec  # noqa: E402
from refsnn.certify import CertifyConfig, certify_samples, summarize  # noqa: E402
from refsnn.l0 import anyk_bounds  # noqa: E402

METHODS = ("ibp", "crown-ibp", "best", "alpha", "crown")
MODELS = {"plain": ROOT / "results/robust/plain_mnist_fc.h5", "robust": ROOT / "results/robust/robust_mnist_fc_epoch4.h5"}


def small_net(rng, sizes=(10, 8, 6, 3), threshold=0.25, decay=0.5):
    layers = [Linear(rng.normal(0, 1.0 * threshold * np.sqrt(2.0 / a) * 2, (b, a)), rng.normal(0, 0.3 * threshold, b))
              for a, b in zip(sizes[:-1], sizes[1:])]
    return SNN(layers, threshold=threshold, decay=decay, input_shape=(sizes[0],))


def small_nets_section(n_nets: int, per_net: int, steps: int, n_free: int, k: int, seed: int = 0) -> dict:
    from verify.milp import exact_bounds
    from verify.sets import BoxSet, SpikeL0Set

    rng = np.random.default_rng(seed)
    rows = {m: {"lower": [], "certified": [], "seconds": 0.0} for m in METHODS + ("milp",)}
    anyk = {m: {"lower": [], "certified": []} for m in ("ibp", "best", "alpha", "crown", "milp")}
    for _ in range(n_nets):
        net = small_net(rng)
        clean = (rng.random((steps, per_net, 10)) < 0.4).astype(np.uint8)
        labels = net.predict(clean)
        C = margin_spec(labels, 3)
        x_lower, x_upper = clean.copy(), clean.copy()
        for b in range(per_net):
            free = rng.choice(steps * 10, n_free, replace=False)
            lo, hi = x_lower[:, b].reshape(-1), x_upper[:, b].reshape(-1)
            lo[free], hi[free] = 0, 1
            x_lower[:, b], x_upper[:, b] = lo.reshape(steps, 10), hi.reshape(steps, 10)
        for method in METHODS:
            started = time.perf_counter()
            lower, _ = compute_bounds(net, x_lower, x_upper, method=method, C=C)
            rows[method]["seconds"] += time.perf_counter() - started
            rows[method]["lower"] += lower.min(axis=1).tolist()
            rows[method]["certified"] += np.all(lower > 0, axis=1).tolist()
        started = time.perf_counter()
        exact = exact_bounds(net, C=C, input_sets=[BoxSet(x_lower[:, b], x_upper[:, b]) for b in range(per_net)],
                             time_limit=60)
        rows["milp"]["seconds"] += time.perf_counter() - started
        rows["milp"]["lower"] += exact.lower.min(axis=1).tolist()
        rows["milp"]["certified"] += np.all(exact.lower > 0, axis=1).tolist()
        for method in ("ibp", "best", "alpha", "crown"):
            lower, _ = anyk_bounds(net, clean, k, C, method, per_step=True)
            anyk[method]["lower"] += lower.min(axis=1).tolist()
            anyk[method]["certified"] += np.all(lower > 0, axis=1).tolist()
        exact = exact_bounds(net, C=C, input_sets=[SpikeL0Set(clean[:, b], k, True) for b in range(per_net)],
                             time_limit=60)
        anyk["milp"]["lower"] += exact.lower.min(axis=1).tolist()
        anyk["milp"]["certified"] += np.all(exact.lower > 0, axis=1).tolist()
    n = n_nets * per_net
    box = {m: {"mean_min_margin_lower": float(np.mean(v["lower"])), "certified_fraction": float(np.mean(v["certified"])),
               "seconds_per_sample": v["seconds"] / n} for m, v in rows.items()}
    ball = {m: {"mean_min_margin_lower": float(np.mean(v["lower"])), "certified_fraction": float(np.mean(v["certified"]))}
            for m, v in anyk.items()}
    exact_lower = np.array(rows["milp"]["lower"])
    for m in METHODS:
        box[m]["sound"] = bool(np.all(np.array(rows[m]["lower"]) <= exact_lower + 1e-9))
        box[m]["mean_gap_to_exact"] = float(np.mean(exact_lower - np.array(rows[m]["lower"])))
    exact_ball = np.array(anyk["milp"]["lower"])
    for m in ("ibp", "best", "alpha", "crown"):
        ball[m]["sound"] = bool(np.all(np.array(anyk[m]["lower"]) <= exact_ball + 1e-9))
        ball[m]["mean_gap_to_exact"] = float(np.mean(exact_ball - np.array(anyk[m]["lower"])))
    return {"nets": n_nets, "samples": n, "architecture": "10-8-6-3 FC, th 0.25, decay 0.5", "steps": steps,
            "free_bits": n_free, "k": k, "box": box, "any_k_per_step": ball}


def mnist_section(n: int, n_alpha: int, iterations: int, anyk_n: int, encoder_images: int, encoder_draws: int) -> dict:
    from refsnn.data import load_dataset
    from refsnn.encoder_cert import certify_encoder
    from refsnn.certify import sample_rng
    from refsnn.io import load_model

    x, y = load_dataset("mnist", "test", limit=max(n, n_alpha, anyk_n, encoder_images))
    out = {}
    for name, path in MODELS.items():
        net = load_model(path)
        entry = {"model": str(path.relative_to(ROOT))}
        config = CertifyConfig(str(path), eps=0.12, horizon=3, n=n, iterations=iterations)
        fast = ("ibp", "crown-ibp", "best", "crown")
        started = time.perf_counter()
        records = certify_samples(net, x[:n], y[:n], config, fast)
        entry["digital"] = summarize(records, fast)
        entry["digital"]["seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        alpha_records = certify_samples(net, x[:n_alpha], y[:n_alpha], config, ("alpha",))
        entry["digital_alpha"] = summarize(alpha_records, ("alpha",))
        entry["digital_alpha"]["seconds"] = time.perf_counter() - started
        entry["digital_alpha"]["same_samples"] = summarize(records[:n_alpha], fast)
        entry["any_k"] = {}
        for k, budget in ((1, "per-step"), (2, "per-step"), (4, "per-step"), (4, "total")):
            cfg = CertifyConfig(str(path), input_set="spike-any-k", k=k, budget=budget, horizon=3, n=anyk_n,
                                iterations=iterations)
            methods = ("ibp", "best", "alpha")
            entry["any_k"][f"k{k}-{budget}"] = summarize(certify_samples(net, x[:anyk_n], y[:anyk_n], cfg, methods),
                                                          methods)
        entry["encoder"] = []
        for index in range(encoder_images):
            cert = certify_encoder(net, x[index], int(y[index]), 0.12, encoder_draws, sample_rng(1234, index, 2),
                                   horizon=3, alpha=0.001, method="best")
            entry["encoder"].append({"index": index, **cert.as_dict()})
        out[name] = entry
        print(json.dumps({name: entry["digital"]}, indent=1), flush=True)
    return out


def render(record: dict) -> str:
    lines = ["# Certified accuracy per method", "", f"Command: `{record['command']}`", f"Machine: {record['machine']}", ""]
    small = record["small_nets"]
    lines += [f"## Small nets ({small['samples']} boxes on {small['nets']} random {small['architecture']} nets, "
              f"T' = {small['steps']}, {small['free_bits']} free bits each; label = clean prediction)", "",
              "| method | mean min margin lower bound | certified % | mean gap to exact | sound | s/sample |",
              "|---|---|---|---|---|---|"]
    for m, row in small["box"].items():
        lines.append(f"| {m} | {row['mean_min_margin_lower']:.4f} | {100 * row['certified_fraction']:.1f} | "
                     f"{row.get('mean_gap_to_exact', 0.0):.4f} | {row.get('sound', 'exact')} | {row['seconds_per_sample']:.4f} |")
    lines += ["", f"Any-k flips per step (k = {small['k']}) on the same nets and clean trains, vs the MILP's l0 encoding:", "",
              "| method | mean min margin lower bound | certified % | mean gap to exact | sound |", "|---|---|---|---|---|"]
    for m, row in small["any_k_per_step"].items():
        lines.append(f"| {m} | {row['mean_min_margin_lower']:.4f} | {100 * row['certified_fraction']:.1f} | "
                     f"{row.get('mean_gap_to_exact', 0.0):.4f} | {row.get('sound', 'exact')} |")
    for name, entry in record.get("mnist", {}).items():
        d, a = entry["digital"], entry["digital_alpha"]
        lines += ["", f"## MNIST FC `{entry['model']}` ({name}), digital l-inf eps 0.12 (paper convention, radius eps/2), "
                  f"T' = 3, first test samples", "",
                  f"Clean accuracy at T' = 3: {100 * d['clean_accuracy']:.1f}% (n = {d['n']}).", "",
                  "| method | n | certified accuracy % | certified error % | mean min margin lower bound | s/sample |",
                  "|---|---|---|---|---|---|"]
        for m in ("ibp", "crown-ibp", "best", "crown"):
            row = d[m]
            lines.append(f"| {m} | {d['n']} | {100 * row['certified_accuracy']:.1f} | {100 * row['certified_error']:.1f} | "
                         f"{row['mean_min_margin_lower']:.4f} | {row['seconds_per_sample']:.3f} |")
        row = a["alpha"]
        lines.append(f"| alpha ({record['iterations']} steps) | {a['n']} | {100 * row['certified_accuracy']:.1f} | "
                     f"{100 * row['certified_error']:.1f} | {row['mean_min_margin_lower']:.4f} | {row['seconds_per_sample']:.3f} |")
        same = a["same_samples"]
        lines.append(f"| best on alpha's {a['n']} samples | {a['n']} | {100 * same['best']['certified_accuracy']:.1f} | "
                     f"{100 * same['best']['certified_error']:.1f} | {same['best']['mean_min_margin_lower']:.4f} | |")
        lines += ["", "Any-k spike flips (every train within k flips of the clean rate encoding):", "",
                  "| set | n | clean % | ibp cert. % | best cert. % | alpha cert. % |", "|---|---|---|---|---|---|"]
        for key, s in entry["any_k"].items():
            lines.append(f"| {key} | {s['n']} | {100 * s['clean_accuracy']:.1f} | {100 * s['ibp']['certified_accuracy']:.1f} | "
                         f"{100 * s['best']['certified_accuracy']:.1f} | {100 * s['alpha']['certified_accuracy']:.1f} |")
        lines += ["", "Encoder certificate (Clopper-Pearson, alpha 0.001; method best): lower bound on the probability "
                  "that a fresh encoding of every image in the ball is classified correctly:", "",
                  "| test index | draws | certified draws | lower bound |", "|---|---|---|---|"]
        for e in entry["encoder"]:
            lines.append(f"| {e['index']} | {e['draws']} | {e['certified_draws']} | {e['probability_lower_bound']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--n-alpha", type=int, default=500)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--anyk-n", type=int, default=100)
    parser.add_argument("--encoder-images", type=int, default=5)
    parser.add_argument("--encoder-draws", type=int, default=200)
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "runs/bench/certify"))
    args = parser.parse_args()
    if args.quick:
        args.n, args.n_alpha, args.anyk_n, args.encoder_images, args.encoder_draws = 20, 10, 5, 1, 20
    started = time.perf_counter()
    record = {"command": "python benchmarks/bench_certify.py " + " ".join(sys.argv[1:]), "iterations": args.iterations,
              "machine": f"{platform.platform()}, python {platform.python_version()}, 2-core shared VM under load"}
    record["small_nets"] = small_nets_section(2 if args.quick else 10, 4 if args.quick else 10, 3, 5, 1)
    print(render({**record, "mnist": {}}), flush=True)
    if not args.skip_mnist:
        record["mnist"] = mnist_section(args.n, args.n_alpha, args.iterations, args.anyk_n, args.encoder_images,
                                        args.encoder_draws)
    record["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "_quick" if args.quick else ""
    (out / f"bench_certify{tag}.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / f"bench_certify{tag}.md").write_text(render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
