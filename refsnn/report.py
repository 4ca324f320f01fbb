"""``python -m refsnn.report RUN_DIR [RUN_DIR ...]``: PNG curves of training runs (the paper's Figure 6).

Reads each run's ``metrics.jsonl`` (written by ``python -m refsnn.train``) and draws, per epoch:
clean test accuracy, the robust (bound) loss, and the S-CROWN certified robust error at the
current and at the final eps, with the eps schedule. Needs matplotlib (``pip install
"refsnn[plot]"``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence


def read_metrics(run_dir) -> List[dict]:
    """Per-epoch records of a run directory (``metrics.jsonl``)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a directory written by python -m refsnn.train")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(run_dirs: Sequence, out) -> Path:
    """Draws the curves of every run into one PNG ``out``; returns its path."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError('plots need matplotlib: pip install "refsnn[plot]"') from error
    panels = [("test_acc", "clean test accuracy"), ("train_robust_loss", "robust (bound) loss"),
              ("cert_error_crown-ibp_now", "S-CROWN robust error (eps now)"),
              ("cert_error_crown-ibp_final", "S-CROWN robust error (final eps)")]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for run_dir in run_dirs:
        records = read_metrics(run_dir)
        epochs = [r["epoch"] for r in records]
        for axis, (key, title) in zip(axes, panels):
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                axis.plot(epochs, [float("nan") if v is None else v for v in values], marker="o",
                          label=Path(run_dir).name)
            axis.set_title(title, fontsize=9)
            axis.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refsnn.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", default="curves.png")
    args = parser.parse_args(argv)
    try:
        path = plot_runs(args.runs, args.out)
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
