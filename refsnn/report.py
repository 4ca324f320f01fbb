"""``python -m refsnn.report RUN_DIR [RUN_DIR ...]``: PNG curves of training runs (the paper's Figure 6).

Reads each run's ``metrics.jsonl`` (written by ``python -m refsnn.train``) and draws, per epoch:
clean test accuracy, the robust (bound) loss, and the S-CROWN certified robust error at the
current and at the final eps. Each run keeps one colour and one label in every panel. The PNG
goes to ``--out``, by default ``RUN_DIR/curves.png`` for one run and ``runs/report/curves.png``
for several. Needs matplotlib (``pip install "refsnn[plot]"``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

#: (metrics.jsonl key, panel title) of each panel, left to right.
PANELS = (("test_acc", "clean test accuracy"), ("train_robust_loss", "robust (bound) loss"),
          ("cert_error_crown-ibp_now", "S-CROWN robust error (eps now)"),
          ("cert_error_crown-ibp_final", "S-CROWN robust error (final eps)"))

#: Where several runs' curves go when no ``out`` is given.
MULTI_RUN_OUT = Path("runs/report/curves.png")


class ReportError(ValueError):
    """Bad arguments of ``plot_runs`` (the message names the argument and what is allowed)."""


def read_metrics(run_dir) -> List[dict]:
    """Per-epoch records of a run directory (``metrics.jsonl``)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a directory written by python -m refsnn.train")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_labels(run_dirs: Sequence) -> List[str]:
    """A distinct legend label per run: the folder name, with as many parent folders as it takes
    to tell runs apart (``mnist-fc/robust`` and ``mnist-conv/robust``)."""
    paths = [Path(p).resolve() for p in run_dirs]
    for depth in range(1, max((len(p.parts) for p in paths), default=1) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} ({i + 1})" for i, label in enumerate(str(p) for p in paths)]


def default_out(run_dirs: Sequence) -> Path:
    """``RUN_DIR/curves.png`` for one run, ``runs/report/curves.png`` for several."""
    return Path(run_dirs[0]) / "curves.png" if len(run_dirs) == 1 else MULTI_RUN_OUT


def plot_runs(run_dirs: Sequence, out=None, labels: Optional[Sequence[str]] = None,
              title: Optional[str] = None) -> Path:
    """Draws the curves of every run into one PNG ``out`` (default ``default_out``); returns its path.

    Run ``i`` is drawn in colour ``C{i}`` with label ``labels[i]`` (default ``run_labels``) in every
    panel where it has values; every panel with curves has its own legend.
    """
    if not run_dirs:
        raise ReportError("run_dirs: pass at least one run directory")
    labels = run_labels(run_dirs) if labels is None else list(labels)
    if len(labels) != len(run_dirs) or len(set(labels)) != len(labels):
        raise ReportError(f"labels: need {len(run_dirs)} distinct labels, one per run, got {labels}")
    records = [read_metrics(run_dir) for run_dir in run_dirs]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError('plots need matplotlib: pip install "refsnn[plot]"') from error
    figure, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.4))
    for axis, (key, panel_title) in zip(axes, PANELS):
        for index, (run_records, label) in enumerate(zip(records, labels)):
            values = [r.get(key) for r in run_records]
            if any(v is not None for v in values):
                # The colour follows the run, not the order of plotting in this panel: a run missing
                # from one panel must not shift the colours of the others.
                axis.plot([r["epoch"] for r in run_records], [float("nan") if v is None else v for v in values],
                          marker="o", color=f"C{index % 10}", label=label)
        axis.set_title(panel_title, fontsize=9)
        axis.set_xlabel("epoch")
        if axis.get_lines():
            axis.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    out = default_out(run_dirs) if out is None else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


PROG = "python -m refsnn.report"
#: The file written into the ``--out`` folder.
FIGURE_NAME = "curves.png"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m refsnn.report`` parser (shared vocabulary of ``refsnn.cli``)."""
    from . import cli

    parser = cli.make_parser(PROG, __doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with metrics.jsonl)")
    cli.add_out(parser, f"RUN_DIR for one run, {MULTI_RUN_OUT.parent} for several; writes {FIGURE_NAME}")
    cli.add_progress(parser, bars=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m refsnn.report``; returns the exit code (2 with one stderr line for bad input)."""
    from .cli import run_main

    return run_main(PROG)(_main)(argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli

    args = build_parser().parse_args(argv)
    folder = cli.out_folder(PROG, args.out, default_out(args.runs).parent, file_suffixes=(".png",))
    cli.check_out_dir(folder)
    try:
        path = plot_runs(args.runs, folder / FIGURE_NAME)
    except RuntimeError as error:   # matplotlib missing: an environment problem, said in one line
        raise ImportError(str(error)) from None
    if not getattr(args, "quiet", False):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
