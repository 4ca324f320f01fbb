"""How often and by how much ``method="crown-ibp"`` (eq. 8's chord case decided on the outward-rounded
S-IBP intervals) and ``method="crown-ibp-paper"`` (the paper's choice, decided on S-IBP's intervals
without margins) differ, on random networks and boxes.

Cases: small FC networks (2 spiking layers, widths 3-12), Gaussian or dyadic weights (dyadic weights
put membranes exactly on the threshold and make chord ties), float64 or float32, ``>=`` or ``>``
firing, T' in {1, 2, 3}, random boxes; bounds of every output rate and of random margin specs.

    python benchmarks/compare_chord_choices.py [--cases 400] [--seed 0] [--out runs/chord_choices.json]

Prints: the share of cases where any bound differs, the share of bound values that differ, the
largest absolute and relative difference, and how many values each method has tighter.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refsnn import SNN, Linear  # noqa: E402
from refsnn.bounds import compute_bounds  # noqa: E402


def random_case(rng: np.random.Generator):
    n_in, hidden, n_out = int(rng.integers(4, 10)), int(rng.integers(3, 13)), int(rng.integers(2, 5))
    threshold = float(rng.choice([0.25, 0.5, 1.0]))
    dyadic = rng.random() < 0.5

    def weights(shape):
        if dyadic:
            return rng.integers(-4, 5, size=shape) * threshold / 4.0
        return rng.normal(0.0, 1.2 * threshold, size=shape)

    dtype = np.float32 if rng.random() < 0.3 else np.float64
    net = SNN([Linear(weights((hidden, n_in)), weights((hidden,)) * 0.5),
               Linear(weights((n_out, hidden)), weights((n_out,)) * 0.5)],
              threshold=threshold, decay=float(rng.choice([0.0, 0.5, 0.9])),
              firing=">=" if rng.random() < 0.5 else ">", dtype=dtype)
    steps, batch = int(rng.integers(1, 4)), 3
    x_lower = (rng.random((steps, batch, n_in)) < 0.3).astype(np.uint8)
    x_upper = np.maximum(x_lower, (rng.random(x_lower.shape) < 0.4).astype(np.uint8))
    C = rng.normal(size=(2, n_out))
    return net, x_lower, x_upper, C, "dyadic" if dyadic else "gaussian"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/chord_choices.json")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    cases_differ = values = values_differ = ours_tighter = paper_tighter = 0
    max_abs = max_rel = 0.0
    by_kind = {"gaussian": [0, 0], "dyadic": [0, 0]}
    diffs = []
    for _ in range(args.cases):
        net, x_lower, x_upper, C, kind = random_case(rng)
        differ = False
        for spec in (None, C):
            ours = compute_bounds(net, x_lower, x_upper, method="crown-ibp", C=spec)
            paper = compute_bounds(net, x_lower, x_upper, method="crown-ibp-paper", C=spec)
            for side, (a, b) in enumerate(zip(ours, paper)):
                diff = a - b
                changed = diff != 0
                values += diff.size
                values_differ += int(changed.sum())
                differ |= bool(changed.any())
                # lower bounds: larger is tighter; upper bounds: smaller is tighter
                tighter = diff > 0 if side == 0 else diff < 0
                ours_tighter += int(tighter.sum())
                paper_tighter += int((changed & ~tighter).sum())
                diffs.extend(np.abs(diff[changed]).tolist())
                if changed.any():
                    max_abs = max(max_abs, float(np.abs(diff).max()))
                    scale = np.maximum(np.abs(a), np.abs(b))[changed]
                    max_rel = max(max_rel, float((np.abs(diff[changed]) / np.maximum(scale, 1e-300)).max()))
        cases_differ += differ
        by_kind[kind][0] += 1
        by_kind[kind][1] += differ
    result = {"cases": args.cases, "seed": args.seed, "cases_differ": cases_differ, "values": values,
              "values_differ": values_differ, "crown_ibp_tighter": ours_tighter,
              "crown_ibp_paper_tighter": paper_tighter, "max_abs_difference": max_abs,
              "max_rel_difference": max_rel, "by_weights": by_kind,
              "median_abs_difference": float(np.median(diffs)) if diffs else 0.0,
              "share_abs_difference_below_0.1": float(np.mean(np.asarray(diffs) < 0.1)) if diffs else 1.0}
    print(f"cases with any different bound: {cases_differ}/{args.cases} ({100 * cases_differ / args.cases:.1f}%)")
    print(f"bound values that differ: {values_differ}/{values} ({100 * values_differ / values:.2f}%); "
          f"crown-ibp tighter {ours_tighter}, crown-ibp-paper tighter {paper_tighter}")
    print(f"largest difference: {max_abs:.3g} absolute, {max_rel:.3g} relative; median "
          f"{result['median_abs_difference']:.3g}, below 0.1: {100 * result['share_abs_difference_below_0.1']:.0f}%")
    for kind, (count, differ) in by_kind.items():
        print(f"  {kind} weights: {differ}/{count} cases differ")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
