"""The sample selection the verifier benchmarks share: a model and some ``verify.dataset`` protocol
samples (``--indices``), loaded as ``python -m verify.dataset`` loads them."""
from __future__ import annotations

import argparse
from typing import List, Optional, Tuple

import numpy as np

from refsnn.io import load_model
from refsnn.network import SNN
from verify.dataset import EVENT_DATASETS, DatasetVerifyConfig, run_samples


def ints(text: str) -> List[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (an argparse type)."""
    return [int(part) for part in text.split(",") if part.strip()]


def add_sample_arguments(parser: argparse.ArgumentParser, dataset: str, eps: float) -> None:
    """``--model --dataset --eps --robust-T --seed --indices --data-dir``, as ``verify.dataset`` names them."""
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default=dataset)
    parser.add_argument("--eps", type=float, default=eps)
    parser.add_argument("--robust-T", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--indices", type=ints, required=True)
    parser.add_argument("--data-dir", default=None)


def load_samples(args: argparse.Namespace, input_set: Optional[str] = None
                 ) -> Tuple[SNN, DatasetVerifyConfig, np.ndarray, np.ndarray, np.ndarray]:
    """``(float64 net, config, indices [n], x [n, ...], labels [n])`` of the protocol samples
    ``args.indices``; ``input_set`` defaults to the dataset's (spike for event data, else digital).
    ``verify.dataset.sample_set(x[i], indices[i], config)`` gives each sample's set."""
    net = load_model(args.model, dtype=np.float64)
    if input_set is None:
        input_set = "spike" if args.dataset in EVENT_DATASETS else "digital"
    config = DatasetVerifyConfig(eps=args.eps, input_set=input_set, horizon=args.robust_T, seed=args.seed,
                                 method="complete", sets="protocol")
    indices, x, labels = run_samples(args.dataset, "test", len(args.indices), config, indices=args.indices,
                                     data_dir=args.data_dir)
    return net, config, indices, x, labels
