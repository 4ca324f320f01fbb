"""``python -m verify.dataset`` resumes: per-chunk partial records written atomically under --out,
a SIGTERM after the first chunk leaves a consistent partial file, the same command continues with
the samples it lacks and ends with the records of an uninterrupted run; other arguments are refused."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from refsnn import SNN, Flatten, Linear
from refsnn.io import save_model


@pytest.fixture
def tiny_model(tmp_path):
    rng = np.random.default_rng(5)
    net = SNN([Flatten(), Linear(rng.normal(0, 0.08, (6, 784)), np.full(6, 0.1)),
               Linear(rng.normal(0, 0.5, (10, 6)), np.full(10, 0.05))], input_shape=(1, 28, 28))
    path = tmp_path / "tiny" / "model.h5"
    path.parent.mkdir()
    save_model(path, net)
    return path


def _argv(model, out, *extra):
    return ["--model", str(model), "--dataset", "mnist-subset", "--n", "5", "--eps", "0.02", "--robust-T", "2",
            "--time-limit", "60", "--batch-size", "2", "--out", str(out), "--no-progress", "--quiet", *extra]


def _records(out):
    document = json.loads((out / "verify.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in document["samples"]], document


def test_sigterm_after_the_first_chunk_then_rerun_gives_the_uninterrupted_records(tiny_model, tmp_path, capsys):
    import verify.dataset as dataset
    from verify.dataset import PARTIAL, main

    assert main(_argv(tiny_model, tmp_path / "whole")) == 0
    whole, _ = _records(tmp_path / "whole")

    out = tmp_path / "resumed"
    real = dataset.verify_samples
    calls = []

    def terminated_after_one_chunk(net, config, chunk):
        calls.append([int(i) for i in chunk[0]])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the run is killed while its second chunk runs
        return real(net, config, chunk)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset, "verify_samples", terminated_after_one_chunk)
        assert main(_argv(tiny_model, out)) == 130
    assert "rerun the same command" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored
    assert not (out / "verify.json").exists()
    partial = json.loads((out / PARTIAL).read_text())
    assert [r["index"] for r in partial["samples"]] == calls[0]  # the first chunk, complete
    assert [name for name in os.listdir(out) if name != PARTIAL] == []  # no temporary file left

    # other arguments into the same folder: refused, the partial file untouched
    before = (out / PARTIAL).read_text()
    assert main(_argv(tiny_model, out)[:-4] + ["--eps", "0.03", "--out", str(out), "--no-progress", "--quiet"]) == 2
    assert "verify.partial.json holds a different result" in capsys.readouterr().err
    assert (out / PARTIAL).read_text() == before

    # the same command continues with the samples it lacks (another batch size is the same result)
    rerun = []

    def counting(net, config, chunk):
        rerun.extend(int(i) for i in chunk[0])
        return real(net, config, chunk)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset, "verify_samples", counting)
        assert main(_argv(tiny_model, out, "--batch-size", "3")) == 0
    assert sorted(rerun + calls[0]) == sorted(r["index"] for r in whole)
    resumed, document = _records(out)
    assert resumed == whole and document["resumed_samples"] == len(calls[0])
    assert not (out / PARTIAL).exists()


def test_partial_file_is_written_per_chunk_and_read_back(tmp_path):
    from verify.dataset import read_partial, write_partial
    from refsnn.runlock import ResultExistsError

    identity = {"model": "m.h5", "eps": 0.02, "n": 4}
    path = tmp_path / "verify.partial.json"
    assert read_partial(path, identity) == {}
    records = {7: {"index": 7, "status": "robust"}, 3: {"index": 3, "status": "unknown"}}
    write_partial(path, identity, "cmd", records)
    assert read_partial(path, identity) == records
    with pytest.raises(ResultExistsError, match="eps"):
        read_partial(path, {**identity, "eps": 0.05})
    assert read_partial(path, {**identity, "eps": 0.05}, overwrite=True) == {}
    path.write_text("{not json")
    with pytest.raises(ResultExistsError, match="not a readable partial result"):
        read_partial(path, identity)
