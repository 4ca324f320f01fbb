"""Interoperability with PyTorch SNN code (optional extra ``refsnn[torch]``).

- :func:`import_module` / :func:`import_state_dict` (``refsnn.interop.torch_import``): an snnTorch,
  SpikingJelly or plain PyTorch network (the layout of the paper authors' released code) becomes a
  refsnn :class:`~refsnn.network.SNN`, validated by running both forward passes and refused unless
  their spikes agree exactly;
- :func:`export_bounds` (``refsnn.interop.export``): runs another implementation's bound routine
  over input cases and writes the CASES.h5 file that ``python -m verify.check`` reads;
- :func:`from_nir` / :func:`to_nir` / :func:`write_nir` (``refsnn.interop.nir``, extra ``refsnn[nir]``):
  NIR graphs in and out, forward Euler with an explicit ``dt``; :func:`load_any_model` reads a
  refsnn HDF5 model or converts a ``.nir`` file in memory (what the command-line tools call).

Importing this package does not import torch; the functions do, and say how to install it
(``pip install "refsnn[torch]"``, which pins ``torch==2.13.0``) when it is missing.
See docs/INTEROP.md.
"""
from __future__ import annotations

__all__ = ["import_module", "import_state_dict", "load_torch_model", "export_bounds", "ImportRefused",
           "ImportReport", "require_torch", "TORCH_REQUIREMENT", "from_nir", "to_nir", "write_nir",
           "load_any_model", "NIRRefused"]

TORCH_REQUIREMENT = "torch==2.13.0"

_LAZY = {
    "import_module": "torch_import",
    "import_state_dict": "torch_import",
    "load_torch_model": "torch_import",
    "ImportRefused": "torch_import",
    "ImportReport": "torch_import",
    "export_bounds": "export",
    "from_nir": "nir",
    "to_nir": "nir",
    "write_nir": "nir",
    "load_any_model": "nir",
    "NIRRefused": "nir",
}


def require_torch():
    """Imports and returns ``torch``, or raises ImportError telling how to install the extra."""
    try:
        import torch
    except ImportError:
        raise ImportError("refsnn.interop needs PyTorch, which the core package does not install: "
                          f'pip install "refsnn[torch]"  (installs {TORCH_REQUIREMENT})') from None
    return torch


def __getattr__(name):  # PEP 562: submodules are imported on first use (they import nothing heavy)
    if name in _LAZY:
        import importlib
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
