#!/usr/bin/env python
"""Import a PyTorch spiking network (snnTorch, SpikingJelly or plain PyTorch) into a refsnn model file.

    python data_scripts/import_torch.py --framework snntorch|spikingjelly|plain --model FILE --out FOLDER

writes ``FOLDER/model.h5`` (default folder ``runs/import/<framework>-<FILE's name>``).

FILE is what ``torch.save`` wrote, one of:

- a whole module, ``torch.save(model, FILE)``: pass --full-module (unpickling runs code from the
  file: only for files you trust; the model's classes must be importable, e.g. via PYTHONPATH);
- a state_dict, ``torch.save(model.state_dict(), FILE)`` (also inside {"state_dict": ...}):
  with --framework plain and --arch, the architecture: one of the paper authors' layouts
  MNIST_FC, MNIST_CONV, NMNIST_FC, NMNIST_CONV (their parameter names fc1, conv1, ...), or a JSON
  file with a list of layers [{"kind": "conv2d", "key": "conv1", "stride": 2, "padding": 1},
  {"kind": "flatten"}, {"kind": "linear", "key": "fc1"}, ...]; or, for any framework,
  --module-class package.module:ClassName (built without arguments, then load_state_dict).

The import validates itself (see docs/INTEROP.md): the framework's neurons are probed alone, and
both forward passes must give identical spikes at every stage on random binary inputs (and on
--inputs); otherwise nothing is written and the reason is printed (exit code 1). Needs the
extra: pip install "refsnn[torch]" (torch==2.13.0) plus the framework itself.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def _shape(text: str):
    return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())


PROG = "python data_scripts/import_torch.py"
#: The file written into the ``--out`` folder.
MODEL_NAME = "model.h5"


def build_parser() -> argparse.ArgumentParser:
    """The parser of this script (shared vocabulary of ``refsnn.cli``)."""
    from refsnn import cli

    parser = cli.make_parser(PROG, __doc__.split("\n\n")[0])
    parser.epilog = __doc__
    parser.formatter_class = _raw_help_formatter()
    add = parser.add_argument
    add("--framework", required=True, choices=("snntorch", "spikingjelly", "plain"), help="what wrote --model")
    add("--model", required=True, metavar="FILE",
        help=f"{cli.VOCABULARY['--model']} to import: what torch.save wrote (a module or a state_dict)")
    cli.add_out(parser, f"runs/import/<framework>-<model file name>; writes {MODEL_NAME}")
    add("--arch", help="architecture of a plain state_dict: MNIST_FC | MNIST_CONV | NMNIST_FC | NMNIST_CONV "
                       "or a JSON file with the layer list (default: none)")
    add("--module-class", help="state_dict of any framework: package.module:ClassName")
    add("--full-module", action="store_true",
        help="FILE holds a pickled module (torch.load with weights_only=False; trusted files only)")
    add("--input-shape", type=_shape, help="per-sample input shape, e.g. 1,28,28 (inferred when "
                                           "the first layer is Linear or from --arch; default: none)")
    cli.add_T(parser, 10, detail=" of the validation runs")
    add("--n-random", type=cli.positive_int, default=64, help="random binary inputs for the validation")
    add("--inputs", metavar="FILE",
        help=".npy file of real inputs: spike trains [T, B, *shape] or images [B, *shape]")
    cli.add_seed(parser, detail=" (validation inputs)")
    add("--tolerate-float32-ties", type=cli.nonnegative_int, default=0, metavar="ULPS",
        help="float32 models: set aside validation samples whose first differing spike sits within "
             "ULPS float32 spacings of the threshold (default 0: every spike must agree; the "
             "float64 comparison is always exact)")
    add("--threshold", type=float, help="firing threshold, plain only (default: the authors' 0.25)")
    add("--decay", type=float, help="membrane decay, plain only (default: the authors' 0.25)")
    add("--firing", choices=(">=", ">"), help="firing rule, plain only (default: the authors' '>')")
    cli.add_deprecated(parser, "--steps", "--T", "T", cli.positive_int)
    cli.add_deprecated(parser, "--samples", "--inputs", "inputs")
    return parser


def _raw_help_formatter():
    import argparse as _argparse

    from refsnn import cli

    class RawHelpFormatter(_argparse.RawDescriptionHelpFormatter, cli.HelpFormatter):
        """The module docstring as written, and every option's default."""

    return RawHelpFormatter


def main(argv=None) -> int:
    """This script; returns the exit code (2 with one stderr line for bad input, 1 when refused)."""
    from refsnn.cli import run_main

    return run_main(PROG)(_main)(argv)


def _main(argv=None) -> int:
    from refsnn import cli

    parser = build_parser()
    args = parser.parse_args(argv)
    folder = cli.check_out_dir(cli.out_folder(PROG, args.out, cli.default_out("import", args.framework,
                                                                              Path(args.model).stem),
                                              file_suffixes=(".h5",)))
    out = folder / MODEL_NAME

    try:
        from refsnn.interop import require_torch
        require_torch()
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import numpy as np

    from refsnn.interop.torch_import import ImportRefused, load_torch_model

    kwargs = {"steps": args.T, "n_random": args.n_random, "seed": args.seed, "out": out,
              "return_report": True, "tolerate_float32_ties": args.tolerate_float32_ties}
    if args.input_shape:
        kwargs["input_shape"] = args.input_shape
    if args.inputs:
        kwargs["samples"] = np.load(args.inputs)
    for name in ("threshold", "decay", "firing"):
        value = getattr(args, name)
        if value is not None:
            if args.framework != "plain":
                print(f"error: --{name} is read from the {args.framework} neurons; use it with --framework plain",
                      file=sys.stderr)
                return 2
            kwargs[name] = value
    architecture = args.arch
    if architecture and Path(architecture).is_file():
        architecture = json.loads(Path(architecture).read_text())
    try:
        net, report = load_torch_model(args.model, args.framework, architecture=architecture,
                                       module_class=args.module_class, full_module=args.full_module, **kwargs)
    except ImportRefused as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError, AttributeError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {out}: {net}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
