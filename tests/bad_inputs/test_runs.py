"""Runs that cannot lose a good state and outputs that never collide.

One table of bad situations around a training run folder (NaN/Inf in a step, reuse of --out,
locks, malformed files, full or unwritable disk, orphan temporary files): each row sets the
situation up on a copy of a finished one-epoch run, continues it with ``--resume --epochs 2``
(or starts a new run on it) and checks the exit code, the message, and that the files that were
there are unchanged. Below the table: a checkpoint writer killed mid-write, and certify results
that must not replace each other.
"""
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from refsnn.io import load_checkpoint
from refsnn.train import METHODS, main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--dataset", "mnist-subset", "--arch", "fc", "--batch-size", "16", "--limit-train", "48",
        "--limit-test", "24", "--eval-seeds", "1", "--seed", "3", "--no-progress"]
RESUME = ["--resume", "--epochs", "2", "--no-progress"]
ROBUST = ["--method", "robust", "--dataset", "mnist-subset", "--arch", "fc", "--eps", "0.05", "--ramp-epochs", "1",
          "--batch-size", "16", "--limit-train", "48", "--limit-test", "16", "--eval-seeds", "1",
          "--method-option", "eval_n=4", "--seed", "3", "--no-progress"]


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run (checkpoint, model, metrics, summary)."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(TINY + ["--epochs", "1", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def run(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


@pytest.fixture
def sleeper():
    child = subprocess.Popen(["sleep", "60"])
    yield child.pid
    child.kill()
    child.wait()


# --- how each row spoils the run ---------------------------------------------------------------

def _wrap_step(monkeypatch, spoil, method="natural"):
    """Replaces the method's step by one that spoils its result from the 5th step on
    (the second epoch: the first checkpoint is already written)."""
    from refsnn.train import Method, get_method
    original = get_method(method)

    def step(net, batch, ctx):
        result = original.step(net, batch, ctx)
        if ctx.global_step >= 4:
            spoil(net, result)
        return result

    monkeypatch.setitem(METHODS, method, Method(step, original.options, original.epoch_metrics))


def nan_loss(run, monkeypatch, sleeper):
    def spoil(net, result):
        result.loss = float("nan")
    _wrap_step(monkeypatch, spoil)
    return RESUME


def robust_nan_loss(run, monkeypatch, sleeper):
    """A robust (bound-loss) run instead of the natural one, whose bound loss turns NaN."""
    shutil.rmtree(run)
    assert main(ROBUST + ["--epochs", "1", "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["method"] == "robust"

    def spoil(net, result):
        result.loss = float("nan")
    _wrap_step(monkeypatch, spoil, "robust")
    return RESUME


def inf_gradient(run, monkeypatch, sleeper):
    def spoil(net, result):
        result.grads[1][3] = np.inf
    _wrap_step(monkeypatch, spoil)
    return RESUME


def nan_weight(run, monkeypatch, sleeper):
    from refsnn.optim import SGD
    original = SGD.step

    def step(self, grads):
        original(self, grads)
        if self.step_count >= 5:
            self.params[2][0, 0] = np.nan  # an update that overflowed
    monkeypatch.setattr(SGD, "step", step)
    return RESUME


def out_reused(run, monkeypatch, sleeper):
    return TINY + ["--epochs", "1"]  # a new run into the folder of a finished one


def lock_live(run, monkeypatch, sleeper):
    (run / "run.lock").write_text(json.dumps({"pid": sleeper, "host": socket.gethostname(), "started": 0}))
    return RESUME


def lock_other_host(run, monkeypatch, sleeper):
    (run / "run.lock").write_text(json.dumps({"pid": 1, "host": "another-host.invalid", "started": 0}))
    return RESUME


def lock_malformed(run, monkeypatch, sleeper):
    (run / "run.lock").write_text("{pid: ")
    return RESUME


def _edit_checkpoint(run, group, key, text):
    import h5py
    with h5py.File(run / "checkpoint.h5", "r+") as h5:
        h5[group].attrs[key] = text


def checkpoint_bad_json(run, monkeypatch, sleeper):
    _edit_checkpoint(run, "checkpoint/optimizer", "hyperparams", "{momentum: 0.9")
    return RESUME


def checkpoint_json_wrong_type(run, monkeypatch, sleeper):
    _edit_checkpoint(run, "checkpoint", "history", "5")
    return RESUME


def checkpoint_corrupt_byte(run, monkeypatch, sleeper):
    """One flipped byte in the stored momentum of the optimizer (a bad disk block)."""
    import h5py
    with h5py.File(run / "checkpoint.h5", "r") as h5:
        stored = h5["checkpoint/optimizer/buffers/momentum/3"].id
        offset = stored.get_offset() if stored.get_offset() is not None else stored.get_chunk_info(0).byte_offset
    with open(run / "checkpoint.h5", "r+b") as handle:
        handle.seek(offset + 5)
        byte = handle.read(1)
        handle.seek(offset + 5)
        handle.write(bytes([byte[0] ^ 0x10]))
    return RESUME


def checkpoint_newer_major(run, monkeypatch, sleeper):
    _edit_checkpoint(run, "checkpoint", "format_version", "2.0")
    return RESUME


def checkpoint_version_float(run, monkeypatch, sleeper):
    import h5py
    with h5py.File(run / "checkpoint.h5", "r+") as h5:
        h5["checkpoint"].attrs["format_version"] = 1.9  # never truncated to 1
    return RESUME


def disk_full(run, monkeypatch, sleeper):
    original = os.fsync

    def fsync(fd):
        if "checkpoint.h5" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return RESUME


def unwritable_folder(run, monkeypatch, sleeper):
    # Tests run as root, for whom chmod does not stop writes: refuse the temporary file instead.
    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return RESUME


def readback_differs(run, monkeypatch, sleeper):
    import refsnn.io as rio
    original = rio.write_model

    def write_model(h5, net):  # a disk that stores something else than what was written
        original(h5, net)
        if "checkpoint" in h5.filename:
            h5["layers/1/weight"][0, 0] += 1.0
    monkeypatch.setattr(rio, "write_model", write_model)
    return RESUME


# Rows that get as far as training rewrite config.json (the resumed run asks for 2 epochs); the
# run's results must keep their bytes.
RESULTS = ("checkpoint.h5", "model.h5", "summary.json", "metrics.jsonl", "metrics.csv")

# id, spoil, exit code, stderr pattern, files that must keep their bytes (None: all that were there)
ROWS = [
    ("nan-loss", nan_loss, 1, r"epoch 2, batch 1 .*non-finite loss.*checkpoint .* left unchanged", RESULTS),
    ("robust-nan-loss", robust_nan_loss, 1, r"epoch 2, batch 1 .*non-finite loss.*checkpoint .* left unchanged",
     RESULTS),
    ("inf-gradient", inf_gradient, 1, r"epoch 2, batch 1 .*non-finite gradient layer1\.bias \(0 NaN, 1 Inf\)",
     RESULTS),
    ("nan-weight", nan_weight, 1, r"epoch 2, batch 1 .*non-finite weight layer2\.weight \(1 NaN, 0 Inf\)", RESULTS),
    ("out-reused", out_reused, 2, r"already holds a training run.*--resume.*--overwrite", None),
    ("lock-live", lock_live, 2, r"in use by PID \d+ on host", None),
    ("lock-other-host", lock_other_host, 2, r"another-host\.invalid.*delete .*run\.lock", None),
    ("lock-malformed", lock_malformed, 2, r"lock file .*run\.lock is malformed", None),
    ("checkpoint-bad-json", checkpoint_bad_json, 2, r"hyperparams must be JSON text", None),
    ("checkpoint-json-wrong-type", checkpoint_json_wrong_type, 2, r"history a JSON list", None),
    ("checkpoint-corrupt-byte", checkpoint_corrupt_byte, 2, r"checkpoint\.h5: /checkpoint/optimizer/buffers/momentum/3 "
                                                            r"cannot be read \(checksum mismatch", None),
    ("checkpoint-newer-major", checkpoint_newer_major, 2, r"checkpoint format version 2\.0 is newer than this refsnn "
                                                          r"supports \(1\.0\); upgrade refsnn", None),
    ("checkpoint-version-float", checkpoint_version_float, 2, r"checkpoint format_version must be an integer or a "
                                                              r"'MAJOR\.MINOR' string, got 1\.9", None),
    ("disk-full", disk_full, 2, r"cannot write .*checkpoint\.h5: No space left on device; the previous version is "
                                r"unchanged", RESULTS),
    ("unwritable-folder", unwritable_folder, 2, r"cannot write .*: Permission denied", None),
    ("readback-differs", readback_differs, 2, r"read back different .*layer1\.weight.*previous checkpoint is kept",
     RESULTS),
]


@pytest.mark.parametrize("name, spoil, code, pattern, kept", ROWS, ids=[row[0] for row in ROWS])
def test_bad_run_situations(name, spoil, code, pattern, kept, run, monkeypatch, sleeper, capsys):
    argv = spoil(run, monkeypatch, sleeper)
    before = _digests(run)
    assert main(argv + ["--out", str(run), "--quiet"]) == code  # --quiet: no compile notice, errors only
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    after = _digests(run)
    for file_name in (kept or before):
        assert after.get(file_name) == before[file_name], f"{file_name} changed"
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    if code == 1:  # a failed run: status and diagnostics beside the untouched checkpoint
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "failed" and status["epoch"] == 2
        failure = json.loads((run / "failure.json").read_text())
        assert (failure["epoch"], failure["batch"], failure["global_step"]) == (2, 1, 5)
        assert failure["non_finite"] and failure["lr"] > 0 and failure["norms"]
        assert failure["checkpoint"] == str(run / "checkpoint.h5")
        assert np.all(np.isfinite(load_checkpoint(run / "checkpoint.h5").net.params()[0]))
    if name.startswith("lock"):
        assert (run / "run.lock").exists()  # someone else's lock is never removed


def test_stale_lock_is_taken_over_with_a_notice(run, capsys):
    (run / "run.lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}))
    assert main(RESUME + ["--out", str(run)]) == 0
    assert re.search(r"took over the stale lock .*run\.lock of PID \d+ .*no longer running", capsys.readouterr().out)
    assert not (run / "run.lock").exists()
    assert json.loads((run / "status.json").read_text())["state"] == "done"


def test_overwrite_replaces_an_earlier_run(run, capsys):
    (run / "failure.json").write_text("{}")
    assert main(TINY + ["--epochs", "1", "--out", str(run), "--overwrite", "--quiet"]) == 0
    assert not (run / "failure.json").exists()  # nothing of the earlier run is left to mislead
    assert json.loads((run / "status.json").read_text())["state"] == "done"


def test_orphan_temporary_files_are_cleaned_and_nothing_else(run, sleeper):
    dead = _dead_pid()
    orphans = [f".checkpoint.h5.{dead}.abcd1234.tmp", f".metrics.jsonl.{dead}.zz_9abcd.tmp"]
    kept = [f".checkpoint.h5.{sleeper}.abcd1234.tmp",  # a live writer's
            ".checkpoint.h5.backup.tmp", f".model.h5.old.{dead}.abcd1234.tmp", "notes.tmp"]  # not our pattern
    for name in orphans + kept:
        (run / name).write_bytes(b"partial")
    assert main(RESUME + ["--out", str(run), "--quiet"]) == 0
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == sorted(kept)


_KILLED_WRITER = """
import sys, time
import refsnn.io as rio
original = rio.write_model
def write_model(h5, net):
    original(h5, net)
    h5.flush()
    open(sys.argv[2], "w").close()
    time.sleep(600)
rio.write_model = write_model
from refsnn.train import main
sys.exit(main(["--resume", "--epochs", "2", "--no-progress", "--quiet", "--out", sys.argv[1]]))
"""


def test_writer_killed_mid_checkpoint_keeps_the_previous_one(run, tmp_path, capsys):
    before = _digests(run)
    marker = tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(run), str(marker)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for _ in range(1200):
            if marker.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the writer never reached the checkpoint"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert _digests(run)["checkpoint.h5"] == before["checkpoint.h5"]
    assert load_checkpoint(run / "checkpoint.h5").epoch == 1
    assert [p.name for p in run.glob(".checkpoint.h5.*.tmp")] != []  # the killed writer's half file
    assert main(RESUME + ["--out", str(run), "--quiet"]) == 0  # its lock is stale, its temp file an orphan
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    assert load_checkpoint(run / "checkpoint.h5").epoch == 2


# --- certify: results never replace each other --------------------------------------------------

def _certify(finished_run, out, eps, *extra):
    from refsnn.certify import main as certify_main
    return certify_main(["--model", str(finished_run / "model.h5"), "--dataset", "mnist-subset", "--n", "3",
                         "--eps", str(eps), "--method", "ibp", "--no-progress", "--out", str(out), *extra])


def test_certify_two_eps_into_one_out_do_not_collide(finished_run, tmp_path, capsys):
    out = tmp_path / "cert"
    assert _certify(finished_run, out, 0.05) == 0
    before = _digests(out)
    assert _certify(finished_run, out, 0.1) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(r"holds a different result .*eps.*--overwrite", err), err
    assert _digests(out) == before
    assert _certify(finished_run, out, 0.05) == 0  # the same result again may be rewritten
    assert _certify(finished_run, out, 0.1, "--overwrite") == 0
    assert json.loads((out / "certify.json").read_text())["config"]["eps"] == 0.1


def test_certify_old_file_names_for_two_eps_do_not_collide(finished_run, tmp_path):
    for eps in ("0.05", "0.10"):
        assert _certify(finished_run, tmp_path / f"cert_eps{eps}.json", eps) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 8 and len({json.loads(p.read_text())["config"]["eps"]
                                      for p in tmp_path.rglob("certify.json")}) == 2
