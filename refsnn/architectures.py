"""Named architectures of the paper's Table 1, with PyTorch's default initialisation.

- ``fc``:   ``X-FC512-FC256-FC10``
- ``conv``: ``X-C64K3S2-C128K3S2-FC256-FC10``; every convolution uses padding 1, so a 28x28 input
  becomes 14x14 then 7x7 (N-MNIST 34x34: 17x17 then 9x9).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .layers import Conv2d, Flatten, Linear
from .network import SNN

ARCHITECTURES = ("fc", "conv")


def _uniform_init(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    # torch.nn.Linear / Conv2d default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def linear_layer(rng: np.random.Generator, in_features: int, out_features: int) -> Linear:
    return Linear(_uniform_init(rng, (out_features, in_features), in_features),
                  _uniform_init(rng, (out_features,), in_features))


def conv_layer(rng: np.random.Generator, in_channels: int, out_channels: int, kernel: int = 3,
               stride: int = 2, padding: int = 1) -> Conv2d:
    fan_in = in_channels * kernel * kernel
    return Conv2d(_uniform_init(rng, (out_channels, in_channels, kernel, kernel), fan_in),
                  _uniform_init(rng, (out_channels,), fan_in), stride=stride, padding=padding)


def build_network(arch: str, input_shape: Sequence[int], n_classes: int = 10,
                  seed: Optional[int] = 0, **snn_kwargs) -> SNN:
    """The paper's ``fc`` or ``conv`` network for per-sample ``input_shape`` (e.g. ``(1, 28, 28)``)."""
    rng = np.random.default_rng(seed)
    input_shape = tuple(int(v) for v in input_shape)
    if arch == "fc":
        n_in = int(np.prod(input_shape))
        layers = [linear_layer(rng, n_in, 512), linear_layer(rng, 512, 256), linear_layer(rng, 256, n_classes)]
        if len(input_shape) > 1:
            layers.insert(0, Flatten())
    elif arch == "conv":
        if len(input_shape) != 3:
            raise ValueError(f"the conv architecture needs (C, H, W) inputs, got {input_shape}")
        channels, height, width = input_shape
        out_h = ((height + 1) // 2 + 1) // 2
        out_w = ((width + 1) // 2 + 1) // 2
        layers = [conv_layer(rng, channels, 64), conv_layer(rng, 64, 128), Flatten(),
                  linear_layer(rng, 128 * out_h * out_w, 256), linear_layer(rng, 256, n_classes)]
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    return SNN(layers, input_shape=input_shape, **snn_kwargs)
