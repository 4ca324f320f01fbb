"""The round trip of docs/INTEROP.md runs as written and ends UNSOUND with a witness."""
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("snntorch")

from verify.check import main as check_main  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "INTEROP.md"


def test_round_trip_example_runs(tmp_path, monkeypatch, capsys):
    text = DOC.read_text()
    section = text[text.index("## The round trip"):text.index("## Importing a model")]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    command = re.findall(r"```bash\n(.*?)```", section, re.S)[0].split("#")[0].split()
    assert command[:3] == ["python", "-m", "verify.check"]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {"__name__": "interop_doc_example"})
    assert check_main(command[3:]) == 1
    assert "[UNSOUND]" in capsys.readouterr().out
