"""The NIR examples of docs/INTEROP.md and of the README run as written and give the same network back."""
import re
from pathlib import Path

import pytest

pytest.importorskip("nir")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {"docs": (ROOT / "docs" / "INTEROP.md", "## NIR", "### Discretization"),
            "readme": (ROOT / "README.md", "## NIR graphs", "## Scale-out")}


@pytest.mark.parametrize("where", sorted(EXAMPLES))
def test_nir_example_runs(where, tmp_path, monkeypatch):
    DOC, begin, end = EXAMPLES[where]
    text = DOC.read_text()
    section = text[text.index(begin):text.index(end)]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "nir_doc_example"}
    exec(compile(code, str(DOC), "exec"), scope)
    net, back = scope["net"], scope["back"]
    assert (tmp_path / "model.nir").exists() and repr(back) == repr(net)
    for a, b in zip(net.layers, back.layers):
        assert all((x == y).all() for x, y in zip(a.params().values(), b.params().values()))
