"""The round trip of docs/INTEROP.md and of the README runs as written and ends UNSOUND with a witness."""
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("snntorch")

from verify.check import main as check_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {"docs": (ROOT / "docs" / "INTEROP.md", "## The round trip", "## Importing a model"),
            "readme": (ROOT / "README.md", "## Checking PyTorch SNN code", "## Scale-out")}


@pytest.mark.parametrize("where", sorted(EXAMPLES))
def test_round_trip_example_runs(where, tmp_path, monkeypatch, capsys):
    DOC, begin, end = EXAMPLES[where]
    text = DOC.read_text()
    section = text[text.index(begin):text.index(end)]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    command = re.findall(r"```bash\n(.*?)```", section, re.S)[0].split("#")[0].split()
    assert command[:3] == ["python", "-m", "verify.check"]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {"__name__": "interop_doc_example"})
    assert check_main(command[3:]) == 1
    assert "[UNSOUND]" in capsys.readouterr().out
