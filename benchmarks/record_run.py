"""Turns a training run directory into one results JSON: the exact command, config, per-epoch
history, final accuracy over sampling seeds, time per epoch and the machine (``lscpu``).

    python benchmarks/record_run.py RUN_DIR OUT.json --command "python -m refsnn.train ..." [--note TEXT]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--command", required=True, help="the exact command that produced the run")
    parser.add_argument("--note", default="", help="conditions worth knowing (e.g. machine load)")
    args = parser.parse_args(argv)
    run = Path(args.run_dir)
    summary = json.loads((run / "summary.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()[:15]
    except (OSError, subprocess.CalledProcessError):
        lscpu = []
    record = {
        "command": args.command,
        "note": args.note,
        "test_accuracy": summary["test_accuracy"],
        "seconds_per_epoch": summary["seconds_per_epoch"],
        "train_seconds_total": summary["train_seconds_total"],
        "history": history,
        "config": summary["config"],
        "n_train": summary["n_train"], "n_test": summary["n_test"],
        "machine": {**summary.get("machine", {}), "lscpu": lscpu,
                    "loadavg_when_recorded": os.getloadavg()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    accuracy = summary["test_accuracy"]
    print(f"{out}: {100 * accuracy['mean']:.2f}% +- {100 * accuracy['std']:.2f}% over {len(accuracy['seeds'])} seeds, "
          f"{summary['seconds_per_epoch']:.0f} s/epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
