"""The NIR example of docs/INTEROP.md runs as written and gives the same network back."""
import re
from pathlib import Path

import pytest

pytest.importorskip("nir")

DOC = Path(__file__).resolve().parents[2] / "docs" / "INTEROP.md"


def test_nir_example_runs(tmp_path, monkeypatch):
    text = DOC.read_text()
    section = text[text.index("## NIR"):text.index("### Discretization")]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "nir_doc_example"}
    exec(compile(code, str(DOC), "exec"), scope)
    net, back = scope["net"], scope["back"]
    assert (tmp_path / "model.nir").exists() and repr(back) == repr(net)
    for a, b in zip(net.layers, back.layers):
        assert all((x == y).all() for x, y in zip(a.params().values(), b.params().values()))
