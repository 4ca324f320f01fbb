"""Plain PyTorch (the paper authors' released layout) -> refsnn: state_dicts, presets, CLI."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from refsnn.interop.torch_import import (AUTHORS_ARCHITECTURES, ImportRefused, import_module,  # noqa: E402
                                         import_state_dict)
from refsnn.io import load_model  # noqa: E402


def authors_state_dict(arch: str, seed: int):
    """Random weights with the authors' parameter names and shapes (torch's default init ranges)."""
    gen = torch.Generator().manual_seed(seed)
    channels = AUTHORS_ARCHITECTURES[arch]["input_shape"][0]
    if arch.endswith("FC"):
        sizes = [(512, channels * (28 if channels == 1 else 34) ** 2), (256, 512), (10, 256)]
        shapes = {f"fc{i + 1}": s for i, s in enumerate(sizes)}
    else:
        side = 7 if channels == 1 else 9
        shapes = {"conv1": (64, channels, 3, 3), "conv2": (128, 64, 3, 3), "fc1": (256, 128 * side * side),
                  "fc2": (10, 256)}
    state = {}
    for key, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        bound = 2.0 / np.sqrt(fan_in)
        state[f"{key}.weight"] = (torch.rand(shape, generator=gen) * 2 - 1) * bound
        state[f"{key}.bias"] = (torch.rand(shape[0], generator=gen) * 2 - 1) * bound
    return state


def authors_forward(state, arch, x):
    """The released code's recurrence (BoundMemUpdate): m[t] = op(x[t]) + m[t-1] (1 - s[t-1]) alpha,
    s = m.gt(0.25), written independently of the importer. x [T, B, *shape] -> output rates [B, 10]."""
    alpha, th = 0.25, 0.25
    spikes = torch.as_tensor(x, dtype=torch.float32)
    keys = [k[:-7] for k in state if k.endswith(".weight")]
    for key in keys:
        w, b = state[f"{key}.weight"], state[f"{key}.bias"]
        m_prev = s_prev = None
        out = []
        for t in range(spikes.shape[0]):
            if w.ndim == 4:
                m = F.conv2d(spikes[t], w, b, stride=2, padding=1)
            else:
                m = F.linear(spikes[t].flatten(1), w, b)
            if t > 0:
                m = m + m_prev * (1 - s_prev) * alpha
            s = m.gt(th).float()
            out.append(s)
            m_prev, s_prev = m, s
        spikes = torch.stack(out)
    return spikes.mean(0).numpy()


@pytest.mark.parametrize("arch", ["MNIST_FC", "MNIST_CONV", "NMNIST_CONV"])
def test_authors_layouts(tmp_path, arch):
    state = authors_state_dict(arch, seed=1)
    # trained float32 weights: torch and NumPy sum in different orders, so a membrane within float32
    # rounding of the threshold can spike in one and not the other; those samples are set aside
    # (the float64 comparison stays exact)
    net, report = import_state_dict({"state_dict": state}, arch, out=tmp_path / "m.h5", n_random=16,
                                    return_report=True, tolerate_float32_ties=8)
    assert report.validation["dtypes_checked"] == ["float32", "float64"]
    assert len(report.validation["float32_ties_set_aside"]) < 4
    assert (report.threshold, report.decay, report.firing, report.steps) == (0.25, 0.25, ">", 10)
    loaded = load_model(tmp_path / "m.h5")
    assert loaded.input_shape == AUTHORS_ARCHITECTURES[arch]["input_shape"]
    x = (np.random.default_rng(2).random((10, 12) + loaded.input_shape) < 0.3).astype(np.uint8)
    np.testing.assert_array_equal(loaded.forward(x), authors_forward(state, arch, x))


def test_strict_validation_names_float32_ties():
    state = authors_state_dict("NMNIST_CONV", seed=1)
    try:
        import_state_dict(state, "NMNIST_CONV", n_random=16)
    except ImportRefused as error:  # depends on the BLAS summation order of this machine
        assert "within float rounding of the threshold" in str(error) and "No model was written" in str(error)


def test_plain_module_and_images_as_samples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 5))
    net = import_module(model, "plain", input_shape=(1, 8, 8))  # plain: a LIF right after every conv/linear
    assert [layer.kind for layer in net.layers] == ["conv2d", "avgpool2d", "flatten", "linear"]
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Linear(64, 5))  # forward flattens
    net, report = import_module(model, "plain", input_shape=(1, 8, 8), firing=">=", decay=0.5,
                                samples=np.random.default_rng(0).random((6, 1, 8, 8)), return_report=True)
    assert net.firing == ">=" and net.decay == 0.5 and report.validation["samples"] == 6
    assert any("flatten" in n and "inserted" in n for n in report.notices)


def test_state_dict_mismatches_are_refused():
    state = authors_state_dict("MNIST_FC", seed=0)
    with pytest.raises(ImportRefused, match=r"not used by the architecture: \['fc3.bias', 'fc3.weight'\]"):
        import_state_dict(state, [{"kind": "flatten"}, {"kind": "linear", "key": "fc1"},
                                  {"kind": "linear", "key": "fc2"}], input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="no conv1.weight"):
        import_state_dict(state, "MNIST_CONV")
    with pytest.raises(ValueError, match="unknown architecture"):
        import_state_dict(state, "LENET")


def test_cli_authors_state_dict(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "data_scripts"))
    import import_torch
    state = authors_state_dict("MNIST_FC", seed=3)
    torch.save(state, tmp_path / "mnist_FC.pth.tar")
    out = tmp_path / "imported" / "model.h5"
    base = ["--framework", "plain", "--model", str(tmp_path / "mnist_FC.pth.tar"), "--out", str(out.parent),
            "--n-random", "8"]
    assert import_torch.main(base) == 2  # a state_dict needs its architecture
    assert import_torch.main(base + ["--arch", "MNIST_FC"]) == 0
    net = load_model(out)
    assert (net.threshold, net.decay, net.firing) == (0.25, 0.25, ">")
    assert import_torch.main(base + ["--framework", "snntorch", "--threshold", "0.5"]) == 2
