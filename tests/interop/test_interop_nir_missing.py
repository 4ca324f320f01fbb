"""Without the nir package: the core and refsnn.interop import, and a .nir model says how to install the extra."""
import subprocess
import sys

import pytest


def test_core_never_imports_nir():
    code = ("import sys, refsnn, refsnn.interop, refsnn.interop.nir, verify.check, refsnn.certify; "
            "print('nir' in sys.modules, 'torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]


def test_missing_nir_names_the_extra(monkeypatch, tmp_path):
    from refsnn.interop import load_any_model

    monkeypatch.setitem(sys.modules, "nir", None)   # what an environment without the package looks like
    (tmp_path / "m.nir").write_bytes(b"")
    with pytest.raises(ImportError, match=r'pip install "refsnn\[nir\]"'):
        load_any_model(tmp_path / "m.nir", dt=1e-4)
