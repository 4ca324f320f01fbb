"""Clean accuracy of a network on a data split.

Digital images are Bernoulli-encoded (eq. 13), so their accuracy is a random variable: it is
measured once per *sampling seed* (``np.random.default_rng(seed)`` draws the rand maps) and
reported as mean and sample standard deviation (``ddof=1``) over the seeds. Event data (N-MNIST
frames) are deterministic: one pass, standard deviation 0.

Command line: ``python -m refsnn.evaluate --model MODEL.h5 --dataset mnist [--seeds 5] [--T 10] [--format json]``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import numpy as np

from .encoders import check_images, rate_encode
from .network import SNN


@dataclass
class Accuracy:
    """Accuracy in [0, 1]: ``mean`` and ``std`` over ``seeds`` (``per_seed`` in the same order)."""

    mean: float
    std: float
    per_seed: List[float]
    seeds: List[int]
    n_samples: int
    encoding: str  # "bernoulli" or "events"

    def __str__(self) -> str:
        if self.encoding == "events":
            return f"{100 * self.mean:.2f}% ({self.n_samples} samples)"
        return (f"{100 * self.mean:.2f}% +- {100 * self.std:.2f}% over {len(self.seeds)} sampling seeds "
                f"({self.n_samples} samples)")

    def to_dict(self) -> dict:
        return asdict(self)


def input_encoding(net: SNN, x: np.ndarray) -> str:
    """``"bernoulli"`` for images ``[N, *input_shape]``, ``"events"`` for frames ``[N, T, *input_shape]``."""
    shape = tuple(net.input_shape)
    if x.ndim == len(shape) + 1 and tuple(x.shape[1:]) == shape:
        return "bernoulli"
    if x.ndim == len(shape) + 2 and tuple(x.shape[2:]) == shape:
        return "events"
    raise ValueError(f"data of shape {x.shape} fit neither images [N, *{shape}] nor event frames "
                     f"[N, T, *{shape}] for this network")


def predict_dataset(net: SNN, x: np.ndarray, T: int = 10, rng: Optional[np.random.Generator] = None,
                    batch_size: int = 256) -> np.ndarray:
    """Predicted classes ``[N]``. Images ``[N, *in]`` are encoded over ``T`` steps with ``rng``;
    event frames ``[N, T, *in]`` (sample-major) pass through unchanged."""
    encoding = input_encoding(net, x)
    if encoding == "bernoulli":
        if rng is None:
            raise ValueError("digital images need an rng for the Bernoulli encoding")
        x = check_images(x)
    predictions = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        if encoding == "bernoulli":
            spikes, _ = rate_encode(chunk, T, rng)
        else:
            spikes = np.ascontiguousarray(np.swapaxes(chunk, 0, 1))
        predictions[start:start + len(chunk)] = net.predict(spikes)
    return predictions


def clean_accuracy(net: SNN, x: np.ndarray, y: np.ndarray, T: int = 10, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                   batch_size: int = 256) -> Accuracy:
    """Clean accuracy over the sampling ``seeds`` (digital) or of one pass (events)."""
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty split")
    encoding = input_encoding(net, x)
    seeds = [int(s) for s in seeds] if encoding == "bernoulli" else []
    if encoding == "bernoulli" and not seeds:
        raise ValueError("give at least one sampling seed")
    if encoding == "bernoulli":
        x = check_images(x)  # once, not per seed
    runs = [np.random.default_rng(seed) for seed in seeds] or [None]
    per_seed = [float(np.mean(predict_dataset(net, x, T, rng, batch_size) == y)) for rng in runs]
    std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
    return Accuracy(float(np.mean(per_seed)), std, per_seed, seeds, len(x), encoding)


PROG = "python -m refsnn.evaluate"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m refsnn.evaluate`` parser (shared vocabulary of ``refsnn.cli``)."""
    from . import cli

    parser = cli.make_parser(PROG, __doc__.split("\n\n")[0])
    cli.add_model(parser, required=False, detail="; a checkpoint file works too")
    parser.add_argument("model_positional", nargs="?", default=None, metavar="MODEL", help=argparse.SUPPRESS)
    cli.add_dataset(parser, required=True)
    parser.add_argument("--split", default="test", choices=("train", "test"), help="data split")
    cli.add_T(parser, 10)
    parser.add_argument("--seeds", type=cli.positive_int, default=5, help="number of sampling seeds (0..n-1)")
    cli.add_n(parser, None, detail=" (the first N of --split; default: all)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                        help="compute dtype (default: the model's)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="how the result is printed")
    cli.add_deprecated(parser, "--limit", "--n", "n", cli.positive_int)
    cli.add_deprecated(parser, "--json", "--format json", "format", flag=True, const="json")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m refsnn.evaluate``; returns the exit code (2 with one stderr line for bad input)."""
    from .cli import run_main

    return run_main(PROG)(_main)(argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli
    from .data import load_dataset
    from .io import load_model

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_positional is not None:
        if args.model is not None:
            parser.error("give the model once, as --model FILE")
        cli.warn(PROG, "a positional MODEL is deprecated; use --model MODEL")
        args.model = args.model_positional
    if args.model is None:
        parser.error("the following arguments are required: --model")
    net = load_model(args.model, dtype=args.dtype)
    x, y = load_dataset(args.dataset, args.split, args.data_dir, T=args.T, limit=args.n)
    result = clean_accuracy(net, x, y, args.T, seeds=range(args.seeds))
    print(json.dumps(result.to_dict()) if args.format == "json" else f"{args.dataset} {args.split}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
