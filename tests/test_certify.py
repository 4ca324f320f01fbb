"""python -m refsnn.certify: certified accuracy never exceeds clean accuracy; eps = 0 is the clean margin;
results do not depend on the chunk split, and a Dask run equals the serial run."""
import json

import numpy as np
import pytest

from refsnn.architectures import build_network
from refsnn.bounds import margin_spec
from refsnn.certify import CertifyConfig, certify_dataset, certify_samples, main, sample_rng
from refsnn.encoders import bernoulli_encode
from refsnn.io import save_model


def _data(n=30):
    rng = np.random.default_rng(0)
    images = rng.random((n, 1, 8, 8)) * (rng.random((n, 1, 8, 8)) < 0.5)
    return images, rng.integers(0, 10, n)


def test_eps_zero_certifies_exactly_the_positive_clean_margins():
    net = build_network("fc", (1, 8, 8), seed=1)
    images, labels = _data()
    config = CertifyConfig("-", eps=0.0, horizon=3, n=len(labels), batch_size=7)
    result = certify_dataset(net, images, labels, config)
    # the rand maps of sample i come from its own generator
    maps = np.concatenate([sample_rng(config.seed, i).random((3, 1, 1, 8, 8)) for i in range(len(labels))], axis=1)
    rates = net.forward(bernoulli_encode(images, maps))
    positive = np.all(np.einsum("bsn,bn->bs", margin_spec(labels, 10), rates) > 0, axis=1)
    for method in ("ibp", "crown-ibp", "best"):
        assert result[method]["certified_error"] == 1.0 - positive.mean()
        assert result[method]["certified_accuracy"] <= result["clean_accuracy"]


@pytest.mark.parametrize("input_set", ["digital", "spike", "spike-any-k"])
def test_results_do_not_depend_on_the_chunk_split(input_set):
    net = build_network("fc", (1, 6, 6), seed=2)
    rng = np.random.default_rng(1)
    images, labels = rng.random((9, 1, 6, 6)), rng.integers(0, 10, 9)
    config = CertifyConfig("-", eps=0.05, input_set=input_set, k=1, iterations=3, horizon=2, batch_size=9)
    methods = ("ibp", "best", "alpha") if input_set != "spike-any-k" else ("ibp", "crown-ibp", "alpha")
    whole = certify_samples(net, images, labels, config, methods, chunk_size=9)
    split = certify_samples(net, images, labels, config, methods, chunk_size=4)
    assert [r["index"] for r in split] == list(range(9))
    for a, b in zip(whole, split):
        assert a["clean_correct"] == b["clean_correct"]
        for method in methods:
            assert a[method]["certified"] == b[method]["certified"]
            assert a[method]["min_margin_lower"] == pytest.approx(b[method]["min_margin_lower"], abs=1e-12)
    # per-method certified accuracy never exceeds clean accuracy; alpha never below best/ibp
    for record in whole:
        for method in methods:
            assert record[method]["certified"] <= record["clean_correct"]
        assert record["alpha"]["min_margin_lower"] >= record["ibp"]["min_margin_lower"]


def test_dask_workers_give_the_serial_result():
    pytest.importorskip("distributed")
    net = build_network("fc", (1, 6, 6), seed=2)
    rng = np.random.default_rng(1)
    images, labels = rng.random((6, 1, 6, 6)), rng.integers(0, 10, 6)
    config = CertifyConfig("-", eps=0.05, horizon=2, batch_size=3)
    serial = certify_samples(net, images, labels, config, ("ibp", "best"))
    parallel = certify_samples(net, images, labels, config, ("ibp", "best"), workers=2)
    strip = lambda records: [{k: ({kk: vv for kk, vv in v.items() if kk != "seconds"} if isinstance(v, dict) else v)  # noqa
                              for k, v in r.items()} for r in records]
    assert strip(serial) == strip(parallel)


def test_cli_writes_json(tmp_path):
    net = build_network("fc", (1, 28, 28), seed=2)
    save_model(tmp_path / "m.h5", net)
    out = tmp_path / "cert"
    assert main(["--model", str(tmp_path / "m.h5"), "--dataset", "mnist-subset", "--eps", "0.01", "--n", "12",
                 "--method", "ibp,best", "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "certify.json").read_text())
    assert record["result"]["n"] == 12 and set(record["result"]) >= {"ibp", "best", "clean_accuracy"}
    assert (out / "certify.csv").read_text().startswith("method,n,clean_accuracy")
    assert "| best |" in (out / "certify.md").read_text()
    samples = json.loads((out / "certify_samples.json").read_text())
    assert len(samples) == 12 and {"index", "label", "clean_correct", "ibp", "best"} <= set(samples[0])
    assert main(["--model", str(tmp_path / "missing.h5"), "--dataset", "mnist-subset", "--n", "3"]) == 2
    assert main(["--model", str(tmp_path / "m.h5"), "--dataset", "mnist-subset", "--method", "nonsense"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "m.h5"), "--dataset", "mnist-subset", "--confidence-alpha", "2"])
    assert exit_info.value.code == 2


def test_cli_any_k_alpha_and_encoder_certificate(tmp_path):
    net = build_network("fc", (1, 28, 28), seed=2)
    save_model(tmp_path / "m.h5", net)
    out = tmp_path / "anyk"
    assert main(["--model", str(tmp_path / "m.h5"), "--dataset", "mnist-subset", "--set", "spike-any-k", "--k", "2",
                 "--budget", "total", "--n", "4", "--method", "ibp,best,alpha", "--iterations", "2",
                 "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "certify.json").read_text())["result"]
    assert result["alpha"]["certified_accuracy"] >= result["best"]["certified_accuracy"] - 1e-12
    out = tmp_path / "enc"
    assert main(["--model", str(tmp_path / "m.h5"), "--dataset", "mnist-subset", "--eps", "0.01", "--n", "2",
                 "--method", "best", "--encoder-draws", "5", "--encoder-images", "1", "--out", str(out),
                 "--no-progress"]) == 0
    encoder = json.loads((out / "certify.json").read_text())["result"]["encoder"]
    assert encoder["images"] == 1 and encoder["draws"] == 5 and 0.0 <= encoder["probability_lower_bounds"][0] <= 1.0
