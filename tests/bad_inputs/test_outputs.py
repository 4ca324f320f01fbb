"""Result tables never replace each other: ``python -m refsnn.attack`` and ``python -m verify.dataset``.

Each row writes a first result into an ``--out`` folder, spoils the situation (another eps, an
earlier file without the arguments that identify it, a full disk) and runs again: the exit code,
the one-line message and the bytes of the files already there are checked. A rerun of the same
result is always allowed; ``--overwrite`` replaces a different one. Below the table: the default
output folders of two eps do not collide.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from refsnn import SNN, Flatten, Linear
from refsnn.attack import main as attack_main
from refsnn.io import save_model
from verify.dataset import main as verify_main

# tool: (main, result file, fixed arguments, eps stored in the result)
TOOLS = {
    "attack": (attack_main, "table.json", ["--n", "4", "--attack", "paper", "--steps", "1", "--fresh-draws", "0",
                                           "--T", "3"], lambda doc: doc["protocol"]["eps"]),
    "verify": (verify_main, "verify.json", ["--n", "2", "--robust-T", "2", "--time-limit", "60"],
               lambda doc: doc["config"]["eps"]),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny 784-6-10 network (fast attacks and MILPs)."""
    rng = np.random.default_rng(5)
    net = SNN([Flatten(), Linear(rng.normal(0, 0.08, (6, 784)), np.full(6, 0.1)),
               Linear(rng.normal(0, 0.5, (10, 6)), np.full(10, 0.05))], input_shape=(1, 28, 28))
    path = tmp_path_factory.mktemp("model") / "tiny" / "model.h5"
    path.parent.mkdir()
    return save_model(path, net)


def _run(tool, model, eps, *extra):
    main, _, fixed, _ = TOOLS[tool]
    argv = ["--model", str(model), "--dataset", "mnist-subset", "--eps", eps, *fixed, "--no-progress", *extra]
    try:
        return main(argv)
    except SystemExit as stop:  # argparse refuses an unknown option by exiting
        return stop.code


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# --- how each row spoils the folder; returns (eps, extra argv) of the second run ------------------

def other_eps(out, monkeypatch):
    return "0.1", []


def old_result_without_identity(out, monkeypatch):
    result = out / TOOLS_RESULT[out.name]
    document = json.loads(result.read_text())
    document.pop("identity", None)  # as the earlier code wrote it
    result.write_text(json.dumps(document))
    return "0.05", []


def not_a_result(out, monkeypatch):
    (out / TOOLS_RESULT[out.name]).write_text("notes, not a result\n")
    return "0.05", []


def overwrite(out, monkeypatch):
    return "0.1", ["--overwrite"]


def disk_full(out, monkeypatch):
    original = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return "0.1", ["--overwrite"]


TOOLS_RESULT = {tool: result for tool, (_, result, _, _) in TOOLS.items()}

# id, spoil, exit code, stderr pattern (None: no error), eps stored afterwards (None: files unchanged)
ROWS = [
    ("other-eps-refused", other_eps, 2, r"holds a different result \(.*eps.*\); choose another --out or pass "
                                        r"--overwrite", None),
    ("old-result-without-identity", old_result_without_identity, 2,
     r"holds a different result \(written without the arguments that identify it\).*--overwrite", None),
    ("not-a-result", not_a_result, 2, r"exists and is not a readable result .*--overwrite", None),
    ("overwrite-replaces", overwrite, 0, None, 0.1),
    # verify.dataset's first write is its new partial file (verify.partial.json): "nothing was written"
    # there; either way the files already in --out are unchanged (checked byte for byte below)
    ("disk-full-keeps-previous", disk_full, 2, r"cannot write .*No space left on device; (the previous version is "
                                               r"unchanged|nothing was written)", None),
]


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("name, spoil, code, pattern, eps_after", ROWS, ids=[row[0] for row in ROWS])
def test_result_in_out_is_never_replaced_silently(tool, name, spoil, code, pattern, eps_after, model, tmp_path,
                                                  monkeypatch, capsys):
    out = tmp_path / tool
    assert _run(tool, model, "0.05", "--out", str(out)) == 0
    eps, extra = spoil(out, monkeypatch)
    before = _digests(out)
    capsys.readouterr()
    assert _run(tool, model, eps, "--out", str(out), *extra) == code
    err = capsys.readouterr().err.strip()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    if pattern is None:
        assert err == ""
        stored = TOOLS[tool][3](json.loads((out / TOOLS_RESULT[tool]).read_text()))
        assert stored in (eps_after, [eps_after])
        return
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert _digests(out) == before  # nothing of the earlier result changed
    if name == "other-eps-refused":
        monkeypatch.undo()
        assert _run(tool, model, "0.05", "--out", str(out)) == 0  # the same result again may be rewritten


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_default_out_of_two_eps_do_not_collide(tool, model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for eps in ("0.05", "0.1"):
        assert _run(tool, model, eps) == 0
    results = sorted((tmp_path / "runs").rglob(TOOLS_RESULT[tool]))
    assert len(results) == 2
    stored = sorted(np.ravel(TOOLS[tool][3](json.loads(p.read_text()))).tolist() for p in results)
    assert stored == [[0.05], [0.1]]
