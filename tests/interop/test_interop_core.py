"""refsnn.interop without torch: importing it never imports torch; calling it says how to install it."""
import subprocess
import sys

import pytest


def test_interop_modules_do_not_import_torch():
    code = ("import sys, refsnn, refsnn.interop, refsnn.interop.torch_import, refsnn.interop.export; "
            "assert 'torch' not in sys.modules, 'torch imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_torch_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    from refsnn.interop import export_bounds, import_module
    with pytest.raises(ImportError, match=r'pip install "refsnn\[torch\]".*torch==2\.13\.0'):
        import_module(object(), "plain")
    with pytest.raises(ImportError, match=r"refsnn\[torch\]"):
        export_bounds(lambda *a: None, [], "unused.h5")
