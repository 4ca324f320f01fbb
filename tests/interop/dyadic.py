"""Dyadic weights for the interop tests (torch is imported by the tests that use this)."""
import torch
from torch import nn


def dyadic_(module, seed, grid=64, scale=16, bias_scale=None):
    """Weights ``round(N(0,1) * scale) / grid`` and biases ``round(N(0,1) * bias_scale) / grid``
    (default ``scale / 2``) in every Linear/Conv2d, in place: float arithmetic is exact, so
    membranes land exactly on the threshold often (the case where '>' and '>=' differ)."""
    bias_scale = scale / 2 if bias_scale is None else bias_scale
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.copy_(torch.round(torch.randn(m.weight.shape, generator=gen) * scale) / grid)
                m.bias.copy_(torch.round(torch.randn(m.bias.shape, generator=gen) * bias_scale) / grid)
    return module
