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


def _run_counting(argv):
    """``(exit code, indices verified)`` of ``verify.dataset.main(argv)``: which samples a rerun verifies."""
    import verify.dataset as dataset

    real, verified = dataset.verify_samples, []

    def counting(net, config, chunk):
        verified.extend(int(i) for i in chunk[0])
        return real(net, config, chunk)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset, "verify_samples", counting)
        code = dataset.main(argv)
    return code, verified


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
    code, rerun = _run_counting(_argv(tiny_model, out, "--batch-size", "3"))
    assert code == 0
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


@pytest.mark.parametrize("input_set", ["digital", "spike"])
def test_certify_sets_are_the_sets_refsnn_certify_bounds(input_set, monkeypatch):
    """``--sets certify``: per sample the box hull (and the clean train) of the set verified is the box
    ``refsnn.certify`` bounds, so its certificates and the exact verdicts are about the same set."""
    import refsnn.certify as certify
    from verify.dataset import DatasetVerifyConfig, sample_set

    rng = np.random.default_rng(0)
    net = SNN([Flatten(), Linear(rng.normal(0, 0.3, (3, 12)), np.zeros(3))], input_shape=(1, 3, 4))
    indices = [4, 9, 17]
    if input_set == "digital":
        x = rng.random((3, 1, 3, 4))
    else:  # event frames [B, T, *in]
        x = (rng.random((3, 5, 1, 3, 4)) < 0.3).astype(np.uint8)
    captured = {}

    def capture(net, method, x_lower, x_upper, C, iterations=20):
        captured["box"] = (x_lower.copy(), x_upper.copy())
        return np.zeros(C.shape[:2])

    monkeypatch.setattr(certify, "margin_lower_bounds", capture)
    eps = 0.3 if input_set == "digital" else 0.2
    certify.certify_chunk(net, x, np.zeros(3, np.int64), indices,
                          certify.CertifyConfig(model="m.h5", eps=eps, input_set=input_set, horizon=3, seed=7),
                          ["best"])
    lower, upper = captured["box"]
    config = DatasetVerifyConfig(eps=eps, input_set=input_set, horizon=3, seed=7, sets="certify")
    for i, index in enumerate(indices):
        verified, clean = sample_set(x[i], index, config)
        box = verified.box()
        np.testing.assert_array_equal(box[0], lower[:, i])
        np.testing.assert_array_equal(box[1], upper[:, i])
        assert verified.contains(clean)
    if input_set == "spike":  # the protocol's spike set is the whole l0 ball, not certify's freed positions
        protocol, _ = sample_set(x[0], indices[0], DatasetVerifyConfig(eps=eps, input_set=input_set, horizon=3,
                                                                        seed=7))
        assert protocol.count() > verified.count()


def test_indices_rerun_a_chosen_sample_on_the_set_the_selection_gave_it(tiny_model, tmp_path):
    """``--indices`` verifies exactly the named samples, each on the set of the seeded selection
    (per-sample seeds), so undecided samples can be rerun alone with another time limit."""
    from verify.dataset import main

    assert main(_argv(tiny_model, tmp_path / "whole")) == 0
    whole, _ = _records(tmp_path / "whole")
    chosen = [whole[3]["index"], whole[1]["index"]]
    argv = [a for a in _argv(tiny_model, tmp_path / "chosen") if a not in ("--n", "5")]
    argv += ["--indices", ",".join(map(str, chosen))]
    assert main(argv) == 0
    again, document = _records(tmp_path / "chosen")
    assert [r["index"] for r in again] == sorted(chosen)
    assert again == sorted([whole[3], whole[1]], key=lambda r: r["index"])
    assert document["identity"]["indices"] == sorted(chosen) and document["summary"]["n"] == 2


@pytest.mark.parametrize("value,message", [("3,x", "comma-separated"), ("4,4", "distinct"), ("-1", "non-negative"),
                                           ("999999", "beyond")])
def test_indices_refuse_bad_values_in_one_line(tiny_model, tmp_path, capsys, value, message):
    from verify.dataset import main

    with pytest.raises(SystemExit) as exit_info:
        main([a for a in _argv(tiny_model, tmp_path / "bad") if a not in ("--n", "5")] + ["--indices", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not (tmp_path / "bad" / "verify.json").exists()


def test_an_index_beyond_the_split_is_a_sample_index_error_naming_it():
    """``run_samples`` says which index is out of range by its type and fields (the ``--indices:``
    prefix of ``verify.dataset`` depends on them, not on the message text)."""
    import pickle

    from verify.dataset import DatasetVerifyConfig, SampleIndexError, run_samples

    with pytest.raises(SampleIndexError) as error:
        run_samples("mnist-subset", "test", 2, DatasetVerifyConfig(eps=0.02, horizon=2), [3, 999999])
    assert (error.value.index, error.value.split) == (999999, "test") and error.value.size < 999999
    assert isinstance(error.value, ValueError) and str(pickle.loads(pickle.dumps(error.value))) == str(error.value)


@pytest.mark.parametrize("extra,message", [(("--indices", "1", "--n", "3"), "cannot be combined with --n"),
                                           (("--sets", "certify", "--split", "train"), "test split")])
def test_sample_choices_that_contradict_each_other_are_refused(tiny_model, tmp_path, capsys, extra, message):
    from verify.dataset import main

    argv = [a for a in _argv(tiny_model, tmp_path / "bad") if a not in ("--n", "5")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + list(extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_retry_unknown_reruns_only_the_unknown_records_and_each_record_names_its_code(tiny_model, tmp_path):
    import verify.dataset as dataset
    from verify.dataset import PARTIAL, code_revision, main

    out = tmp_path / "retry"
    argv = _argv(tiny_model, out, "--method", "complete", "--batch-size", "1")
    assert main(argv) == 0
    document = json.loads((out / "verify.json").read_text())
    assert all(r["code"] == code_revision() for r in document["samples"])
    # a partial file of that run whose first two records say unknown (an older verifier's, without "code")
    records = {r["index"]: dict(r) for r in document["samples"]}
    first, second = sorted(records)[:2]
    for index in (first, second):
        records[index].update(status="unknown", reason="time limit")
        del records[index]["code"]
    dataset.write_partial(out / PARTIAL, document["identity"], document["command"], records)
    (out / "verify.json").unlink()
    real = dataset.verify_samples
    calls = []

    def stopped_in_the_second(net, config, chunk):
        calls.append([int(i) for i in chunk[0]])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(net, config, chunk)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset, "verify_samples", stopped_in_the_second)
        assert main(argv + ["--retry-unknown"]) == 130
    assert calls == [[first], [second]]
    kept = {r["index"]: r for r in json.loads((out / PARTIAL).read_text())["samples"]}
    assert kept[first]["status"] == document["samples"][0]["status"] and "code" in kept[first]
    assert kept[second]["status"] == "unknown"   # not rerun yet: its old record stays
    assert len(kept) == len(records)
    assert _run_counting(argv + ["--retry-unknown"]) == (0, [second])


def test_retry_unknown_after_a_finished_run_reruns_only_its_unknown_records(tiny_model, tmp_path):
    """No partial file left: the finished verify.json's records seed the retry, only its unknown ones run."""
    from verify.dataset import main

    out = tmp_path / "finished"
    argv = _argv(tiny_model, out, "--method", "complete", "--batch-size", "1")
    assert main(argv) == 0
    document = json.loads((out / "verify.json").read_text())
    last = max(r["index"] for r in document["samples"])
    for record in document["samples"]:
        if record["index"] == last:
            record.update(status="unknown", reason="time limit")
    (out / "verify.json").write_text(json.dumps(document))
    assert _run_counting(argv + ["--retry-unknown"]) == (0, [last])
    again = json.loads((out / "verify.json").read_text())
    assert len(again["samples"]) == len(document["samples"]) and again["resumed_samples"] == len(document["samples"]) - 1
