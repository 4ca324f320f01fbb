"""The README's "From Python" block runs as written from the repository root."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    begin = text.index("## From Python")
    section = text[begin:text.index("\n## ", begin + 1)]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "over 2 sampling seeds (500 samples)" in out
    certified = float(re.search(r"certified accuracy: ([0-9.]+)", out).group(1))
    attack_error = float(re.search(r"attack error: ([0-9.]+)", out).group(1))
    assert 0.0 <= certified <= 1.0 and 0.0 <= attack_error <= 1.0
    assert certified > 0.5  # the committed robust model certifies most of these 20 images at eps 0.12
