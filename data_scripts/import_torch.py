#!/usr/bin/env python
"""Import a PyTorch spiking network (snnTorch, SpikingJelly or plain PyTorch) into a refsnn model file.

    python data_scripts/import_torch.py --framework snntorch|spikingjelly|plain --model FILE --out model.h5

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
--samples); otherwise nothing is written and the reason is printed (exit code 1). Needs the
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--framework", required=True, choices=("snntorch", "spikingjelly", "plain"))
    parser.add_argument("--model", required=True, help="torch.save'd module or state_dict")
    parser.add_argument("--out", required=True, help="refsnn HDF5 model to write (docs/FORMAT.md)")
    parser.add_argument("--arch", help="plain state_dict: MNIST_FC | MNIST_CONV | NMNIST_FC | NMNIST_CONV or a "
                                       "JSON file with the layer list")
    parser.add_argument("--module-class", help="state_dict of any framework: package.module:ClassName")
    parser.add_argument("--full-module", action="store_true",
                        help="FILE holds a pickled module (torch.load with weights_only=False; trusted files only)")
    parser.add_argument("--input-shape", type=_shape, help="per-sample input shape, e.g. 1,28,28 (inferred when "
                                                           "the first layer is Linear or from --arch)")
    parser.add_argument("--steps", type=int, default=10, help="time steps of the validation runs (default 10)")
    parser.add_argument("--n-random", type=int, default=64, help="random binary inputs for the validation")
    parser.add_argument("--samples", help=".npy file of real inputs: spike trains [T, B, *shape] or images [B, *shape]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerate-float32-ties", type=int, default=0, metavar="ULPS",
                        help="float32 models: set aside validation samples whose first differing spike sits within "
                             "ULPS float32 spacings of the threshold (default 0: every spike must agree; the "
                             "float64 comparison is always exact)")
    parser.add_argument("--threshold", type=float, help="plain only (default: the authors' 0.25)")
    parser.add_argument("--decay", type=float, help="plain only (default: the authors' 0.25)")
    parser.add_argument("--firing", choices=(">=", ">"), help="plain only (default: the authors' '>')")
    args = parser.parse_args(argv)

    try:
        from refsnn.interop import require_torch
        require_torch()
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import numpy as np

    from refsnn.interop.torch_import import ImportRefused, load_torch_model

    kwargs = {"steps": args.steps, "n_random": args.n_random, "seed": args.seed, "out": args.out,
              "return_report": True, "tolerate_float32_ties": args.tolerate_float32_ties}
    if args.input_shape:
        kwargs["input_shape"] = args.input_shape
    if args.samples:
        kwargs["samples"] = np.load(args.samples)
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
    print(f"wrote {args.out}: {net}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
