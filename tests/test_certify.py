"""python -m refsnn.certify: certified accuracy never exceeds clean accuracy; eps = 0 is the clean margin."""
import json

import numpy as np

from refsnn.architectures import build_network
from refsnn.bounds import margin_spec
from refsnn.certify import CertifyConfig, certify_dataset, main
from refsnn.encoders import rate_encode
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
    # the same draw of rand maps, batch by batch, as certify_dataset makes them
    rng = np.random.default_rng(config.seed)
    margins = []
    for start in range(0, len(labels), 7):
        spikes, _ = rate_encode(images[start:start + 7], 3, rng)
        rates = net.forward(spikes)
        margins.append(np.einsum("bsn,bn->bs", margin_spec(labels[start:start + 7], 10), rates))
    positive = np.all(np.concatenate(margins) > 0, axis=1)
    for method in ("ibp", "crown-ibp", "best"):
        assert result[method]["certified_error"] == 1.0 - positive.mean()
        assert result[method]["certified_accuracy"] <= result["clean_accuracy"]


def test_cli_writes_json(tmp_path, monkeypatch):
    net = build_network("fc", (1, 28, 28), seed=2)
    save_model(tmp_path / "m.h5", net)
    out = tmp_path / "cert.json"
    assert main(["--model", str(tmp_path / "m.h5"), "--dataset", "mnist-subset", "--eps", "0.01", "--n", "12",
                 "--method", "ibp,best", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["result"]["n"] == 12 and set(record["result"]) >= {"ibp", "best", "clean_accuracy"}
    assert main(["--model", str(tmp_path / "missing.h5"), "--dataset", "mnist-subset", "--n", "3"]) == 2
    assert main(["--model", str(tmp_path / "m.h5"), "--dataset", "mnist-subset", "--method", "alpha"]) == 2
